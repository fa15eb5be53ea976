//! The in-memory backend: the default, ephemeral and fastest.
//!
//! Keys are spread over shards by hash; each shard is a `RwLock` around a hash table and a timer
//! queue. Reads take the shard's read lock only: a sliding deadline and the last-access time are
//! atomics, so readers never exclude each other. Writes take the write lock and keep the timer queue
//! exact (one record per entry with a deadline); a read that slides a deadline forward leaves the
//! timer record where it was, and the sweep that finds it early moves it to the new deadline.

mod locks;
mod timers;

use std::fmt;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use bytes::Bytes;
use crossbeam_utils::CachePadded;
use hashbrown::HashTable;
use hashbrown::hash_table::Entry;
use parking_lot::{RwLock, RwLockWriteGuard};

use super::{
    Backend, BatchOp, Change, Cleared, Condition, ExpiredEntry, Expiry, Found, KeyTtl, KeyValue,
    ReadMode, Removed, ScanEntry, Updated, VALUE_HEAD_LEN, ValueHead, WriteExpiry, Written,
};
use crate::clock::{Millis, Now, RECENT_MARGIN};
use crate::error::Result;
use timers::{TimerId, TimerQueue};

type Hasher = foldhash::fast::RandomState;

/// A stored key: inline up to 24 bytes, so that comparing it during a lookup reads the slot's own
/// cache line instead of a separate allocation.
type Key = compact_str::CompactString;

/// Reads refresh an entry's last-access time (from the cached clock) only when it is this much
/// older, so that reads do not dirty the entry's cache line; the time is stored in whole seconds.
/// `remove_inactive` allows for all three (it never removes an entry read within the idle time,
/// and may keep one a little longer).
const ACCESS_GRANULARITY: Millis = 1000;
const ACCESS_SLACK: Millis = ACCESS_GRANULARITY + 1000 + RECENT_MARGIN;

/// The in-memory backend (the default of [`LiveDict::new`](crate::LiveDict::new)).
///
/// # Examples
/// ```
/// use livedict::{LiveDict, MemoryBackend};
///
/// let store = LiveDict::builder().backend(MemoryBackend::with_shards(16)).build()?;
/// store.set("k", &"v")?;
/// # Ok::<(), livedict::Error>(())
/// ```
pub struct MemoryBackend {
    shards: Box<[CachePadded<RwLock<Shard>>]>,
    shard_mask: u64,
    hasher: Hasher,
    pop_cursor: AtomicUsize,
    locks: locks::Locks,
}

/// The head of a stored value, as a read hands it out (see [`Backend::get_with_head`]).
#[inline]
fn head_of(value: &Bytes) -> Option<ValueHead> {
    value.first_chunk::<VALUE_HEAD_LEN>().copied()
}

/// One entry, 96 bytes (a test checks the size).
struct Slot {
    key: Key,
    value: Bytes,
    /// A copy of the value's head, which a read hands out with it so that the caller need not
    /// read the value's own buffer to check its header. Set only with the value ([`Slot::new`],
    /// [`Slot::replace_value`]), so the copy always matches.
    head: Option<ValueHead>,
    /// The last access, in whole seconds since the epoch (reads refresh it at most once a
    /// second): four bytes, which fill what the head leaves of eight.
    last_access: AtomicU32,
    /// Deadline in ms since the epoch; 0 = none.
    deadline: AtomicU64,
    /// Sliding TTL in ms; 0 = the deadline is fixed.
    sliding: Millis,
    /// This entry's record in the shard's timer queue (present iff it has a deadline).
    timer: Option<TimerId>,
}

/// Whole seconds of `t` (ms since the epoch), as stored in [`Slot::last_access`].
#[inline]
fn access_seconds(t: Millis) -> u32 {
    u32::try_from(t / 1000).unwrap_or(u32::MAX)
}

impl Slot {
    fn new(
        key: Key,
        value: Bytes,
        deadline: Option<Millis>,
        sliding: Millis,
        now: Millis,
        timer: Option<TimerId>,
    ) -> Self {
        Slot {
            key,
            head: head_of(&value),
            value,
            last_access: AtomicU32::new(access_seconds(now)),
            deadline: AtomicU64::new(deadline.unwrap_or(0)),
            sliding,
            timer,
        }
    }

    /// Stores `value` (and its head) and returns the value it replaces.
    #[inline]
    fn replace_value(&mut self, value: Bytes) -> Bytes {
        self.head = head_of(&value);
        std::mem::replace(&mut self.value, value)
    }

    /// The last access in ms since the epoch, rounded down to the second.
    #[inline]
    fn last_access(&self) -> Millis {
        Millis::from(self.last_access.load(Relaxed)) * 1000
    }

    /// Whether this slot holds `key`. Compared eight bytes at a time, inline: a lookup's key is
    /// short, and a call to `memcmp` cost more than the comparison (~25 instructions a read).
    #[inline(always)]
    fn holds(&self, key: &str) -> bool {
        let (a, b) = (self.key.as_bytes(), key.as_bytes());
        if a.len() != b.len() {
            return false;
        }
        let (mut x, mut y) = (a.chunks_exact(8), b.chunks_exact(8));
        for (p, q) in (&mut x).zip(&mut y) {
            if u64::from_ne_bytes(p.try_into().expect("8 bytes"))
                != u64::from_ne_bytes(q.try_into().expect("8 bytes"))
            {
                return false;
            }
        }
        x.remainder().iter().zip(y.remainder()).all(|(p, q)| p == q)
    }

    #[inline]
    fn is_live(&self, now: Millis) -> bool {
        let d = self.deadline.load(Relaxed);
        d == 0 || d > now
    }

    #[inline]
    fn is_live_at(&self, now: &Now<'_>) -> bool {
        let d = self.deadline.load(Relaxed);
        d == 0 || now.before(d)
    }

    fn deadline(&self) -> Option<Millis> {
        match self.deadline.load(Relaxed) {
            0 => None,
            d => Some(d),
        }
    }

    /// Sets the deadline and keeps the timer record in step (`hash`: the key's). A record due no
    /// later than the new deadline is kept: it fires early and the sweep moves it to the real
    /// deadline, which spares a heap removal and insertion on every overwrite with a TTL.
    fn set_deadline(&mut self, timers: &mut TimerQueue, hash: u64, deadline: Option<Millis>) {
        match (self.timer, deadline) {
            (Some(t), Some(d)) if t.deadline <= d => {}
            (_, deadline) => {
                if let Some(old) = self.timer.take() {
                    timers.cancel(old);
                }
                if let Some(d) = deadline {
                    self.timer = Some(timers.schedule(d, hash));
                }
            }
        }
        *self.deadline.get_mut() = deadline.unwrap_or(0);
    }
}

struct Shard {
    table: HashTable<Slot>,
    timers: TimerQueue,
    /// The backend's hasher (the same seed in every shard), for rehashing on growth.
    hasher: Hasher,
}

impl Shard {
    #[inline]
    fn find(&self, hash: u64, key: &str) -> Option<&Slot> {
        self.table.find(hash, |s| s.holds(key))
    }

    fn write(
        &mut self,
        hash: u64,
        key: &str,
        value: Bytes,
        expiry: WriteExpiry,
        condition: Condition,
        now: Millis,
    ) -> Written {
        let Shard {
            table,
            timers,
            hasher,
        } = self;
        // One probe finds the key or the place for it (growing the table first if it is full).
        match table.entry(hash, |s| s.holds(key), |s| hasher.hash_one(s.key.as_str())) {
            Entry::Occupied(mut occupied) => {
                let slot = occupied.get_mut();
                let live = slot.is_live(now);
                if live && condition == Condition::IfAbsent {
                    return Written {
                        written: false,
                        previous: Some(slot.value.clone()),
                        expired: None,
                    };
                }
                if !live && condition == Condition::IfPresent {
                    let (dead, _) = occupied.remove();
                    if let Some(t) = dead.timer {
                        timers.cancel(t);
                    }
                    return Written {
                        written: false,
                        previous: None,
                        expired: Some(dead.value),
                    };
                }
                let (deadline, sliding) = if live && expiry.keep_existing {
                    let kept = slot.deadline().map(|d| {
                        if slot.sliding > 0 {
                            now + slot.sliding
                        } else {
                            d
                        }
                    });
                    (kept, slot.sliding)
                } else {
                    expiry.expiry.deadline_at(now)
                };
                slot.set_deadline(timers, hash, deadline);
                slot.sliding = sliding;
                *slot.last_access.get_mut() = access_seconds(now);
                let old = slot.replace_value(value);
                if live {
                    Written {
                        written: true,
                        previous: Some(old),
                        expired: None,
                    }
                } else {
                    Written {
                        written: true,
                        previous: None,
                        expired: Some(old),
                    }
                }
            }
            Entry::Vacant(vacant) => {
                if condition == Condition::IfPresent {
                    return Written::default();
                }
                let (deadline, sliding) = expiry.expiry.deadline_at(now);
                let key = Key::new(key);
                let timer = deadline.map(|d| timers.schedule(d, hash));
                vacant.insert(Slot::new(key, value, deadline, sliding, now, timer));
                Written {
                    written: true,
                    ..Written::default()
                }
            }
        }
    }

    fn remove(&mut self, hash: u64, key: &str, now: Millis) -> Removed {
        let Shard { table, timers, .. } = self;
        match table.find_entry(hash, |s| s.holds(key)) {
            Ok(occupied) => {
                let (slot, _) = occupied.remove();
                if let Some(t) = slot.timer {
                    timers.cancel(t);
                }
                if slot.is_live(now) {
                    Removed {
                        previous: Some(slot.value),
                        expired: None,
                    }
                } else {
                    Removed {
                        previous: None,
                        expired: Some(slot.value),
                    }
                }
            }
            Err(_) => Removed::default(),
        }
    }

    fn apply(&mut self, hash: u64, op: BatchOp, now: Millis) -> Removed {
        match op {
            BatchOp::Set { key, value, expiry } => self
                .write(hash, &key, value, expiry, Condition::Always, now)
                .into(),
            BatchOp::Delete { key } => self.remove(hash, &key, now),
        }
    }

    /// Entries whose timer is due but which are still stored and past their deadline.
    fn dead_count(&self, now: Millis) -> usize {
        self.timers
            .due(now)
            .filter(|&(id, hash)| {
                self.table
                    .find(hash, |s| s.timer == Some(id))
                    .is_some_and(|s| !s.is_live(now))
            })
            .count()
    }
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBackend {
    /// A memory backend with 64 shards.
    pub fn new() -> Self {
        Self::with_shards(64)
    }

    /// A memory backend with `shards` shards (rounded up to a power of two, at least 1). More
    /// shards mean less contention between writers of different keys.
    pub fn with_shards(shards: usize) -> Self {
        let n = shards.max(1).next_power_of_two();
        let hasher = Hasher::default();
        MemoryBackend {
            shards: (0..n)
                .map(|_| {
                    CachePadded::new(RwLock::new(Shard {
                        table: HashTable::new(),
                        timers: TimerQueue::default(),
                        hasher: hasher.clone(),
                    }))
                })
                .collect(),
            shard_mask: (n - 1) as u64,
            hasher,
            pop_cursor: AtomicUsize::new(0),
            locks: locks::Locks::default(),
        }
    }

    #[inline]
    fn locate(&self, key: &str) -> (u64, usize) {
        let hash = self.hasher.hash_one(key);
        // The table uses the low bits and the top 7; pick the shard from the middle.
        (hash, ((hash >> 32) & self.shard_mask) as usize)
    }

    #[inline]
    fn shard(&self, key: &str) -> (u64, &RwLock<Shard>) {
        let (hash, i) = self.locate(key);
        (hash, &self.shards[i])
    }
}

impl fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBackend")
            .field("shards", &self.shards.len())
            .finish_non_exhaustive()
    }
}

impl Backend for MemoryBackend {
    #[inline]
    fn get(&self, key: &str, now: &Now<'_>, mode: ReadMode) -> Result<Option<Bytes>> {
        Ok(self.get_with_head(key, now, mode)?.map(|(value, _)| value))
    }

    fn get_with_head(&self, key: &str, now: &Now<'_>, mode: ReadMode) -> Result<Option<Found>> {
        let (hash, shard) = self.shard(key);
        let shard = shard.read();
        let Some(slot) = shard.find(hash, key) else {
            return Ok(None);
        };
        if !slot.is_live_at(now) {
            return Ok(None);
        }
        if mode == ReadMode::Touch {
            if slot.sliding > 0 {
                // Under the read lock: writers are excluded, readers only ever push it forward.
                slot.deadline.fetch_max(now.exact() + slot.sliding, Relaxed);
            }
            let recent = now.recent();
            if slot.last_access() + ACCESS_GRANULARITY <= recent {
                slot.last_access.store(access_seconds(recent), Relaxed);
            }
        }
        Ok(Some((slot.value.clone(), slot.head)))
    }

    fn contains(&self, key: &str, now: &Now<'_>) -> Result<bool> {
        let (hash, shard) = self.shard(key);
        Ok(shard
            .read()
            .find(hash, key)
            .is_some_and(|s| s.is_live_at(now)))
    }

    fn set(
        &self,
        key: &str,
        value: Bytes,
        expiry: WriteExpiry,
        condition: Condition,
        now: Millis,
    ) -> Result<Written> {
        let (hash, shard) = self.shard(key);
        Ok(shard
            .write()
            .write(hash, key, value, expiry, condition, now))
    }

    fn delete(&self, key: &str, now: Millis) -> Result<Removed> {
        let (hash, shard) = self.shard(key);
        Ok(shard.write().remove(hash, key, now))
    }

    fn update(
        &self,
        key: &str,
        now: Millis,
        f: &mut dyn FnMut(Option<&Bytes>) -> Result<Change>,
    ) -> Result<Updated> {
        let (hash, shard) = self.shard(key);
        let mut shard = shard.write();
        let current = shard
            .find(hash, key)
            .filter(|s| s.is_live(now))
            .map(|s| s.value.clone());
        match f(current.as_ref())? {
            Change::Keep => Ok(Updated {
                previous: current,
                expired: None,
            }),
            Change::Write { value, expiry } => Ok(shard
                .write(hash, key, value, expiry, Condition::Always, now)
                .into()),
            Change::Delete => Ok(shard.remove(hash, key, now).into()),
            Change::Replace { value } => {
                if let Some(slot) = shard.table.find_mut(hash, |s| s.holds(key))
                    && slot.is_live(now)
                {
                    slot.replace_value(value);
                }
                Ok(Updated {
                    previous: current,
                    expired: None,
                })
            }
        }
    }

    fn ttl(&self, key: &str, now: Millis) -> Result<KeyTtl> {
        let (hash, shard) = self.shard(key);
        let shard = shard.read();
        Ok(match shard.find(hash, key).filter(|s| s.is_live(now)) {
            None => KeyTtl::Missing,
            Some(slot) => match slot.deadline() {
                None => KeyTtl::Never,
                Some(d) => KeyTtl::Remaining(Duration::from_millis(d - now)),
            },
        })
    }

    fn set_expiry(&self, key: &str, expiry: Expiry, now: Millis) -> Result<bool> {
        let (hash, shard) = self.shard(key);
        let mut shard = shard.write();
        let Shard { table, timers, .. } = &mut *shard;
        match table.find_mut(hash, |s| s.holds(key)) {
            Some(slot) if slot.is_live(now) => {
                let (deadline, sliding) = expiry.deadline_at(now);
                slot.set_deadline(timers, hash, deadline);
                slot.sliding = sliding;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn scan(&self, prefix: &str, now: Millis, with_values: bool) -> Result<Vec<ScanEntry>> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.read();
            out.extend(
                shard
                    .table
                    .iter()
                    .filter(|s| s.is_live(now) && s.key.starts_with(prefix))
                    .map(|s| (s.key.to_string(), with_values.then(|| s.value.clone()))),
            );
        }
        Ok(out)
    }

    fn len(&self, now: Millis) -> Result<usize> {
        Ok(self
            .shards
            .iter()
            .map(|shard| {
                let shard = shard.read();
                shard.table.len() - shard.dead_count(now)
            })
            .sum())
    }

    fn clear(&self, now: Millis) -> Result<Cleared> {
        let mut cleared = Cleared::default();
        for shard in self.shards.iter() {
            let mut shard = shard.write();
            for slot in shard.table.drain() {
                if slot.is_live(now) {
                    cleared.removed += 1;
                } else {
                    cleared.expired.push(ExpiredEntry {
                        key: Arc::from(slot.key.as_str()),
                        value: slot.value,
                        deadline: slot.deadline.load(Relaxed),
                    });
                }
            }
            shard.timers.clear();
        }
        Ok(cleared)
    }

    fn pop_any(&self, now: Millis) -> Result<Option<KeyValue>> {
        let n = self.shards.len();
        let start = self.pop_cursor.fetch_add(1, Relaxed);
        for i in 0..n {
            let mut shard = self.shards[(start + i) % n].write();
            let Some(key) = shard
                .table
                .iter()
                .find(|s| s.is_live(now))
                .map(|s| s.key.clone())
            else {
                continue;
            };
            let removed = shard.remove(self.hasher.hash_one(key.as_str()), &key, now);
            if let Some(value) = removed.previous {
                return Ok(Some((key.to_string(), value)));
            }
        }
        Ok(None)
    }

    fn apply_batch(&self, ops: Vec<BatchOp>, now: Millis) -> Result<Vec<Removed>> {
        let located: Vec<(u64, usize)> = ops.iter().map(|op| self.locate(op.key())).collect();
        let mut order: Vec<usize> = located.iter().map(|&(_, i)| i).collect();
        order.sort_unstable();
        order.dedup();
        // Lock every shard involved, in index order (so batches cannot deadlock each other).
        let mut guards: Vec<RwLockWriteGuard<'_, Shard>> =
            order.iter().map(|&i| self.shards[i].write()).collect();
        Ok(ops
            .into_iter()
            .zip(located)
            .map(|(op, (hash, i))| {
                let g = order.binary_search(&i).expect("shard was locked");
                guards[g].apply(hash, op, now)
            })
            .collect())
    }

    fn sweep(&self, now: Millis, limit: usize, out: &mut Vec<ExpiredEntry>) -> Result<bool> {
        let limit = out.len() + limit;
        for shard in self.shards.iter() {
            if out.len() >= limit {
                break;
            }
            if shard.read().timers.first_deadline().is_none_or(|d| d > now) {
                continue;
            }
            let mut shard = shard.write();
            let Shard { table, timers, .. } = &mut *shard;
            while out.len() < limit {
                let Some((id, hash)) = timers.pop_due(now) else {
                    break;
                };
                // The entry whose slot holds this record's id (a record is cancelled whenever its
                // entry goes or takes another).
                let Ok(mut occupied) = table.find_entry(hash, |s| s.timer == Some(id)) else {
                    debug_assert!(false, "timer record without its entry");
                    continue;
                };
                let slot = occupied.get_mut();
                slot.timer = None;
                match slot.deadline.load(Relaxed) {
                    0 => {}
                    d if d <= now => {
                        let (slot, _) = occupied.remove();
                        out.push(ExpiredEntry {
                            key: Arc::from(slot.key.as_str()),
                            value: slot.value,
                            deadline: d,
                        });
                    }
                    // A sliding entry read since it was scheduled: follow its new deadline.
                    d => slot.timer = Some(timers.schedule(d, hash)),
                }
            }
        }
        Ok(out.len() >= limit)
    }

    fn next_deadline(&self) -> Result<Option<Millis>> {
        Ok(self
            .shards
            .iter()
            .filter_map(|s| s.read().timers.first_deadline())
            .min())
    }

    fn remove_inactive(
        &self,
        prefix: &str,
        idle_since: Millis,
        now: Millis,
    ) -> Result<Vec<KeyValue>> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = shard.write();
            let Shard { table, timers, .. } = &mut *shard;
            for slot in table.extract_if(|s| {
                s.is_live(now)
                    && s.last_access() + ACCESS_SLACK <= idle_since
                    && s.key.starts_with(prefix)
            }) {
                if let Some(t) = slot.timer {
                    timers.cancel(t);
                }
                out.push((slot.key.to_string(), slot.value));
            }
        }
        Ok(out)
    }

    fn try_lock(&self, name: &str, owner: &str, lease: Millis, now: Millis) -> Result<Option<u64>> {
        Ok(self.locks.try_lock(name, owner, lease, now))
    }

    fn unlock(&self, name: &str, owner: &str, now: Millis) -> Result<bool> {
        Ok(self.locks.unlock(name, owner, now))
    }

    #[cfg(feature = "async")]
    fn to_async(self: Arc<Self>) -> Arc<dyn crate::backend::AsyncBackend> {
        self // every operation is a short in-memory lock: ready futures, no threads
    }
}

crate::impl_async_via_sync!(MemoryBackend);

#[cfg(test)]
mod tests {
    use super::*;

    const FIXED: WriteExpiry = WriteExpiry {
        expiry: Expiry::After {
            ttl: 100,
            sliding: false,
        },
        keep_existing: false,
    };

    fn timer_records(b: &MemoryBackend) -> usize {
        b.shards.iter().map(|s| s.read().timers.len()).sum()
    }

    #[test]
    fn a_slot_takes_96_bytes() {
        // No padding: the head and the last access share eight bytes.
        assert_eq!(std::mem::size_of::<Slot>(), 96);
    }

    #[test]
    fn timer_records_track_entries_with_deadlines_only() {
        let b = MemoryBackend::with_shards(4);
        let never = WriteExpiry::replace(Expiry::Never);
        for i in 0..1000 {
            b.set(&format!("n{i}"), Bytes::new(), never, Condition::Always, 0)
                .unwrap();
        }
        assert_eq!(timer_records(&b), 0);
        for round in 0..5 {
            for i in 0..1000 {
                b.set(
                    &format!("t{i}"),
                    Bytes::new(),
                    FIXED,
                    Condition::Always,
                    round,
                )
                .unwrap();
            }
        }
        assert_eq!(timer_records(&b), 1000);
        for i in 0..1000 {
            b.delete(&format!("t{i}"), 0).unwrap();
        }
        assert_eq!(timer_records(&b), 0);
    }

    #[test]
    fn sweep_follows_slid_deadlines_and_removes_due_entries() {
        let b = MemoryBackend::with_shards(1);
        let sliding = WriteExpiry::replace(Expiry::After {
            ttl: 100,
            sliding: true,
        });
        b.set("s", Bytes::from_static(b"s"), sliding, Condition::Always, 0)
            .unwrap();
        b.set("f", Bytes::from_static(b"f"), FIXED, Condition::Always, 0)
            .unwrap();
        assert!(
            b.get("s", &Now::fixed(90), ReadMode::Touch)
                .unwrap()
                .is_some()
        ); // now due at 190
        let sweep = |now| {
            let mut out = Vec::new();
            b.sweep(now, 10, &mut out).unwrap();
            out
        };
        let expired = sweep(100);
        assert_eq!(expired.len(), 1);
        assert_eq!(&*expired[0].key, "f");
        assert_eq!(expired[0].deadline, 100);
        assert_eq!(b.next_deadline().unwrap(), Some(190));
        assert!(sweep(189).is_empty());
        assert_eq!(sweep(190).len(), 1);
        assert_eq!(timer_records(&b), 0);
    }

    /// Timer records hold key hashes, not keys: the sweep finds each due entry by its hash and
    /// record id, among many entries of one shard, short keys and long ones (stored apart from
    /// the slot), rewritten, slid and deleted ones, and reports it with its own key and value.
    #[test]
    fn the_sweep_finds_each_due_entry_by_its_records_hash() {
        let b = MemoryBackend::with_shards(1);
        let key = |i: usize| {
            if i.is_multiple_of(2) {
                format!("k{i}")
            } else {
                format!("a-key-long-enough-to-live-outside-the-slot:{i}")
            }
        };
        let ttl = |t| {
            WriteExpiry::replace(Expiry::After {
                ttl: t,
                sliding: false,
            })
        };
        for i in 0..2000 {
            let value = Bytes::from(key(i).into_bytes());
            b.set(
                &key(i),
                value,
                ttl(100 + i as u64 % 50),
                Condition::Always,
                0,
            )
            .unwrap();
        }
        // Rewritten later (their records stay early and are moved), deleted, or made permanent.
        for i in (0..2000).step_by(3) {
            let value = Bytes::from(key(i).into_bytes());
            b.set(&key(i), value, ttl(1000), Condition::Always, 10)
                .unwrap();
        }
        for i in (0..2000).step_by(7) {
            b.delete(&key(i), 10).unwrap();
        }
        for i in (0..2000).step_by(11) {
            b.set_expiry(&key(i), Expiry::Never, 10).unwrap();
        }
        let live_at = |i: usize, now: u64| {
            if i.is_multiple_of(7) {
                false
            } else if i.is_multiple_of(11) {
                true
            } else if i.is_multiple_of(3) {
                now < 1010
            } else {
                now < 100 + i as u64 % 50
            }
        };
        for now in [120, 149, 150, 1009, 1010] {
            let mut out = Vec::new();
            while b.sweep(now, 64, &mut out).unwrap() {}
            for e in &out {
                let i: usize = e.key.rsplit(['k', ':']).next().unwrap().parse().unwrap();
                assert_eq!(&*e.key, key(i));
                assert_eq!(&e.value[..], key(i).as_bytes());
                assert!(!live_at(i, now), "{} swept at {now}", e.key);
            }
            for i in 0..2000 {
                let stored = b.get(&key(i), &Now::fixed(0), ReadMode::Peek).unwrap();
                assert_eq!(stored.is_some(), live_at(i, now), "{} at {now}", key(i));
            }
        }
        let permanent = (0..2000)
            .filter(|&i: &usize| i.is_multiple_of(11) && !i.is_multiple_of(7))
            .count();
        assert_eq!(b.len(u64::MAX).unwrap(), permanent);
        assert_eq!(timer_records(&b), 0);
    }

    #[test]
    fn len_excludes_dead_entries_not_yet_swept() {
        let b = MemoryBackend::with_shards(2);
        for i in 0..10 {
            b.set(&format!("k{i}"), Bytes::new(), FIXED, Condition::Always, 0)
                .unwrap();
        }
        b.set(
            "forever",
            Bytes::new(),
            WriteExpiry::replace(Expiry::Never),
            Condition::Always,
            0,
        )
        .unwrap();
        assert_eq!(b.len(99).unwrap(), 11);
        assert_eq!(b.len(100).unwrap(), 1);
    }

    /// Every way of storing a value keeps the head a read hands out equal to the value's first
    /// bytes (the engine trusts it instead of reading the value), and a value shorter than a
    /// head has none.
    #[test]
    fn a_read_hands_out_the_stored_values_own_head() {
        let b = MemoryBackend::with_shards(2);
        let never = WriteExpiry::replace(Expiry::Never);
        let check = |key: &str, value: &[u8]| {
            let (bytes, head) = b
                .get_with_head(key, &Now::fixed(0), ReadMode::Peek)
                .unwrap()
                .expect("stored");
            assert_eq!(&bytes[..], value);
            assert_eq!(head, value.first_chunk::<VALUE_HEAD_LEN>().copied());
        };
        let put = |key: &str, value: &'static [u8], expiry, condition, now| {
            b.set(key, Bytes::from_static(value), expiry, condition, now)
                .unwrap();
        };
        let set = |key: &str, value: &'static [u8]| put(key, value, never, Condition::Always, 0);
        set("k", b"abcdef");
        check("k", b"abcdef");
        set("k", b"xyz123"); // overwrite
        check("k", b"xyz123");
        set("k", b"no"); // shorter than a head
        check("k", b"no");
        let update = |change: Change| {
            let mut change = Some(change);
            b.update("k", 0, &mut |_| Ok(change.take().expect("called once")))
                .unwrap();
        };
        update(Change::Write {
            value: Bytes::from_static(b"written"),
            expiry: never,
        });
        check("k", b"written");
        update(Change::Replace {
            value: Bytes::from_static(b"replaced"),
        });
        check("k", b"replaced");
        b.apply_batch(
            vec![
                BatchOp::Set {
                    key: "k".into(),
                    value: Bytes::from_static(b"batched"),
                    expiry: never,
                },
                BatchOp::Set {
                    key: "new".into(),
                    value: Bytes::from_static(b"inserted"),
                    expiry: never,
                },
            ],
            0,
        )
        .unwrap();
        check("k", b"batched");
        check("new", b"inserted");

        // A write refused under `IfAbsent` leaves the value and its head as they were.
        put("k", b"refused", never, Condition::IfAbsent, 0);
        check("k", b"batched");
        // An expired entry overwritten, and one left alone by a `Replace` (it is not live).
        let short = WriteExpiry::replace(Expiry::After {
            ttl: 10,
            sliding: false,
        });
        put("e", b"old one", short, Condition::Always, 0);
        put("e", b"new one", never, Condition::Always, 20);
        check("e", b"new one");
        put("d", b"dead one", short, Condition::Always, 0);
        b.update("d", 20, &mut |current| {
            assert!(current.is_none(), "an expired entry is not live");
            Ok(Change::Replace {
                value: Bytes::from_static(b"never stored"),
            })
        })
        .unwrap();
        assert!(
            b.get_with_head("d", &Now::fixed(20), ReadMode::Peek)
                .unwrap()
                .is_none()
        );
    }

    proptest::proptest! {
        /// The inline key comparison agrees with `==`, whatever the lengths (chunks of eight
        /// and a remainder, keys inline or on the heap) and wherever the keys differ.
        #[test]
        fn a_slot_holds_exactly_its_own_key(
            stored in "[a-c]{0,40}",
            other in "[a-c]{0,40}",
            flip in 0usize..40,
        ) {
            let slot = |key: &str| Slot::new(key.into(), Bytes::new(), None, 0, 0, None);
            let s = slot(&stored);
            proptest::prop_assert_eq!(s.holds(&other), stored == other);
            proptest::prop_assert!(s.holds(&stored));
            if !stored.is_empty() {
                // The same length, one byte different.
                let mut near = stored.clone().into_bytes();
                let i = flip % near.len();
                near[i] = if near[i] == b'a' { b'b' } else { b'a' };
                let near = String::from_utf8(near).expect("ascii");
                proptest::prop_assert!(!s.holds(&near));
            }
        }
    }
}
