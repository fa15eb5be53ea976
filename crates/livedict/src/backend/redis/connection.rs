//! Connections to one Redis server or cluster: a pool of blocking connections, one per thread
//! in use, reopened after a failure.
//!
//! A connection that fails in any way is dropped, never reused, and the failure is returned as
//! [`Error::Backend`]: livedict does not retry a command whose outcome it cannot know. The next
//! operation opens a fresh connection, so the store works again as soon as the server does.

use std::fmt;
use std::time::Duration;

use parking_lot::Mutex;
use redis::{ConnectionLike, RedisError, Value};

use crate::error::{Error, Result};

/// Idle connections kept for reuse.
const MAX_IDLE: usize = 64;

/// What the backend connects to.
pub(super) enum Target {
    Server(redis::Client),
    Cluster(redis::cluster::ClusterClient),
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

/// A pool of connections to one target.
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

    pub(super) fn is_cluster(&self) -> bool {
        self.target.is_cluster()
    }

    fn connect(&self) -> Result<Connection> {
        match &self.target {
            Target::Server(client) => {
                let c = client
                    .get_connection_with_timeout(self.timeout)
                    .map_err(redis_error)?;
                c.set_read_timeout(Some(self.timeout))
                    .map_err(redis_error)?;
                c.set_write_timeout(Some(self.timeout))
                    .map_err(redis_error)?;
                Ok(Connection::Server(c))
            }
            Target::Cluster(client) => {
                let c = client.get_connection().map_err(redis_error)?;
                c.set_read_timeout(Some(self.timeout))
                    .map_err(redis_error)?;
                c.set_write_timeout(Some(self.timeout))
                    .map_err(redis_error)?;
                Ok(Connection::Cluster(Box::new(c)))
            }
        }
    }

    /// Runs `f` on a connection; a connection on which anything failed is dropped.
    pub(super) fn with<T>(
        &self,
        f: impl FnOnce(&mut dyn ConnectionLike) -> redis::RedisResult<T>,
    ) -> Result<T> {
        let pooled = self.idle.lock().pop();
        let mut conn = match pooled {
            Some(c) => c,
            None => self.connect()?,
        };
        match f(conn.as_dyn()) {
            Ok(v) => {
                let mut idle = self.idle.lock();
                if idle.len() < MAX_IDLE {
                    idle.push(conn);
                }
                Ok(v)
            }
            Err(e) => {
                if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
                    // The server went away or restarted: the idle connections are dead too.
                    self.idle.lock().clear();
                }
                Err(redis_error(e))
            }
        }
    }
}

/// The script of every operation, loaded once per server and run by its SHA1.
pub(super) struct StoreScript {
    script: redis::Script,
}

impl fmt::Debug for StoreScript {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreScript")
            .field("sha1", &self.script.get_hash())
            .finish()
    }
}

impl StoreScript {
    pub(super) fn new() -> Self {
        StoreScript {
            script: redis::Script::new(include_str!("store.lua")),
        }
    }

    /// An `EVALSHA` of the script with `keys` (arguments are added by the caller).
    pub(super) fn command<K: AsRef<str>>(&self, keys: &[K]) -> redis::Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.script.get_hash()).arg(keys.len());
        for k in keys {
            cmd.arg(k.as_ref());
        }
        cmd
    }

    /// Runs `cmd` (from [`command`](Self::command)), loading the script first if the server has
    /// lost it (a restart, `SCRIPT FLUSH`). A `NOSCRIPT` reply means nothing ran.
    pub(super) fn run(
        &self,
        conn: &mut dyn ConnectionLike,
        cmd: &redis::Cmd,
    ) -> redis::RedisResult<Value> {
        match cmd.query::<Value>(conn) {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                self.script.load(conn)?;
                cmd.query(conn)
            }
            other => other,
        }
    }
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
