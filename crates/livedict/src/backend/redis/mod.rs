//! The Redis backend: one store shared by every process and host that opens the same server (or
//! cluster) with the same prefix.
//!
//! Every operation is one Lua script run atomically by the server (`store.lua`, loaded once and
//! called by its SHA1). Deadlines are judged by the server's clock (`TIME` inside the script), so
//! hosts with skewed clocks agree on what has expired. Each entry with a deadline also carries a
//! native Redis TTL a grace period after its deadline, so Redis removes it even if no livedict
//! process is running; while one runs, its expiry sweep removes the entry at the deadline,
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

mod connection;
mod layout;

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use redis::Value;

use self::connection::{Pool, StoreScript, Target, redis_error};
use self::layout::{FORMAT, Layout, prefix_pattern};
use super::{
    Backend, BatchOp, Change, Cleared, Condition, ExpiredEntry, Expiry, KeyTtl, KeyValue, ReadMode,
    Removed, ScanEntry, Updated, WriteExpiry, Written,
};
use crate::clock::{Millis, Now};
use crate::error::{Error, Result};

/// Entries removed (or examined) per script call by `clear`, `scan` and `remove_inactive`, so that
/// no single call holds the server for long.
const CHUNK: usize = 1000;
/// In-process stripes serializing the updates of one key, so that threads of one process queue
/// in memory instead of polling the Redis lock.
const UPDATE_STRIPES: usize = 256;

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

    /// How long after its deadline Redis removes an entry natively (default 10 s). A running
    /// store removes it at the deadline, with an `Expire` event; the native TTL is the safety net
    /// for when none runs, and such removals have no event.
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
    pool: Pool,
    script: StoreScript,
    layout: Layout,
    server_clock: bool,
    grace_ms: u64,
    lease: Duration,
    timeout: Duration,
    update_stripes: Box<[Mutex<()>]>,
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field("prefix", &self.layout.prefix())
            .field("buckets", &self.layout.buckets())
            .field("server_clock", &self.server_clock)
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

/// What a write script answered.
enum Outcome {
    Done {
        written: bool,
        previous: Option<Bytes>,
        expired: Option<Bytes>,
    },
    Locked,
    LeaseLost,
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
        Self::connect(Target::Cluster(client), options)
    }

    fn connect(target: Target, options: RedisOptions) -> Result<Self> {
        Layout::check_prefix(&options.prefix)?;
        if !(1..=16384).contains(&options.buckets) {
            return Err(Error::Backend(
                format!("Redis buckets must be 1 to 16384, not {}", options.buckets).into(),
            ));
        }
        let pool = Pool::new(target, options.timeout);
        let script = StoreScript::new();
        let meta = Layout::meta_key(&options.prefix);
        let mut cmd = script.command(&[&meta]);
        cmd.arg("open")
            .arg("")
            .arg(0)
            .arg(FORMAT)
            .arg(options.buckets);
        let reply = pool.with(|c| script.run(c, &cmd))?;
        let [format, buckets] =
            <[Value; 2]>::try_from(array(reply)?).map_err(|_| unexpected("open"))?;
        let format = text(format)?;
        if format.as_deref() != Some(FORMAT) {
            return Err(Error::Format(format!(
                "Redis key {meta:?} is not the metadata of a livedict store of format {FORMAT} \
                 (format {format:?}); nothing under prefix {:?} was changed",
                options.prefix
            )));
        }
        let buckets: u32 = text(buckets)?
            .and_then(|b| b.parse().ok())
            .filter(|b| (1..=16384).contains(b))
            .ok_or_else(|| Error::Format(format!("Redis key {meta:?}: invalid bucket count")))?;
        Ok(RedisBackend {
            pool,
            script,
            layout: Layout::new(&options.prefix, buckets),
            server_clock: options.server_clock,
            grace_ms: options.expiry_grace.as_millis() as u64,
            lease: options.lock_lease,
            timeout: options.timeout,
            update_stripes: (0..UPDATE_STRIPES).map(|_| Mutex::new(())).collect(),
        })
    }

    /// The prefix of the store's Redis keys.
    pub fn prefix(&self) -> &str {
        self.layout.prefix()
    }

    /// The number of buckets the store was created with.
    pub fn buckets(&self) -> usize {
        self.layout.buckets()
    }

    /// The Redis key holding the entry under `key` (a hash: field `v` is the value with its
    /// livedict header, `d` the deadline in ms since the epoch).
    pub fn redis_key(&self, key: &str) -> String {
        self.layout.data_key(self.layout.bucket(key), key)
    }

    /// An `EVALSHA` of operation `op` over `keys`; the operation's arguments follow.
    fn cmd<K: AsRef<str>>(&self, op: &str, now: Millis, keys: &[K]) -> redis::Cmd {
        let mut cmd = self.script.command(keys);
        cmd.arg(op);
        if self.server_clock {
            cmd.arg("");
        } else {
            cmd.arg(now);
        }
        cmd.arg(self.grace_ms);
        cmd
    }

    fn run(&self, cmd: &redis::Cmd) -> Result<Value> {
        self.pool.with(|c| self.script.run(c, cmd))
    }

    /// Runs one command per group of buckets: all at once against a single server, one bucket
    /// at a time against a cluster (each script must stay in one slot).
    fn bucket_groups(&self) -> Vec<&[String]> {
        let indexes = self.layout.indexes();
        if self.pool.is_cluster() {
            indexes.chunks(1).collect()
        } else {
            vec![indexes]
        }
    }

    /// Repeats `attempt` while the key is locked by an update of another thread or process.
    fn while_locked<T>(
        &self,
        key: &str,
        mut attempt: impl FnMut() -> Result<Option<T>>,
    ) -> Result<T> {
        let give_up = Instant::now() + self.lease + self.timeout;
        let mut pause = Duration::from_micros(50);
        loop {
            if let Some(done) = attempt()? {
                return Ok(done);
            }
            if Instant::now() >= give_up {
                return Err(Error::Backend(
                    format!("key {key:?} stayed locked by an update for longer than its lease")
                        .into(),
                ));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(5));
        }
    }

    /// The `batch` script over `ops[positions]`, with the lock token the batch holds (or "").
    fn batch_cmd(
        &self,
        ops: &[BatchOp],
        positions: &[usize],
        token: &str,
        now: Millis,
    ) -> redis::Cmd {
        let mut keys = Vec::with_capacity(positions.len() * 3);
        for &i in positions {
            let key = ops[i].key();
            let b = self.layout.bucket(key);
            keys.push(self.layout.data_key(b, key));
            keys.push(self.layout.index(b).to_owned());
            keys.push(self.layout.lock_key(b, key));
        }
        let mut cmd = self.cmd("batch", now, &keys);
        cmd.arg(token);
        for &i in positions {
            match &ops[i] {
                BatchOp::Set { key, value, expiry } => {
                    let (ttl, sliding) = expiry_args(expiry.expiry);
                    cmd.arg("s")
                        .arg(key.as_str())
                        .arg(&value[..])
                        .arg(ttl)
                        .arg(sliding)
                        .arg(u8::from(expiry.keep_existing));
                }
                BatchOp::Delete { key } => {
                    cmd.arg("d").arg(key.as_str()).arg("").arg(0).arg(0).arg(0);
                }
            }
        }
        cmd
    }

    /// Runs a `batch` script: `None` while another holds a lock on one of its keys.
    fn run_batch(&self, cmd: &redis::Cmd, n: usize) -> Result<Option<Vec<Removed>>> {
        let mut items = array(self.run(cmd)?)?.into_iter();
        if int(&items.next().ok_or_else(|| unexpected("batch"))?)? == -1 {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(n);
        while let Some(previous) = items.next() {
            out.push(Removed {
                previous: bytes(previous)?,
                expired: bytes(items.next().unwrap_or(Value::Nil))?,
            });
        }
        if out.len() != n {
            return Err(unexpected("batch"));
        }
        Ok(Some(out))
    }

    /// A batch over several buckets of a cluster, in two phases: lock every key, bucket by bucket
    /// in a fixed order (all of a bucket's keys or none, releasing everything and retrying when
    /// another holds one), then apply each bucket's writes and release its locks. Reads of a key
    /// locked by a batch wait for it, so none sees the batch half applied. A process that dies
    /// between two buckets' commits leaves the batch partly applied: the one case where a
    /// batch is not all-or-nothing (see the module documentation).
    fn apply_batch_across_slots(&self, ops: &[BatchOp], now: Millis) -> Result<Vec<Removed>> {
        let mut by_bucket: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
        for (i, op) in ops.iter().enumerate() {
            by_bucket
                .entry(self.layout.bucket(op.key()))
                .or_default()
                .push(i);
        }
        let token = format!("b:{:032x}", rand::random::<u128>());
        let lease_ms = self.lease.min(self.timeout * 2).as_millis() as u64;
        let lock_keys = |positions: &[usize]| -> Vec<String> {
            positions
                .iter()
                .map(|&i| {
                    let key = ops[i].key();
                    self.layout.lock_key(self.layout.bucket(key), key)
                })
                .collect()
        };
        let release = |taken: &[&Vec<usize>]| {
            for positions in taken {
                let mut cmd = self.cmd("release", now, &lock_keys(positions));
                cmd.arg(&token);
                if let Err(e) = self.run(&cmd) {
                    tracing::warn!(error = %e, "livedict: cannot release batch locks; they expire with their lease");
                }
            }
        };
        self.while_locked(ops[0].key(), || {
            let mut taken: Vec<&Vec<usize>> = Vec::new();
            for (&b, positions) in &by_bucket {
                let mut keys = Vec::with_capacity(positions.len() * 2);
                for &i in positions {
                    keys.push(self.layout.data_key(b, ops[i].key()));
                    keys.push(self.layout.lock_key(b, ops[i].key()));
                }
                let mut cmd = self.cmd("prepare", now, &keys);
                cmd.arg(&token).arg(lease_ms);
                match self.run(&cmd).and_then(|v| int(&v)) {
                    Ok(1) => taken.push(positions),
                    Ok(_) => {
                        release(&taken);
                        return Ok(None);
                    }
                    Err(e) => {
                        release(&taken);
                        return Err(e);
                    }
                }
            }
            Ok(Some(()))
        })?;
        let mut out = vec![Removed::default(); ops.len()];
        for positions in by_bucket.values() {
            let cmd = self.batch_cmd(ops, positions, &token, now);
            let removed = self
                .run_batch(&cmd, positions.len())?
                .ok_or_else(|| unexpected("batch"))?;
            for (&i, r) in positions.iter().zip(removed) {
                out[i] = r;
            }
        }
        Ok(out)
    }

    fn now_arg(&self, now: &Now<'_>) -> Millis {
        if self.server_clock { 0 } else { now.exact() }
    }

    fn single_keys(&self, key: &str) -> (usize, [String; 2]) {
        let b = self.layout.bucket(key);
        (
            b,
            [self.layout.data_key(b, key), self.layout.lock_key(b, key)],
        )
    }
}

fn expiry_args(expiry: Expiry) -> (Millis, u8) {
    match expiry {
        Expiry::Never => (0, 0),
        Expiry::After { ttl, sliding } => (ttl, u8::from(sliding)),
    }
}

fn unexpected(op: &str) -> Error {
    Error::Backend(format!("unexpected reply from Redis to the {op} script").into())
}

fn array(v: Value) -> Result<Vec<Value>> {
    match v {
        Value::Array(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        _ => Err(unexpected("livedict")),
    }
}

fn bytes(v: Value) -> Result<Option<Bytes>> {
    match v {
        Value::Nil => Ok(None),
        Value::BulkString(b) => Ok(Some(Bytes::from(b))),
        _ => Err(unexpected("livedict")),
    }
}

fn text(v: Value) -> Result<Option<String>> {
    bytes(v)?
        .map(|b| {
            String::from_utf8(b.to_vec())
                .map_err(|_| Error::Format("Redis: a key of the store is not UTF-8".into()))
        })
        .transpose()
}

fn int(v: &Value) -> Result<i64> {
    match v {
        Value::Int(n) => Ok(*n),
        _ => Err(unexpected("livedict")),
    }
}

fn number(v: Value) -> Result<u64> {
    text(v)?
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| unexpected("livedict"))
}

/// `{status, previous, expired}` of a write script.
fn outcome(v: Value) -> Result<Outcome> {
    let mut items = array(v)?.into_iter();
    let status = int(&items.next().ok_or_else(|| unexpected("write"))?)?;
    Ok(match status {
        -1 => Outcome::Locked,
        -2 => Outcome::LeaseLost,
        _ => Outcome::Done {
            written: status == 1,
            previous: bytes(items.next().unwrap_or(Value::Nil))?,
            expired: bytes(items.next().unwrap_or(Value::Nil))?,
        },
    })
}

fn done(o: Outcome) -> Option<Written> {
    match o {
        Outcome::Done {
            written,
            previous,
            expired,
        } => Some(Written {
            written,
            previous,
            expired,
        }),
        Outcome::Locked | Outcome::LeaseLost => None,
    }
}

/// The member, value and deadline triples of a sweep or clear.
fn expired_entries(items: impl Iterator<Item = Value>, out: &mut Vec<ExpiredEntry>) -> Result<()> {
    let mut items = items;
    while let Some(key) = items.next() {
        let key = text(key)?.ok_or_else(|| unexpected("sweep"))?;
        let value =
            bytes(items.next().unwrap_or(Value::Nil))?.ok_or_else(|| unexpected("sweep"))?;
        let deadline = number(items.next().unwrap_or(Value::Nil))?;
        out.push(ExpiredEntry {
            key: Arc::from(key),
            value,
            deadline,
        });
    }
    Ok(())
}

impl Backend for RedisBackend {
    fn get(&self, key: &str, now: &Now<'_>, mode: ReadMode) -> Result<Option<Bytes>> {
        let b = self.layout.bucket(key);
        let data = self.layout.data_key(b, key);
        let now = self.now_arg(now);
        let mut cmd = if self.pool.is_cluster() {
            let lock = self.layout.lock_key(b, key);
            self.cmd("get", now, &[data.as_str(), self.layout.index(b), &lock])
        } else {
            self.cmd("get", now, &[data.as_str(), self.layout.index(b)])
        };
        cmd.arg(key).arg(u8::from(mode == ReadMode::Touch));
        self.while_locked(key, || match self.run(&cmd)? {
            Value::Int(-1) => Ok(None),
            v => bytes(v).map(Some),
        })
    }

    fn get_many(&self, keys: &[&str], now: &Now<'_>, mode: ReadMode) -> Result<Vec<Option<Bytes>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let now = self.now_arg(now);
        let touch = u8::from(mode == ReadMode::Touch);
        // Positions of the keys, grouped by what one script call may touch.
        let groups: Vec<Vec<usize>> = if self.pool.is_cluster() {
            let mut by_bucket = vec![Vec::new(); self.layout.buckets()];
            for (i, k) in keys.iter().enumerate() {
                by_bucket[self.layout.bucket(k)].push(i);
            }
            // In the order of the keys' first appearance: a reader of x then y never sees y
            // older than x when a batch wrote both (batches commit and reads wait bucket by bucket).
            let mut groups: Vec<Vec<usize>> =
                by_bucket.into_iter().filter(|g| !g.is_empty()).collect();
            groups.sort_by_key(|g| g[0]);
            groups
        } else {
            vec![(0..keys.len()).collect()]
        };
        let cluster = self.pool.is_cluster();
        let mut out = vec![None; keys.len()];
        for group in groups {
            let mut script_keys = Vec::with_capacity(group.len() * 3);
            for &i in &group {
                let b = self.layout.bucket(keys[i]);
                script_keys.push(self.layout.data_key(b, keys[i]));
                script_keys.push(self.layout.index(b).to_owned());
                if cluster {
                    script_keys.push(self.layout.lock_key(b, keys[i]));
                }
            }
            let mut cmd = self.cmd("get_many", now, &script_keys);
            cmd.arg(touch).arg(if cluster { 3 } else { 2 });
            for &i in &group {
                cmd.arg(keys[i]);
            }
            let values = self.while_locked(keys[group[0]], || match self.run(&cmd)? {
                Value::Int(-1) => Ok(None),
                v => array(v).map(Some),
            })?;
            if values.len() != group.len() {
                return Err(unexpected("get_many"));
            }
            for (&i, v) in group.iter().zip(values) {
                out[i] = bytes(v)?;
            }
        }
        Ok(out)
    }

    fn set(
        &self,
        key: &str,
        value: Bytes,
        expiry: WriteExpiry,
        condition: Condition,
        now: Millis,
    ) -> Result<Written> {
        let b = self.layout.bucket(key);
        let data = self.layout.data_key(b, key);
        let lock = self.layout.lock_key(b, key);
        let (ttl, sliding) = expiry_args(expiry.expiry);
        let mut cmd = self.cmd("set", now, &[data.as_str(), self.layout.index(b), &lock]);
        cmd.arg(key)
            .arg(&value[..])
            .arg(match condition {
                Condition::Always => "a",
                Condition::IfAbsent => "nx",
                Condition::IfPresent => "xx",
            })
            .arg(ttl)
            .arg(sliding)
            .arg(u8::from(expiry.keep_existing));
        self.while_locked(key, || Ok(done(outcome(self.run(&cmd)?)?)))
    }

    fn delete(&self, key: &str, now: Millis) -> Result<Removed> {
        let b = self.layout.bucket(key);
        let data = self.layout.data_key(b, key);
        let lock = self.layout.lock_key(b, key);
        let mut cmd = self.cmd("delete", now, &[data.as_str(), self.layout.index(b), &lock]);
        cmd.arg(key);
        self.while_locked(key, || {
            Ok(done(outcome(self.run(&cmd)?)?).map(Removed::from))
        })
    }

    fn update(
        &self,
        key: &str,
        now: Millis,
        f: &mut dyn FnMut(Option<&Bytes>) -> Result<Change>,
    ) -> Result<Updated> {
        let stripe = foldhash::fast::FixedState::with_seed(0x6c64);
        let stripe = std::hash::BuildHasher::hash_one(&stripe, key) as usize % UPDATE_STRIPES;
        let _in_process = self.update_stripes[stripe].lock();

        let (b, [data, lock]) = self.single_keys(key);
        let token = format!("{:032x}", rand::random::<u128>());
        let lease_ms = self.lease.as_millis() as u64;
        let mut take = self.cmd("lock_read", now, &[&data, &lock]);
        take.arg(&token).arg(lease_ms);
        let current = self.while_locked(key, || {
            let mut items = array(self.run(&take)?)?.into_iter();
            match int(&items.next().ok_or_else(|| unexpected("lock_read"))?)? {
                -1 => Ok(None),
                _ => Ok(Some(bytes(items.next().unwrap_or(Value::Nil))?)),
            }
        })?;

        let change = match f(current.as_ref()) {
            Ok(change) => change,
            Err(e) => {
                let mut release = self.cmd("release", now, &[&lock]);
                release.arg(&token);
                if let Err(unlock_error) = self.run(&release) {
                    tracing::warn!(key, error = %unlock_error, "livedict: cannot release an update lock; it expires with its lease");
                }
                return Err(e);
            }
        };
        let mut commit = self.cmd("commit", now, &[data.as_str(), self.layout.index(b), &lock]);
        commit.arg(key).arg(&token);
        match &change {
            Change::Keep => {
                commit.arg("keep");
            }
            Change::Delete => {
                commit.arg("delete");
            }
            Change::Replace { value } => {
                commit.arg("replace").arg(&value[..]);
            }
            Change::Write { value, expiry } => {
                let (ttl, sliding) = expiry_args(expiry.expiry);
                commit
                    .arg("write")
                    .arg(&value[..])
                    .arg(ttl)
                    .arg(sliding)
                    .arg(u8::from(expiry.keep_existing));
            }
        }
        match outcome(self.run(&commit)?)? {
            Outcome::Done {
                previous, expired, ..
            } => Ok(Updated {
                previous: if matches!(change, Change::Write { .. } | Change::Delete) {
                    previous
                } else {
                    current
                },
                expired,
            }),
            Outcome::LeaseLost | Outcome::Locked => Err(Error::Backend(
                format!(
                    "the update of {key:?} held its lock longer than the {:?} lease; nothing was written",
                    self.lease
                )
                .into(),
            )),
        }
    }

    fn ttl(&self, key: &str, now: Millis) -> Result<KeyTtl> {
        let b = self.layout.bucket(key);
        let mut keys = vec![self.layout.data_key(b, key)];
        if self.pool.is_cluster() {
            keys.push(self.layout.lock_key(b, key));
        }
        let cmd = self.cmd("ttl", now, &keys);
        self.while_locked(key, || {
            Ok(match int(&self.run(&cmd)?)? {
                -3 => None,
                -2 => Some(KeyTtl::Missing),
                -1 => Some(KeyTtl::Never),
                ms => Some(KeyTtl::Remaining(Duration::from_millis(ms.max(0) as u64))),
            })
        })
    }

    fn set_expiry(&self, key: &str, expiry: Expiry, now: Millis) -> Result<bool> {
        let b = self.layout.bucket(key);
        let data = self.layout.data_key(b, key);
        let lock = self.layout.lock_key(b, key);
        let (ttl, sliding) = expiry_args(expiry);
        let mut cmd = self.cmd("expire", now, &[data.as_str(), self.layout.index(b), &lock]);
        cmd.arg(key).arg(ttl).arg(sliding);
        self.while_locked(key, || {
            Ok(match int(&self.run(&cmd)?)? {
                -1 => None,
                n => Some(n == 1),
            })
        })
    }

    fn scan(&self, prefix: &str, now: Millis, with_values: bool) -> Result<Vec<ScanEntry>> {
        let pattern = prefix_pattern(prefix);
        let mut out = Vec::new();
        for index in self.layout.indexes() {
            let mut seen = HashSet::new();
            let mut cursor = "0".to_owned();
            loop {
                let mut cmd = self.cmd("scan", now, &[index]);
                cmd.arg(&cursor)
                    .arg(&pattern)
                    .arg(u8::from(with_values))
                    .arg(CHUNK);
                let mut items = array(self.run(&cmd)?)?.into_iter();
                cursor =
                    text(items.next().unwrap_or(Value::Nil))?.ok_or_else(|| unexpected("scan"))?;
                while let Some(key) = items.next() {
                    let key = text(key)?.ok_or_else(|| unexpected("scan"))?;
                    let value = if with_values {
                        bytes(items.next().unwrap_or(Value::Nil))?
                    } else {
                        None
                    };
                    if key.starts_with(prefix) && seen.insert(key.clone()) {
                        out.push((key, value));
                    }
                }
                if cursor == "0" {
                    break;
                }
            }
        }
        Ok(out)
    }

    fn len(&self, now: Millis) -> Result<usize> {
        let mut n = 0;
        for group in self.bucket_groups() {
            n += int(&self.run(&self.cmd("len", now, group))?)? as usize;
        }
        Ok(n)
    }

    fn clear(&self, now: Millis) -> Result<Cleared> {
        let mut cleared = Cleared::default();
        for group in self.bucket_groups() {
            loop {
                let mut cmd = self.cmd("clear", now, group);
                cmd.arg(CHUNK);
                let mut items = array(self.run(&cmd)?)?.into_iter();
                let removed = int(&items.next().ok_or_else(|| unexpected("clear"))?)?;
                let more = int(&items.next().ok_or_else(|| unexpected("clear"))?)?;
                cleared.removed += removed as usize;
                expired_entries(items, &mut cleared.expired)?;
                if more == 0 {
                    break;
                }
            }
        }
        Ok(cleared)
    }

    fn pop_any(&self, now: Millis) -> Result<Option<KeyValue>> {
        for group in self.bucket_groups() {
            let mut items = array(self.run(&self.cmd("pop", now, group))?)?.into_iter();
            if let (Some(k), Some(v)) = (items.next(), items.next()) {
                let key = text(k)?.ok_or_else(|| unexpected("pop"))?;
                let value = bytes(v)?.ok_or_else(|| unexpected("pop"))?;
                return Ok(Some((key, value)));
            }
        }
        Ok(None)
    }

    fn apply_batch(&self, ops: Vec<BatchOp>, now: Millis) -> Result<Vec<Removed>> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let first_bucket = self.layout.bucket(ops[0].key());
        if self.pool.is_cluster()
            && ops
                .iter()
                .any(|op| self.layout.bucket(op.key()) != first_bucket)
        {
            return self.apply_batch_across_slots(&ops, now);
        }
        let positions: Vec<usize> = (0..ops.len()).collect();
        let cmd = self.batch_cmd(&ops, &positions, "", now);
        self.while_locked(ops[0].key(), || self.run_batch(&cmd, ops.len()))
    }

    fn sweep(&self, now: Millis, limit: usize, out: &mut Vec<ExpiredEntry>) -> Result<()> {
        let start = out.len();
        for group in self.bucket_groups() {
            let left = limit.saturating_sub(out.len() - start);
            if left == 0 {
                break;
            }
            let mut cmd = self.cmd("sweep", now, group);
            cmd.arg(left);
            expired_entries(array(self.run(&cmd)?)?.into_iter(), out)?;
        }
        Ok(())
    }

    fn next_deadline(&self) -> Result<Option<Millis>> {
        let mut next: Option<Millis> = None;
        for group in self.bucket_groups() {
            let reply = self.run(&self.cmd("next_deadline", 0, group))?;
            if let Some(d) = text(reply)? {
                let d: Millis = d.parse().map_err(|_| unexpected("next_deadline"))?;
                next = Some(next.map_or(d, |n| n.min(d)));
            }
        }
        Ok(next)
    }

    fn remove_inactive(&self, idle_since: Millis, now: Millis) -> Result<Vec<KeyValue>> {
        let idle = now.saturating_sub(idle_since);
        let mut out = Vec::new();
        for index in self.layout.indexes() {
            let mut cursor = "0".to_owned();
            loop {
                let mut cmd = self.cmd("remove_inactive", now, &[index]);
                cmd.arg(&cursor).arg(idle).arg(CHUNK);
                let mut items = array(self.run(&cmd)?)?.into_iter();
                cursor = text(items.next().unwrap_or(Value::Nil))?
                    .ok_or_else(|| unexpected("remove_inactive"))?;
                while let (Some(k), Some(v)) = (items.next(), items.next()) {
                    let key = text(k)?.ok_or_else(|| unexpected("remove_inactive"))?;
                    let value = bytes(v)?.ok_or_else(|| unexpected("remove_inactive"))?;
                    out.push((key, value));
                }
                if cursor == "0" {
                    break;
                }
            }
        }
        Ok(out)
    }

    fn is_shared(&self) -> bool {
        true
    }
}
