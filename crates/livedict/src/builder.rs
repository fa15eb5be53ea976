//! The builder every store starts from.

use std::sync::Arc;
use std::time::Duration;

use crate::access::{AccessPolicy, Operation};
use crate::backend::Backend;
use crate::backend::memory::MemoryBackend;
use crate::clock::Clock;
use crate::codec::Codec;
use crate::crypto::Keyring;
use crate::engine::{DEFAULT_MAX_VALUE_SIZE, Engine, EngineConfig};
use crate::error::{Error, Result};
use crate::events::EventSettings;
use crate::expiry::ExpiryDriver;
use crate::sync::LiveDict;
use crate::ttl::TtlPolicy;

/// Configures and builds a store.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use livedict::{Codec, LiveDict, MemoryBackend};
///
/// let store = LiveDict::builder()
///     .default_ttl(Duration::from_secs(300))
///     .sliding(true)
///     .codec(Codec::Json)
///     .max_value_size(1 << 20)
///     .backend(MemoryBackend::new())
///     .build()?;
/// store.set("session", &"data")?;
/// # Ok::<(), livedict::Error>(())
/// ```
#[must_use]
#[derive(Debug)]
pub struct Builder {
    default_ttl: Option<Duration>,
    sliding: bool,
    codec: Codec,
    clock: Clock,
    max_value_size: usize,
    backend: Option<Arc<dyn Backend>>,
    active_expiry: bool,
    events: EventSettings,
    keyring: Option<Keyring>,
    encrypt_all: bool,
    access: Option<AccessPolicy>,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            default_ttl: None,
            sliding: false,
            codec: Codec::default(),
            clock: Clock::default(),
            max_value_size: DEFAULT_MAX_VALUE_SIZE,
            backend: None,
            active_expiry: true,
            events: EventSettings::default(),
            keyring: None,
            encrypt_all: true,
            access: None,
        }
    }
}

impl Builder {
    /// A builder with the defaults: memory backend, no default TTL, fixed TTLs, JSON, the system
    /// clock, 16 MiB maximum value size, active expiry on.
    pub fn new() -> Self {
        Self::default()
    }

    /// The TTL of writes that do not give their own. Zero is refused by [`build`](Self::build).
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = Some(ttl);
        self
    }

    /// Makes TTLs sliding by default: reads and writes push a key's deadline to now + TTL.
    pub fn sliding(mut self, sliding: bool) -> Self {
        self.sliding = sliding;
        self
    }

    /// The codec of typed values (JSON by default).
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// The clock deadlines are measured with ([`Clock::System`] by default).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The largest encoded value accepted, in bytes (16 MiB by default).
    pub fn max_value_size(mut self, bytes: usize) -> Self {
        self.max_value_size = bytes;
        self
    }

    /// The storage backend ([`MemoryBackend`] by default).
    pub fn backend(self, backend: impl Backend) -> Self {
        self.shared_backend(Arc::new(backend))
    }

    /// A backend already behind an `Arc`, possibly shared with other stores of this process.
    pub fn shared_backend(mut self, backend: Arc<dyn Backend>) -> Self {
        self.backend = Some(backend);
        self
    }

    /// Whether a background thread removes entries as their deadlines pass (on by default).
    /// Off, expired entries are still invisible to every read, and are removed when touched or by
    /// [`LiveDict::sweep_expired`].
    pub fn active_expiry(mut self, on: bool) -> Self {
        self.active_expiry = on;
        self
    }

    /// Settings of the hook executor (workers, queue bound and full policy, hook timeout).
    pub fn events(mut self, settings: EventSettings) -> Self {
        self.events = settings;
        self
    }

    /// Encrypts values at rest with AES-256-GCM under this keyring's newest key (every value,
    /// unless [`encrypt_all(false)`](Self::encrypt_all) keeps it for secret ones).
    pub fn keyring(mut self, keyring: Keyring) -> Self {
        self.keyring = Some(keyring);
        self
    }

    /// With a keyring: whether every value is encrypted (the default) or only those written as
    /// [`secret`](crate::WriteOptions::secret) and password keys.
    pub fn encrypt_all(mut self, all: bool) -> Self {
        self.encrypt_all = all;
        self
    }

    /// An access policy, asked with ([`Operation`], key) before every operation (bulk, scanning,
    /// namespace and admin ones included); a `false` is [`Error::PermissionDenied`] and changes
    /// nothing. Keys are full keys, namespace prefix included; bulk operations pass the prefix
    /// they cover (`""` for the whole store).
    ///
    /// # Examples
    /// ```
    /// use livedict::{Error, LiveDict, Operation};
    ///
    /// // Read-only outside "tmp:".
    /// let store = LiveDict::builder()
    ///     .access_policy(|op, key| key.starts_with("tmp:") || matches!(op, Operation::Read))
    ///     .build()?;
    /// store.set("tmp:a", &1)?;
    /// assert!(matches!(store.set("a", &1), Err(Error::PermissionDenied { .. })));
    /// assert!(matches!(store.clear(), Err(Error::PermissionDenied { .. })));
    /// # Ok::<(), livedict::Error>(())
    /// ```
    pub fn access_policy(
        mut self,
        policy: impl Fn(Operation, &str) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.access = Some(AccessPolicy::new(policy));
        self
    }

    /// Builds the synchronous store.
    ///
    /// # Errors
    /// [`Error::InvalidTtl`] for a zero default TTL; [`Error::Backend`] if the expiry thread cannot
    /// be started.
    pub fn build(self) -> Result<LiveDict> {
        let active_expiry = self.active_expiry;
        let (engine, backend) = self.parts()?;
        let driver = if active_expiry {
            Some(
                ExpiryDriver::start(engine.clone(), backend.clone())
                    .map_err(|e| Error::Backend(Box::new(e)))?,
            )
        } else {
            None
        };
        Ok(LiveDict::from_parts(engine, backend, driver))
    }

    /// Builds the asynchronous store, on the tokio runtime this is called from: its expiry driver
    /// runs as a task there.
    ///
    /// # Errors
    /// [`Error::InvalidTtl`] for a zero default TTL; [`Error::Backend`] if called outside a tokio
    /// runtime.
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> livedict::Result<()> {
    /// let store = livedict::LiveDict::builder().build_async()?;
    /// store.set("k", &1).await?;
    /// assert_eq!(store.get::<i32>("k").await?, Some(1));
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "async")]
    #[cfg_attr(docsrs, doc(cfg(feature = "async")))]
    pub fn build_async(self) -> Result<crate::AsyncLiveDict> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| {
            Error::Backend(format!("build_async must be called inside a tokio runtime: {e}").into())
        })?;
        let active_expiry = self.active_expiry;
        let (engine, backend) = self.parts()?;
        let backend = backend.to_async();
        let driver =
            active_expiry.then(|| ExpiryDriver::spawn(engine.clone(), backend.clone(), &runtime));
        Ok(crate::AsyncLiveDict::from_parts(
            engine, backend, driver, runtime,
        ))
    }

    /// The engine and backend both front-ends are built from.
    fn parts(self) -> Result<(Arc<Engine>, Arc<dyn Backend>)> {
        let backend = self
            .backend
            .unwrap_or_else(|| Arc::new(MemoryBackend::new()));
        let engine = Arc::new(Engine::new(EngineConfig {
            backend_id: Arc::as_ptr(&backend).cast::<()>() as usize as u64,
            clock: self.clock,
            codec: self.codec,
            policy: TtlPolicy::new(self.default_ttl, self.sliding)?,
            max_value_size: self.max_value_size,
            events: self.events,
            keyring: self.keyring.map(|k| (k, self.encrypt_all)),
            access: self.access,
        }));
        Ok((engine, backend))
    }
}
