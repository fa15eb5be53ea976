//! A lane's queue of events, kept as bytes: what a publisher pushes is a copy of the event into
//! one growing buffer, with no allocation and no reference count on the publisher's thread.
//!
//! Publishers run on the application's threads and workers on their own, so anything a publisher
//! allocates for an event is freed by a worker (or comes back to be freed), and either way it
//! travels between cores and between the allocator's per-thread caches: that, not the hand-off
//! itself, was most of an event's cost on the caller's thread. Here a publisher appends a record
//! (kind, cause, time, key, value, previous value) to the lane's log; the worker takes the whole
//! log at once and rebuilds [`Event`]s from it on its own thread, one at a time. Their values
//! are slices of the log's buffer (unless that buffer is larger than [`SHARED_BATCH_MAX`]), and the buffer
//! goes back to the publishers once no event holds it. Values larger than [`INLINE_MAX`] and
//! entry hooks travel beside the log, in order.

use std::collections::VecDeque;

use bytes::Bytes;
use compact_str::CompactString;
use smallvec::SmallVec;

use super::{Cause, Event, EventKind, HookFn};
use crate::clock::Millis;
use crate::crypto::Sealer;

/// Values up to this size are copied into the log; larger ones are shared (a copy would cost
/// more than the reference count).
pub(crate) const INLINE_MAX: usize = 1024;

/// The largest batch whose events share its buffer. A hook call the watchdog gives up on keeps
/// its event, and with it a shared buffer, for as long as it runs: this bounds what it can keep
/// (a batch is ~64 events, ~7 KiB, unless a backlog built up; a backlog's events are copies).
pub(crate) const SHARED_BATCH_MAX: usize = 256 * 1024;

const HAS_VALUE: u8 = 1;
const VALUE_BESIDE: u8 = 2;
const HAS_PREVIOUS: u8 = 4;
const PREVIOUS_BESIDE: u8 = 8;
const HAS_ENTRY_HOOK: u8 = 16;
/// A record's fixed header: kind, cause, flags, time (8), and the lengths (4 each) of the key, of
/// the value and of the previous value as copied into the log (0 when absent or beside).
const HEADER: usize = 23;

/// What travels beside the log, in the order of the records that refer to it.
pub(crate) enum Beside {
    Value(Bytes),
    Hook(HookFn),
}

/// Bytes an event refers to: a stored value (shared if large), or a copy the caller kept.
#[derive(Clone, Copy)]
pub(crate) enum EventBytes<'a> {
    Stored(&'a Bytes),
    Copied(&'a [u8]),
}

impl<'a> EventBytes<'a> {
    fn as_slice(self) -> &'a [u8] {
        match self {
            EventBytes::Stored(b) => b,
            EventBytes::Copied(b) => b,
        }
    }

    fn len(self) -> usize {
        self.as_slice().len()
    }

    fn to_bytes(self) -> Bytes {
        match self {
            EventBytes::Stored(b) => b.clone(),
            EventBytes::Copied(b) => Bytes::copy_from_slice(b),
        }
    }
}

/// What a write keeps of its value for its `Set` event (the backend takes the value itself): a
/// copy on the stack when small, which costs no allocation and no reference count, else the
/// value shared.
pub(crate) enum KeptValue {
    Copy(SmallVec<[u8; KEPT_INLINE]>),
    Shared(Bytes),
}

/// Values up to this size are kept by copying.
const KEPT_INLINE: usize = 128;

impl KeptValue {
    #[inline]
    pub(crate) fn of(value: &Bytes) -> KeptValue {
        if value.len() <= KEPT_INLINE {
            KeptValue::Copy(SmallVec::from_slice(value))
        } else {
            KeptValue::Shared(value.clone())
        }
    }

    pub(crate) fn bytes(&self) -> EventBytes<'_> {
        match self {
            KeptValue::Copy(b) => EventBytes::Copied(b),
            KeptValue::Shared(b) => EventBytes::Stored(b),
        }
    }
}

/// One event to publish, borrowed from the publishing call.
pub(crate) struct Published<'a> {
    pub(crate) kind: EventKind,
    pub(crate) cause: Cause,
    pub(crate) key: &'a str,
    pub(crate) value: Option<EventBytes<'a>>,
    pub(crate) previous: Option<EventBytes<'a>>,
    pub(crate) time: Millis,
    pub(crate) entry_hook: Option<HookFn>,
}

/// The events of one lane not yet taken by its worker.
#[derive(Default)]
pub(crate) struct EventLog {
    bytes: Vec<u8>,
    beside: VecDeque<Beside>,
    /// Records in `bytes`, the dropped ones at the front included.
    records: usize,
    /// Records at the front dropped by the `DropOldest` policy and not yet cut off.
    dropped_front: usize,
}

/// An event and the entry hook that goes with it, if any.
pub(crate) struct Job {
    pub(crate) event: Event,
    pub(crate) entry_hook: Option<HookFn>,
}

impl EventLog {
    /// Events queued (dropped ones not counted).
    pub(crate) fn len(&self) -> usize {
        self.records - self.dropped_front
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends one event: a fixed header (kind, cause, flags, time, and the lengths of the key
    /// and of the values copied in), then the key and those values.
    #[inline]
    pub(crate) fn push(&mut self, event: Published<'_>) {
        let mut flags = 0;
        let mut lens = [0u32; 2];
        let mut inline: [&[u8]; 2] = [&[], &[]];
        for (i, (v, has, beside)) in [
            (event.value, HAS_VALUE, VALUE_BESIDE),
            (event.previous, HAS_PREVIOUS, PREVIOUS_BESIDE),
        ]
        .into_iter()
        .enumerate()
        {
            if let Some(v) = v {
                flags |= has;
                if v.len() > INLINE_MAX {
                    flags |= beside;
                    self.beside.push_back(Beside::Value(v.to_bytes()));
                } else {
                    inline[i] = v.as_slice();
                    lens[i] = v.len() as u32;
                }
            }
        }
        if let Some(hook) = event.entry_hook {
            flags |= HAS_ENTRY_HOOK;
            self.beside.push_back(Beside::Hook(hook));
        }
        let key = event.key.as_bytes();
        let mut header = [0u8; HEADER];
        header[0] = kind_code(event.kind);
        header[1] = cause_code(event.cause);
        header[2] = flags;
        header[3..11].copy_from_slice(&event.time.to_le_bytes());
        header[11..15].copy_from_slice(&(key.len() as u32).to_le_bytes());
        header[15..19].copy_from_slice(&lens[0].to_le_bytes());
        header[19..23].copy_from_slice(&lens[1].to_le_bytes());
        self.bytes
            .reserve(HEADER + key.len() + inline[0].len() + inline[1].len());
        self.bytes.extend_from_slice(&header);
        self.bytes.extend_from_slice(key);
        self.bytes.extend_from_slice(inline[0]);
        self.bytes.extend_from_slice(inline[1]);
        self.records += 1;
    }

    /// Drops the oldest queued event (`DropOldest`). Dropped records are cut off the front once
    /// they are as many as the live ones, so that a stuck worker cannot make the log grow.
    pub(crate) fn drop_oldest(&mut self) {
        if self.is_empty() {
            return;
        }
        self.dropped_front += 1;
        if self.dropped_front >= self.len() {
            let cut = self.past_dropped().at;
            self.bytes.drain(..cut);
            self.records -= self.dropped_front;
            self.dropped_front = 0;
        }
    }

    /// A reader placed after the dropped records at the front (what they had beside the log
    /// consumed with them).
    fn past_dropped(&mut self) -> Reader<'_> {
        let mut reader = Reader {
            bytes: &self.bytes,
            shared: None,
            at: 0,
            beside: &mut self.beside,
        };
        for _ in 0..self.dropped_front {
            if reader.skip_record().is_none() {
                break;
            }
        }
        reader
    }

    /// Takes every queued event out, leaving the log empty; `spare` is an empty buffer to keep
    /// (its allocation is reused).
    pub(crate) fn take(&mut self, spare: Vec<u8>) -> EventLog {
        debug_assert!(spare.is_empty());
        EventLog {
            bytes: std::mem::replace(&mut self.bytes, spare),
            beside: std::mem::take(&mut self.beside),
            records: std::mem::take(&mut self.records),
            dropped_front: std::mem::take(&mut self.dropped_front),
        }
    }

    /// The taken log as a batch for a worker, which reads its events one at a time.
    pub(crate) fn into_batch(mut self) -> Batch {
        let left = self.len();
        let at = self.past_dropped().at;
        // By the buffer's capacity, not the log's length: a shared buffer is kept whole by any
        // event that lives on, and a publisher may be writing into a backlog's large buffer.
        let share = self.bytes.capacity() <= SHARED_BATCH_MAX;
        Batch {
            bytes: Bytes::from(std::mem::take(&mut self.bytes)),
            share,
            at,
            left,
            lost: 0,
            beside: std::mem::take(&mut self.beside),
        }
    }
}

/// A taken log, which the worker turns into events one at a time as it delivers them (not all
/// at once: a backlog's million events would be a million owned events in memory before the
/// first is delivered). Events' values up to [`INLINE_MAX`] bytes are slices of the log's
/// buffer, which goes back to the publishers ([`reclaim`]) once they are gone: two reference
/// counts instead of two allocations and two frees an event, which is what lets one worker keep
/// up with a publisher.
#[derive(Default)]
pub(crate) struct Batch {
    bytes: Bytes,
    /// Whether events share the buffer (else their values are copies).
    share: bool,
    /// Where the next record starts.
    at: usize,
    /// Records not read yet.
    left: usize,
    /// Records lost to an unreadable one, not yet counted.
    lost: usize,
    beside: VecDeque<Beside>,
}

impl Batch {
    /// Events not read yet.
    pub(crate) fn len(&self) -> usize {
        self.left
    }

    /// The next event (`None` when all were read).
    pub(crate) fn next_job(&mut self, sealer: Option<&Sealer>) -> Option<Job> {
        if self.left == 0 {
            return None;
        }
        let mut reader = Reader {
            bytes: &self.bytes,
            shared: self.share.then_some(&self.bytes),
            at: self.at,
            beside: &mut self.beside,
        };
        let Some(job) = reader.record(sealer) else {
            // Only this module writes the log; a record it cannot read is a bug.
            tracing::error!("livedict: unreadable event record; the rest of the batch is lost");
            self.lost += std::mem::take(&mut self.left);
            return None;
        };
        self.at = reader.at;
        self.left -= 1;
        Some(job)
    }

    /// Events lost to an unreadable record since the last call (to count them as dropped).
    pub(crate) fn take_lost(&mut self) -> usize {
        std::mem::take(&mut self.lost)
    }

    /// The log's buffer, for [`reclaim`] once the batch's events are gone.
    pub(crate) fn into_buffer(self) -> Bytes {
        self.bytes
    }
}

/// `value` of an event that shares its batch's buffer, as a hook may keep it: values up to
/// [`INLINE_MAX`] bytes are slices of that buffer, and are copied.
pub(crate) fn detached(value: &Bytes) -> Bytes {
    if value.len() <= INLINE_MAX {
        Bytes::copy_from_slice(value)
    } else {
        value.clone()
    }
}

/// The buffer of a read batch back, emptied, if none of its events is still alive (a hook call
/// the watchdog gave up on may hold one); else a new one.
pub(crate) fn reclaim(batch: Bytes) -> Vec<u8> {
    match batch.try_into_mut() {
        Ok(mut buffer) => {
            // Emptied first: turning it back into a vector moves what it holds to the front.
            buffer.clear();
            Vec::from(buffer)
        }
        Err(_) => Vec::new(),
    }
}

fn kind_code(kind: EventKind) -> u8 {
    kind.bit()
}

fn kind_of(code: u8) -> Option<EventKind> {
    EventKind::ALL.into_iter().find(|k| k.bit() == code)
}

fn cause_code(cause: Cause) -> u8 {
    match cause {
        Cause::Explicit => 0,
        Cause::Expired => 1,
        Cause::Inactive => 2,
        Cause::Cleared => 3,
    }
}

fn cause_of(code: u8) -> Option<Cause> {
    Some(match code {
        0 => Cause::Explicit,
        1 => Cause::Expired,
        2 => Cause::Inactive,
        3 => Cause::Cleared,
        _ => return None,
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
    /// `bytes` as shared: values are slices of it instead of copies.
    shared: Option<&'a Bytes>,
    at: usize,
    beside: &'a mut VecDeque<Beside>,
}

/// Where a record's value is.
enum Located {
    Absent,
    Beside(Bytes),
    InLog(std::ops::Range<usize>),
}

/// A record's header, read.
struct Header {
    kind: u8,
    cause: u8,
    flags: u8,
    time: Millis,
    key_len: usize,
    lens: [usize; 2],
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let b = self.bytes.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(b)
    }

    fn header(&mut self) -> Option<Header> {
        let h = self.take(HEADER)?;
        let u32_at = |i: usize| -> Option<usize> {
            Some(u32::from_le_bytes(h.get(i..i + 4)?.try_into().ok()?) as usize)
        };
        Some(Header {
            kind: h[0],
            cause: h[1],
            flags: h[2],
            time: Millis::from_le_bytes(h.get(3..11)?.try_into().ok()?),
            key_len: u32_at(11)?,
            lens: [u32_at(15)?, u32_at(19)?],
        })
    }

    /// Passes over the value `i` (0: value, 1: previous) of the record whose header is `h`:
    /// where it is, without building it.
    fn locate(&mut self, h: &Header, i: usize) -> Option<Located> {
        let (has, beside) = [(HAS_VALUE, VALUE_BESIDE), (HAS_PREVIOUS, PREVIOUS_BESIDE)][i];
        if h.flags & has == 0 {
            return Some(Located::Absent);
        }
        if h.flags & beside != 0 {
            match self.beside.pop_front()? {
                Beside::Value(v) => Some(Located::Beside(v)),
                Beside::Hook(_) => None,
            }
        } else {
            let start = self.at;
            self.take(h.lens[i])?;
            Some(Located::InLog(start..self.at))
        }
    }

    /// The value `i` (0: value, 1: previous) of the record whose header is `h`.
    fn value(&mut self, h: &Header, i: usize) -> Option<Option<Bytes>> {
        Some(match self.locate(h, i)? {
            Located::Absent => None,
            Located::Beside(v) => Some(v),
            Located::InLog(range) => Some(match self.shared {
                Some(shared) => shared.slice(range),
                None => Bytes::copy_from_slice(&self.bytes[range]),
            }),
        })
    }

    fn hook(&mut self, flags: u8) -> Option<Option<HookFn>> {
        if flags & HAS_ENTRY_HOOK == 0 {
            return Some(None);
        }
        match self.beside.pop_front()? {
            Beside::Hook(h) => Some(Some(h)),
            Beside::Value(_) => None,
        }
    }

    fn record(&mut self, sealer: Option<&Sealer>) -> Option<Job> {
        let h = self.header()?;
        let kind = kind_of(h.kind)?;
        let cause = cause_of(h.cause)?;
        let key = CompactString::from_utf8(self.take(h.key_len)?).ok()?;
        let value = self.value(&h, 0)?;
        let previous = self.value(&h, 1)?;
        let entry_hook = self.hook(h.flags)?;
        Some(Job {
            event: Event {
                kind,
                cause,
                key,
                value,
                previous,
                time: h.time,
                sealer: sealer.cloned(),
                shares_batch: self.shared.is_some(),
            },
            entry_hook,
        })
    }

    /// Passes over one record (and what it has beside the log), building nothing.
    fn skip_record(&mut self) -> Option<()> {
        let h = self.header()?;
        self.take(h.key_len)?;
        for i in 0..2 {
            self.locate(&h, i)?;
        }
        self.hook(h.flags)?;
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn published<'a>(
        key: &'a str,
        value: Option<&'a Bytes>,
        previous: Option<&'a Bytes>,
    ) -> Published<'a> {
        Published {
            kind: EventKind::Set,
            cause: Cause::Explicit,
            key,
            value: value.map(EventBytes::Stored),
            previous: previous.map(EventBytes::Stored),
            time: 1_700_000_000_123,
            entry_hook: None,
        }
    }

    /// Every event of `batch`, read.
    fn read_all(batch: &mut Batch) -> Vec<Job> {
        std::iter::from_fn(|| batch.next_job(None)).collect()
    }

    fn unpack(log: &mut EventLog) -> Vec<Job> {
        read_all(&mut log.take(Vec::new()).into_batch())
    }

    #[test]
    fn events_come_back_as_pushed_in_order() {
        let small = Bytes::from_static(b"small");
        let large = Bytes::from(vec![7u8; INLINE_MAX + 1]);
        let mut log = EventLog::default();
        log.push(published("a", Some(&small), None));
        log.push(Published {
            kind: EventKind::Expire,
            cause: Cause::Expired,
            entry_hook: Some(Arc::new(|_| Ok(()))),
            ..published("ключ", Some(&large), Some(&small))
        });
        log.push(Published {
            kind: EventKind::Clear,
            cause: Cause::Cleared,
            ..published("", None, Some(&large))
        });
        assert_eq!(log.len(), 3);
        let jobs = unpack(&mut log);
        assert!(log.is_empty());
        assert_eq!(jobs.len(), 3);
        let e = &jobs[0].event;
        assert_eq!(
            (e.kind, e.cause, e.key(), e.time),
            (EventKind::Set, Cause::Explicit, "a", 1_700_000_000_123)
        );
        assert_eq!(
            (e.value.as_ref(), e.previous.as_ref()),
            (Some(&small), None)
        );
        assert!(jobs[0].entry_hook.is_none());
        let e = &jobs[1].event;
        assert_eq!(
            (e.kind, e.cause, e.key()),
            (EventKind::Expire, Cause::Expired, "ключ")
        );
        assert_eq!(
            (e.value.as_ref(), e.previous.as_ref()),
            (Some(&large), Some(&small))
        );
        assert!(jobs[1].entry_hook.is_some());
        let e = &jobs[2].event;
        assert_eq!(
            (e.kind, e.key(), e.value.as_ref(), e.previous.as_ref()),
            (EventKind::Clear, "", None, Some(&large))
        );
    }

    #[test]
    fn events_share_their_batch_buffer_until_cloned_or_taken() {
        let small = crate::codec::encode_raw(&[5u8; 40]);
        let mut log = EventLog::default();
        for k in ["a", "b"] {
            log.push(published(k, Some(&small), Some(&small)));
        }
        let mut batch = log.take(Vec::new()).into_batch();
        let jobs = read_all(&mut batch);
        let batch = batch.into_buffer();
        let buffer = batch.as_ptr_range();
        let in_batch = |b: &Bytes| buffer.contains(&b.as_ptr());
        let event = &jobs[0].event;
        assert!(event.shares_batch);
        assert!(in_batch(event.value.as_ref().unwrap()));
        assert!(in_batch(event.previous.as_ref().unwrap()));
        // What a hook can keep is its own.
        let kept = event.clone();
        assert!(!in_batch(kept.value.as_ref().unwrap()));
        assert!(!in_batch(kept.previous.as_ref().unwrap()));
        let bytes = event.value_bytes().unwrap().unwrap();
        assert!(!in_batch(&bytes));
        assert_eq!(kept.value, event.value);
        // The buffer comes back only once its events are gone.
        assert!(!batch.is_unique());
        drop(jobs);
        assert!(batch.is_unique());
        let length = batch.len();
        let spare = reclaim(batch);
        assert!(spare.is_empty() && spare.capacity() >= length);
        assert_eq!(spare.as_ptr(), buffer.start);
        assert_eq!(kept.value.unwrap(), small);
        assert_eq!(&bytes[..], &[5u8; 40][..]);
    }

    /// A log of one record fills its buffer exactly (a form `bytes` keeps apart): it comes back
    /// all the same.
    #[test]
    fn an_exactly_full_buffer_comes_back() {
        let value = Bytes::from_static(b"v");
        let mut log = EventLog::default();
        log.push(published("k", Some(&value), None));
        let mut batch = log.take(Vec::new()).into_batch();
        drop(read_all(&mut batch));
        let batch = batch.into_buffer();
        let (start, length) = (batch.as_ptr(), batch.len());
        let spare = reclaim(batch);
        assert!(spare.capacity() >= length);
        assert_eq!(spare.as_ptr(), start);
    }

    /// A backlog's batch is not shared: an event a stuck hook keeps holds only its own values.
    #[test]
    fn a_large_batch_gives_its_events_copies() {
        let value = Bytes::from(vec![9u8; 1000]);
        let mut log = EventLog::default();
        let keys: Vec<String> = (0..SHARED_BATCH_MAX / 1000 + 1)
            .map(|i| format!("k{i}"))
            .collect();
        for k in &keys {
            log.push(published(k, Some(&value), None));
        }
        let mut batch = log.take(Vec::new()).into_batch();
        let jobs = read_all(&mut batch);
        assert_eq!(jobs.len(), keys.len());
        let batch = batch.into_buffer();
        assert!(batch.len() > SHARED_BATCH_MAX);
        let buffer = batch.as_ptr_range();
        assert!(jobs.iter().all(|j| {
            let v = j.event.value.as_ref().unwrap();
            !j.event.shares_batch && v == &value && !buffer.contains(&v.as_ptr())
        }));
        assert!(batch.is_unique());
    }

    /// A small batch written into a backlog's large buffer (reused by the publishers) is not
    /// shared either: an event that lives on would keep the whole buffer. (Sharing was decided
    /// by the batch's length, and such an event pinned megabytes.)
    #[test]
    fn a_small_batch_in_a_large_buffer_gives_its_events_copies() {
        let value = Bytes::from_static(b"v");
        let mut log = EventLog::default();
        drop(log.take(Vec::with_capacity(2 * SHARED_BATCH_MAX)));
        log.push(published("k", Some(&value), None));
        let mut batch = log.take(Vec::new()).into_batch();
        let jobs = read_all(&mut batch);
        assert!(jobs.iter().all(|j| !j.event.shares_batch));
        assert!(batch.into_buffer().is_unique());
    }

    #[test]
    fn dropping_the_oldest_keeps_the_rest_in_order_and_bounded() {
        let large = Bytes::from(vec![1u8; INLINE_MAX + 10]);
        let mut log = EventLog::default();
        let keys: Vec<String> = (0..1000).map(|i| format!("k{i}")).collect();
        for (i, k) in keys.iter().enumerate() {
            let hook: Option<HookFn> = (i % 3 == 0).then(|| Arc::new(|_: &Event| Ok(())) as HookFn);
            log.push(Published {
                entry_hook: hook,
                ..published(k, (i % 2 == 0).then_some(&large), None)
            });
            if log.len() > 10 {
                log.drop_oldest();
            }
            // Dropped records are cut off before they outnumber the live ones.
            assert!(log.records <= 2 * 10 + 2);
        }
        assert_eq!(log.len(), 10);
        let jobs = unpack(&mut log);
        let got: Vec<&str> = jobs.iter().map(|j| j.event.key()).collect();
        let want: Vec<&str> = keys[990..].iter().map(String::as_str).collect();
        assert_eq!(got, want);
        for (j, i) in jobs.iter().zip(990..) {
            assert_eq!(j.entry_hook.is_some(), i % 3 == 0, "hook of k{i}");
            assert_eq!(j.event.value.is_some(), i % 2 == 0, "value of k{i}");
        }
    }

    /// One step of the model test.
    #[derive(Debug, Clone)]
    enum Op {
        Push {
            key: String,
            value: Option<usize>,
            previous: Option<usize>,
            hook: bool,
        },
        DropOldest,
        Take,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        let len = prop_oneof![0..40usize, (INLINE_MAX - 2)..(INLINE_MAX + 3)];
        prop_oneof![
            6 => ("[a-zé:]{0,12}", proptest::option::of(len.clone()), proptest::option::of(len), any::<bool>())
                .prop_map(|(key, value, previous, hook)| Op::Push { key, value, previous, hook }),
            2 => Just(Op::DropOldest),
            1 => Just(Op::Take),
        ]
    }

    /// What one pushed event should come back as.
    #[derive(Debug, PartialEq)]
    struct Expected {
        key: String,
        value: Option<Vec<u8>>,
        previous: Option<Vec<u8>>,
        hook: bool,
    }

    fn bytes_of(len: usize, seed: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + seed) as u8).collect()
    }

    proptest::proptest! {
        /// Any sequence of pushes, drops of the oldest and takes gives back exactly the events a
        /// plain queue would hold, in order, with their values and entry hooks.
        #[test]
        fn the_log_behaves_like_a_queue(ops in proptest::collection::vec(op(), 0..200)) {
            let mut log = EventLog::default();
            let mut model: VecDeque<Expected> = VecDeque::new();
            let mut spare = Vec::new();
            let check = |log: &mut EventLog, model: &mut VecDeque<Expected>, spare: &mut Vec<u8>| {
                let mut batch = log.take(std::mem::take(spare)).into_batch();
                proptest::prop_assert_eq!(batch.len(), model.len());
                let jobs = read_all(&mut batch);
                proptest::prop_assert_eq!(batch.len(), 0);
                let batch = batch.into_buffer();
                let got: Vec<Expected> = jobs
                    .into_iter()
                    .map(|j| Expected {
                        key: j.event.key().to_owned(),
                        value: j.event.value.map(|b| b.to_vec()),
                        previous: j.event.previous.map(|b| b.to_vec()),
                        hook: j.entry_hook.is_some(),
                    })
                    .collect();
                *spare = reclaim(batch);
                let want: Vec<Expected> = model.drain(..).collect();
                proptest::prop_assert_eq!(got, want);
                proptest::prop_assert!(log.is_empty());
                Ok(())
            };
            for (n, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Push { key, value, previous, hook } => {
                        let value = value.map(|l| Bytes::from(bytes_of(l, n)));
                        let previous = previous.map(|l| Bytes::from(bytes_of(l, n + 7)));
                        log.push(Published {
                            entry_hook: hook.then(|| Arc::new(|_: &Event| Ok(())) as HookFn),
                            ..published(&key, value.as_ref(), previous.as_ref())
                        });
                        model.push_back(Expected {
                            key,
                            value: value.map(|b| b.to_vec()),
                            previous: previous.map(|b| b.to_vec()),
                            hook,
                        });
                    }
                    Op::DropOldest => {
                        log.drop_oldest();
                        model.pop_front();
                    }
                    Op::Take => check(&mut log, &mut model, &mut spare)?,
                }
                proptest::prop_assert_eq!(log.len(), model.len());
            }
            check(&mut log, &mut model, &mut spare)?;
        }
    }
}
