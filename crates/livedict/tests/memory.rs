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
