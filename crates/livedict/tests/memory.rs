//! The conformance suite on the memory backend, plus memory-specific scenarios.

#[macro_use]
mod conformance;

use std::sync::Arc;

use livedict::MemoryBackend;

conformance_suite!(memory, || Arc::new(MemoryBackend::new()));
conformance_suite!(memory_one_shard, || Arc::new(MemoryBackend::with_shards(1)));
conformance_suite!(
    memory_encrypted,
    || Arc::new(MemoryBackend::new()),
    conformance::Mode::Encrypted
);
#[cfg(feature = "async")]
conformance_suite!(
    memory_async,
    || Arc::new(MemoryBackend::new()),
    conformance::Mode::Async
);
#[cfg(feature = "async")]
conformance_suite!(
    memory_async_encrypted,
    || Arc::new(MemoryBackend::new()),
    conformance::Mode::AsyncEncrypted
);

/// The real clock's path (a cached time far from a deadline, the precise clock near one): an entry
/// is visible before its deadline and invisible from it, as the operating system's clock tells.
/// One of the few tests that sleeps: it is about the system clock itself.
#[test]
fn system_clock_deadlines_are_exact_near_the_deadline() -> livedict::Result<()> {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};
    let now_ms = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    let store = livedict::LiveDict::builder().active_expiry(false).build()?;
    for round in 0..2 {
        let key = format!("k{round}");
        let written = now_ms();
        store.set_with(&key, &round, Duration::from_millis(1500))?;
        // Well before the deadline (the cached clock answers): visible.
        assert_eq!(store.get::<i32>(&key)?, Some(round));
        // Wait until the operating system's clock is past the deadline (written + 1500 ms,
        // rounded down to the millisecond when set, so + 1501 is surely past it).
        while now_ms() < written + 1501 {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            store.get::<i32>(&key)?,
            None,
            "round {round}: visible past its deadline"
        );
        assert!(!store.contains(&key)?);
        assert_eq!(store.ttl(&key)?, livedict::KeyTtl::Missing);
    }
    Ok(())
}

/// Many threads publishing through a small queue into two workers: the `Block` policy's waits for
/// room, the workers' batching, sleeps and wake-ups lose no event, keep each key's events in order
/// (each key is written by one thread here) and never hang.
#[test]
fn many_publishers_through_a_small_queue_lose_nothing() -> livedict::Result<()> {
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    use livedict::{EventKind, EventSettings, LiveDict, QueueFullPolicy};

    const THREADS: usize = 16;
    const SETS: i64 = 2_000;
    let store = LiveDict::builder()
        .events(
            EventSettings::default()
                .workers(2)
                .queue_capacity(16)
                .when_full(QueueFullPolicy::Block),
        )
        .build()?;
    let last: Arc<Mutex<HashMap<String, i64>>> = Arc::default();
    let out_of_order = Arc::new(Mutex::new(Vec::new()));
    let (l, o) = (last.clone(), out_of_order.clone());
    store.on(EventKind::Set, move |e| {
        let v: i64 = e.value()?.ok_or("a set event without a value")?;
        let mut last = l.lock().unwrap();
        let before = last.insert(e.key().to_owned(), v);
        if before.is_some_and(|b| b >= v) {
            o.lock().unwrap().push((e.key().to_owned(), before, v));
        }
        Ok(())
    })?;
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || -> livedict::Result<()> {
                for i in 0..SETS {
                    store.set(&format!("t{t}:{}", i % 8), &i)?;
                    if i % 500 == 499 {
                        // Let the workers run dry and go to sleep now and then.
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap()?;
    }
    let want = THREADS as u64 * SETS as u64;
    let give_up = Instant::now() + Duration::from_secs(60);
    while store.stats().hooks_delivered < want && Instant::now() < give_up {
        std::thread::sleep(Duration::from_millis(5));
    }
    let stats = store.stats();
    assert_eq!(stats.hooks_delivered, want);
    assert_eq!(stats.events_dropped, 0);
    assert_eq!(stats.hooks_failed, 0);
    assert!(
        out_of_order.lock().unwrap().is_empty(),
        "{:?}",
        out_of_order.lock().unwrap()
    );
    assert_eq!(last.lock().unwrap().len(), THREADS * 8);
    Ok(())
}

/// A call that overruns its timeout while no more stuck threads may be abandoned is waited for
/// and counted once, as timed out, not again as delivered when it returns.
#[test]
fn an_overrun_waited_for_is_counted_once() -> livedict::Result<()> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use livedict::{EventKind, EventSettings, LiveDict};

    let store = LiveDict::builder()
        .events(
            EventSettings::default()
                .workers(1)
                .max_abandoned(0)
                .hook_timeout(Duration::from_millis(30)),
        )
        .build()?;
    let returned = Arc::new(AtomicUsize::new(0));
    let r = returned.clone();
    store.on(EventKind::Set, move |e| {
        if e.key() == "slow" {
            std::thread::sleep(Duration::from_millis(300));
        }
        r.fetch_add(1, Ordering::SeqCst);
        Ok(())
    })?;
    store.set("slow", &1)?;
    store.set("fast", &2)?;
    let give_up = Instant::now() + Duration::from_secs(30);
    while returned.load(Ordering::SeqCst) < 2 && Instant::now() < give_up {
        std::thread::sleep(Duration::from_millis(5));
    }
    // The second call's count lands when the worker next looks at its (now empty) work list.
    while store.stats().hooks_delivered < 1 && Instant::now() < give_up {
        std::thread::sleep(Duration::from_millis(5));
    }
    let st = store.stats();
    assert_eq!(
        (st.hooks_timed_out, st.hooks_delivered, st.hooks_failed),
        (1, 1, 0)
    );
    Ok(())
}

/// `get_or_compute` on a namespace handle locks the key under the namespace's prefix once. (The
/// lock's name had the prefix twice, so a long prefix made a valid key refused as too long.)
#[test]
fn get_or_compute_in_a_namespace_prefixes_its_lock_once() -> livedict::Result<()> {
    let store = livedict::LiveDict::new();
    let ns = livedict::Namespace::new(&format!("{}:{{id}}:", "p".repeat(400)))?;
    let scoped = store.namespace_one(&ns, "1")?;
    let key = "k".repeat(300);
    assert_eq!(
        scoped.get_or_compute(&key, || Ok::<_, livedict::Error>(7))?,
        7
    );
    assert_eq!(
        store.get::<i32>(&format!("{}{key}", scoped.prefix()))?,
        Some(7)
    );
    Ok(())
}

/// A loader that panics leaves the key unlocked: the panic goes on to the caller, and the next
/// caller (or anyone taking the key's lock) does not wait for the lock's 30 s lease.
#[test]
fn a_panicking_loader_releases_the_key() -> livedict::Result<()> {
    let store = livedict::LiveDict::new();
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        store.get_or_compute("k", || -> Result<i32, livedict::Error> { panic!("loader") })
    }));
    assert!(panicked.is_err(), "the panic reaches the caller");
    assert!(
        store.lock("k", std::time::Duration::ZERO)?.is_some(),
        "the key's lock was released"
    );
    Ok(())
}

/// A value whose `Serialize` reads the store it is being written to (see the test below).
struct ReadsTheStore(i32);

static READ_FROM_SERIALIZE: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);
static STORE_OF_SERIALIZE: std::sync::OnceLock<livedict::LiveDict> = std::sync::OnceLock::new();

impl serde::Serialize for ReadsTheStore {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let read = STORE_OF_SERIALIZE.get().unwrap().get::<i32>("other");
        *READ_FROM_SERIALIZE.lock().unwrap() = Some(format!("{read:?}"));
        s.serialize_i32(self.0)
    }
}

impl<'de> serde::Deserialize<'de> for ReadsTheStore {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        i32::deserialize(d).map(ReadsTheStore)
    }
}

/// An update's value type is the application's code too: its `Serialize` touching the store
/// (while the backend holds the key) is `Error::Reentrant`, as in the update's closure. (It ran
/// outside the re-entrancy guard: a read of another key went through under the key's write
/// lock, and one of a key of the same shard deadlocked.)
#[test]
fn an_update_values_serialize_touching_the_store_is_reentrant() -> livedict::Result<()> {
    let store = STORE_OF_SERIALIZE.get_or_init(livedict::LiveDict::new);
    store.set("k", &1)?;
    let new = store.update("k", |old: Option<ReadsTheStore>| {
        ReadsTheStore(old.map_or(0, |v| v.0) + 1)
    })?;
    assert_eq!(new.0, 2);
    assert_eq!(
        READ_FROM_SERIALIZE.lock().unwrap().as_deref(),
        Some("Err(Reentrant)")
    );
    Ok(())
}
