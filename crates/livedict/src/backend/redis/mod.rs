//! The Redis backend: one store shared by every process and host that opens the same server (or
//! cluster) with the same prefix.
//!
//! Every operation is one Lua script run atomically by the server (`store.lua`, loaded once and
//! called by its SHA1). Deadlines are judged by the server's clock (`TIME` inside the script), so
//! hosts with skewed clocks agree on what has expired. Each entry with a deadline also carries a
//! native Redis TTL ending one to one and a half grace periods after its deadline, so Redis
//! removes it even if no livedict process is running; while one runs, its expiry sweep removes the entry at the deadline,
//! through a per-bucket index sorted by deadline, and returns its last value — each expired entry
//! to exactly one process, since the removal is atomic.
//!
//! Keys are grouped into a fixed number of hash-tagged buckets (see `layout.rs`), so each script
//! touches one Redis Cluster slot and the store spreads over a cluster's masters. The store never
//! reads, counts, scans or deletes a key outside its prefix (no `KEYS`, no `SCAN` of the
//! keyspace: iteration walks the store's own indexes).
//!
//! Updates with a closure (`update`, `incr`, ...) take a per-key lock with a lease in Redis, read,
//! run the closure once in the process, and commit; plain writes of a locked key wait for it.
//!
//! A batch is one script against a single server. In a cluster, a batch within one bucket is one
//! script too; one spanning buckets (which Redis Cluster cannot change atomically) runs in two
//! phases: it locks all its keys, then commits bucket by bucket, and reads of its keys wait for
//! it, so no reader sees it half applied. The one gap: a process killed between two buckets'
//! commits leaves such a batch partly applied. Keys that must change together can share a hash
//! tag (`user:{42}:name`, `user:{42}:email`), which puts them in one bucket.
//!
//! One [`RedisBackend`] serves both front-ends: it is a [`Backend`] on blocking connections and,
//! with the `async` feature, an [`AsyncBackend`](super::AsyncBackend) on a multiplexed async
//! connection, with the same operations written once (`ops.rs`) over either transport
//! (`connection.rs`).

mod connection;
mod layout;
mod ops;

use std::fmt;
use std::time::Duration;

use bytes::Bytes;

use self::connection::{Pool, Target, redis_error};
use self::layout::Layout;
use self::ops::{Settings, Store};
use super::{
    Backend, BatchOp, Change, Cleared, Condition, ExpiredEntry, Expiry, KeyTtl, KeyValue, ReadMode,
    Removed, ScanEntry, Updated, WriteExpiry, Written,
};
use crate::clock::{Millis, Now};
use crate::dict::run_ready;
use crate::error::{Error, Result};

/// Settings of [`RedisBackend::open_with`] and [`RedisBackend::open_cluster_with`].
#[derive(Clone, Debug)]
#[must_use]
pub struct RedisOptions {
    prefix: String,
    buckets: u32,
    server_clock: bool,
    expiry_grace: Duration,
    lock_lease: Duration,
    timeout: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            prefix: "livedict".to_owned(),
            buckets: 16,
            server_clock: true,
            expiry_grace: Duration::from_secs(10),
            lock_lease: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
        }
    }
}

impl RedisOptions {
    /// The defaults: prefix `livedict`, 16 buckets, the server's clock, a 10 s expiry grace, a
    /// 30 s update lease, a 5 s network timeout.
    pub fn new() -> Self {
        Self::default()
    }

    /// The prefix of every Redis key of the store (default `livedict`). Stores with different
    /// prefixes on one server are independent. At most 128 bytes, no braces or whitespace.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The number of buckets of a store created by this open (default 16, 1 to 16384). An
    /// existing store keeps the number it was created with.
    pub fn buckets(mut self, buckets: u32) -> Self {
        self.buckets = buckets;
        self
    }

    /// Whether deadlines are judged by the Redis server's clock (the default: hosts with skewed
    /// clocks agree) or by the store's own [`Clock`](crate::Clock) (`false`: needed with a
    /// manual clock, as in tests).
    pub fn server_clock(mut self, server_clock: bool) -> Self {
        self.server_clock = server_clock;
        self
    }

    /// How long after its deadline, at least, Redis removes an entry natively (default 10 s; at
    /// most one and a half times as long, as a write keeps a native TTL that still ends within
    /// that range). A running store removes it at the deadline, with an `Expire` event; the native
    /// TTL is the safety net for when none runs, and such removals have no event. At most [`MAX_TTL`](crate::MAX_TTL)
    /// (opening fails with [`Error::Backend`] otherwise).
    pub fn expiry_grace(mut self, grace: Duration) -> Self {
        self.expiry_grace = grace;
        self
    }

    /// How long an update holds its key's lock at most (default 30 s): a process that dies
    /// mid-update blocks writers of that key for at most this long. An update whose closure runs
    /// longer fails with [`Error::Backend`] and changes nothing.
    pub fn lock_lease(mut self, lease: Duration) -> Self {
        self.lock_lease = lease;
        self
    }

    /// The connect, read and write timeout of every command (default 5 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// The Redis backend (feature `redis`).
///
/// It implements [`Backend`] on a pool of blocking connections and, with the `async` feature,
/// [`AsyncBackend`](crate::backend::AsyncBackend) with native async I/O: one multiplexed
/// connection (a reconnecting `ConnectionManager` for a server, redis-rs's async cluster
/// connection for a cluster) shared by every task. The async connection is made on the first
/// async call, on that call's tokio runtime, which must outlive the connection's use; the same
/// value can be used from sync and async code alike.
///
/// On Redis 7 and later the operations run as a function library, `livedict_<hash>` (loaded when
/// a store opens, one per livedict version); a server or user that refuses `FUNCTION` and
/// `FCALL` gets the same code as a script (`EVALSHA`). While the server's memory is full
/// (`maxmemory` without eviction), reads, deletes and `clear` still work and writes fail with
/// [`Error::Backend`].
///
/// Upgrading: this version writes store format 3 (an entry is one string) and marks a store of
/// format 1 or 2 (an entry was a hash) as format 3 when it opens it. Their entries are still
/// read, and each becomes a string when next written. Processes of an older livedict refuse to
/// open a format-3 store, and those that opened it before fail with [`Error::Backend`] on the
/// entries newer processes wrote (before writing anything), so stop them before starting newer
/// ones.
///
/// # Examples
///
/// ```no_run
/// use livedict::{LiveDict, RedisBackend, RedisOptions};
///
/// let backend = RedisBackend::open_with(
///     "redis://127.0.0.1:6379",
///     RedisOptions::new().prefix("myapp"),
/// )?;
/// let store = LiveDict::builder().backend(backend).build()?;
/// store.set("greeting", &"hello")?;
/// # Ok::<(), livedict::Error>(())
/// ```
pub struct RedisBackend {
    store: Store,
    pool: Pool,
    #[cfg(feature = "async")]
    async_connection: tokio::sync::OnceCell<connection::AsyncConnection>,
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("RedisBackend");
        d.field("prefix", &self.store.layout.prefix())
            .field("buckets", &self.store.layout.buckets())
            .field("server_clock", &self.store.server_clock)
            .field("pool", &self.pool);
        #[cfg(feature = "async")]
        d.field("async_connection", &self.async_connection.get());
        d.finish_non_exhaustive()
    }
}

impl RedisBackend {
    /// Opens (creating if needed) the store with the default options on the server at `url`
    /// (`redis://[user:password@]host:port[/db]`).
    ///
    /// # Errors
    /// [`Error::Backend`] if the server cannot be reached; [`Error::Format`] if the prefix holds
    /// something that is not a livedict store of this format.
    pub fn open(url: &str) -> Result<Self> {
        Self::open_with(url, RedisOptions::default())
    }

    /// Opens (creating if needed) a store on the server at `url`.
    ///
    /// # Errors
    /// As [`open`](Self::open).
    pub fn open_with(url: &str, options: RedisOptions) -> Result<Self> {
        let client = redis::Client::open(url).map_err(redis_error)?;
        Self::connect(Target::Server(client), options)
    }

    /// Opens (creating if needed) the store with the default options on the Redis Cluster
    /// reachable through `urls` (some or all of its nodes).
    ///
    /// # Errors
    /// As [`open`](Self::open).
    pub fn open_cluster<S: AsRef<str>>(urls: impl IntoIterator<Item = S>) -> Result<Self> {
        Self::open_cluster_with(urls, RedisOptions::default())
    }

    /// Opens (creating if needed) a store on the Redis Cluster reachable through `urls`.
    ///
    /// # Errors
    /// As [`open`](Self::open).
    pub fn open_cluster_with<S: AsRef<str>>(
        urls: impl IntoIterator<Item = S>,
        options: RedisOptions,
    ) -> Result<Self> {
        let urls: Vec<String> = urls.into_iter().map(|u| u.as_ref().to_owned()).collect();
        let client = redis::cluster::ClusterClient::builder(urls)
            .connection_timeout(options.timeout)
            .response_timeout(options.timeout)
            .build()
            .map_err(redis_error)?;
        Self::connect(Target::Cluster(Box::new(client)), options)
    }

    fn connect(target: Target, options: RedisOptions) -> Result<Self> {
        Layout::check_prefix(&options.prefix)?;
        if !(1..=16384).contains(&options.buckets) {
            return Err(Error::Backend(
                format!("Redis buckets must be 1 to 16384, not {}", options.buckets).into(),
            ));
        }
        let settings = Settings {
            cluster: target.is_cluster(),
            server_clock: options.server_clock,
            expiry_grace: options.expiry_grace,
            lease: options.lock_lease,
            timeout: options.timeout,
        };
        let pool = Pool::new(target, options.timeout);
        let store = run_ready(Store::open(
            &pool,
            &options.prefix,
            options.buckets,
            settings,
        ))?;
        Ok(RedisBackend {
            store,
            pool,
            #[cfg(feature = "async")]
            async_connection: tokio::sync::OnceCell::new(),
        })
    }

    /// The prefix of the store's Redis keys.
    pub fn prefix(&self) -> &str {
        self.store.layout.prefix()
    }

    /// The number of buckets the store was created with.
    pub fn buckets(&self) -> usize {
        self.store.layout.buckets()
    }

    /// The Redis key holding the entry under `key`: a string, a 33-byte head (`L`, then the
    /// deadline, the sliding TTL, the last access and the native expiry, in ms, as big-endian
    /// doubles) and then the value with its livedict header.
    pub fn redis_key(&self, key: &str) -> String {
        let layout = &self.store.layout;
        layout.data_key(layout.bucket(key), key)
    }

    /// The operations on the blocking connections (their futures are ready at once).
    fn blocking(&self) -> ops::Ops<'_, Pool> {
        self.store.with(&self.pool)
    }

    /// The operations on the async connection, made by the first call.
    #[cfg(feature = "async")]
    async fn nonblocking(&self) -> Result<ops::Ops<'_, connection::AsyncConnection>> {
        let io = self
            .async_connection
            .get_or_try_init(|| self.pool.target().connect_async(self.store.timeout))
            .await?;
        Ok(self.store.with(io))
    }
}

impl Backend for RedisBackend {
    fn get(&self, key: &str, now: &Now<'_>, mode: ReadMode) -> Result<Option<Bytes>> {
        run_ready(self.blocking().get(key, self.store.now_arg(now), mode))
    }

    fn get_many(&self, keys: &[&str], now: &Now<'_>, mode: ReadMode) -> Result<Vec<Option<Bytes>>> {
        run_ready(
            self.blocking()
                .get_many(keys, self.store.now_arg(now), mode),
        )
    }

    fn set(
        &self,
        key: &str,
        value: Bytes,
        expiry: WriteExpiry,
        condition: Condition,
        now: Millis,
    ) -> Result<Written> {
        run_ready(self.blocking().set(key, &value, expiry, condition, now))
    }

    fn delete(&self, key: &str, now: Millis) -> Result<Removed> {
        run_ready(self.blocking().delete(key, now))
    }

    fn update(
        &self,
        key: &str,
        now: Millis,
        f: &mut dyn FnMut(Option<&Bytes>) -> Result<Change>,
    ) -> Result<Updated> {
        run_ready(self.blocking().update(key, now, f))
    }

    fn ttl(&self, key: &str, now: Millis) -> Result<KeyTtl> {
        run_ready(self.blocking().ttl(key, now))
    }

    fn set_expiry(&self, key: &str, expiry: Expiry, now: Millis) -> Result<bool> {
        run_ready(self.blocking().set_expiry(key, expiry, now))
    }

    fn scan(&self, prefix: &str, now: Millis, with_values: bool) -> Result<Vec<ScanEntry>> {
        run_ready(self.blocking().scan(prefix, now, with_values))
    }

    fn len(&self, now: Millis) -> Result<usize> {
        run_ready(self.blocking().len(now))
    }

    fn clear(&self, now: Millis) -> Result<Cleared> {
        run_ready(self.blocking().clear(now))
    }

    fn pop_any(&self, now: Millis) -> Result<Option<KeyValue>> {
        run_ready(self.blocking().pop_any(now))
    }

    fn apply_batch(&self, ops: Vec<BatchOp>, now: Millis) -> Result<Vec<Removed>> {
        run_ready(self.blocking().apply_batch(&ops, now))
    }

    fn sweep(&self, now: Millis, limit: usize, out: &mut Vec<ExpiredEntry>) -> Result<bool> {
        run_ready(self.blocking().sweep(now, limit, out))
    }

    fn next_deadline(&self) -> Result<Option<Millis>> {
        run_ready(self.blocking().next_deadline())
    }

    fn remove_inactive(
        &self,
        prefix: &str,
        idle_since: Millis,
        now: Millis,
    ) -> Result<Vec<KeyValue>> {
        run_ready(self.blocking().remove_inactive(prefix, idle_since, now))
    }

    fn try_lock(&self, name: &str, owner: &str, lease: Millis, now: Millis) -> Result<Option<u64>> {
        run_ready(self.blocking().try_lock(name, owner, lease, now))
    }

    fn unlock(&self, name: &str, owner: &str, now: Millis) -> Result<bool> {
        run_ready(self.blocking().unlock(name, owner, now))
    }

    fn is_shared(&self) -> bool {
        true
    }

    #[cfg(feature = "async")]
    fn to_async(self: std::sync::Arc<Self>) -> std::sync::Arc<dyn super::AsyncBackend> {
        self // native async I/O
    }
}

#[cfg(feature = "async")]
#[cfg_attr(docsrs, doc(cfg(feature = "async")))]
impl super::AsyncBackend for RedisBackend {
    fn get<'a>(
        &'a self,
        key: &'a str,
        now: &'a Now<'a>,
        mode: ReadMode,
    ) -> super::BoxFuture<'a, Result<Option<Bytes>>> {
        let now = self.store.now_arg(now);
        Box::pin(async move { self.nonblocking().await?.get(key, now, mode).await })
    }

    fn get_many<'a>(
        &'a self,
        keys: &'a [&'a str],
        now: &'a Now<'a>,
        mode: ReadMode,
    ) -> super::BoxFuture<'a, Result<Vec<Option<Bytes>>>> {
        let now = self.store.now_arg(now);
        Box::pin(async move { self.nonblocking().await?.get_many(keys, now, mode).await })
    }

    fn contains<'a>(
        &'a self,
        key: &'a str,
        now: &'a Now<'a>,
    ) -> super::BoxFuture<'a, Result<bool>> {
        let now = self.store.now_arg(now);
        Box::pin(async move {
            let value = self
                .nonblocking()
                .await?
                .get(key, now, ReadMode::Peek)
                .await?;
            Ok(value.is_some())
        })
    }

    fn set<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        expiry: WriteExpiry,
        condition: Condition,
        now: Millis,
    ) -> super::BoxFuture<'a, Result<Written>> {
        Box::pin(async move {
            let ops = self.nonblocking().await?;
            ops.set(key, &value, expiry, condition, now).await
        })
    }

    fn delete<'a>(&'a self, key: &'a str, now: Millis) -> super::BoxFuture<'a, Result<Removed>> {
        Box::pin(async move { self.nonblocking().await?.delete(key, now).await })
    }

    fn update<'a>(
        &'a self,
        key: &'a str,
        now: Millis,
        f: &'a mut super::UpdateFn<'a>,
    ) -> super::BoxFuture<'a, Result<Updated>> {
        Box::pin(async move { self.nonblocking().await?.update(key, now, f).await })
    }

    fn ttl<'a>(&'a self, key: &'a str, now: Millis) -> super::BoxFuture<'a, Result<KeyTtl>> {
        Box::pin(async move { self.nonblocking().await?.ttl(key, now).await })
    }

    fn set_expiry<'a>(
        &'a self,
        key: &'a str,
        expiry: Expiry,
        now: Millis,
    ) -> super::BoxFuture<'a, Result<bool>> {
        Box::pin(async move { self.nonblocking().await?.set_expiry(key, expiry, now).await })
    }

    fn scan<'a>(
        &'a self,
        prefix: &'a str,
        now: Millis,
        with_values: bool,
    ) -> super::BoxFuture<'a, Result<Vec<ScanEntry>>> {
        Box::pin(async move {
            let ops = self.nonblocking().await?;
            ops.scan(prefix, now, with_values).await
        })
    }

    fn len(&self, now: Millis) -> super::BoxFuture<'_, Result<usize>> {
        Box::pin(async move { self.nonblocking().await?.len(now).await })
    }

    fn clear(&self, now: Millis) -> super::BoxFuture<'_, Result<Cleared>> {
        Box::pin(async move { self.nonblocking().await?.clear(now).await })
    }

    fn pop_any(&self, now: Millis) -> super::BoxFuture<'_, Result<Option<KeyValue>>> {
        Box::pin(async move { self.nonblocking().await?.pop_any(now).await })
    }

    fn apply_batch(
        &self,
        ops: Vec<BatchOp>,
        now: Millis,
    ) -> super::BoxFuture<'_, Result<Vec<Removed>>> {
        Box::pin(async move { self.nonblocking().await?.apply_batch(&ops, now).await })
    }

    fn sweep<'a>(
        &'a self,
        now: Millis,
        limit: usize,
        out: &'a mut Vec<ExpiredEntry>,
    ) -> super::BoxFuture<'a, Result<bool>> {
        Box::pin(async move { self.nonblocking().await?.sweep(now, limit, out).await })
    }

    fn next_deadline(&self) -> super::BoxFuture<'_, Result<Option<Millis>>> {
        Box::pin(async move { self.nonblocking().await?.next_deadline().await })
    }

    fn remove_inactive<'a>(
        &'a self,
        prefix: &'a str,
        idle_since: Millis,
        now: Millis,
    ) -> super::BoxFuture<'a, Result<Vec<KeyValue>>> {
        Box::pin(async move {
            let ops = self.nonblocking().await?;
            ops.remove_inactive(prefix, idle_since, now).await
        })
    }

    fn try_lock<'a>(
        &'a self,
        name: &'a str,
        owner: &'a str,
        lease: Millis,
        now: Millis,
    ) -> super::BoxFuture<'a, Result<Option<u64>>> {
        Box::pin(async move {
            let ops = self.nonblocking().await?;
            ops.try_lock(name, owner, lease, now).await
        })
    }

    fn unlock<'a>(
        &'a self,
        name: &'a str,
        owner: &'a str,
        now: Millis,
    ) -> super::BoxFuture<'a, Result<bool>> {
        Box::pin(async move { self.nonblocking().await?.unlock(name, owner, now).await })
    }

    fn is_shared(&self) -> bool {
        true
    }
}
