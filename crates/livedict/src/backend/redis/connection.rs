//! Connections to one Redis server or cluster, behind the [`Transport`] the operations use.
//!
//! Two transports carry the same operations (`ops.rs`):
//!
//! - [`Pool`], for the sync [`Backend`](crate::Backend): blocking connections, one per thread in
//!   use, reopened after a failure. Its futures are always ready (the blocking call is made when
//!   the future is created), and the sync methods poll them once with
//!   [`run_ready`](crate::dict::run_ready).
//! - `AsyncConnection` (feature `async`), for [`AsyncBackend`](crate::backend::AsyncBackend):
//!   redis-rs's multiplexed, reconnecting `ConnectionManager` for a server, its async cluster
//!   connection for a cluster.
//!
//! A command that fails is returned as [`Error::Backend`]: livedict does not retry a command
//! whose outcome it cannot know. The pool drops a connection after any failure but an error
//! reply (I/O, timeout, a reply that does not parse) and opens a fresh one for the next
//! operation; the async connections reconnect by themselves after a connection failure. Either
//! way the store works again as soon as the server does.

use std::fmt;
use std::future::{Future, ready};
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use async_lock::{Mutex as StripeMutex, MutexGuard as StripeGuard};
use parking_lot::Mutex;
use redis::{ConnectionLike, RedisError, RedisResult, Value};

use crate::error::{Error, Result};

/// Idle connections kept for reuse.
const MAX_IDLE: usize = 64;

/// How the operations reach Redis, and how they wait: a blocking or an async implementation.
///
/// Every future returned must be `Send` (the async backend's futures are), and those of a
/// blocking implementation must be ready at once (see [`run_ready`](crate::dict::run_ready)).
pub(super) trait Transport: Sync {
    /// Sends `cmd` and returns its reply.
    fn query<'a>(
        &'a self,
        cmd: &'a redis::Cmd,
    ) -> impl Future<Output = RedisResult<Value>> + Send + 'a;

    /// Sends `cmd` (a script that is loaded: it just ran) without awaiting it, from a `Drop`:
    /// at once on a blocking connection, on a task of the current runtime for an async one.
    /// Best effort: a failure is logged.
    fn send_detached(&self, cmd: redis::Cmd);

    /// Waits `pause` before retrying a command refused because its key is locked.
    fn sleep(&self, pause: Duration) -> impl Future<Output = ()> + Send;

    /// Takes one of the in-process mutexes serializing the updates of a key.
    fn lock<'a>(
        &self,
        stripe: &'a StripeMutex<()>,
    ) -> impl Future<Output = StripeGuard<'a, ()>> + Send + 'a;
}

/// What the backend connects to.
pub(super) enum Target {
    Server(redis::Client),
    Cluster(Box<redis::cluster::ClusterClient>),
}

impl Target {
    pub(super) fn is_cluster(&self) -> bool {
        matches!(self, Target::Cluster(_))
    }
}

enum Connection {
    Server(redis::Connection),
    Cluster(Box<redis::cluster::ClusterConnection>),
}

impl Connection {
    fn as_dyn(&mut self) -> &mut dyn ConnectionLike {
        match self {
            Connection::Server(c) => c,
            Connection::Cluster(c) => &mut **c,
        }
    }
}

/// A pool of blocking connections to one target: the transport of the sync backend.
pub(super) struct Pool {
    target: Target,
    timeout: Duration,
    idle: Mutex<Vec<Connection>>,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("cluster", &self.target.is_cluster())
            .field("idle", &self.idle.lock().len())
            .finish()
    }
}

impl Pool {
    pub(super) fn new(target: Target, timeout: Duration) -> Self {
        Pool {
            target,
            timeout,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// What the pool connects to.
    #[cfg(feature = "async")]
    pub(super) fn target(&self) -> &Target {
        &self.target
    }

    fn connect(&self) -> RedisResult<Connection> {
        match &self.target {
            Target::Server(client) => {
                let c = client.get_connection_with_timeout(self.timeout)?;
                c.set_read_timeout(Some(self.timeout))?;
                c.set_write_timeout(Some(self.timeout))?;
                Ok(Connection::Server(c))
            }
            Target::Cluster(client) => {
                let c = client.get_connection()?;
                c.set_read_timeout(Some(self.timeout))?;
                c.set_write_timeout(Some(self.timeout))?;
                Ok(Connection::Cluster(Box::new(c)))
            }
        }
    }

    /// Sends `cmd` on an idle connection (or a new one). A connection is reused after a reply,
    /// error replies included (the reply was read whole); after any other failure it is dropped.
    fn query_blocking(&self, cmd: &redis::Cmd) -> RedisResult<Value> {
        let pooled = self.idle.lock().pop();
        let mut conn = match pooled {
            Some(c) => c,
            None => self.connect()?,
        };
        let reply = cmd.query::<Value>(conn.as_dyn());
        match &reply {
            Err(e) if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() => {
                // The server went away or restarted: the idle connections are dead too.
                self.idle.lock().clear();
            }
            // An error the server replied with leaves the connection in step with it.
            Err(e) if !matches!(e.kind(), redis::ErrorKind::Server(_)) => {}
            _ => {
                let mut idle = self.idle.lock();
                if idle.len() < MAX_IDLE {
                    idle.push(conn);
                }
            }
        }
        reply
    }
}

impl Transport for Pool {
    fn query<'a>(
        &'a self,
        cmd: &'a redis::Cmd,
    ) -> impl Future<Output = RedisResult<Value>> + Send + 'a {
        ready(self.query_blocking(cmd))
    }

    fn send_detached(&self, cmd: redis::Cmd) {
        if let Err(e) = self.query_blocking(&cmd) {
            warn_detached(&e);
        }
    }

    fn sleep(&self, pause: Duration) -> impl Future<Output = ()> + Send {
        std::thread::sleep(pause);
        ready(())
    }

    fn lock<'a>(
        &self,
        stripe: &'a StripeMutex<()>,
    ) -> impl Future<Output = StripeGuard<'a, ()>> + Send + 'a {
        ready(stripe.lock_blocking())
    }
}

/// The async transport: a multiplexed connection shared by every task (feature `async`).
/// Cloning it clones a handle on the same connection.
#[cfg(feature = "async")]
#[derive(Clone)]
pub(super) enum AsyncConnection {
    /// One server: reconnects by itself after a failure.
    Server(redis::aio::ConnectionManager),
    /// A cluster: one multiplexed connection per node, reconnected by redis-rs.
    Cluster(redis::cluster_async::ClusterConnection),
}

#[cfg(feature = "async")]
impl fmt::Debug for AsyncConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AsyncConnection::Server(_) => "AsyncConnection::Server",
            AsyncConnection::Cluster(_) => "AsyncConnection::Cluster",
        })
    }
}

#[cfg(feature = "async")]
impl Target {
    /// Opens the async connection to the target, on the current tokio runtime. Every attempt
    /// to connect (this one, and those of the connection manager after a failure) is a single
    /// one bounded by `timeout`: a call that meets a dead server fails instead of waiting.
    pub(super) async fn connect_async(&self, timeout: Duration) -> Result<AsyncConnection> {
        match self {
            Target::Server(client) => {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(0);
                redis::aio::ConnectionManager::new_with_config(client.clone(), config)
                    .await
                    .map(AsyncConnection::Server)
                    .map_err(redis_error)
            }
            // The cluster client carries the connection and response timeouts.
            Target::Cluster(client) => client
                .get_async_connection()
                .await
                .map(AsyncConnection::Cluster)
                .map_err(redis_error),
        }
    }
}

#[cfg(feature = "async")]
impl Transport for AsyncConnection {
    async fn query<'a>(&'a self, cmd: &'a redis::Cmd) -> RedisResult<Value> {
        // Both are handles on a shared connection: cloning one is cheap.
        match self {
            AsyncConnection::Server(c) => cmd.query_async(&mut c.clone()).await,
            AsyncConnection::Cluster(c) => cmd.query_async(&mut c.clone()).await,
        }
    }

    fn send_detached(&self, cmd: redis::Cmd) {
        // Outside a runtime (it is shutting down) the lock expires with its lease.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let connection = self.clone();
            runtime.spawn(async move {
                if let Err(e) = connection.query(&cmd).await {
                    warn_detached(&e);
                }
            });
        }
    }

    async fn sleep(&self, pause: Duration) {
        tokio::time::sleep(pause).await;
    }

    fn lock<'a>(
        &self,
        stripe: &'a StripeMutex<()>,
    ) -> impl Future<Output = StripeGuard<'a, ()>> + Send + 'a {
        stripe.lock()
    }
}

fn warn_detached(e: &RedisError) {
    tracing::warn!(error = %e, "livedict: cannot release an update lock; it expires with its lease");
}

/// Every operation of the store, in one Lua source (`store.lua`), run either as a function of a
/// library (`FCALL`, Redis 7 and later) or as a script by its SHA1 (`EVALSHA`).
///
/// [`load`](Self::load) loads the library when the store is opened. A library stays compiled
/// between calls, where a script runs its whole chunk again on each call (defining every helper
/// function anew): `FCALL` takes about a microsecond less of the server's time per operation.
/// Where the server refuses `FUNCTION LOAD` (an older server, or an ACL user without it), the
/// store runs the script instead. The library's name carries the source's hash, so processes of
/// different livedict versions sharing a server each keep their own.
pub(super) struct StoreScript {
    /// The script form, and its SHA1.
    source: String,
    script: redis::Script,
    /// The library form, the name of its function (and of the library) for operations that may
    /// store more, and of the same function flagged `allow-oom` for the others (below).
    library: String,
    function: String,
    function_no_growth: String,
    /// Whether the library is in use (else the script is).
    functions: AtomicBool,
}

impl fmt::Debug for StoreScript {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreScript")
            .field("sha1", &self.script.get_hash())
            .field("function", &self.function)
            .field("functions", &self.functions.load(Relaxed))
            .finish()
    }
}

/// The source of the operations.
const STORE_LUA: &str = include_str!("store.lua");

impl StoreScript {
    fn new() -> Self {
        let source = format!("{STORE_LUA}\nreturn run(KEYS, ARGV)\n");
        let script = redis::Script::new(&source);
        let function = format!("livedict_{}", &script.get_hash()[..16]);
        let function_no_growth = format!("{function}_no_growth");
        let library = format!(
            "#!lua name={function}\n{STORE_LUA}\nredis.register_function('{function}', run)\n\
             redis.register_function{{function_name = '{function_no_growth}', callback = run, \
             flags = {{ 'allow-oom' }}}}\n"
        );
        StoreScript {
            source,
            script,
            library,
            function,
            function_no_growth,
            functions: AtomicBool::new(false),
        }
    }

    /// The operations for a store being opened through `io`: loads the library (`FUNCTION LOAD
    /// REPLACE`: the same source under the same name, so replacing it changes nothing), or
    /// settles for the script when the server refuses. A connection failure is an error.
    pub(super) async fn load<T: Transport>(io: &T) -> Result<Self> {
        let script = StoreScript::new();
        match script.load_library(io).await {
            Ok(()) => script.functions.store(true, Relaxed),
            Err(e) if refuses(&e, "function") => {
                tracing::debug!(error = %e, "livedict: no function library on this Redis server; running scripts");
            }
            // A full server refuses to load a library, not to run a script that only reads: this
            // store runs scripts until reopened.
            Err(e) if e.code() == Some("OOM") => {
                tracing::warn!(error = %e, "livedict: the Redis server's memory is full; running scripts");
            }
            // Anything else (a connection failure, a server loading or failing over) fails the
            // open rather than settling for scripts for the store's lifetime.
            Err(e) => return Err(redis_error(e)),
        }
        Ok(script)
    }

    async fn load_library<T: Transport>(&self, io: &T) -> RedisResult<()> {
        let mut load = redis::cmd("FUNCTION");
        load.arg("LOAD").arg("REPLACE").arg(&self.library);
        io.query(&load).await.map(drop)
    }

    /// Whether operations run as a library function (`FCALL`), else as a script (`EVALSHA`).
    fn uses_functions(&self) -> bool {
        self.functions.load(Relaxed)
    }

    /// `cmd` (an `FCALL`) as the `EVALSHA` of the same operation: the same keys and arguments.
    fn as_script(&self, cmd: &redis::Cmd) -> redis::Cmd {
        let mut script = redis::cmd("EVALSHA");
        script.arg(self.script.get_hash());
        for arg in cmd.args_iter().skip(2) {
            if let redis::Arg::Simple(bytes) = arg {
                script.arg(bytes);
            }
        }
        script
    }

    /// An `FCALL` (or `EVALSHA`) with `keys` (arguments are added by the caller), of an
    /// operation that may store more (`grows`) or not.
    ///
    /// Redis refuses to run a function without flags at all while its memory is full (with
    /// `maxmemory` and no eviction), reads and removals included, where a script is refused at
    /// its first write only. So operations that only read or remove (or refresh a field in place)
    /// call the same function registered with `allow-oom`, and stay available on a full server
    /// (they are how it is emptied); writes are refused there with `Error::Backend`.
    ///
    /// Sized up front for the keys and a dozen arguments of a few hundred bytes in all (a `set`
    /// with a small value): grown one argument at a time, the command reallocated its buffers
    /// about ten times, a sixth of a `set`'s instructions on the client.
    pub(super) fn command<K: AsRef<str>>(&self, keys: &[K], grows: bool) -> redis::Cmd {
        let key_bytes: usize = keys.iter().map(|k| k.as_ref().len()).sum();
        let mut cmd = redis::Cmd::with_capacity(keys.len() + 16, key_bytes + 320);
        if self.uses_functions() {
            let function = if grows {
                &self.function
            } else {
                &self.function_no_growth
            };
            cmd.arg("FCALL").arg(function);
        } else {
            cmd.arg("EVALSHA").arg(self.script.get_hash());
        }
        cmd.arg(keys.len());
        for k in keys {
            cmd.arg(k.as_ref());
        }
        cmd
    }

    /// Runs `cmd` (from [`command`](Self::command)) through `io`, loading the library or the
    /// script again first if the server has lost it (a restart, `FUNCTION FLUSH`, `SCRIPT
    /// FLUSH`): a "Function not found" or `NOSCRIPT` reply means nothing ran. In a cluster,
    /// `FUNCTION LOAD` and `SCRIPT LOAD` go to every master.
    ///
    /// A server that refuses `FCALL` (after a failover to an older server, or an ACL change)
    /// turns the store to scripts for good, and the call is made again as one.
    pub(super) async fn run<T: Transport>(&self, io: &T, cmd: &redis::Cmd) -> Result<Value> {
        match io.query(cmd).await {
            Err(e) if is_fcall(cmd) && is_function_not_found(&e) => {
                self.load_library(io).await.map_err(redis_error)?;
                io.query(cmd).await.map_err(redis_error)
            }
            Err(e) if is_fcall(cmd) && refuses(&e, "fcall") => {
                tracing::warn!(error = %e, "livedict: the Redis server refuses FCALL; running scripts");
                self.functions.store(false, Relaxed);
                Box::pin(self.run(io, &self.as_script(cmd))).await
            }
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                let mut load = redis::cmd("SCRIPT");
                load.arg("LOAD").arg(&self.source);
                io.query(&load).await.map_err(redis_error)?;
                io.query(cmd).await.map_err(redis_error)
            }
            other => other.map_err(redis_error),
        }
    }
}

/// A server's refusal of the command `name` (`function`, `fcall`) itself: unknown to it (before
/// Redis 7, or renamed away) or not permitted to this user. Nothing ran. (A refusal of a key or of
/// a command the function calls names those instead.)
fn refuses(e: &RedisError, name: &str) -> bool {
    let detail = e.detail().unwrap_or_default().to_ascii_lowercase();
    let names_it = detail.contains(&format!("'{name}")) || detail.contains(&format!("`{name}"));
    match e.code() {
        Some("NOPERM") => names_it,
        Some("ERR") => detail.starts_with("unknown command") && names_it,
        _ => false,
    }
}

/// Whether `cmd` is an `FCALL` (and not already a script).
fn is_fcall(cmd: &redis::Cmd) -> bool {
    matches!(cmd.args_iter().next(), Some(redis::Arg::Simple(name)) if name == b"FCALL")
}

/// The server's reply to an `FCALL` of a function it does not have.
fn is_function_not_found(e: &RedisError) -> bool {
    e.code() == Some("ERR")
        && e.detail()
            .is_some_and(|d| d.starts_with("Function not found"))
}

/// Maps a redis-rs error: the script's own `LIVEDICT` errors (an entry that does not decode) and
/// `WRONGTYPE` (a key of the store's that is not what livedict wrote) are [`Error::Format`];
/// everything else is [`Error::Backend`].
pub(super) fn redis_error(e: RedisError) -> Error {
    if e.code() == Some("LIVEDICT") || e.code() == Some("WRONGTYPE") {
        let detail = e.detail().unwrap_or_default();
        let detail = detail.split(" script: ").next().unwrap_or(detail);
        return Error::Format(format!("Redis: {} {detail}", e.code().unwrap_or_default()));
    }
    Error::Backend(Box::new(e))
}
