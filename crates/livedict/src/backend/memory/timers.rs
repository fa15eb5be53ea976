//! The per-shard timer queue: deadlines ordered in a B-tree, one record per entry that has a
//! deadline.
//!
//! Records are removed when their entry is deleted, overwritten or made persistent, so the queue
//! holds exactly the entries with a deadline: never keys without a TTL, never deleted keys. Popping
//! due records costs O(log n) each, so a sweep costs in proportion to what is due, not to the
//! store's size.

use std::collections::BTreeMap;
use std::num::NonZeroU64;

use super::Key;
use crate::clock::Millis;

/// Identifies one record: its deadline and a per-queue sequence number (deadlines repeat). The
/// sequence number is never zero, so `Option<TimerId>` takes no more room than a `TimerId`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct TimerId {
    pub(super) deadline: Millis,
    seq: NonZeroU64,
}

#[derive(Debug)]
pub(super) struct TimerQueue {
    records: BTreeMap<TimerId, Key>,
    next_seq: NonZeroU64,
}

impl Default for TimerQueue {
    fn default() -> Self {
        TimerQueue {
            records: BTreeMap::new(),
            next_seq: NonZeroU64::MIN,
        }
    }
}

impl TimerQueue {
    pub(super) fn schedule(&mut self, deadline: Millis, key: Key) -> TimerId {
        let id = TimerId {
            deadline,
            seq: self.next_seq,
        };
        self.next_seq = self.next_seq.saturating_add(1);
        self.records.insert(id, key);
        id
    }

    pub(super) fn cancel(&mut self, id: TimerId) {
        self.records.remove(&id);
    }

    /// The earliest record's deadline.
    pub(super) fn first_deadline(&self) -> Option<Millis> {
        self.records.first_key_value().map(|(id, _)| id.deadline)
    }

    /// Removes and returns the earliest record if it is due at `now`.
    pub(super) fn pop_due(&mut self, now: Millis) -> Option<(TimerId, Key)> {
        let entry = self.records.first_entry()?;
        if entry.key().deadline > now {
            return None;
        }
        Some(entry.remove_entry())
    }

    /// The keys of records due at `now`.
    pub(super) fn due(&self, now: Millis) -> impl Iterator<Item = &Key> {
        self.records
            .range(
                ..=TimerId {
                    deadline: now,
                    seq: NonZeroU64::MAX,
                },
            )
            .map(|(_, key)| key)
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.records.len()
    }

    pub(super) fn clear(&mut self) {
        self.records.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_in_deadline_order_only_when_due() {
        let mut q = TimerQueue::default();
        let b = q.schedule(20, Key::new("b"));
        q.schedule(10, Key::new("a"));
        q.schedule(20, Key::new("c"));
        assert_eq!(q.first_deadline(), Some(10));
        assert!(q.pop_due(9).is_none());
        assert_eq!(&*q.pop_due(10).unwrap().1, "a");
        assert_eq!(q.due(20).count(), 2);
        q.cancel(b);
        assert_eq!(q.len(), 1);
        assert_eq!(&*q.pop_due(100).unwrap().1, "c");
        assert!(q.pop_due(u64::MAX).is_none());
    }
}
