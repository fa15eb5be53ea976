//! Model-based property test: random sequences of operations, with a manual clock moving between
//! them, applied both to a store and to a plain `BTreeMap` model; every answer must agree.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use livedict::{Backend, Clock, KeyTtl, LiveDict, ManualClock, MemoryBackend, Ttl, WriteOptions};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Set {
        key: u8,
        value: i64,
        ttl: Option<u64>,
        sliding: bool,
    },
    SetKeepTtl {
        key: u8,
        value: i64,
    },
    Get {
        key: u8,
    },
    Peek {
        key: u8,
    },
    Delete {
        key: u8,
    },
    Incr {
        key: u8,
        delta: i64,
    },
    Expire {
        key: u8,
        ttl: u64,
    },
    Persist {
        key: u8,
    },
    SetDefault {
        key: u8,
        value: i64,
    },
    Ttl {
        key: u8,
    },
    Len,
    Keys,
    Advance {
        ms: u64,
    },
    Sweep,
    Clear,
    Pop {
        key: u8,
    },
    PopItem,
    /// `update` adding `delta` (a missing key starts at 0), keeping the TTL.
    Update {
        key: u8,
        delta: i64,
    },
    /// An all-or-nothing batch: set one key (no TTL), delete another.
    Batch {
        set: u8,
        value: i64,
        delete: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let key = 0u8..8;
    prop_oneof![
        4 => (key.clone(), any::<i32>(), proptest::option::of(1u64..50), any::<bool>())
            .prop_map(|(key, v, ttl, sliding)| Op::Set { key, value: v as i64, ttl, sliding }),
        1 => (key.clone(), any::<i32>()).prop_map(|(key, v)| Op::SetKeepTtl { key, value: v as i64 }),
        3 => key.clone().prop_map(|key| Op::Get { key }),
        1 => key.clone().prop_map(|key| Op::Peek { key }),
        2 => key.clone().prop_map(|key| Op::Delete { key }),
        2 => (key.clone(), -5i64..5).prop_map(|(key, delta)| Op::Incr { key, delta }),
        1 => (key.clone(), 1u64..50).prop_map(|(key, ttl)| Op::Expire { key, ttl }),
        1 => key.clone().prop_map(|key| Op::Persist { key }),
        1 => (key.clone(), any::<i32>()).prop_map(|(key, v)| Op::SetDefault { key, value: v as i64 }),
        1 => key.clone().prop_map(|key| Op::Ttl { key }),
        1 => Just(Op::Len),
        1 => Just(Op::Keys),
        3 => (0u64..30).prop_map(|ms| Op::Advance { ms }),
        1 => Just(Op::Sweep),
        1 => Just(Op::Clear),
        1 => key.clone().prop_map(|key| Op::Pop { key }),
        1 => Just(Op::PopItem),
        2 => (key.clone(), -5i64..5).prop_map(|(key, delta)| Op::Update { key, delta }),
        1 => (key.clone(), any::<i32>(), key.clone())
            .prop_map(|(set, value, delete)| Op::Batch { set, value: value as i64, delete }),
    ]
}

/// The reference: value, deadline, sliding TTL.
#[derive(Default)]
struct Model {
    now: u64,
    map: BTreeMap<String, (i64, Option<u64>, u64)>,
}

impl Model {
    fn live(&mut self, key: &str) -> Option<&mut (i64, Option<u64>, u64)> {
        let now = self.now;
        if self
            .map
            .get(key)
            .is_some_and(|e| e.1.is_some_and(|d| d <= now))
        {
            self.map.remove(key);
        }
        self.map.get_mut(key)
    }

    fn touch(&mut self, key: &str) -> Option<i64> {
        let now = self.now;
        let e = self.live(key)?;
        if e.2 > 0 {
            e.1 = Some(now + e.2);
        }
        Some(e.0)
    }

    /// What `incr` and `update(+delta)` do: add to a live value (renewing a sliding deadline,
    /// keeping the TTL), or start a new key without TTL.
    fn add(&mut self, key: &str, delta: i64) -> i64 {
        let now = self.now;
        match self.live(key) {
            Some(e) => {
                e.0 += delta;
                if e.2 > 0 {
                    e.1 = Some(now + e.2);
                }
                e.0
            }
            None => {
                self.map.insert(key.to_owned(), (delta, None, 0));
                delta
            }
        }
    }

    fn purge(&mut self) {
        let now = self.now;
        self.map.retain(|_, e| e.1.is_none_or(|d| d > now));
    }
}

fn check(ops: Vec<Op>, backend: Arc<dyn Backend>) {
    let clock = ManualClock::starting_at(1_000_000);
    let store = LiveDict::builder()
        .clock(Clock::Manual(clock.clone()))
        .shared_backend(backend)
        .build()
        .unwrap();
    let mut model = Model {
        now: 1_000_000,
        ..Model::default()
    };
    for (step, op) in ops.into_iter().enumerate() {
        let ctx = format!("step {step}: {op:?}");
        match op {
            Op::Set {
                key,
                value,
                ttl,
                sliding,
            } => {
                let k = format!("k{key}");
                let opts = match ttl {
                    Some(t) => WriteOptions::ttl(Duration::from_millis(t)).sliding(sliding),
                    None => WriteOptions::never(),
                };
                store.set_with(&k, &value, opts).unwrap();
                let deadline = ttl.map(|t| model.now + t);
                let slide = if sliding { ttl.unwrap_or(0) } else { 0 };
                model.map.insert(k, (value, deadline, slide));
            }
            Op::SetKeepTtl { key, value } => {
                let k = format!("k{key}");
                store.set_with(&k, &value, Ttl::Keep).unwrap();
                let now = model.now;
                match model.live(&k) {
                    Some(e) => {
                        e.0 = value;
                        if e.2 > 0 {
                            e.1 = Some(now + e.2);
                        }
                    }
                    None => {
                        model.map.insert(k, (value, None, 0));
                    }
                }
            }
            Op::Get { key } => {
                let k = format!("k{key}");
                assert_eq!(store.get::<i64>(&k).unwrap(), model.touch(&k), "{ctx}");
            }
            Op::Peek { key } => {
                let k = format!("k{key}");
                let expected = model.live(&k).map(|e| e.0);
                assert_eq!(store.peek::<i64>(&k).unwrap(), expected, "{ctx}");
            }
            Op::Delete { key } => {
                let k = format!("k{key}");
                let expected = model.live(&k).is_some();
                model.map.remove(&k);
                assert_eq!(store.delete(&k).unwrap(), expected, "{ctx}");
            }
            Op::Incr { key, delta } => {
                let k = format!("k{key}");
                let new = model.add(&k, delta);
                assert_eq!(store.incr(&k, delta).unwrap(), new, "{ctx}");
            }
            Op::Expire { key, ttl } => {
                let k = format!("k{key}");
                let now = model.now;
                let expected = match model.live(&k) {
                    Some(e) => {
                        e.1 = Some(now + ttl);
                        e.2 = 0;
                        true
                    }
                    None => false,
                };
                let got = store.expire(&k, Duration::from_millis(ttl)).unwrap();
                assert_eq!(got, expected, "{ctx}");
            }
            Op::Persist { key } => {
                let k = format!("k{key}");
                let expected = match model.live(&k) {
                    Some(e) => {
                        e.1 = None;
                        e.2 = 0;
                        true
                    }
                    None => false,
                };
                assert_eq!(store.persist(&k).unwrap(), expected, "{ctx}");
            }
            Op::SetDefault { key, value } => {
                let k = format!("k{key}");
                let expected = match model.live(&k) {
                    Some(e) => e.0,
                    None => {
                        model.map.insert(k.clone(), (value, None, 0));
                        value
                    }
                };
                assert_eq!(store.setdefault(&k, value).unwrap(), expected, "{ctx}");
            }
            Op::Ttl { key } => {
                let k = format!("k{key}");
                let now = model.now;
                let expected = match model.live(&k) {
                    None => KeyTtl::Missing,
                    Some((_, None, _)) => KeyTtl::Never,
                    Some((_, Some(d), _)) => KeyTtl::Remaining(Duration::from_millis(*d - now)),
                };
                assert_eq!(store.ttl(&k).unwrap(), expected, "{ctx}");
            }
            Op::Len => {
                model.purge();
                assert_eq!(store.len().unwrap(), model.map.len(), "{ctx}");
            }
            Op::Keys => {
                model.purge();
                let mut keys = store.keys().unwrap();
                keys.sort();
                let expected: Vec<String> = model.map.keys().cloned().collect();
                assert_eq!(keys, expected, "{ctx}");
            }
            Op::Advance { ms } => {
                clock.advance(Duration::from_millis(ms));
                model.now += ms;
            }
            Op::Sweep => {
                store.sweep_expired().unwrap();
                model.purge();
            }
            Op::Clear => {
                model.purge();
                assert_eq!(store.clear().unwrap(), model.map.len(), "{ctx}");
                model.map.clear();
            }
            Op::Pop { key } => {
                let k = format!("k{key}");
                let expected = model.live(&k).map(|e| e.0);
                model.map.remove(&k);
                assert_eq!(store.pop::<i64>(&k).unwrap(), expected, "{ctx}");
            }
            Op::PopItem => {
                model.purge();
                match store.popitem::<i64>().unwrap() {
                    None => assert!(model.map.is_empty(), "{ctx}"),
                    Some((k, v)) => {
                        let removed = model.map.remove(&k).map(|e| e.0);
                        assert_eq!(removed, Some(v), "{ctx}");
                    }
                }
            }
            Op::Update { key, delta } => {
                let k = format!("k{key}");
                let new = model.add(&k, delta);
                let got = store
                    .update(&k, |old: Option<i64>| old.unwrap_or(0) + delta)
                    .unwrap();
                assert_eq!(got, new, "{ctx}");
            }
            Op::Batch { set, value, delete } => {
                let (ks, kd) = (format!("k{set}"), format!("k{delete}"));
                let mut batch = store.batch();
                batch.set_with(&ks, &value, Ttl::Never).unwrap();
                batch.delete(&kd).unwrap();
                store.apply(batch).unwrap();
                model.map.insert(ks, (value, None, 0));
                model.map.remove(&kd);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn memory_backend_matches_the_model(ops in proptest::collection::vec(op(), 1..120)) {
        check(ops, Arc::new(MemoryBackend::with_shards(2)));
    }
}

#[cfg(feature = "sqlite")]
proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn sqlite_backend_matches_the_model(ops in proptest::collection::vec(op(), 1..80)) {
        let dir = tempfile::tempdir().unwrap();
        let backend = livedict::SqliteBackend::open(dir.path().join("model.db")).unwrap();
        check(ops, Arc::new(backend));
    }
}

// The Redis backend against the model, on the server `scripts/test` starts (fails without one:
// see `tests/redis_backend.rs`). Two buckets, so that operations cross buckets; the store's
// manual clock judges deadlines.
#[cfg(feature = "redis")]
proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn redis_backend_matches_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let url = std::env::var("LIVEDICT_TEST_REDIS_URL")
            .expect("LIVEDICT_TEST_REDIS_URL is not set: scripts/test starts a Redis server");
        let prefix = format!(
            "model{}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let backend = livedict::RedisBackend::open_with(
            &url,
            livedict::RedisOptions::new()
                .prefix(prefix)
                .buckets(2)
                .server_clock(false),
        )
        .unwrap();
        check(ops, Arc::new(backend));
    }
}
