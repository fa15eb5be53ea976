//! The per-shard timer queue: one record per entry that has a deadline, popped in deadline order.
//!
//! Records live in a slab (a vector of reusable slots) and are ordered by a binary min-heap of
//! small `(deadline, slot, generation)` items. A record holds its entry's key hash, not its key:
//! the shard finds the entry by that hash and by the record's id, which the entry's slot holds
//! (so scheduling copies no key, and a long key is not allocated twice). Cancelling a record
//! frees its slot at once (reused by the next record); its heap item stays behind, recognised as
//! stale by its generation, and is discarded when it reaches the top or when stale items outnumber
//! live records (an in-place rebuild). So the queue holds the entries with a deadline, never keys
//! without a TTL or deleted keys, with at most as many stale heap items as live ones; popping
//! costs O(log n) per due record, so a sweep costs in proportion to what is due.
//!
//! Why not a B-tree (as before): popping from a `BTreeMap` frees its nodes as they empty, and
//! with glibc's allocator the free of a node next to free memory starts a consolidation of every
//! small chunk freed since the last one (the expired values): single pops took 5-160 ms under a
//! stream of expirations. The slab and the heap keep their memory (their capacity stays at the
//! largest number of timers the shard has held, as a hash table's does), so popping frees
//! nothing.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::num::NonZeroU32;

use crate::clock::Millis;

/// Identifies one record: its deadline, its slab slot and the slot's generation when it was
/// scheduled. The generation is never zero, so `Option<TimerId>` takes no more room.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct TimerId {
    pub(super) deadline: Millis,
    slot: u32,
    generation: NonZeroU32,
}

/// A slab slot: the key hash of the record it holds (or held), and its generation (bumped on
/// every release, so that the heap items and ids of released records are known as stale).
#[derive(Debug)]
struct Record {
    hash: u64,
    generation: NonZeroU32,
}

#[derive(Debug, Default)]
pub(super) struct TimerQueue {
    heap: BinaryHeap<Reverse<TimerId>>,
    records: Vec<Record>,
    free: Vec<u32>,
    /// Heap items whose record was cancelled.
    stale: usize,
}

/// Below this many stale items the heap is not rebuilt, however few the live records.
const MIN_STALE_TO_COMPACT: usize = 1024;

impl TimerQueue {
    /// Schedules a record for the entry whose key has `hash`.
    pub(super) fn schedule(&mut self, deadline: Millis, hash: u64) -> TimerId {
        let slot = match self.free.pop() {
            Some(slot) => {
                self.records[slot as usize].hash = hash;
                slot
            }
            None => {
                let slot =
                    u32::try_from(self.records.len()).expect("fewer than 2^32 timers in one shard");
                self.records.push(Record {
                    hash,
                    generation: NonZeroU32::MIN,
                });
                slot
            }
        };
        let id = TimerId {
            deadline,
            slot,
            generation: self.records[slot as usize].generation,
        };
        self.heap.push(Reverse(id));
        id
    }

    fn is_current(&self, id: &TimerId) -> bool {
        self.records[id.slot as usize].generation == id.generation
    }

    /// Frees the record's slot and returns its key hash; `None` if it was freed already.
    fn release(&mut self, id: TimerId) -> Option<u64> {
        let record = &mut self.records[id.slot as usize];
        if record.generation != id.generation {
            return None;
        }
        record.generation = record.generation.checked_add(1).unwrap_or(NonZeroU32::MIN);
        self.free.push(id.slot);
        Some(record.hash)
    }

    pub(super) fn cancel(&mut self, id: TimerId) {
        if self.release(id).is_none() {
            return;
        }
        self.stale += 1;
        self.discard_stale_top();
        if self.stale >= MIN_STALE_TO_COMPACT && self.stale > self.heap.len() - self.stale {
            // In place: no allocation, no free.
            let records = &self.records;
            self.heap
                .retain(|Reverse(id)| records[id.slot as usize].generation == id.generation);
            self.stale = 0;
        }
    }

    /// Pops stale items off the top, so that the top is always a live record.
    fn discard_stale_top(&mut self) {
        while let Some(Reverse(top)) = self.heap.peek() {
            if self.is_current(top) {
                break;
            }
            self.heap.pop();
            self.stale -= 1;
        }
    }

    /// The earliest record's deadline.
    pub(super) fn first_deadline(&self) -> Option<Millis> {
        self.heap.peek().map(|Reverse(id)| id.deadline)
    }

    /// Removes and returns the earliest record (its id and key hash) if it is due at `now`.
    pub(super) fn pop_due(&mut self, now: Millis) -> Option<(TimerId, u64)> {
        let Reverse(top) = *self.heap.peek()?;
        if top.deadline > now {
            return None;
        }
        self.heap.pop();
        let hash = self.release(top);
        self.discard_stale_top();
        debug_assert!(hash.is_some(), "the top of the timer heap is never stale");
        hash.map(|hash| (top, hash))
    }

    /// The records due at `now` (ids and key hashes), in no particular order: the part of the
    /// heap whose deadlines are at most `now` (a subtree at its root), so the cost follows what
    /// is due.
    pub(super) fn due(&self, now: Millis) -> impl Iterator<Item = (TimerId, u64)> {
        let items = self.heap.as_slice();
        let mut pending = Vec::new();
        if !items.is_empty() {
            pending.push(0usize);
        }
        std::iter::from_fn(move || {
            while let Some(i) = pending.pop() {
                let Reverse(id) = &items[i];
                if id.deadline > now {
                    continue;
                }
                pending.extend(
                    [2 * i + 1, 2 * i + 2]
                        .into_iter()
                        .filter(|&c| c < items.len()),
                );
                if self.is_current(id) {
                    return Some((*id, self.records[id.slot as usize].hash));
                }
            }
            None
        })
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.heap.len() - self.stale
    }

    pub(super) fn clear(&mut self) {
        self.heap.clear();
        self.records.clear();
        self.free.clear();
        self.stale = 0;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn an_optional_timer_id_takes_sixteen_bytes() {
        // It lives in every entry's slot.
        assert_eq!(std::mem::size_of::<Option<TimerId>>(), 16);
    }

    #[test]
    fn pops_in_deadline_order_only_when_due() {
        let mut q = TimerQueue::default();
        let b = q.schedule(20, 2);
        q.schedule(10, 1);
        q.schedule(20, 3);
        assert_eq!(q.first_deadline(), Some(10));
        assert!(q.pop_due(9).is_none());
        assert_eq!(q.pop_due(10).unwrap().1, 1);
        assert_eq!(q.due(20).count(), 2);
        q.cancel(b);
        assert_eq!(q.len(), 1);
        assert_eq!(q.due(20).count(), 1);
        assert_eq!(q.pop_due(100).unwrap().1, 3);
        assert!(q.pop_due(u64::MAX).is_none());
        assert_eq!(q.first_deadline(), None);
    }

    #[test]
    fn a_cancelled_record_never_fires_even_when_its_slot_is_reused() {
        let mut q = TimerQueue::default();
        let old = q.schedule(10, 1);
        q.cancel(old);
        q.cancel(old); // twice: no effect
        let new = q.schedule(30, 2);
        assert_eq!(q.first_deadline(), Some(30), "the stale top was discarded");
        q.cancel(old); // the slot now belongs to `new`
        assert_eq!(q.len(), 1);
        assert!(q.pop_due(20).is_none());
        assert_eq!(q.pop_due(30).unwrap(), (new, 2));
    }

    #[test]
    fn stale_items_never_outnumber_live_records_by_much() {
        let mut q = TimerQueue::default();
        let ids: Vec<TimerId> = (0..10_000)
            .map(|i| q.schedule(1_000 + (i * 7919) % 10_000, i))
            .collect();
        for id in &ids[..9_990] {
            q.cancel(*id);
            assert!(q.stale <= (q.heap.len() - q.stale).max(MIN_STALE_TO_COMPACT));
        }
        assert_eq!(q.len(), 10);
        assert!(q.heap.len() <= 10 + MIN_STALE_TO_COMPACT);
        // The slots are reused: scheduling as many again allocates no new ones.
        let slots = q.records.len();
        for i in 0..9_990 {
            q.schedule(5, i);
        }
        assert_eq!(q.records.len(), slots);
    }

    proptest::proptest! {
        /// Against an ordered map of the live records: schedules, cancels and pops at random give
        /// the same records, in deadline order (ties by schedule order are not promised), and
        /// `due` and `first_deadline` agree with it.
        #[test]
        fn behaves_like_an_ordered_map(
            ops in proptest::collection::vec((0u8..4, 0u64..50, 0usize..64), 0..400)
        ) {
            let mut q = TimerQueue::default();
            let mut model: BTreeMap<(Millis, u32, u32), u64> = BTreeMap::new();
            let mut live: Vec<TimerId> = Vec::new();
            for (n, (op, t, pick)) in ops.into_iter().enumerate() {
                match op {
                    0 | 1 => {
                        let hash = n as u64;
                        let id = q.schedule(t, hash);
                        model.insert((id.deadline, id.slot, id.generation.get()), hash);
                        live.push(id);
                    }
                    2 if !live.is_empty() => {
                        let id = live.swap_remove(pick % live.len());
                        q.cancel(id);
                        model.remove(&(id.deadline, id.slot, id.generation.get()));
                    }
                    _ => {
                        let want_due = model.range(..=(t, u32::MAX, u32::MAX)).count();
                        proptest::prop_assert_eq!(q.due(t).count(), want_due);
                        while let Some((id, hash)) = q.pop_due(t) {
                            let first = model.keys().next().copied().expect("a record in the model");
                            proptest::prop_assert_eq!(id.deadline, first.0);
                            let removed = model.remove(&(id.deadline, id.slot, id.generation.get()));
                            proptest::prop_assert_eq!(removed, Some(hash));
                            live.retain(|l| *l != id);
                        }
                    }
                }
                proptest::prop_assert_eq!(q.len(), model.len());
                proptest::prop_assert_eq!(q.first_deadline(), model.keys().next().map(|k| k.0));
            }
        }
    }
}
