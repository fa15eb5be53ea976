//! Every operation of the Redis backend, written once for both front-ends.
//!
//! The operations are `async fn`s of [`Ops`], generic over the [`Transport`] that carries their
//! commands, waits between retries and takes the in-process update locks. The sync
//! [`Backend`](crate::Backend) runs them on the blocking [`Pool`](super::connection::Pool), whose
//! futures are ready at once, and polls each operation once
//! ([`run_ready`](crate::dict::run_ready)); the
//! [`AsyncBackend`](crate::backend::AsyncBackend) awaits them on the async connection.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_lock::Mutex as StripeMutex;
use bytes::Bytes;
use redis::Value;

use super::connection::{StoreScript, Transport};
use super::layout::{FORMAT, Layout, prefix_pattern};
use crate::backend::{
    BatchOp, Change, Cleared, Condition, ExpiredEntry, Expiry, KeyTtl, KeyValue, ReadMode, Removed,
    ScanEntry, Updated, WriteExpiry, Written,
};
use crate::clock::{Millis, Now};
use crate::error::{Error, Result};

/// Entries removed (or examined) per script call by `clear`, `scan`, `remove_inactive` and `len`,
/// so that no single call holds the server for long.
const CHUNK: usize = 1000;
/// Members with passed scores `pop_any` looks at per script call (see `pop` in store.lua).
const POP_WINDOW: usize = 64;
/// In-process stripes serializing the updates of one key, so that threads (and tasks) of one
/// process queue in memory instead of polling the Redis lock.
const UPDATE_STRIPES: usize = 256;

/// What the operations need of an open store, whichever transport carries them.
pub(super) struct Store {
    pub(super) script: StoreScript,
    pub(super) layout: Layout,
    pub(super) cluster: bool,
    pub(super) server_clock: bool,
    pub(super) grace_ms: u64,
    pub(super) lease: Duration,
    pub(super) timeout: Duration,
    /// Async mutexes, never held blocked across an `.await`: the sync side takes them with
    /// `lock_blocking`, the async side with `lock().await`.
    update_stripes: Box<[StripeMutex<()>]>,
}

/// The settings a [`Store`] is made of (besides its layout, read from the server).
pub(super) struct Settings {
    pub(super) cluster: bool,
    pub(super) server_clock: bool,
    pub(super) expiry_grace: Duration,
    pub(super) lease: Duration,
    pub(super) timeout: Duration,
}

impl Store {
    /// Opens (creating if needed) the store under `prefix` through `io`: checks its metadata and
    /// reads its bucket count (`buckets` for a new one).
    pub(super) async fn open<T: Transport>(
        io: &T,
        prefix: &str,
        buckets: u32,
        settings: Settings,
    ) -> Result<Store> {
        if settings.expiry_grace > crate::MAX_TTL {
            return Err(Error::Backend(
                "a Redis expiry grace longer than livedict::MAX_TTL".into(),
            ));
        }
        let script = StoreScript::load(io).await?;
        let meta = Layout::meta_key(prefix);
        let mut cmd = script.command(&[&meta], may_grow("open"));
        cmd.arg("open").arg("").arg(0).arg(FORMAT).arg(buckets);
        let reply = script.run(io, &cmd).await?;
        let [format, buckets] =
            <[Value; 2]>::try_from(array(reply)?).map_err(|_| unexpected("open"))?;
        let format = text(format)?;
        if format.as_deref() != Some(FORMAT) {
            return Err(Error::Format(format!(
                "Redis key {meta:?} is not the metadata of a livedict store of format {FORMAT} \
                 (format {format:?}); nothing under prefix {prefix:?} was changed"
            )));
        }
        let buckets: u32 = text(buckets)?
            .and_then(|b| b.parse().ok())
            .filter(|b| (1..=16384).contains(b))
            .ok_or_else(|| Error::Format(format!("Redis key {meta:?}: invalid bucket count")))?;
        Ok(Store {
            script,
            layout: Layout::new(prefix, buckets),
            cluster: settings.cluster,
            server_clock: settings.server_clock,
            grace_ms: settings.expiry_grace.as_millis() as u64,
            lease: settings.lease,
            timeout: settings.timeout,
            update_stripes: (0..UPDATE_STRIPES).map(|_| StripeMutex::new(())).collect(),
        })
    }

    /// The time to send: 0 (unused) when the server's clock judges deadlines.
    pub(super) fn now_arg(&self, now: &Now<'_>) -> Millis {
        if self.server_clock { 0 } else { now.exact() }
    }

    /// The operations, carried by `io`.
    pub(super) fn with<'a, T: Transport>(&'a self, io: &'a T) -> Ops<'a, T> {
        Ops { store: self, io }
    }
}

/// The operations of one [`Store`] through one [`Transport`].
pub(super) struct Ops<'a, T> {
    store: &'a Store,
    io: &'a T,
}

/// Whether operation `op` of store.lua may store more than it removes: those are refused while
/// the server's memory is full, the others (reads, removals, a field refreshed in place, lock
/// releases, and `open`, which writes a few bytes of metadata for a new store only) still run
/// (see [`StoreScript::command`]). Updates that delete and batches of deletes are refused too:
/// they may write.
fn may_grow(op: &str) -> bool {
    matches!(
        op,
        "set" | "batch" | "commit" | "lock_read" | "prepare" | "expire" | "try_lock"
    )
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

/// The waits between the attempts of a command refused because its key is locked: growing
/// pauses, until the lock's lease (and a timeout) has surely passed.
struct Backoff {
    /// `None`: a lease and timeout too long to add to the clock, so no end.
    give_up: Option<Instant>,
    pause: Duration,
}

impl Backoff {
    fn new(store: &Store) -> Self {
        Backoff {
            give_up: Instant::now().checked_add(store.lease.saturating_add(store.timeout)),
            pause: Duration::from_micros(50),
        }
    }

    /// Waits before the next attempt, or fails when `key` has been locked for too long.
    async fn pause<T: Transport>(&mut self, io: &T, key: &str) -> Result<()> {
        if self.give_up.is_some_and(|at| Instant::now() >= at) {
            return Err(Error::Backend(
                format!("key {key:?} stayed locked by an update for longer than its lease").into(),
            ));
        }
        io.sleep(self.pause).await;
        self.pause = (self.pause * 2).min(Duration::from_millis(5));
        Ok(())
    }
}

/// An update's lock in Redis, released if the update is abandoned while it may hold it: when
/// an async caller drops (cancels) the update, or when the closure panics. Otherwise writers of
/// the key would wait for the lock's lease to run out.
struct HeldLock<'a, T: Transport> {
    io: &'a T,
    /// The `release` script for the lock, while held.
    release: Option<redis::Cmd>,
}

impl<T: Transport> HeldLock<'_, T> {
    /// The `release` command, to run now or drop (the lock was released by a commit).
    fn disarm(mut self) -> redis::Cmd {
        self.release.take().expect("a held lock has its release")
    }
}

impl<T: Transport> Drop for HeldLock<'_, T> {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            self.io.send_detached(release);
        }
    }
}

impl<T: Transport> Ops<'_, T> {
    /// An `FCALL` (or `EVALSHA`) of operation `op` over `keys`; the operation's arguments follow.
    fn cmd<K: AsRef<str>>(&self, op: &str, now: Millis, keys: &[K]) -> redis::Cmd {
        self.cmd_at(op, (!self.store.server_clock).then_some(now), keys)
    }

    /// [`cmd`](Self::cmd) judged at `time` (ms since the epoch) whichever clock the store
    /// follows, or by the server's clock (`TIME`) if `None`.
    fn cmd_at<K: AsRef<str>>(&self, op: &str, time: Option<Millis>, keys: &[K]) -> redis::Cmd {
        let mut cmd = self.store.script.command(keys, may_grow(op));
        cmd.arg(op);
        match time {
            Some(t) => cmd.arg(t),
            None => cmd.arg(""),
        };
        cmd.arg(self.store.grace_ms);
        cmd
    }

    async fn run(&self, cmd: &redis::Cmd) -> Result<Value> {
        self.store.script.run(self.io, cmd).await
    }

    /// The groups of bucket indexes one script call may cover: all at once against a single
    /// server, one bucket at a time against a cluster (each script must stay in one slot).
    fn bucket_groups(&self) -> Vec<&[String]> {
        let indexes = self.store.layout.indexes();
        if self.store.cluster {
            indexes.chunks(1).collect()
        } else {
            vec![indexes]
        }
    }

    /// Runs `cmd` again while `parse` finds its reply refused (`None`) because `key` is locked by
    /// an update or batch of another thread or process.
    async fn while_locked<R>(
        &self,
        key: &str,
        cmd: &redis::Cmd,
        mut parse: impl FnMut(Value) -> Result<Option<R>>,
    ) -> Result<R> {
        let mut backoff = Backoff::new(self.store);
        loop {
            if let Some(done) = parse(self.run(cmd).await?)? {
                return Ok(done);
            }
            backoff.pause(self.io, key).await?;
        }
    }

    pub(super) async fn get(
        &self,
        key: &str,
        now: Millis,
        mode: ReadMode,
    ) -> Result<Option<Bytes>> {
        let layout = &self.store.layout;
        let b = layout.bucket(key);
        let data = layout.data_key(b, key);
        let mut cmd = if self.store.cluster {
            let lock = layout.lock_key(b, key);
            self.cmd("get", now, &[data.as_str(), layout.index(b), &lock])
        } else {
            self.cmd("get", now, &[data.as_str(), layout.index(b)])
        };
        cmd.arg(key).arg(u8::from(mode == ReadMode::Touch));
        self.while_locked(key, &cmd, |reply| match reply {
            Value::Int(-1) => Ok(None),
            v => bytes(v).map(Some),
        })
        .await
    }

    pub(super) async fn get_many(
        &self,
        keys: &[&str],
        now: Millis,
        mode: ReadMode,
    ) -> Result<Vec<Option<Bytes>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let layout = &self.store.layout;
        let cluster = self.store.cluster;
        let touch = u8::from(mode == ReadMode::Touch);
        // Positions of the keys, grouped by what one script call may touch.
        let groups: Vec<Vec<usize>> = if cluster {
            let mut by_bucket = vec![Vec::new(); layout.buckets()];
            for (i, k) in keys.iter().enumerate() {
                by_bucket[layout.bucket(k)].push(i);
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
        let mut out = vec![None; keys.len()];
        for group in groups {
            let mut script_keys = Vec::with_capacity(group.len() * 3);
            for &i in &group {
                let b = layout.bucket(keys[i]);
                script_keys.push(layout.data_key(b, keys[i]));
                script_keys.push(layout.index(b).to_owned());
                if cluster {
                    script_keys.push(layout.lock_key(b, keys[i]));
                }
            }
            let mut cmd = self.cmd("get_many", now, &script_keys);
            cmd.arg(touch).arg(if cluster { 3 } else { 2 });
            for &i in &group {
                cmd.arg(keys[i]);
            }
            let values = self
                .while_locked(keys[group[0]], &cmd, |reply| match reply {
                    Value::Int(-1) => Ok(None),
                    v => array(v).map(Some),
                })
                .await?;
            if values.len() != group.len() {
                return Err(unexpected("get_many"));
            }
            for (&i, v) in group.iter().zip(values) {
                out[i] = bytes(v)?;
            }
        }
        Ok(out)
    }

    pub(super) async fn set(
        &self,
        key: &str,
        value: &[u8],
        expiry: WriteExpiry,
        condition: Condition,
        now: Millis,
    ) -> Result<Written> {
        let layout = &self.store.layout;
        let b = layout.bucket(key);
        let data = layout.data_key(b, key);
        let lock = layout.lock_key(b, key);
        let (ttl, sliding) = expiry_args(expiry.expiry);
        let mut cmd = self.cmd("set", now, &[data.as_str(), layout.index(b), &lock]);
        cmd.arg(key)
            .arg(value)
            .arg(match condition {
                Condition::Always => "a",
                Condition::IfAbsent => "nx",
                Condition::IfPresent => "xx",
            })
            .arg(ttl)
            .arg(sliding)
            .arg(u8::from(expiry.keep_existing));
        self.while_locked(key, &cmd, |reply| Ok(done(outcome(reply)?)))
            .await
    }

    pub(super) async fn delete(&self, key: &str, now: Millis) -> Result<Removed> {
        let layout = &self.store.layout;
        let b = layout.bucket(key);
        let data = layout.data_key(b, key);
        let lock = layout.lock_key(b, key);
        let mut cmd = self.cmd("delete", now, &[data.as_str(), layout.index(b), &lock]);
        cmd.arg(key);
        self.while_locked(key, &cmd, |reply| {
            Ok(done(outcome(reply)?).map(Removed::from))
        })
        .await
    }

    /// Takes the key (in this process, then in Redis, with a lease), reads it, calls `f` once,
    /// and commits its change (or releases the key when `f` fails).
    pub(super) async fn update<F>(&self, key: &str, now: Millis, f: &mut F) -> Result<Updated>
    where
        F: FnMut(Option<&Bytes>) -> Result<Change> + ?Sized,
    {
        let stripe = foldhash::fast::FixedState::with_seed(0x6c64);
        let stripe = std::hash::BuildHasher::hash_one(&stripe, key) as usize % UPDATE_STRIPES;
        let _in_process = self.io.lock(&self.store.update_stripes[stripe]).await;

        let layout = &self.store.layout;
        let b = layout.bucket(key);
        let data = layout.data_key(b, key);
        let lock = layout.lock_key(b, key);
        let token = crate::lock::owner_token();
        let lease_ms = self.store.lease.as_millis() as u64;
        let mut take = self.cmd("lock_read", now, &[&data, &lock]);
        take.arg(&token).arg(lease_ms);
        let mut release = self.cmd("release", now, &[&lock]);
        release.arg(&token);
        // Armed before the lock is taken: a caller may drop the update while `lock_read` is on
        // its way, and the lock taken (releasing a lock that the token does not hold is a no-op).
        let held = HeldLock {
            io: self.io,
            release: Some(release),
        };
        let taken = self
            .while_locked(key, &take, |reply| {
                let mut items = array(reply)?.into_iter();
                match int(&items.next().ok_or_else(|| unexpected("lock_read"))?)? {
                    -1 => Ok(None),
                    _ => {
                        let current = bytes(items.next().unwrap_or(Value::Nil))?;
                        let read_at = number(items.next().unwrap_or(Value::Nil))?;
                        Ok(Some((current, read_at)))
                    }
                }
            })
            .await;
        let (current, read_at) = match taken {
            Ok(current) => current,
            Err(e) => {
                // Whether the lock was taken is unknown (the connection failed?): its lease
                // frees it, as after a commit that fails.
                held.disarm();
                return Err(e);
            }
        };

        let change = match f(current.as_ref()) {
            Ok(change) => change,
            Err(e) => {
                if let Err(unlock_error) = self.run(&held.disarm()).await {
                    tracing::warn!(key, error = %unlock_error, "livedict: cannot release an update lock; it expires with its lease");
                }
                return Err(e);
            }
        };
        // Judged at the time the read was (the server's, by default): an entry whose deadline
        // passed while `f` ran is still the live value `f` replaced, not an expired one whose
        // TTL a keep-TTL change could not keep.
        let mut commit = self.cmd_at(
            "commit",
            Some(read_at),
            &[data.as_str(), layout.index(b), &lock],
        );
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
        let committed = self.run(&commit).await;
        // The commit released the lock (or found it lost); if it failed, whether it ran is
        // unknown, and the lock's lease frees the key.
        held.disarm();
        match outcome(committed?)? {
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
                    self.store.lease
                )
                .into(),
            )),
        }
    }

    pub(super) async fn ttl(&self, key: &str, now: Millis) -> Result<KeyTtl> {
        let layout = &self.store.layout;
        let b = layout.bucket(key);
        let mut keys = vec![layout.data_key(b, key)];
        if self.store.cluster {
            keys.push(layout.lock_key(b, key));
        }
        let cmd = self.cmd("ttl", now, &keys);
        self.while_locked(key, &cmd, |reply| {
            Ok(match int(&reply)? {
                -3 => None,
                -2 => Some(KeyTtl::Missing),
                -1 => Some(KeyTtl::Never),
                ms => Some(KeyTtl::Remaining(Duration::from_millis(ms.max(0) as u64))),
            })
        })
        .await
    }

    pub(super) async fn set_expiry(&self, key: &str, expiry: Expiry, now: Millis) -> Result<bool> {
        let layout = &self.store.layout;
        let b = layout.bucket(key);
        let data = layout.data_key(b, key);
        let lock = layout.lock_key(b, key);
        let (ttl, sliding) = expiry_args(expiry);
        let mut cmd = self.cmd("expire", now, &[data.as_str(), layout.index(b), &lock]);
        cmd.arg(key).arg(ttl).arg(sliding);
        self.while_locked(key, &cmd, |reply| {
            Ok(match int(&reply)? {
                -1 => None,
                n => Some(n == 1),
            })
        })
        .await
    }

    pub(super) async fn scan(
        &self,
        prefix: &str,
        now: Millis,
        with_values: bool,
    ) -> Result<Vec<ScanEntry>> {
        let pattern = prefix_pattern(prefix);
        let mut out = Vec::new();
        for index in self.store.layout.indexes() {
            let mut seen = HashSet::new();
            let mut cursor = "0".to_owned();
            loop {
                let mut cmd = self.cmd("scan", now, &[index]);
                cmd.arg(&cursor)
                    .arg(&pattern)
                    .arg(u8::from(with_values))
                    .arg(CHUNK);
                let mut items = array(self.run(&cmd).await?)?.into_iter();
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

    pub(super) async fn try_lock(
        &self,
        name: &str,
        owner: &str,
        lease: Millis,
        now: Millis,
    ) -> Result<Option<u64>> {
        let layout = &self.store.layout;
        let key = layout.named_lock_key(layout.bucket(name), name);
        let mut cmd = self.cmd("try_lock", now, &[key]);
        cmd.arg(owner).arg(lease);
        match self.run(&cmd).await? {
            Value::Nil => Ok(None),
            reply => Ok(Some(int(&reply)? as u64)),
        }
    }

    pub(super) async fn unlock(&self, name: &str, owner: &str, now: Millis) -> Result<bool> {
        let layout = &self.store.layout;
        let key = layout.named_lock_key(layout.bucket(name), name);
        let mut cmd = self.cmd("unlock", now, &[key]);
        cmd.arg(owner);
        Ok(int(&self.run(&cmd).await?)? == 1)
    }

    /// The live entries: per group of buckets, one call that counts the scores after now and
    /// judges the members whose scores have passed by their entries (the index is lazy; see
    /// store.lua). When more than [`CHUNK`] scores have passed (the sweep is behind), each index
    /// is counted in chunks of that many members instead, so that no call loads them all: exact
    /// when nothing changes meanwhile, like a count over a cluster's buckets.
    pub(super) async fn len(&self, now: Millis) -> Result<usize> {
        let mut n = 0;
        for group in self.bucket_groups() {
            let mut cmd = self.cmd("len", now, group);
            cmd.arg(CHUNK);
            match int(&self.run(&cmd).await?)? {
                -1 => {
                    for index in group {
                        n += self.len_in_chunks(index, now).await?;
                    }
                }
                live => n += live as usize,
            }
        }
        Ok(n)
    }

    async fn len_in_chunks(&self, index: &str, now: Millis) -> Result<usize> {
        let (mut n, mut offset) = (0, 0);
        loop {
            let mut cmd = self.cmd("len_chunk", now, &[index]);
            cmd.arg(offset).arg(CHUNK);
            let reply = array(self.run(&cmd).await?)?;
            let [live, seen] = reply.as_slice() else {
                return Err(unexpected("len_chunk"));
            };
            let (live, seen) = (int(live)? as usize, int(seen)? as usize);
            n += live;
            if seen < CHUNK {
                return Ok(n);
            }
            offset += seen;
        }
    }

    pub(super) async fn clear(&self, now: Millis) -> Result<Cleared> {
        let mut cleared = Cleared::default();
        for group in self.bucket_groups() {
            let mut backoff = Backoff::new(self.store);
            loop {
                let mut cmd = self.cmd("clear", now, group);
                cmd.arg(CHUNK);
                let mut items = array(self.run(&cmd).await?)?.into_iter();
                let removed = int(&items.next().ok_or_else(|| unexpected("clear"))?)?;
                if removed == -1 {
                    // Every entry the chunk found is held by an update or a batch: wait.
                    let key = text(items.next().unwrap_or(Value::Nil))?.unwrap_or_default();
                    backoff.pause(self.io, &key).await?;
                    continue;
                }
                backoff = Backoff::new(self.store);
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

    /// Removes some live entry: one with a later score if one is at hand, else one among the
    /// members whose scores have passed, a window of them per call (see `pop` in store.lua).
    pub(super) async fn pop_any(&self, now: Millis) -> Result<Option<KeyValue>> {
        for group in self.bucket_groups() {
            let mut offset = 0;
            loop {
                let mut cmd = self.cmd("pop", now, group);
                cmd.arg(offset).arg(POP_WINDOW);
                let mut items = array(self.run(&cmd).await?)?.into_iter();
                match (items.next(), items.next()) {
                    (Some(k), Some(v)) => {
                        let key = text(k)?.ok_or_else(|| unexpected("pop"))?;
                        let value = bytes(v)?.ok_or_else(|| unexpected("pop"))?;
                        return Ok(Some((key, value)));
                    }
                    (Some(more), None) if int(&more)? == 1 => offset += POP_WINDOW,
                    _ => break,
                }
            }
        }
        Ok(None)
    }

    pub(super) async fn apply_batch(&self, ops: &[BatchOp], now: Millis) -> Result<Vec<Removed>> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let layout = &self.store.layout;
        let first_bucket = layout.bucket(ops[0].key());
        if self.store.cluster && ops.iter().any(|op| layout.bucket(op.key()) != first_bucket) {
            return self.apply_batch_across_slots(ops, now).await;
        }
        let by_bucket = self.by_bucket(ops);
        let groups: Vec<(usize, &[usize])> = by_bucket.iter().map(|(&b, p)| (b, &p[..])).collect();
        let (cmd, sent) = self.batch_cmd(ops, &groups, "", now);
        let removed = self
            .while_locked(ops[0].key(), &cmd, |reply| batch_reply(reply, ops.len()))
            .await?;
        Ok(in_order(removed, &sent))
    }

    /// The positions in `ops` of each bucket's operations, by bucket.
    fn by_bucket(&self, ops: &[BatchOp]) -> BTreeMap<usize, Vec<usize>> {
        let mut by_bucket: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (i, op) in ops.iter().enumerate() {
            by_bucket
                .entry(self.store.layout.bucket(op.key()))
                .or_default()
                .push(i);
        }
        by_bucket
    }

    /// The `batch` script over the operations of `groups` (positions in `ops`, by bucket), with
    /// the lock token the batch holds (or ""), and the positions in the order the script
    /// replies in. Each operation takes three arguments (its shape's number, member and value):
    /// the kinds and expiries, usually one for the whole batch, are sent once as shapes.
    ///
    /// Against a single server the declared keys are the buckets' indexes only, and the script
    /// builds each operation's entry and lock names from its bucket's index. Against a cluster
    /// every key is declared (each operation's entry and lock after the index): while a slot
    /// migrates, a script that reaches a key it did not declare and that is not on the node is
    /// refused outright, where one whose declared keys are missing is redirected (`ASK`), which
    /// the cluster client follows.
    fn batch_cmd(
        &self,
        ops: &[BatchOp],
        groups: &[(usize, &[usize])],
        token: &str,
        now: Millis,
    ) -> (redis::Cmd, Vec<usize>) {
        let layout = &self.store.layout;
        let mut keys: Vec<Cow<'_, str>> = groups
            .iter()
            .map(|&(b, _)| Cow::Borrowed(layout.index(b)))
            .collect();
        if self.store.cluster {
            for &(b, positions) in groups {
                for &i in positions {
                    let key = ops[i].key();
                    keys.push(Cow::Owned(layout.data_key(b, key)));
                    keys.push(Cow::Owned(layout.lock_key(b, key)));
                }
            }
        }
        let mut cmd = self.cmd("batch", now, &keys);
        cmd.arg(token).arg(groups.len());
        // The distinct (kind, ttl, sliding, keep), numbered from 1 in order of first use. An
        // operation is usually of the previous one's shape; others are looked up in a map, so
        // a batch whose every operation has its own TTL stays linear.
        let shape_of = |op: &BatchOp| match op {
            BatchOp::Set { expiry, .. } => {
                let (ttl, sliding) = expiry_args(expiry.expiry);
                ("s", ttl, sliding, u8::from(expiry.keep_existing))
            }
            BatchOp::Delete { .. } => ("d", 0, 0, 0),
        };
        let sent: Vec<usize> = groups
            .iter()
            .flat_map(|(_, positions)| positions.iter().copied())
            .collect();
        let mut shapes: Vec<Shape> = Vec::new();
        let mut numbers_of: HashMap<Shape, usize> = HashMap::new();
        let mut last: Option<(Shape, usize)> = None;
        // The shape number of each operation, in the order sent.
        let numbers: Vec<usize> = sent
            .iter()
            .map(|&i| {
                let shape = shape_of(&ops[i]);
                let number = match last {
                    Some((previous, number)) if previous == shape => number,
                    _ => *numbers_of.entry(shape).or_insert_with(|| {
                        shapes.push(shape);
                        shapes.len()
                    }),
                };
                last = Some((shape, number));
                number
            })
            .collect();
        cmd.arg(shapes.len());
        for (kind, ttl, sliding, keep) in &shapes {
            cmd.arg(*kind).arg(*ttl).arg(*sliding).arg(*keep);
        }
        let mut next = sent.iter().zip(&numbers);
        for (_, positions) in groups {
            cmd.arg(positions.len());
            for (&i, &number) in next.by_ref().take(positions.len()) {
                let value: &[u8] = match &ops[i] {
                    BatchOp::Set { value, .. } => value,
                    BatchOp::Delete { .. } => b"",
                };
                cmd.arg(number).arg(ops[i].key()).arg(value);
            }
        }
        (cmd, sent)
    }

    /// A batch over several buckets of a cluster, in two phases: lock every key, bucket by bucket
    /// in a fixed order (all of a bucket's keys or none, releasing everything and retrying when
    /// another holds one), then apply each bucket's writes and release its locks. Reads of a key
    /// locked by a batch wait for it, so none sees the batch half applied. A process that dies
    /// between two buckets' commits leaves the batch partly applied: the one case where a
    /// batch is not all-or-nothing (see the module documentation).
    async fn apply_batch_across_slots(&self, ops: &[BatchOp], now: Millis) -> Result<Vec<Removed>> {
        let by_bucket = self.by_bucket(ops);
        let token = format!("b:{}", crate::lock::owner_token());
        let mut backoff = Backoff::new(self.store);
        while !self.prepare_batch(ops, &by_bucket, &token, now).await? {
            backoff.pause(self.io, ops[0].key()).await?;
        }
        let mut out = vec![Removed::default(); ops.len()];
        for (&b, positions) in &by_bucket {
            let (cmd, sent) = self.batch_cmd(ops, &[(b, positions)], &token, now);
            let removed = batch_reply(self.run(&cmd).await?, positions.len())?
                .ok_or_else(|| unexpected("batch"))?;
            place(&mut out, removed, &sent);
        }
        Ok(out)
    }

    /// The first phase of a batch across slots: locks the keys of every bucket with `token`.
    /// False (with nothing left locked) when another holds one of them.
    async fn prepare_batch(
        &self,
        ops: &[BatchOp],
        by_bucket: &BTreeMap<usize, Vec<usize>>,
        token: &str,
        now: Millis,
    ) -> Result<bool> {
        let layout = &self.store.layout;
        let lease_ms = self.store.lease.min(self.store.timeout * 2).as_millis() as u64;
        let mut taken: Vec<&[usize]> = Vec::new();
        for (&b, positions) in by_bucket {
            let mut keys = Vec::with_capacity(positions.len() * 2);
            for &i in positions {
                keys.push(layout.data_key(b, ops[i].key()));
                keys.push(layout.lock_key(b, ops[i].key()));
            }
            let mut cmd = self.cmd("prepare", now, &keys);
            cmd.arg(token).arg(lease_ms);
            let prepared = match self.run(&cmd).await {
                Ok(reply) => int(&reply),
                Err(e) => Err(e),
            };
            match prepared {
                Ok(1) => taken.push(positions),
                other => {
                    self.release_batch_locks(ops, &taken, token, now).await;
                    return other.map(|_| false);
                }
            }
        }
        Ok(true)
    }

    /// Releases the locks a batch took on the keys of `taken` (groups of positions in `ops`).
    async fn release_batch_locks(
        &self,
        ops: &[BatchOp],
        taken: &[&[usize]],
        token: &str,
        now: Millis,
    ) {
        let layout = &self.store.layout;
        for positions in taken {
            let locks: Vec<String> = positions
                .iter()
                .map(|&i| {
                    let key = ops[i].key();
                    layout.lock_key(layout.bucket(key), key)
                })
                .collect();
            let mut cmd = self.cmd("release", now, &locks);
            cmd.arg(token);
            if let Err(e) = self.run(&cmd).await {
                tracing::warn!(error = %e, "livedict: cannot release batch locks; they expire with their lease");
            }
        }
    }

    pub(super) async fn sweep(
        &self,
        now: Millis,
        limit: usize,
        out: &mut Vec<ExpiredEntry>,
    ) -> Result<bool> {
        // One script call looks at `left` members with passed scores at most; those it finds
        // early (the index is lazy), locked or gone use up its budget too. It says whether it
        // ran out of budget having done something; then so does this call, and the caller
        // calls again.
        let start = out.len();
        let mut more = false;
        for group in self.bucket_groups() {
            let left = limit.saturating_sub(out.len() - start);
            if left == 0 {
                return Ok(true);
            }
            let mut cmd = self.cmd("sweep", now, group);
            cmd.arg(left);
            let mut reply = array(self.run(&cmd).await?)?.into_iter();
            more |= int(&reply.next().ok_or_else(|| unexpected("sweep"))?)? == 1;
            let undecodable = int(&reply.next().ok_or_else(|| unexpected("sweep"))?)?;
            for _ in 0..undecodable {
                let key = text(reply.next().unwrap_or(Value::Nil))?;
                tracing::error!(
                    key = key.as_deref().unwrap_or("?"),
                    "livedict: an entry due to expire does not decode; it is left as it is, and \
                     sweeps look at it again a minute later (every other call on it is an error)"
                );
            }
            expired_entries(reply, out)?;
        }
        Ok(more || out.len() - start >= limit)
    }

    pub(super) async fn next_deadline(&self) -> Result<Option<Millis>> {
        let mut next: Option<Millis> = None;
        for group in self.bucket_groups() {
            let reply = self.run(&self.cmd("next_deadline", 0, group)).await?;
            if let Some(d) = text(reply)? {
                let d: Millis = d.parse().map_err(|_| unexpected("next_deadline"))?;
                next = Some(next.map_or(d, |n| n.min(d)));
            }
        }
        Ok(next)
    }

    pub(super) async fn remove_inactive(
        &self,
        prefix: &str,
        idle_since: Millis,
        now: Millis,
    ) -> Result<Vec<KeyValue>> {
        let idle = now.saturating_sub(idle_since);
        let pattern = prefix_pattern(prefix);
        let mut out = Vec::new();
        for index in self.store.layout.indexes() {
            let mut cursor = "0".to_owned();
            loop {
                let mut cmd = self.cmd("remove_inactive", now, &[index]);
                cmd.arg(&cursor).arg(idle).arg(CHUNK).arg(&pattern);
                let mut items = array(self.run(&cmd).await?)?.into_iter();
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

/// A batch operation's kind (`s` or `d`), TTL, sliding flag and keep-TTL flag, as the `batch`
/// script takes them.
type Shape = (&'static str, Millis, u8, u8);

/// `removed`, listed in the order of `sent` (positions in a batch, each once), in the batch's
/// order.
fn in_order(removed: Vec<Removed>, sent: &[usize]) -> Vec<Removed> {
    let mut out = vec![Removed::default(); sent.len()];
    place(&mut out, removed, sent);
    out
}

/// Puts each of `removed` (listed in the order of `sent`) at its position in the batch.
fn place(out: &mut [Removed], removed: Vec<Removed>, sent: &[usize]) {
    for (&i, r) in sent.iter().zip(removed) {
        out[i] = r;
    }
}

/// The reply of a `batch` script over `n` operations: `None` while another holds a lock on one
/// of its keys.
fn batch_reply(reply: Value, n: usize) -> Result<Option<Vec<Removed>>> {
    let mut items = array(reply)?.into_iter();
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
