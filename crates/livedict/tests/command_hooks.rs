//! Command hooks against real programs: the event arrives as JSON on stdin, the environment is
//! cleared, failures are counted, and runaway programs are killed by their limits.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use livedict::{CommandHook, EventKind, EventSettings, Hook, LiveDict, Result};

/// A temporary directory, removed when the returned guard drops.
fn temp_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    (dir, path)
}

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let give_up = Instant::now() + limit;
    while Instant::now() < give_up {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    f()
}

fn sh(script: &str) -> CommandHook {
    CommandHook::new("/bin/sh").arg("-c").arg(script)
}

#[test]
fn event_is_json_on_stdin_with_a_clean_environment() -> Result<()> {
    let (_guard, dir) = temp_dir();
    let out = dir.join("events.jsonl");
    let env_out = dir.join("env.txt");
    let store = LiveDict::new();
    let script = format!(
        "cat >> {out}; echo >> {out}; env > {env}",
        out = out.display(),
        env = env_out.display()
    );
    store
        .hook(Hook::command(EventKind::Set, sh(&script).env("HOOK_MODE", "audit")).key("user:1"))?;
    store.set("user:1", &serde_json::json!({"name": "ann"}))?;
    store.set("user:2", &1)?; // filtered out
    assert!(wait_until(Duration::from_secs(20), || store
        .stats()
        .hooks_delivered
        == 1));
    let line = std::fs::read_to_string(&out).unwrap();
    let event: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(event["kind"], "set");
    assert_eq!(event["key"], "user:1");
    assert_eq!(event["value"]["name"], "ann");
    assert_eq!(event["previous"], serde_json::Value::Null);
    let env = std::fs::read_to_string(&env_out).unwrap();
    assert!(env.contains("HOOK_MODE=audit"));
    assert!(env.lines().any(|l| l.starts_with("PATH=")));
    // Nothing of this process's environment leaks in (HOME is set for the test process).
    assert!(std::env::var("HOME").is_ok());
    assert!(
        !env.lines().any(|l| l.starts_with("HOME=")),
        "inherited: {env}"
    );
    Ok(())
}

#[test]
fn failing_program_is_counted_and_later_events_go_on() -> Result<()> {
    let store = LiveDict::new();
    store.hook(Hook::command(EventKind::Set, sh("cat > /dev/null; exit 3")))?;
    for i in 0..5 {
        store.set(&format!("k{i}"), &i)?;
    }
    assert!(wait_until(Duration::from_secs(20), || store
        .stats()
        .hooks_failed
        == 5));
    Ok(())
}

#[test]
fn runaway_program_is_killed_at_its_timeout() -> Result<()> {
    let (_guard, dir) = temp_dir();
    let marker = dir.join("child-survived");
    let store = LiveDict::builder()
        .events(EventSettings::default().workers(1))
        .build()?;
    // The program starts a grandchild that would write a marker later; the whole process group
    // is killed, so it never does.
    let script = format!("(sleep 3; touch {}) & sleep 60", marker.display());
    store.hook(Hook::command(
        EventKind::Set,
        sh(&script).timeout(Duration::from_millis(300)),
    ))?;
    let started = Instant::now();
    store.set("k", &1)?;
    assert!(wait_until(Duration::from_secs(20), || store
        .stats()
        .hooks_failed
        == 1));
    assert!(started.elapsed() < Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(4));
    assert!(!marker.exists(), "a process of the killed hook survived");
    Ok(())
}

#[test]
fn cpu_limit_stops_a_busy_loop() -> Result<()> {
    let store = LiveDict::new();
    store.hook(Hook::command(
        EventKind::Set,
        sh("while :; do :; done")
            .cpu_limit(Duration::from_secs(1))
            .timeout(Duration::from_secs(30)),
    ))?;
    let started = Instant::now();
    store.set("k", &1)?;
    assert!(wait_until(Duration::from_secs(25), || store
        .stats()
        .hooks_failed
        == 1));
    // Killed by RLIMIT_CPU after about a second of CPU, long before the 30 s timeout.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    Ok(())
}

#[test]
fn memory_limit_stops_a_greedy_program() -> Result<()> {
    let store = LiveDict::new();
    // Allocating 1 GiB under a 64 MiB address-space limit fails.
    store.hook(Hook::command(
        EventKind::Set,
        CommandHook::new("python3")
            .arg("-c")
            .arg("import sys; sys.stdin.read(); b = bytearray(1 << 30)")
            .memory_limit(64 << 20),
    ))?;
    // The same program with room enough succeeds.
    store.hook(Hook::command(
        EventKind::Delete,
        CommandHook::new("python3")
            .arg("-c")
            .arg("import sys; sys.stdin.read(); b = bytearray(1 << 20)")
            .memory_limit(1 << 30),
    ))?;
    store.set("k", &1)?;
    store.delete("k")?;
    assert!(wait_until(Duration::from_secs(30), || {
        let s = store.stats();
        s.hooks_failed == 1 && s.hooks_delivered == 1
    }));
    Ok(())
}
