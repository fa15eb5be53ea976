//! Time to live: what a write asks for ([`Ttl`], [`WriteOptions`]) and how the store's defaults
//! turn that into the [`Expiry`] a backend applies.

use std::time::Duration;

use crate::backend::{Expiry, WriteExpiry};
use crate::clock::Millis;
use crate::error::{Error, Result};
use crate::events::{EntryHooks, Event, HookResult};

/// The longest TTL accepted: about 10,000 years, so that every deadline fits the 63-bit integers of
/// SQLite and Redis.
pub const MAX_TTL: Duration = Duration::from_millis(315_569_520_000_000);

/// How long a written value lives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Ttl {
    /// The store's default TTL (none unless the builder set one).
    #[default]
    Default,
    /// Never expires, whatever the store's default.
    Never,
    /// Expires this long after the write (millisecond resolution; a sub-millisecond TTL is one
    /// millisecond). Zero is [`Error::InvalidTtl`].
    After(Duration),
    /// Keeps the key's current deadline if the key exists (Redis `KEEPTTL`); a new key gets the
    /// store's default.
    Keep,
}

impl From<Duration> for Ttl {
    fn from(d: Duration) -> Self {
        Ttl::After(d)
    }
}

/// Options of one write: its TTL and whether that TTL slides.
///
/// Anything that converts into `WriteOptions` ([`Duration`], [`Ttl`]) can be given to the `*_with`
/// methods.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use livedict::{LiveDict, Ttl, WriteOptions};
///
/// let store = LiveDict::new();
/// store.set_with("a", &1, Duration::from_secs(60))?;                  // fixed TTL
/// store.set_with("b", &2, Ttl::Never)?;                               // no TTL
/// store.set_with("c", &3, WriteOptions::ttl(Duration::from_secs(60)).sliding(true))?;
/// store.set_with("a", &4, Ttl::Keep)?;                                // keeps a's deadline
/// # Ok::<(), livedict::Error>(())
/// ```
#[derive(Clone, Debug, Default)]
#[must_use]
pub struct WriteOptions {
    pub(crate) ttl: Ttl,
    pub(crate) sliding: Option<bool>,
    pub(crate) hooks: EntryHooks,
    pub(crate) secret: bool,
}

impl WriteOptions {
    /// The store's defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Expire `ttl` after the write.
    pub fn ttl(ttl: Duration) -> Self {
        WriteOptions {
            ttl: Ttl::After(ttl),
            ..WriteOptions::default()
        }
    }

    /// Never expire.
    pub fn never() -> Self {
        Ttl::Never.into()
    }

    /// Keep the key's existing deadline.
    pub fn keep_ttl() -> Self {
        Ttl::Keep.into()
    }

    /// Whether reads and writes push the deadline to now + TTL ("active" TTL). Unset, the store's
    /// default applies.
    pub fn sliding(mut self, sliding: bool) -> Self {
        self.sliding = Some(sliding);
        self
    }

    /// Encrypts this value even in a store that does not encrypt every value (the store needs a
    /// keyring). Whatever the value looks like, it is encrypted: a value shaped like a ciphertext
    /// is just text. The key stays secret: later writes of it (`set`, `replace`, `update`, `incr`,
    /// `merge`) are encrypted too, until it is deleted or expires. (Batches, `set_many` and
    /// `import` write what they are given.)
    ///
    /// # Examples
    /// ```
    /// use livedict::{Keyring, LiveDict, WriteOptions};
    ///
    /// let store = LiveDict::builder()
    ///     .keyring(Keyring::generate(1))
    ///     .encrypt_all(false) // only secrets are encrypted
    ///     .build()?;
    /// store.set_with("api-token", &"s3cr3t", WriteOptions::new().secret())?;
    /// assert_eq!(store.get::<String>("api-token")?.as_deref(), Some("s3cr3t"));
    /// # Ok::<(), livedict::Error>(())
    /// ```
    pub fn secret(mut self) -> Self {
        self.secret = true;
        self
    }

    /// A hook called (on the store's hook workers) whenever this entry is read by an access
    /// (`get` and its forms), until the entry is overwritten by a write without it, deleted, or
    /// expires. It is a closure of this process: it fires for reads made through this process's
    /// stores.
    ///
    /// # Examples
    /// ```
    /// use std::sync::mpsc;
    /// use livedict::{LiveDict, WriteOptions};
    ///
    /// let store = LiveDict::new();
    /// let (tx, rx) = mpsc::channel();
    /// store.set_with("k", &1, WriteOptions::new().on_access(move |e| Ok(tx.send(e.key().to_owned())?)))?;
    /// store.get::<i32>("k")?;
    /// assert_eq!(rx.recv().unwrap(), "k");
    /// # Ok::<(), livedict::Error>(())
    /// ```
    pub fn on_access<F>(mut self, f: F) -> Self
    where
        F: Fn(&Event) -> HookResult + Send + Sync + 'static,
    {
        self.hooks.on_access = Some(crate::events::hook_fn(f));
        self
    }

    /// A hook called once when this entry expires, with its last value; never if it is deleted
    /// or overwritten first (an overwrite without hooks detaches them; an in-place `update` keeps
    /// them). It fires in the process whose expiry driver (or call) removed the entry.
    pub fn on_expire<F>(mut self, f: F) -> Self
    where
        F: Fn(&Event) -> HookResult + Send + Sync + 'static,
    {
        self.hooks.on_expire = Some(crate::events::hook_fn(f));
        self
    }
}

impl From<Ttl> for WriteOptions {
    fn from(ttl: Ttl) -> Self {
        WriteOptions {
            ttl,
            ..WriteOptions::default()
        }
    }
}

impl From<Duration> for WriteOptions {
    fn from(d: Duration) -> Self {
        WriteOptions::ttl(d)
    }
}

/// Converts a TTL to whole milliseconds, refusing zero and absurd lengths.
pub(crate) fn to_millis(ttl: Duration) -> Result<Millis> {
    if ttl.is_zero() {
        return Err(Error::InvalidTtl {
            reason: "a TTL of zero",
        });
    }
    if ttl > MAX_TTL {
        return Err(Error::InvalidTtl {
            reason: "a TTL longer than livedict::MAX_TTL",
        });
    }
    // Round sub-millisecond remainders up so a non-zero TTL never becomes zero (in 64-bit
    // arithmetic: `as_micros` is a u128, and its division a slow library call on every write).
    Ok(ttl.as_secs() * 1000 + Millis::from(ttl.subsec_nanos().div_ceil(1_000_000)))
}

/// A store's TTL defaults, and the resolution of a write's options against them.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct TtlPolicy {
    pub(crate) default_ttl: Option<Millis>,
    pub(crate) sliding_by_default: bool,
}

impl TtlPolicy {
    pub(crate) fn new(default_ttl: Option<Duration>, sliding_by_default: bool) -> Result<Self> {
        Ok(TtlPolicy {
            default_ttl: default_ttl.map(to_millis).transpose()?,
            sliding_by_default,
        })
    }

    fn default_expiry(&self, sliding: Option<bool>) -> Expiry {
        match self.default_ttl {
            Some(ttl) => Expiry::After {
                ttl,
                sliding: sliding.unwrap_or(self.sliding_by_default),
            },
            None => Expiry::Never,
        }
    }

    /// The expiry a write with `options` applies.
    pub(crate) fn resolve(&self, options: &WriteOptions) -> Result<WriteExpiry> {
        let sliding = options.sliding;
        Ok(match options.ttl {
            Ttl::Default => WriteExpiry::replace(self.default_expiry(sliding)),
            Ttl::Never => WriteExpiry::replace(Expiry::Never),
            Ttl::After(d) => WriteExpiry::replace(Expiry::After {
                ttl: to_millis(d)?,
                sliding: sliding.unwrap_or(self.sliding_by_default),
            }),
            Ttl::Keep => WriteExpiry::keep_or(self.default_expiry(sliding)),
        })
    }

    /// The expiry of an in-place update (`update`, `incr`, `merge`): an existing key keeps its
    /// deadline, a new key gets the default.
    pub(crate) fn for_update(&self) -> WriteExpiry {
        WriteExpiry::keep_or(self.default_expiry(None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_conversion() {
        assert!(matches!(
            to_millis(Duration::ZERO),
            Err(Error::InvalidTtl { .. })
        ));
        assert_eq!(to_millis(Duration::from_nanos(1)).unwrap(), 1);
        assert_eq!(to_millis(Duration::from_nanos(999)).unwrap(), 1);
        assert_eq!(to_millis(Duration::from_micros(1)).unwrap(), 1);
        assert_eq!(to_millis(Duration::from_millis(1)).unwrap(), 1);
        assert_eq!(to_millis(Duration::new(3, 1)).unwrap(), 3001);
        assert_eq!(to_millis(Duration::from_micros(1001)).unwrap(), 2);
        assert_eq!(to_millis(Duration::from_secs(2)).unwrap(), 2000);
        assert!(to_millis(MAX_TTL).is_ok());
        assert!(to_millis(MAX_TTL + Duration::from_millis(1)).is_err());
    }

    #[test]
    fn resolution_follows_defaults() {
        let p = TtlPolicy::new(Some(Duration::from_secs(5)), true).unwrap();
        assert_eq!(
            p.resolve(&WriteOptions::new()).unwrap(),
            WriteExpiry::replace(Expiry::After {
                ttl: 5000,
                sliding: true
            })
        );
        assert_eq!(
            p.resolve(&WriteOptions::ttl(Duration::from_secs(1)).sliding(false))
                .unwrap(),
            WriteExpiry::replace(Expiry::After {
                ttl: 1000,
                sliding: false
            })
        );
        assert_eq!(
            p.resolve(&WriteOptions::never()).unwrap(),
            WriteExpiry::replace(Expiry::Never)
        );
        assert!(p.resolve(&WriteOptions::ttl(Duration::ZERO)).is_err());
        let none = TtlPolicy::default();
        assert_eq!(none.for_update(), WriteExpiry::keep_or(Expiry::Never));
    }
}
