//! The process-wide clock ticker (`livedict-clock`, which caches the wall clock every
//! millisecond for reads and writes) parks once the store is idle, even while the store's expiry
//! driver goes on waking to look at the time. A file of its own: the ticker is shared by every
//! store of the process, so another test's reads would keep it running.

use std::time::{Duration, Instant};

use livedict::LiveDict;

/// The voluntary context switches of this process's `livedict-clock` thread, if it exists.
fn ticker_switches() -> Option<u64> {
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let task = task.ok()?.path();
        let name = std::fs::read_to_string(task.join("comm")).ok()?;
        if name.trim() != "livedict-clock" {
            continue;
        }
        let status = std::fs::read_to_string(task.join("status")).ok()?;
        return status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|n| n.trim().parse().ok());
    }
    None
}

#[test]
fn the_clock_ticker_parks_when_the_store_is_idle() -> livedict::Result<()> {
    let store = LiveDict::new();
    for i in 0..100 {
        store.set_bytes_with(&format!("k{i}"), b"v", Duration::from_secs(3600))?;
    }
    assert!(store.get_bytes("k1")?.is_some());
    let started = Instant::now();
    // Started by the first use, on its own thread.
    while ticker_switches().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no ticker thread"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut last = ticker_switches().expect("the ticker thread stays");
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = ticker_switches().expect("the ticker thread stays");
        if now == last {
            break; // parked: no wake-up in half a second, where it ticks every 10 ms
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the ticker still ticks after 15 s of an idle store ({now} wake-ups)"
        );
        last = now;
    }
    // And it starts again with the next operation.
    store.set_bytes_with("k1", b"w", Duration::from_secs(3600))?;
    assert_eq!(&store.get_bytes("k1")?.expect("stored")[..], b"w");
    std::thread::sleep(Duration::from_millis(100));
    assert!(ticker_switches().expect("the ticker thread stays") > last);
    Ok(())
}
