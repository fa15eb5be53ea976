//! Events and hooks: what happened to a key, delivered to hooks on background workers.
//!
//! A store publishes an [`Event`] when a value is set, read (`Access`), deleted, expires, or when
//! the store is cleared. Hooks are registered store-wide per [`EventKind`] (optionally filtered by
//! key or key prefix) with [`LiveDict::on`](crate::LiveDict::on) /
//! [`LiveDict::hook`](crate::LiveDict::hook), or per entry at write time with
//! [`WriteOptions::on_access`](crate::WriteOptions::on_access) /
//! [`WriteOptions::on_expire`](crate::WriteOptions::on_expire).
//!
//! Hooks never run on the caller's thread: publishing an event is a push onto a bounded queue, and
//! the [executor](EventSettings) delivers it. A hook that panics, fails or overruns its timeout is
//! isolated and counted; events of one key are delivered in order.

mod command;
mod executor;
mod hub;
mod queue;
mod registry;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::clock::Millis;
use crate::codec;
use crate::error::{BoxError, Result};

pub use command::CommandHook;
pub(crate) use executor::Executor;
pub use executor::{EventSettings, QueueFullPolicy};
pub(crate) use hub::EventHub;
pub(crate) use queue::KeptValue;
pub(crate) use registry::{EntryHookTable, EntryLock, Registry};

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EventKind {
    /// A value was written (set, update, incr, merge, batch, ...).
    Set,
    /// A value was read by an access (`get` and its forms; not `peek`).
    Access,
    /// An entry reached its deadline and was removed. Fires exactly once per expired entry.
    Expire,
    /// An entry was removed by a call (delete, pop, popitem, an update returning `None`,
    /// `cleanup_inactive`). Fires only when something was removed.
    Delete,
    /// The store was cleared (one event per `clear`, with an empty key).
    Clear,
}

impl EventKind {
    /// Every kind, to listen to all events: `store.on(EventKind::ALL, ...)`.
    pub const ALL: [EventKind; 5] = [
        EventKind::Set,
        EventKind::Access,
        EventKind::Expire,
        EventKind::Delete,
        EventKind::Clear,
    ];

    pub(crate) fn bit(self) -> u8 {
        match self {
            EventKind::Set => 1,
            EventKind::Access => 2,
            EventKind::Expire => 4,
            EventKind::Delete => 8,
            EventKind::Clear => 16,
        }
    }

    /// The lower-case name used in JSON (`"set"`, `"access"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Set => "set",
            EventKind::Access => "access",
            EventKind::Expire => "expire",
            EventKind::Delete => "delete",
            EventKind::Clear => "clear",
        }
    }
}

/// Why an event happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Cause {
    /// A call of the application (set, get, delete, update, ...).
    Explicit,
    /// The entry's deadline passed.
    Expired,
    /// Removed by `cleanup_inactive`.
    Inactive,
    /// Removed by `clear`.
    Cleared,
}

impl Cause {
    /// The lower-case name used in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Cause::Explicit => "explicit",
            Cause::Expired => "expired",
            Cause::Inactive => "inactive",
            Cause::Cleared => "cleared",
        }
    }
}

/// One event, as hooks see it.
///
/// # Examples
/// ```
/// use std::sync::mpsc;
/// use livedict::{EventKind, LiveDict};
///
/// let store = LiveDict::new();
/// let (tx, rx) = mpsc::channel();
/// store.on(EventKind::Set, move |event| {
///     let new: Option<u32> = event.value()?;
///     let old: Option<u32> = event.previous()?;
///     tx.send((event.key().to_owned(), old, new)).unwrap();
///     Ok(())
/// })?;
/// store.set("n", &1)?;
/// store.set("n", &2)?;
/// assert_eq!(rx.recv().unwrap(), ("n".to_string(), None, Some(1)));
/// assert_eq!(rx.recv().unwrap(), ("n".to_string(), Some(1), Some(2)));
/// # Ok::<(), livedict::Error>(())
/// ```
///
/// An event may share the bytes of its values (stored values up to 1 KiB, header included) with
/// the events delivered with it. What a hook can keep of it is its own: cloning the event and
/// [`value_bytes`](Self::value_bytes) copy such values, so a kept clone or value does not keep
/// the others' bytes alive.
pub struct Event {
    pub(crate) kind: EventKind,
    pub(crate) cause: Cause,
    /// Inline up to 24 bytes: publishing an event of a short key allocates nothing for it.
    pub(crate) key: compact_str::CompactString,
    pub(crate) value: Option<Bytes>,
    pub(crate) previous: Option<Bytes>,
    pub(crate) time: Millis,
    pub(crate) sealer: Option<crate::crypto::Sealer>,
    /// Whether the values (up to 1 KiB) are slices of the batch's buffer.
    pub(crate) shares_batch: bool,
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("kind", &self.kind)
            .field("cause", &self.cause)
            .field("key", &self.key)
            .field("time", &self.time)
            .finish_non_exhaustive()
    }
}

impl Clone for Event {
    fn clone(&self) -> Self {
        Event {
            kind: self.kind,
            cause: self.cause,
            key: self.key.clone(),
            value: self.value.as_ref().map(|v| self.own(v)),
            previous: self.previous.as_ref().map(|v| self.own(v)),
            time: self.time,
            sealer: self.sealer.clone(),
            shares_batch: false,
        }
    }
}

impl Event {
    /// What happened.
    pub fn kind(&self) -> EventKind {
        self.kind
    }

    /// Why.
    pub fn cause(&self) -> Cause {
        self.cause
    }

    /// The key (empty for [`EventKind::Clear`]).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// When, on the store's clock (ms since the Unix epoch).
    pub fn time(&self) -> Millis {
        self.time
    }

    /// The value concerned, decoded: the new value of a `Set`, the value read by an `Access`, the
    /// last value of an `Expire` or `Delete`.
    ///
    /// # Errors
    /// [`Error::Decode`](crate::Error::Decode) if it is not a `T`.
    pub fn value<T: DeserializeOwned>(&self) -> Result<Option<T>> {
        self.decoded(&self.value)
    }

    /// The value replaced by a `Set`, decoded.
    ///
    /// # Errors
    /// [`Error::Decode`](crate::Error::Decode) if it is not a `T`.
    pub fn previous<T: DeserializeOwned>(&self) -> Result<Option<T>> {
        self.decoded(&self.previous)
    }

    /// The value of an entry stored as raw bytes (a copy when it is small, see [`Event`]).
    ///
    /// # Errors
    /// [`Error::Decode`](crate::Error::Decode) if it is a typed value.
    pub fn value_bytes(&self) -> Result<Option<Bytes>> {
        let encrypted = self
            .value
            .as_deref()
            .is_some_and(crate::crypto::is_encrypted);
        let bytes = self
            .opened(&self.value)?
            .map(codec::decode_raw)
            .transpose()?;
        // A decrypted value is a buffer of its own already.
        Ok(bytes.map(|b| if encrypted { b } else { self.own(&b) }))
    }

    /// `v`, one of this event's values (or a part of one), as a buffer a hook may keep.
    fn own(&self, v: &Bytes) -> Bytes {
        if self.shares_batch {
            queue::detached(v)
        } else {
            v.clone()
        }
    }

    /// A value as stored, decrypted if need be.
    fn opened(&self, v: &Option<Bytes>) -> Result<Option<Bytes>> {
        v.clone()
            .map(|b| crate::crypto::open(self.sealer.as_ref(), &self.key, b))
            .transpose()
    }

    fn decoded<T: DeserializeOwned>(&self, v: &Option<Bytes>) -> Result<Option<T>> {
        let encrypted = v.as_deref().is_some_and(crate::crypto::is_encrypted);
        self.opened(v)?
            .map(|b| codec::decode(&b))
            .transpose()
            .map_err(|e| {
                if encrypted {
                    crate::crypto::redact(e)
                } else {
                    e
                }
            })
    }

    /// The event as JSON: `{"kind", "cause", "key", "time", "value", "previous"}`, values as JSON
    /// (raw byte values as `{"bytes_hex": "..."}`; values that cannot be decoded as `null` with an
    /// `"error"`).
    pub fn to_json(&self) -> serde_json::Value {
        let value_json = |v: &Option<Bytes>| -> serde_json::Value {
            let v = match self.opened(v) {
                Ok(v) => v,
                Err(e) => return serde_json::json!({ "error": e.to_string() }),
            };
            match &v {
                None => serde_json::Value::Null,
                Some(b) => match codec::decode::<serde_json::Value>(b) {
                    Ok(v) => v,
                    Err(_) => match codec::decode_raw(b.clone()) {
                        Ok(raw) => {
                            let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
                            serde_json::json!({ "bytes_hex": hex })
                        }
                        Err(e) => serde_json::json!({ "error": e.to_string() }),
                    },
                },
            }
        };
        serde_json::json!({
            "kind": self.kind.name(),
            "cause": self.cause.name(),
            "key": self.key.as_str(),
            "time": self.time,
            "value": value_json(&self.value),
            "previous": value_json(&self.previous),
        })
    }
}

/// Identifies a registered hook, to enable, disable or unregister it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HookId(pub(crate) u64);

/// What a hook returns: `Ok(())`, or an error (any error converts with `?`), which is counted
/// and logged.
pub type HookResult = Result<(), BoxError>;

/// The callable part of a hook.
pub(crate) type HookFn = Arc<dyn Fn(&Event) -> HookResult + Send + Sync>;

/// `f` as a [`HookFn`] whose drop never panics: wherever its last reference goes (a hook
/// worker letting go of an old hook list, a caller overwriting an entry), dropping what `f`
/// captured is the application's code, so it runs under `catch_unwind`, and what a panic there
/// leaves is leaked.
pub(crate) fn hook_fn<F>(f: F) -> HookFn
where
    F: Fn(&Event) -> HookResult + Send + Sync + 'static,
{
    let f = DropContained(Some(f));
    Arc::new(move |event: &Event| match &f.0 {
        Some(f) => f(event),
        None => unreachable!("a hook function called while being dropped"),
    })
}

/// A value dropped under `catch_unwind` (see [`hook_fn`]).
struct DropContained<T>(Option<T>);

impl<T> Drop for DropContained<T> {
    fn drop(&mut self) {
        let inner = self.0.take();
        if contain(move || drop(inner)).is_none() {
            tracing::error!("livedict: a hook's function panicked when dropped");
        }
    }
}

/// Runs `f`, the application's code (a hook's `Display`, `Drop`, log subscriber...), under
/// `catch_unwind`: its result, or `None` if it panicked. The panic's payload is leaked, not
/// dropped: dropping it may panic again.
pub(crate) fn contain<R>(f: impl FnOnce() -> R) -> Option<R> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .map_err(std::mem::forget)
        .ok()
}

/// Which keys a store-wide hook hears about.
#[derive(Clone, Debug, PartialEq, Eq)]
enum KeyFilter {
    All,
    Key(String),
    Prefix(String),
}

impl KeyFilter {
    fn matches(&self, key: &str) -> bool {
        match self {
            KeyFilter::All => true,
            KeyFilter::Key(k) => k == key,
            KeyFilter::Prefix(p) => key.starts_with(p.as_str()),
        }
    }
}

/// A store-wide hook, configured before registration with [`LiveDict::hook`](crate::LiveDict::hook).
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use livedict::{EventKind, Hook, LiveDict};
///
/// let store = LiveDict::new();
/// let id = store.hook(
///     Hook::new([EventKind::Set, EventKind::Delete], |event| {
///         println!("{:?} {}", event.kind(), event.key());
///         Ok(())
///     })
///     .prefix("user:")
///     .timeout(Duration::from_millis(200)),
/// )?;
/// store.disable_hook(id);
/// store.enable_hook(id);
/// assert!(store.unregister_hook(id));
/// # Ok::<(), livedict::Error>(())
/// ```
#[must_use]
pub struct Hook {
    pub(crate) kinds: u8,
    filter: KeyFilter,
    /// The prefix of the namespace handle it was registered through (`""`: the whole store).
    scope: String,
    pub(crate) timeout: Option<Duration>,
    pub(crate) f: HookFn,
}

impl fmt::Debug for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hook")
            .field("kinds", &self.kinds)
            .field("filter", &self.filter)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Hook {
    /// A hook for one or several event kinds (an [`EventKind`], an array or a `Vec` of them).
    pub fn new<F>(kinds: impl IntoIterator<Item = EventKind>, f: F) -> Hook
    where
        F: Fn(&Event) -> HookResult + Send + Sync + 'static,
    {
        Hook {
            kinds: kinds.into_iter().fold(0, |m, k| m | k.bit()),
            filter: KeyFilter::All,
            scope: String::new(),
            timeout: None,
            f: hook_fn(f),
        }
    }

    /// A hook whose function is async: `f(event)` returns a future, which runs to completion
    /// on the store's hook worker, driven by `runtime` (its timers and I/O). The same rules as
    /// for sync hooks hold: it never runs on the caller's task, events of one key reach it in
    /// order, a panic or error is counted and isolated, and an overrun of the hook's timeout is
    /// counted and moves the other hooks to a fresh worker.
    ///
    /// On a `current_thread` runtime, tokio drives timers and I/O only while the runtime's own
    /// thread is inside `block_on`: an async hook that awaits them makes progress while the
    /// application is awaiting something (as `#[tokio::main]` does), not while that thread is
    /// busy. A multi-thread runtime has no such limit.
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> livedict::Result<()> {
    /// use livedict::{EventKind, Hook};
    ///
    /// let store = livedict::LiveDict::builder().build_async()?;
    /// let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    /// let runtime = tokio::runtime::Handle::current();
    /// store.hook(Hook::new_async([EventKind::Set], &runtime, move |e| {
    ///     let tx = tx.clone();
    ///     async move { Ok(tx.send(e.key().to_owned())?) }
    /// }))?;
    /// store.set("k", &1).await?;
    /// assert_eq!(rx.recv().await.as_deref(), Some("k"));
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "async")]
    #[cfg_attr(docsrs, doc(cfg(feature = "async")))]
    pub fn new_async<F, Fut>(
        kinds: impl IntoIterator<Item = EventKind>,
        runtime: &tokio::runtime::Handle,
        f: F,
    ) -> Hook
    where
        F: Fn(Event) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = HookResult> + Send + 'static,
    {
        let runtime = runtime.clone();
        Hook::new(kinds, move |e: &Event| runtime.block_on(f(e.clone())))
    }

    /// A hook running an external program per event (see [`CommandHook`]).
    pub fn command(kinds: impl IntoIterator<Item = EventKind>, command: CommandHook) -> Hook {
        let timeout = command.timeout;
        let command = Arc::new(command);
        let mut hook = Hook::new(kinds, move |e: &Event| command.run(e));
        // The program is killed at its own timeout; give the executor's watchdog a little more.
        hook.timeout = Some(timeout.saturating_add(Duration::from_secs(1)));
        hook
    }

    /// Only events of exactly this key.
    pub fn key(mut self, key: impl Into<String>) -> Hook {
        self.filter = KeyFilter::Key(key.into());
        self
    }

    /// Only events of keys starting with `prefix`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Hook {
        self.filter = KeyFilter::Prefix(prefix.into());
        self
    }

    /// How long one call may run before it is abandoned and counted as timed out (default: the
    /// store's [`EventSettings::hook_timeout`], 1 s).
    pub fn timeout(mut self, timeout: Duration) -> Hook {
        self.timeout = Some(timeout);
        self
    }

    /// This hook as registered through a handle whose namespace prefix is `prefix`: it hears only
    /// keys under the prefix (its key or prefix filter is taken as relative to it, as the
    /// handle's keys are).
    pub(crate) fn scoped(mut self, prefix: &str) -> Hook {
        if !prefix.is_empty() {
            self.filter = match self.filter {
                KeyFilter::All => KeyFilter::Prefix(prefix.to_owned()),
                KeyFilter::Key(k) => KeyFilter::Key(format!("{prefix}{k}")),
                KeyFilter::Prefix(p) => KeyFilter::Prefix(format!("{prefix}{p}")),
            };
            self.scope = prefix.to_owned();
        }
        self
    }

    /// What the hook listens to, as the access policy is asked about it: its key, its prefix,
    /// or `""` for every key.
    pub(crate) fn watched(&self) -> &str {
        match &self.filter {
            KeyFilter::All => "",
            KeyFilter::Key(k) | KeyFilter::Prefix(k) => k,
        }
    }

    /// Whether a handle whose namespace prefix is `prefix` may enable, disable or unregister
    /// this hook: one registered through it or through a namespace inside it.
    pub(crate) fn registered_within(&self, prefix: &str) -> bool {
        self.scope.starts_with(prefix)
    }

    pub(crate) fn accepts(&self, kind: EventKind, key: &str) -> bool {
        self.kinds & kind.bit() != 0 && (kind == EventKind::Clear || self.filter.matches(key))
    }

    /// The kinds for which this hook accepts every key.
    pub(crate) fn unfiltered_kinds(&self) -> u8 {
        match self.filter {
            KeyFilter::All => self.kinds,
            _ => self.kinds & EventKind::Clear.bit(),
        }
    }
}

impl IntoIterator for EventKind {
    type Item = EventKind;
    type IntoIter = std::iter::Once<EventKind>;
    fn into_iter(self) -> Self::IntoIter {
        std::iter::once(self)
    }
}

/// Hooks attached to one entry by the write that stored it (`on_access`, `on_expire`).
#[derive(Clone, Default)]
pub(crate) struct EntryHooks {
    pub(crate) on_access: Option<HookFn>,
    pub(crate) on_expire: Option<HookFn>,
}

impl EntryHooks {
    pub(crate) fn is_empty(&self) -> bool {
        self.on_access.is_none() && self.on_expire.is_none()
    }
}

impl fmt::Debug for EntryHooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EntryHooks")
            .field("on_access", &self.on_access.is_some())
            .field("on_expire", &self.on_expire.is_some())
            .finish()
    }
}
