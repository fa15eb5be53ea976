//! Locks and `get_or_compute` across processes, on SQLite and Redis: 4 processes × 250
//! lock-protected read-modify-writes of one counter end at exactly 1000, fencing tokens only grow,
//! and under concurrent misses a loader runs once per key across processes.
//!
//! Child processes are this test binary run again with `LIVEDICT_CHILD` set (see
//! [`child_process`]); the backend they open is named by `LIVEDICT_LOCK_BACKEND`.
#![cfg(feature = "sqlite")]

mod children;
#[cfg(feature = "redis")]
mod redis_servers;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use livedict::{LiveDict, Result, SqliteBackend};

const PROCESSES: usize = 4;
const ROUNDS: u64 = 250;
const COMPUTE_KEYS: usize = 5;

fn fresh_sqlite() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("livedict-locks");
    std::fs::create_dir_all(&dir).unwrap();
    let path: PathBuf = dir.join(format!(
        "{}-{}.db",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    format!("sqlite:{}", path.display())
}

#[cfg(feature = "redis")]
fn fresh_redis() -> String {
    format!(
        "redis:{}@{}",
        redis_servers::fresh_prefix(),
        redis_servers::server_url()
    )
}

/// Opens the store a test named: `sqlite:PATH` or `redis:PREFIX@URL`.
fn open(spec: &str) -> Result<LiveDict> {
    let builder = LiveDict::builder();
    let builder = if let Some(path) = spec.strip_prefix("sqlite:") {
        builder.backend(SqliteBackend::open(path)?)
    } else {
        #[cfg(feature = "redis")]
        {
            let (prefix, url) = spec
                .strip_prefix("redis:")
                .and_then(|s| s.split_once('@'))
                .expect("a backend spec");
            builder.backend(livedict::RedisBackend::open_with(
                url,
                livedict::RedisOptions::new().prefix(prefix),
            )?)
        }
        #[cfg(not(feature = "redis"))]
        panic!("unknown backend {spec}")
    };
    builder.build()
}

/// Role `locked_rmw`: `ROUNDS` times, takes the counter's lock, reads, adds one, writes
/// (get and set: not atomic by themselves), releases; reports each fencing token.
fn locked_rmw(store: &LiveDict) -> Result<()> {
    for _ in 0..ROUNDS {
        let guard = store
            .lock("counter-lock", Duration::from_secs(60))?
            .expect("the lock within a minute");
        let n: u64 = store.get("counter")?.unwrap_or(0);
        store.set("counter", &(n + 1))?;
        println!("CHILD:fence {}", guard.fence());
        assert!(guard.release()?, "the lease ran out while held");
    }
    println!("CHILD:done");
    Ok(())
}

/// Role `compute`: `get_or_compute` on every compute key, reporting each load it ran.
fn compute(store: &LiveDict) -> Result<()> {
    for k in 0..COMPUTE_KEYS {
        let key = format!("computed{k}");
        let v: String = store.get_or_compute(&key, || {
            println!("CHILD:loaded {key}");
            std::thread::sleep(Duration::from_millis(30)); // others miss meanwhile
            Ok::<_, std::io::Error>(format!("value of {key}"))
        })?;
        assert_eq!(v, format!("value of {key}"));
    }
    println!("CHILD:done");
    Ok(())
}

#[test]
fn child_process() -> Result<()> {
    let Ok(role) = std::env::var("LIVEDICT_CHILD") else {
        return Ok(()); // run as a child only
    };
    let store = open(&std::env::var("LIVEDICT_LOCK_BACKEND").unwrap())?;
    match role.as_str() {
        "locked_rmw" => locked_rmw(&store),
        "compute" => compute(&store),
        other => panic!("unknown role {other}"),
    }
}

fn spawn_all(role: &str, spec: &str) -> Vec<std::process::Child> {
    (0..PROCESSES)
        .map(|_| children::spawn(role, &[("LIVEDICT_LOCK_BACKEND", spec.to_owned())]))
        .collect()
}

fn lock_protected_counter_reaches_exactly(spec: &str) -> Result<()> {
    let store = open(spec)?;
    let mut fences = Vec::new();
    for child in spawn_all("locked_rmw", spec) {
        let lines = children::lines(child);
        assert_eq!(lines.last().map(String::as_str), Some("done"));
        let mine: Vec<u64> = lines
            .iter()
            .filter_map(|l| l.strip_prefix("fence "))
            .map(|f| f.parse().unwrap())
            .collect();
        assert!(
            mine.windows(2).all(|w| w[0] < w[1]),
            "fencing tokens grow with every acquisition"
        );
        fences.extend(mine);
    }
    assert_eq!(
        store.get::<u64>("counter")?,
        Some(PROCESSES as u64 * ROUNDS)
    );
    fences.sort_unstable();
    fences.dedup();
    assert_eq!(
        fences.len() as u64,
        PROCESSES as u64 * ROUNDS,
        "each acquisition has its own fencing token"
    );
    Ok(())
}

fn loader_runs_once_per_key_across_processes(spec: &str) -> Result<()> {
    let mut loads = Vec::new();
    for child in spawn_all("compute", spec) {
        let lines = children::lines(child);
        assert_eq!(lines.last().map(String::as_str), Some("done"));
        loads.extend(
            lines
                .iter()
                .filter_map(|l| l.strip_prefix("loaded ").map(str::to_owned)),
        );
    }
    loads.sort();
    let expected: Vec<String> = (0..COMPUTE_KEYS).map(|k| format!("computed{k}")).collect();
    assert_eq!(
        loads, expected,
        "one load per key, in all processes together"
    );
    Ok(())
}

#[test]
fn sqlite_lock_protected_counter_across_processes() -> Result<()> {
    lock_protected_counter_reaches_exactly(&fresh_sqlite())
}

#[test]
fn sqlite_get_or_compute_loads_once_across_processes() -> Result<()> {
    loader_runs_once_per_key_across_processes(&fresh_sqlite())
}

#[test]
fn sqlite_lock_of_a_dead_process_frees_itself_after_its_lease() -> Result<()> {
    let spec = fresh_sqlite();
    let store = open(&spec)?;
    let held = store
        .lock_with("orphan", Duration::ZERO, Duration::from_millis(200))?
        .unwrap();
    std::mem::forget(held); // as if the holder died: nobody releases it
    assert!(open(&spec)?.lock("orphan", Duration::ZERO)?.is_none());
    let later = open(&spec)?.lock("orphan", Duration::from_secs(10))?;
    assert!(later.is_some(), "the lease frees the lock");
    Ok(())
}

#[cfg(feature = "redis")]
#[test]
fn redis_lock_protected_counter_across_processes() -> Result<()> {
    lock_protected_counter_reaches_exactly(&fresh_redis())
}

#[cfg(feature = "redis")]
#[test]
fn redis_get_or_compute_loads_once_across_processes() -> Result<()> {
    loader_runs_once_per_key_across_processes(&fresh_redis())
}

#[cfg(feature = "redis")]
#[test]
fn redis_lock_of_a_dead_process_frees_itself_after_its_lease() -> Result<()> {
    let spec = fresh_redis();
    let store = open(&spec)?;
    let held = store
        .lock_with("orphan", Duration::ZERO, Duration::from_millis(200))?
        .unwrap();
    std::mem::forget(held);
    assert!(open(&spec)?.lock("orphan", Duration::ZERO)?.is_none());
    assert!(
        open(&spec)?
            .lock("orphan", Duration::from_secs(10))?
            .is_some()
    );
    Ok(())
}
