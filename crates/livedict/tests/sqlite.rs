//! The conformance suite on the SQLite backend, plus what only a file can show: format checks,
//! several processes on one file, and a writer killed mid-stream.
//!
//! Child processes are this test binary run again with `LIVEDICT_CHILD` set (see
//! [`child_process`]).
#![cfg(feature = "sqlite")]

#[macro_use]
mod conformance;
mod children;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use livedict::{Durability, Error, LiveDict, Result, SqliteBackend, SqliteOptions};

/// A fresh database path under cargo's per-target temporary directory.
fn fresh_path() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("livedict-sqlite");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!(
        "{}-{}.db",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    path
}

conformance_suite!(sqlite, || Arc::new(
    SqliteBackend::open(fresh_path()).unwrap()
));
conformance_suite!(
    sqlite_encrypted,
    || Arc::new(SqliteBackend::open(fresh_path()).unwrap()),
    conformance::Mode::Encrypted
);
#[cfg(feature = "async")]
conformance_suite!(
    sqlite_async,
    || Arc::new(SqliteBackend::open(fresh_path()).unwrap()),
    conformance::Mode::Async
);

fn open(path: &Path) -> Result<LiveDict> {
    LiveDict::builder()
        .backend(SqliteBackend::open(path)?)
        .build()
}

// ---- the file ------------------------------------------------------------------------------------

#[test]
fn reopening_keeps_values_and_deadlines() -> Result<()> {
    let path = fresh_path();
    {
        let store = open(&path)?;
        store.set("forever", &1)?;
        store.set_with("later", &2, Duration::from_secs(3600))?;
        store.set_bytes("raw", b"\x00\xff")?;
    }
    let store = open(&path)?;
    assert_eq!(store.get::<i32>("forever")?, Some(1));
    assert!(
        matches!(store.ttl("later")?, livedict::KeyTtl::Remaining(d) if d > Duration::from_secs(3500))
    );
    assert_eq!(store.get_bytes("raw")?.as_deref(), Some(&b"\x00\xff"[..]));
    Ok(())
}

#[test]
fn a_file_that_is_not_a_store_is_refused_and_left_alone() -> Result<()> {
    // Not a database at all.
    let text = fresh_path();
    std::fs::write(
        &text,
        b"just some text, not a database at all, long enough to matter",
    )
    .unwrap();
    let before = std::fs::read(&text).unwrap();
    assert!(matches!(SqliteBackend::open(&text), Err(Error::Format(_))));
    assert_eq!(std::fs::read(&text).unwrap(), before);

    // Another application's SQLite database.
    let other = fresh_path();
    {
        let c = rusqlite::Connection::open(&other).unwrap();
        c.execute_batch("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL); INSERT INTO invoices VALUES (1, 9.5);")
            .unwrap();
    }
    let before = std::fs::read(&other).unwrap();
    match SqliteBackend::open(&other) {
        Err(Error::Format(msg)) => assert!(msg.contains("not a livedict store"), "{msg}"),
        other => panic!("expected a format error, got {other:?}"),
    }
    assert_eq!(
        std::fs::read(&other).unwrap(),
        before,
        "the foreign database was changed"
    );
    assert!(!Path::new(&format!("{}-wal", other.display())).exists());

    // Another application's database with no table yet: a view only, or identifiers only.
    for setup in [
        "CREATE VIEW answer AS SELECT 42 AS value;",
        "PRAGMA application_id = 1234; PRAGMA user_version = 7;",
    ] {
        let other = fresh_path();
        {
            let c = rusqlite::Connection::open(&other).unwrap();
            c.execute_batch(setup).unwrap();
        }
        let before = std::fs::read(&other).unwrap();
        match SqliteBackend::open(&other) {
            Err(Error::Format(msg)) => assert!(msg.contains("not a livedict store"), "{msg}"),
            other => panic!("{setup}: expected a format error, got {other:?}"),
        }
        assert_eq!(std::fs::read(&other).unwrap(), before, "{setup}: changed");
        assert!(!Path::new(&format!("{}-wal", other.display())).exists());
    }

    // A livedict store of a newer format.
    let newer = fresh_path();
    drop(open(&newer)?);
    {
        let c = rusqlite::Connection::open(&newer).unwrap();
        c.execute(
            "UPDATE livedict_meta SET value = '99' WHERE name = 'format'",
            [],
        )
        .unwrap();
    }
    match SqliteBackend::open(&newer) {
        Err(Error::Format(msg)) => assert!(msg.contains("99"), "{msg}"),
        other => panic!("expected a format error, got {other:?}"),
    }
    Ok(())
}

/// A store with a manual clock at `start` ms and no background expiry: sweeps run when the test
/// says.
fn open_manual(path: &Path, start: u64) -> Result<(LiveDict, livedict::ManualClock)> {
    let clock = livedict::ManualClock::starting_at(start);
    let store = LiveDict::builder()
        .backend(SqliteBackend::open(path)?)
        .clock(livedict::Clock::Manual(clock.clone()))
        .active_expiry(false)
        .build()?;
    Ok((store, clock))
}

/// `(deadline, sweep_at)` of `key`'s row, read with plain rusqlite.
fn sweep_columns(path: &Path, key: &str) -> (Option<i64>, Option<i64>) {
    rusqlite::Connection::open(path)
        .unwrap()
        .query_row(
            "SELECT deadline, sweep_at FROM livedict_entries WHERE key = ?1",
            [key],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
}

/// More rows reached early than one sweep call moves (256) stand before a due one: the sweep goes
/// on until it reaches it (it stopped after the first call, which returned nothing, and left the
/// due entry to later polls, seconds late with thousands of such rows).
#[test]
fn a_due_entry_behind_many_early_rows_is_swept_at_once() -> Result<()> {
    let path = fresh_path();
    let (store, clock) = open_manual(&path, 1_000_000_000)?;
    let s = Duration::from_secs(1);
    let keys: Vec<String> = (0..1000).map(|i| format!("k{i}")).collect();
    for k in &keys {
        store.set_with(k, &1, 10 * s)?;
    }
    clock.advance(5 * s);
    for k in &keys {
        store.set_with(k, &2, 600 * s)?; // their sweep times stay at 10 s
    }
    store.set_with("due", &3, 5 * s + Duration::from_millis(50))?;
    clock.advance(5 * s + Duration::from_millis(100));
    assert_eq!(store.sweep_expired()?, 1);
    assert!(!store.contains("due")?);
    assert_eq!(store.len()?, 1000);
    Ok(())
}

/// A sweep call whose window mixes early rows and due ones (fewer of each than a call's limit)
/// is not taken for the last one.
#[test]
fn due_entries_among_and_behind_early_rows_are_all_swept() -> Result<()> {
    let path = fresh_path();
    let (store, clock) = open_manual(&path, 1_000_000_000)?;
    let ms = Duration::from_millis;
    let group =
        |name: &str, n: usize| -> Vec<String> { (0..n).map(|i| format!("{name}{i}")).collect() };
    let (early1, due1, early2, due2) = (
        group("e1-", 200),
        group("d1-", 56),
        group("e2-", 300),
        group("d2-", 1),
    );
    // Sweep order: 200 early rows, 56 due, 300 early, 1 due.
    for (keys, ttl) in [
        (&early1, 10_000),
        (&due1, 10_100),
        (&early2, 10_200),
        (&due2, 10_300),
    ] {
        for k in keys.iter() {
            store.set_with(k, &1, ms(ttl))?;
        }
    }
    clock.advance(ms(5_000));
    for k in early1.iter().chain(&early2) {
        store.set_with(k, &2, ms(600_000))?;
    }
    clock.advance(ms(5_500));
    assert_eq!(store.sweep_expired()?, 57);
    assert_eq!(store.len()?, 500);
    Ok(())
}

#[test]
fn a_later_deadline_leaves_the_sweep_index_alone_and_expiry_stays_exact() -> Result<()> {
    let path = fresh_path();
    let start = 1_000_000_000;
    let (store, clock) = open_manual(&path, start)?;
    store.set_with("k", &1, Duration::from_secs(10))?;
    assert_eq!(
        sweep_columns(&path, "k"),
        (Some(start as i64 + 10_000), Some(start as i64 + 10_000))
    );
    // An overwrite with a later deadline keeps the earlier sweep time (no index write).
    store.set_with("k", &2, Duration::from_secs(20))?;
    assert_eq!(
        sweep_columns(&path, "k"),
        (Some(start as i64 + 20_000), Some(start as i64 + 10_000))
    );
    // The sweep reaches it early, removes nothing, and moves it to its real deadline.
    clock.advance(Duration::from_secs(15));
    assert_eq!(store.sweep_expired()?, 0);
    assert_eq!(store.get::<i32>("k")?, Some(2));
    assert_eq!(
        sweep_columns(&path, "k"),
        (Some(start as i64 + 20_000), Some(start as i64 + 20_000))
    );
    // An earlier deadline (expire) moves the sweep time down with it.
    store.expire("k", Duration::from_secs(1))?;
    assert_eq!(
        sweep_columns(&path, "k"),
        (Some(start as i64 + 16_000), Some(start as i64 + 16_000))
    );
    clock.advance(Duration::from_secs(1));
    assert_eq!(store.sweep_expired()?, 1);
    assert_eq!(store.get::<i32>("k")?, None);
    // No TTL after a TTL: the stale sweep time is cleared by the sweep, and nothing expires.
    store.set_with("n", &3, Duration::from_secs(5))?;
    store.set("n", &4)?;
    assert_eq!(
        sweep_columns(&path, "n"),
        (None, Some(start as i64 + 21_000))
    );
    clock.advance(Duration::from_secs(10));
    assert_eq!(store.sweep_expired()?, 0);
    assert_eq!(sweep_columns(&path, "n"), (None, None));
    assert_eq!(store.get::<i32>("n")?, Some(4));
    // Persist clears it at once.
    store.set_with("p", &5, Duration::from_secs(5))?;
    store.persist("p")?;
    assert_eq!(sweep_columns(&path, "p"), (None, None));
    Ok(())
}

#[test]
fn a_format_1_store_is_upgraded_when_opened() -> Result<()> {
    let path = fresh_path();
    let start: i64 = 1_000_000_000;
    {
        // The schema livedict 0.1's format 1 wrote, with three entries.
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE livedict_meta (name TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL) WITHOUT ROWID;
             INSERT INTO livedict_meta VALUES ('format', '1');
             CREATE TABLE livedict_entries (key TEXT PRIMARY KEY NOT NULL, value BLOB NOT NULL,
                 deadline INTEGER, sliding INTEGER NOT NULL, last_access INTEGER NOT NULL) WITHOUT ROWID;
             CREATE INDEX livedict_entries_deadline ON livedict_entries (deadline) WHERE deadline IS NOT NULL;",
        )
        .unwrap();
        let json = |v: &str| [&[0xD7u8, 1, 1][..], v.as_bytes()].concat();
        for (key, value, deadline) in [
            ("forever", "1", None),
            ("soon", "2", Some(start + 5_000)),
            ("later", "3", Some(start + 60_000)),
        ] {
            c.execute(
                "INSERT INTO livedict_entries VALUES (?1, ?2, ?3, 0, ?4)",
                rusqlite::params![key, json(value), deadline, start],
            )
            .unwrap();
        }
    }
    let (store, clock) = open_manual(&path, start as u64)?;
    let c = rusqlite::Connection::open(&path).unwrap();
    let format: String = c
        .query_row(
            "SELECT value FROM livedict_meta WHERE name = 'format'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(format, "2");
    let indexes: Vec<String> = c
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'index' AND tbl_name = 'livedict_entries' AND sql IS NOT NULL")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(indexes, ["livedict_entries_sweep"]);
    assert_eq!(
        sweep_columns(&path, "soon"),
        (Some(start + 5_000), Some(start + 5_000))
    );
    assert_eq!(sweep_columns(&path, "forever"), (None, None));
    assert_eq!(store.get::<i32>("forever")?, Some(1));
    assert_eq!(store.get::<i32>("later")?, Some(3));
    clock.advance(Duration::from_secs(5));
    assert_eq!(store.sweep_expired()?, 1);
    assert_eq!(store.get::<i32>("soon")?, None);
    assert_eq!(store.len()?, 2);
    drop(store);
    // Opening it again finds it upgraded already.
    let (store, _) = open_manual(&path, start as u64)?;
    assert_eq!(store.get::<i32>("later")?, Some(3));
    Ok(())
}

#[test]
fn the_file_is_a_plain_sqlite_database() -> Result<()> {
    let path = fresh_path();
    let store = open(&path)?;
    store.set("user:1", &serde_json::json!({"name": "ann"}))?;
    store.set_with("otp", &"1234", Duration::from_secs(60))?;
    let c = rusqlite::Connection::open(&path).unwrap();
    let rows: HashMap<String, (Vec<u8>, Option<i64>)> = c
        .prepare("SELECT key, value, deadline FROM livedict_entries")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    let (value, deadline) = &rows["user:1"];
    assert_eq!(
        &value[3..],
        br#"{"name":"ann"}"#,
        "header then the JSON payload"
    );
    assert_eq!(*deadline, None);
    let now = livedict::Clock::System.now() as i64;
    let otp_deadline = rows["otp"].1.unwrap();
    assert!(otp_deadline > now && otp_deadline <= now + 60_000);
    // And the sqlite3 shell reads it too, where it is installed.
    if let Ok(out) = Command::new("sqlite3")
        .arg(&path)
        .arg("SELECT key FROM livedict_entries ORDER BY key")
        .output()
    {
        assert!(out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stdout), "otp\nuser:1\n");
    }
    Ok(())
}

#[test]
fn full_durability_works() -> Result<()> {
    let path = fresh_path();
    let backend =
        SqliteBackend::open_with(&path, SqliteOptions::default().durability(Durability::Full))?;
    let store = LiveDict::builder().backend(backend).build()?;
    store.set("k", &1)?;
    assert_eq!(store.incr("k", 1)?, 2);
    Ok(())
}

#[test]
fn readers_see_other_stores_writes_at_once() -> Result<()> {
    let path = fresh_path();
    let a = open(&path)?;
    let b = open(&path)?;
    a.set("k", &1)?;
    assert_eq!(b.get::<i32>("k")?, Some(1));
    b.delete("k")?;
    assert!(!a.contains("k")?);
    Ok(())
}

#[test]
fn copy_between_memory_and_sqlite() -> Result<()> {
    let memory = LiveDict::new();
    memory.set("a", &serde_json::json!({"x": 1}))?;
    memory.set_bytes("b", b"raw")?;
    memory.set_with("c", &3, Duration::from_secs(600))?;
    let path = fresh_path();
    let on_disk = open(&path)?;
    assert_eq!(memory.copy_to(&on_disk)?, 3);
    drop(on_disk);
    let reopened = open(&path)?;
    let back = LiveDict::new();
    assert_eq!(reopened.copy_to(&back)?, 3);
    assert_eq!(
        back.get::<serde_json::Value>("a")?,
        Some(serde_json::json!({"x": 1}))
    );
    assert_eq!(back.get_bytes("b")?.as_deref(), Some(&b"raw"[..]));
    assert!(
        matches!(back.ttl("c")?, livedict::KeyTtl::Remaining(d) if d > Duration::from_secs(590))
    );
    Ok(())
}

// ---- several processes ---------------------------------------------------------------------------

/// The body of a child process; does nothing in a normal test run.
#[test]
fn child_process() -> Result<()> {
    let Ok(role) = std::env::var("LIVEDICT_CHILD") else {
        return Ok(());
    };
    let path = PathBuf::from(std::env::var("LIVEDICT_DB").unwrap());
    let arg: u64 = std::env::var("LIVEDICT_ARG").unwrap().parse().unwrap();
    match role.as_str() {
        "incr" => children::incrementer(&open(&path)?, arg)?,
        "sweep" => children::sweeper(&open(&path)?)?,
        "writer" => {
            // Writes keys from `arg` on, reporting each write that returned Ok, until killed.
            let store = open(&path)?;
            let mut i = arg;
            loop {
                store.set(&format!("w{i}"), &i)?;
                println!("CHILD:ok {i}");
                i += 1;
            }
        }
        other => panic!("unknown child role {other}"),
    }
    Ok(())
}

fn spawn_child(role: &str, path: &Path, arg: u64) -> Child {
    children::spawn(
        role,
        &[
            ("LIVEDICT_DB", path.display().to_string()),
            ("LIVEDICT_ARG", arg.to_string()),
        ],
    )
}

#[test]
fn increments_from_four_processes_lose_nothing() -> Result<()> {
    let path = fresh_path();
    drop(open(&path)?);
    let children: Vec<_> = (0..4).map(|_| spawn_child("incr", &path, 500)).collect();
    for c in children {
        assert_eq!(children::lines(c), ["done"]);
    }
    assert_eq!(open(&path)?.get::<i64>("counter")?, Some(2000));
    Ok(())
}

#[test]
fn each_expired_entry_goes_to_exactly_one_of_three_processes() -> Result<()> {
    let path = fresh_path();
    let n = 1500u64;
    {
        let store = LiveDict::builder()
            .backend(SqliteBackend::open(&path)?)
            .active_expiry(false) // this process never sweeps
            .build()?;
        children::fill_expiring(
            &store,
            n,
            Duration::from_millis(800),
            Duration::from_millis(400),
        )?;
    }
    let sweepers = (0..3).map(|_| spawn_child("sweep", &path, 0)).collect();
    children::assert_each_expired_once(sweepers, n);
    Ok(())
}

#[test]
fn a_writer_killed_mid_stream_loses_no_acknowledged_write() -> Result<()> {
    let path = fresh_path();
    drop(open(&path)?);
    let mut acknowledged: Vec<u64> = Vec::new();
    let mut next = 0u64;
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    for kill in 0..25 {
        let mut child = spawn_child("writer", &path, next);
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let wait_for = 1 + rng % 300; // acknowledgements before the kill
        let mut got = 0;
        while got < wait_for {
            let line = lines.next().expect("child output").unwrap();
            if let Some((_, i)) = line.split_once("CHILD:ok ") {
                acknowledged.push(i.parse().unwrap());
                got += 1;
            }
        }
        child.kill().unwrap(); // SIGKILL, mid-stream
        // Acknowledgements printed before the kill landed also count.
        for line in lines.map_while(|l| l.ok()) {
            if let Some((_, i)) = line.split_once("CHILD:ok ") {
                acknowledged.push(i.parse().unwrap());
            }
        }
        let _ = child.wait();
        next = acknowledged.last().copied().unwrap_or(0) + 1_000_000 * (kill + 1);
        // Every acknowledged write is there and readable.
        let store = open(&path)?;
        for &i in &acknowledged {
            assert_eq!(
                store.get::<u64>(&format!("w{i}"))?,
                Some(i),
                "lost w{i} after kill {kill}"
            );
        }
    }
    assert!(acknowledged.len() >= 25);
    let c = rusqlite::Connection::open(&path).unwrap();
    let check: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    Ok(())
}

/// Several openers of one new file at the same instant (processes started together on a fresh
/// store) all get the store: turning the file to WAL, which SQLite answers "busy" without waiting
/// for while another connection has the file open, is retried within the busy timeout.
#[test]
fn openers_racing_on_a_new_file_all_succeed() -> Result<()> {
    const OPENERS: usize = 8;
    for round in 0..20 {
        let path = fresh_path();
        let barrier = Arc::new(std::sync::Barrier::new(OPENERS));
        let threads: Vec<_> = (0..OPENERS)
            .map(|i| {
                let (path, barrier) = (path.clone(), barrier.clone());
                std::thread::spawn(move || -> Result<()> {
                    barrier.wait();
                    let store = LiveDict::builder()
                        .backend(SqliteBackend::open(&path)?)
                        .build()?;
                    store.set(&format!("opener{i}"), &i)?;
                    Ok(())
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap().map_err(|e| {
                Error::Backend(format!("round {round}: an opener failed: {e}").into())
            })?;
        }
        let store = LiveDict::builder()
            .backend(SqliteBackend::open(&path)?)
            .build()?;
        assert_eq!(store.len()?, OPENERS, "round {round}");
    }
    Ok(())
}

/// A lock guard dropped inside an update closure is released once the update is done. (Before,
/// its release waited for the write lock that the closure's own transaction held, for ever.)
/// Releasing it by hand there is `Error::Reentrant`, as every other use of the store inside the
/// closure is.
#[test]
fn a_lock_guard_dropped_inside_an_update_is_released_after_it() -> Result<()> {
    let store = LiveDict::builder()
        .backend(SqliteBackend::open(fresh_path())?)
        .build()?;
    let guard = store.lock("job", Duration::ZERO)?.expect("free");
    assert_eq!(
        store.update("n", move |old: Option<i32>| {
            drop(guard);
            old.unwrap_or(0) + 1
        })?,
        1
    );
    assert!(
        store.lock("job", Duration::from_secs(10))?.is_some(),
        "released after the update"
    );
    let guard = store.lock("job", Duration::ZERO)?.expect("free");
    let released = store.update("n", move |old: Option<i32>| {
        assert!(matches!(guard.release(), Err(Error::Reentrant)));
        old.unwrap_or(0) + 1
    })?;
    assert_eq!(released, 2);
    assert!(store.lock("job", Duration::from_secs(10))?.is_some());
    Ok(())
}
