//! The publishing side of events: what the engine calls. Starts the executor lazily, on the first
//! hook, so a store without hooks runs no hook threads and pays one atomic load per operation.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use parking_lot::Mutex;

use super::executor::DeliveryCounters;
use super::queue::{EventBytes, KeptValue, Published};
use super::{
    Cause, EntryHooks, EventKind, EventSettings, Executor, Hook, HookFn, HookId, Registry,
};
use crate::clock::Millis;
use crate::crypto::Sealer;
use crate::error::{Error, Result};

/// The events of one store.
#[derive(Debug)]
pub(crate) struct EventHub {
    pub(crate) registry: Arc<Registry>,
    settings: EventSettings,
    pub(crate) counters: Arc<DeliveryCounters>,
    executor: OnceLock<Executor>,
    starting: Mutex<()>,
    /// Handed to events, which decrypt their values on demand.
    sealer: Option<Sealer>,
}

impl EventHub {
    pub(crate) fn new(settings: EventSettings, sealer: Option<Sealer>) -> Self {
        EventHub {
            registry: Arc::new(Registry::default()),
            settings,
            counters: Arc::new(DeliveryCounters::default()),
            executor: OnceLock::new(),
            starting: Mutex::new(()),
            sealer,
        }
    }

    fn ensure_started(&self) -> Result<()> {
        if self.executor.get().is_some() {
            return Ok(());
        }
        let _g = self.starting.lock();
        if self.executor.get().is_none() {
            let executor = Executor::start(
                self.settings.clone(),
                self.registry.clone(),
                self.counters.clone(),
                self.sealer.clone(),
            )
            .map_err(|e| Error::Backend(Box::new(e)))?;
            let _ = self.executor.set(executor);
        }
        Ok(())
    }

    pub(crate) fn register(&self, hook: Hook) -> Result<HookId> {
        self.ensure_started()?;
        Ok(self.registry.register(hook))
    }

    /// Whether an event of `kind` has a listener (cheap).
    #[inline]
    pub(crate) fn wants(&self, kind: EventKind) -> bool {
        self.registry.wants(kind)
    }

    /// For the async front-end, before a write of `key` (or a sweep, with `None`): a wait for
    /// room when the events' queue is full under the `Block` policy (see
    /// [`Executor::room_wait`]).
    pub(crate) fn room_wait(
        &self,
        key: Option<&str>,
    ) -> Option<(
        event_listener::EventListener,
        super::executor::RoomWaiter<'_>,
    )> {
        self.executor.get()?.room_wait(key)
    }

    /// What a write of `key` keeps of `value` for its `Set` event, if a hook accepts it.
    #[inline]
    pub(crate) fn copy_for_set(&self, key: &str, value: &Bytes) -> Option<KeptValue> {
        self.registry
            .store_wide_for(EventKind::Set, key)
            .then(|| KeptValue::of(value))
    }

    /// Whether a call on `key` must hold the key's entry-hook stripe (the write attaches hooks,
    /// or some entry has them); starts the hook threads if the write attaches hooks.
    pub(crate) fn needs_entry_lock(&self, hooks: &EntryHooks) -> Result<bool> {
        if !hooks.is_empty() {
            self.ensure_started()?;
        }
        Ok(!hooks.is_empty() || self.registry.entries().in_use())
    }

    /// Publishes an event to the store-wide hooks of its kind and to `entry_hook`. The event is
    /// copied into the executor's queue (see `queue.rs`): values are borrowed here.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub(crate) fn publish(
        &self,
        kind: EventKind,
        cause: Cause,
        key: &str,
        value: Option<&Bytes>,
        previous: Option<&Bytes>,
        time: Millis,
        entry_hook: Option<HookFn>,
    ) {
        if entry_hook.is_none() && !self.registry.store_wide_for(kind, key) {
            return;
        }
        let Some(executor) = self.executor.get() else {
            return;
        };
        executor.publish(Published {
            kind,
            cause,
            key,
            value: value.map(EventBytes::Stored),
            previous: previous.map(EventBytes::Stored),
            time,
            entry_hook,
        });
    }

    /// Publishes the `Set` event of a write that kept `value` (so a hook accepted it when the
    /// write began; the workers check again when they deliver it).
    #[inline]
    pub(crate) fn publish_set(
        &self,
        key: &str,
        value: &KeptValue,
        previous: Option<&Bytes>,
        time: Millis,
    ) {
        if let Some(executor) = self.executor.get() {
            executor.publish(Published {
                kind: EventKind::Set,
                cause: Cause::Explicit,
                key,
                value: Some(value.bytes()),
                previous: previous.map(EventBytes::Stored),
                time,
                entry_hook: None,
            });
        }
    }

    /// The store is closing: publishing stops waiting for room in the queue.
    pub(crate) fn begin_close(&self) {
        if let Some(executor) = self.executor.get() {
            executor.begin_close();
        }
    }

    /// Delivers what is queued (up to the grace period) and stops the hook threads.
    pub(crate) fn shutdown(&self) {
        if let Some(executor) = self.executor.get() {
            executor.shutdown();
        }
    }
}
