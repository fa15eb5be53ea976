//! Child processes for multi-process tests: the test binary run again on its `child_process`
//! test, with `LIVEDICT_CHILD` naming the role and further variables as the test chooses. A child
//! reports through lines starting with `CHILD:` on its standard output.

#![allow(dead_code)]

use std::process::{Child, Command, Stdio};

/// Starts this test binary again as a child playing `role`, with `env` set.
pub fn spawn(role: &str, env: &[(&str, String)]) -> Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "child_process",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("LIVEDICT_CHILD", role)
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    for (name, value) in env {
        cmd.env(name, value);
    }
    cmd.spawn().unwrap()
}

/// The `CHILD:` lines a finished child printed; panics if it failed.
pub fn lines(child: Child) -> Vec<String> {
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "child failed: {:?}", out.status);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once("CHILD:").map(|(_, rest)| rest.to_owned()))
        .collect()
}

// ---- roles and checks shared by the multi-process tests of every shared backend ------------------

use std::collections::HashMap;
use std::time::{Duration, Instant};

use livedict::{EventKind, LiveDict, Result};

/// Role `incr`: adds 1 to `counter` `n` times, then reports `done`.
pub fn incrementer(store: &LiveDict, n: u64) -> Result<()> {
    for _ in 0..n {
        store.incr("counter", 1)?;
    }
    println!("CHILD:done");
    Ok(())
}

/// Role `sweep`: reports `expired KEY VALUE` for each entry this process's sweeps remove, until
/// the store is empty, then `done`.
pub fn sweeper(store: &LiveDict) -> Result<()> {
    store.on(EventKind::Expire, |e| {
        println!("CHILD:expired {} {}", e.key(), e.value::<u64>()?.unwrap());
        Ok(())
    })?;
    let started = Instant::now();
    while store.len()? > 0
        || store.stats().expirations == 0 && started.elapsed() < Duration::from_secs(5)
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "entries never expired"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500)); // let the other sweepers finish
    store.close(); // delivers the queued hook events
    println!("CHILD:done");
    Ok(())
}

/// Writes `k0..kN` (value i) in one batch, expiring `first` to `first + spread` from now, from a
/// store that never sweeps.
pub fn fill_expiring(store: &LiveDict, n: u64, first: Duration, spread: Duration) -> Result<()> {
    let mut batch = store.batch();
    let spread = spread.as_millis() as u64;
    for i in 0..n {
        batch.set_with(
            &format!("k{i}"),
            &i,
            first + Duration::from_millis(i % spread.max(1)),
        )?;
    }
    store.apply(batch)
}

/// Checks the reports of `sweep` children: each of `k0..kN` expired exactly once, in one of
/// them, with its own value.
pub fn assert_each_expired_once(children: Vec<Child>, n: u64) {
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut per_child = Vec::new();
    for c in children {
        let lines = lines(c);
        let expired: Vec<_> = lines
            .iter()
            .filter_map(|l| l.strip_prefix("expired "))
            .collect();
        per_child.push(expired.len());
        for e in expired {
            let (key, value) = e.split_once(' ').unwrap();
            let value: u64 = value.parse().unwrap();
            assert_eq!(key, format!("k{value}"), "the event carries the last value");
            assert!(
                seen.insert(key.to_owned(), value).is_none(),
                "{key} expired twice"
            );
        }
    }
    assert_eq!(seen.len() as u64, n, "per process: {per_child:?}");
}
