//! The sync front-end's hottest calls (reads, and plain writes), without the async plumbing.
//!
//! Over a [`SyncPort`] every operation's future is ready at its first poll, and [`run_ready`]
//! runs it; for most operations that costs nothing that matters. For a read that hits the memory
//! backend it does: the nested state machines of `get_bytes`, `read_full` and the port's future
//! took about 160 of the 650 instructions of a hit, and with them, it seems, the processor's
//! overlap of one read's cache misses with the next one's (the memory benchmark's `get_hit_1t`
//! went from 0.34x to 0.86-0.97x quick_cache on glibc, with this and the value's header kept in
//! the entry; docs/design.md, "The memory backend"). These functions take the same steps as their
//! async twins in [`Dict`], through the same helpers and in the same order, calling the backend
//! directly; the conformance suite runs both (its plain and async modes).

use bytes::Bytes;
use serde::de::DeserializeOwned;

use super::{Dict, PreparedWrite, SyncPort, run_ready};
use crate::access::Operation;
use crate::backend::{Found, ReadMode, Written};
use crate::error::Result;

impl<'s> Dict<'s, SyncPort<'s>> {
    /// [`read_full`](Dict::read_full), at once.
    #[inline(always)]
    fn read_full_ready(&self, key: &str, mode: ReadMode) -> Result<Option<Found>> {
        let now = self.engine.begin_read(key)?;
        let found = self.port.backend.get_with_head(key, &now, mode)?;
        if mode == ReadMode::Touch {
            let value = found.as_ref().map(|(value, _)| value);
            if self.access_waits(value.is_some()) {
                run_ready(self.accessed(key, value, &now));
            } else {
                self.engine.read(key, value, &now, None);
            }
        }
        Ok(found)
    }

    /// [`get`](Dict::get) (`Touch`) or [`peek`](Dict::peek) (`Peek`), at once.
    #[inline(always)]
    pub(crate) fn get_ready<T: DeserializeOwned>(
        &self,
        key: &str,
        mode: ReadMode,
    ) -> Result<Option<T>> {
        let key = self.allowed(Operation::Read, key)?;
        let found = self.read_full_ready(&key, mode)?;
        self.engine.decode_opt(&key, found.map(|(value, _)| value))
    }

    /// [`get_bytes`](Dict::get_bytes), at once.
    #[inline(always)]
    pub(crate) fn get_bytes_ready(&self, key: &str) -> Result<Option<Bytes>> {
        let key = self.allowed(Operation::Read, key)?;
        let found = self.read_full_ready(&key, ReadMode::Touch)?;
        self.engine.decode_raw_found(&key, found)
    }

    /// [`write`](Dict::write), at once, for a write that needs neither an entry-hook lock (it
    /// attaches no hooks and no entry has any) nor a look at the value it replaces (in a store
    /// whose secret values stay secret when overwritten); other writes go through `write`.
    #[inline(always)]
    pub(crate) fn write_ready(&self, w: PreparedWrite<'_>) -> Result<Written> {
        let engine = self.engine;
        if !w.hooks.is_empty()
            || engine.events.registry.entries().in_use()
            || (engine.secrets_stick() && !w.secret)
        {
            return run_ready(self.write(w));
        }
        let PreparedWrite {
            key,
            now,
            value,
            expiry,
            condition,
            hooks,
            ..
        } = w;
        let event_value = engine.events.copy_for_set(&key, &value);
        let written = self.port.backend.set(&key, value, expiry, condition, now)?;
        engine.wrote(
            &key,
            &written,
            event_value.as_ref(),
            expiry,
            now,
            None,
            hooks,
        );
        Ok(written)
    }

    /// [`write_prepared`](Dict::write_prepared), at once.
    #[inline(always)]
    pub(crate) fn write_prepared_ready(&self, prepared: Result<PreparedWrite<'_>>) -> Result<()> {
        self.write_ready(prepared?)?;
        Ok(())
    }
}
