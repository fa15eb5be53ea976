//! The sqlite suite: livedict on its SQLite backend against raw `rusqlite` running the same
//! statements with the same pragmas, and against Python's `diskcache`.
//!
//! Both Rust sides work on a file of their own in one temporary directory (deleted afterwards),
//! with the same schema (livedict's `livedict_entries` table, WITHOUT ROWID, and the partial index
//! on `sweep_at`), `journal_mode = WAL`, `synchronous = NORMAL`, a 10 s busy timeout, a writer
//! connection and a reader connection, and prepared (cached) statements. One thread. Values are
//! 64 bytes (livedict stores them behind its 3-byte header), TTL 3600 s. The raw peer does what
//! livedict's backend does:
//!
//! - `get`: `SELECT value, deadline, sliding, last_access ... WHERE key = ?` on the reader, and
//!   a deadline check against the wall clock. Before each timed run both sides read every key once
//!   (untimed), so that on livedict's side no key's last access is a second old during the run and
//!   a get is that one SELECT (see `get_idle`).
//! - `set`: `BEGIN IMMEDIATE`; the SELECT of the row; `INSERT ... ON CONFLICT (key) DO UPDATE`
//!   of value, deadline, sliding and last access (and of `sweep_at` only when the row's is later
//!   than the new deadline); `COMMIT`. Overwrites of existing keys.
//! - `delete`: `BEGIN IMMEDIATE`; `DELETE ... RETURNING value, deadline`; `COMMIT`. Every key is
//!   deleted once per run; both sides write them all back (one transaction) before each run,
//!   untimed.
//! - `set_many_1000`: one `BEGIN IMMEDIATE` transaction of 1,000 of the set steps; livedict
//!   applies a [`livedict::Batch`] of 1,000 `set_bytes_with`. Ops are keys written.
//! - `get_idle`: not the same work, and meant so. A livedict get renews the entry's last-access
//!   time when it is a second old or more (a write transaction: `BEGIN IMMEDIATE`; `UPDATE ...
//!   RETURNING`; `COMMIT`); here every key was last accessed over a second before the run (the run
//!   sleeps first, untimed), against the raw SELECT alone: what that bookkeeping costs a reader.
//!
//! The diskcache cases run `python/diskcache_bench.py` in a virtual environment that the suite
//! creates on first use (`python3 -m venv`, `pip install diskcache`) next to the bench binary
//! (`target/bench-venv`, or `$LIVEDICT_BENCH_VENV`); each round is one child process, which fills
//! a `diskcache.Cache` in the temporary directory if needed and times its N gets or N sets inside
//! Python (`time.perf_counter`), so interpreter start-up is not counted. With `--quick` they run
//! only if that environment already exists.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use livedict::{LiveDict, SqliteBackend};
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};

use crate::harness::{
    Config, Run, XorShift, compare, expect_count, median, ops_per_sec, print_figure, timed,
};

const SUITE: &str = "sqlite";
const VALUE_LEN: usize = 64;
/// The TTL of every write: long enough that nothing expires during a run.
const TTL: Duration = Duration::from_secs(3600);
/// Writes per transaction of `set_many_1000`.
const BATCH: usize = 1000;
/// Gets per run are this many times the keys.
const GET_PASSES: usize = 3;
/// Batched writes per run are this many times the keys.
const SET_MANY_PASSES: usize = 3;
/// How long `get_idle` waits before a run, so that every key's last access is over a second old
/// (livedict renews it on a read at most once a second).
const IDLE: Duration = Duration::from_millis(1100);
/// The Python script of the diskcache cases (written into the temporary directory to run).
const DISKCACHE_SCRIPT: &str = include_str!("../python/diskcache_bench.py");

/// The settings of this suite, for the header line.
pub fn settings(cfg: &Config) -> String {
    let keys = cfg.store_keys();
    format!(
        "sqlite: keys {}, value {VALUE_LEN} B, ttl {} s, 1 thread, WAL, synchronous NORMAL, \
         gets/run {}, sets/run {}, deletes/run {}, set_many {} batches of {BATCH}/run, \
         get_idle {} gets/run after {} ms idle ({} rounds), diskcache {}",
        keys,
        TTL.as_secs(),
        GET_PASSES * keys,
        keys,
        keys,
        SET_MANY_PASSES * keys / BATCH,
        keys,
        IDLE.as_millis(),
        idle_config(cfg).rounds,
        if cfg.quick {
            "only if its venv exists"
        } else {
            "get and set"
        }
    )
}

/// `get_idle` sleeps before each run; one round is enough for a smoke run.
fn idle_config(cfg: &Config) -> Config {
    if cfg.quick {
        Config {
            rounds: 1,
            ..cfg.clone()
        }
    } else {
        cfg.clone()
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

// ---- the raw rusqlite peer -----------------------------------------------------------------------

const SCHEMA: &str = "
CREATE TABLE livedict_entries (
    key TEXT PRIMARY KEY NOT NULL,
    value BLOB NOT NULL,
    deadline INTEGER,
    sliding INTEGER NOT NULL,
    last_access INTEGER NOT NULL,
    sweep_at INTEGER
) WITHOUT ROWID;
CREATE INDEX livedict_entries_sweep ON livedict_entries (sweep_at) WHERE sweep_at IS NOT NULL;
";
const SELECT: &str =
    "SELECT value, deadline, sliding, last_access, sweep_at FROM livedict_entries WHERE key = ?1";
/// The upsert of a row whose sweep time is no later than its new deadline (it stays)...
const UPSERT_KEEP: &str =
    "INSERT INTO livedict_entries (key, value, deadline, sliding, last_access, sweep_at)
     VALUES (?1, ?2, ?3, ?4, ?5, ?3)
     ON CONFLICT (key) DO UPDATE SET value = excluded.value, deadline = excluded.deadline,
         sliding = excluded.sliding, last_access = excluded.last_access";
/// ... and of any other (the sweep time becomes the deadline).
const UPSERT_MOVE: &str =
    "INSERT INTO livedict_entries (key, value, deadline, sliding, last_access, sweep_at)
     VALUES (?1, ?2, ?3, ?4, ?5, ?3)
     ON CONFLICT (key) DO UPDATE SET value = excluded.value, deadline = excluded.deadline,
         sliding = excluded.sliding, last_access = excluded.last_access,
         sweep_at = excluded.sweep_at";
const DELETE: &str = "DELETE FROM livedict_entries WHERE key = ?1 RETURNING value, deadline";

type RawRow = (Vec<u8>, Option<i64>, i64, i64, Option<i64>);

/// Raw rusqlite on a file like livedict's: a writer and a reader connection.
struct Raw {
    writer: Connection,
    reader: Connection,
}

fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.set_prepared_statement_cache_capacity(32);
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(conn)
}

fn select(conn: &Connection, key: &str) -> rusqlite::Result<Option<RawRow>> {
    conn.prepare_cached(SELECT)?
        .query_row([key], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .optional()
}

/// The set step livedict's backend runs inside its transaction: read the row, write the new one.
fn set_step(conn: &Connection, key: &str, value: &[u8], now: i64) -> rusqlite::Result<()> {
    let sweep_at = black_box(select(conn, key)?).and_then(|row| row.4);
    let deadline = now + TTL.as_millis() as i64;
    let upsert = if sweep_at.is_some_and(|s| s <= deadline) {
        UPSERT_KEEP
    } else {
        UPSERT_MOVE
    };
    conn.prepare_cached(upsert)?
        .execute(params![key, value, deadline, 0i64, now])?;
    Ok(())
}

impl Raw {
    fn open(path: &Path) -> rusqlite::Result<Raw> {
        let writer = connect(path)?;
        writer.pragma_update(None, "journal_mode", "WAL")?;
        writer.execute_batch(SCHEMA)?;
        let reader = connect(path)?;
        Ok(Raw { writer, reader })
    }

    fn get(&self, key: &str) -> Option<Vec<u8>> {
        let (value, deadline, ..) = select(&self.reader, key).expect("rusqlite get")?;
        deadline.is_none_or(|d| d > now_ms()).then_some(value)
    }

    fn set(&mut self, key: &str, value: &[u8]) {
        let tx = self
            .writer
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .expect("rusqlite begin");
        set_step(&tx, key, value, now_ms()).expect("rusqlite set");
        tx.commit().expect("rusqlite commit");
    }

    fn set_many<'a>(&mut self, keys: impl IntoIterator<Item = &'a str>, value: &[u8]) {
        let tx = self
            .writer
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .expect("rusqlite begin");
        let now = now_ms();
        for k in keys {
            set_step(&tx, k, value, now).expect("rusqlite set");
        }
        tx.commit().expect("rusqlite commit");
    }

    /// Whether a live entry was deleted.
    fn delete(&mut self, key: &str) -> bool {
        let tx = self
            .writer
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .expect("rusqlite begin");
        let row = tx
            .prepare_cached(DELETE)
            .expect("rusqlite prepare")
            .query_row([key], |r| {
                Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Option<i64>>(1)?))
            })
            .optional()
            .expect("rusqlite delete");
        tx.commit().expect("rusqlite commit");
        row.is_some_and(|(value, deadline)| {
            black_box(value);
            deadline.is_none_or(|d| d > now_ms())
        })
    }
}

// ---- the livedict side -----------------------------------------------------------------------------

fn open_livedict(path: &Path) -> LiveDict {
    LiveDict::builder()
        .backend(SqliteBackend::open(path).expect("open the livedict SQLite file"))
        .build()
        .expect("build a livedict store")
}

fn livedict_set_many(store: &LiveDict, keys: &[String], order: &[u32], value: &[u8]) {
    for chunk in order.chunks(BATCH) {
        let mut batch = store.batch();
        for &i in chunk {
            batch
                .set_bytes_with(&keys[i as usize], value, TTL)
                .expect("livedict batch set_bytes_with");
        }
        store.apply(batch).expect("livedict apply");
    }
}

fn raw_set_many(raw: &mut Raw, keys: &[String], order: &[u32], value: &[u8]) {
    for chunk in order.chunks(BATCH) {
        raw.set_many(chunk.iter().map(|&i| keys[i as usize].as_str()), value);
    }
}

/// livedict's gets of `order` (hits counted), after an untimed read of every key so that none is
/// due for a last-access renewal during the run; warns if the run came close to a second anyway.
/// livedict gets of `order`'s keys; how many were found.
fn count_gets(store: &LiveDict, keys: &[String], order: &[u32]) -> u64 {
    order
        .iter()
        .filter(|&&i| {
            black_box(
                store
                    .get_bytes(&keys[i as usize])
                    .expect("livedict get_bytes"),
            )
            .is_some()
        })
        .count() as u64
}

fn livedict_gets(store: &LiveDict, keys: &[String], order: &[u32], case: &str) -> Run {
    let warm = Instant::now();
    for k in keys {
        black_box(store.get_bytes(k).expect("livedict get_bytes"));
    }
    let run = timed(|| count_gets(store, keys, order));
    if warm.elapsed() >= Duration::from_millis(900) {
        println!(
            "# warning: {SUITE}/{case}: the warm-up and run took {:.2} s; some gets may have \
             renewed last-access times",
            warm.elapsed().as_secs_f64()
        );
    }
    run
}

fn raw_gets(raw: &Raw, keys: &[String], order: &[u32]) -> Run {
    for k in keys {
        black_box(raw.get(k));
    }
    timed(|| {
        order
            .iter()
            .filter(|&&i| black_box(raw.get(&keys[i as usize])).is_some())
            .count() as u64
    })
}

fn livedict_sets(store: &LiveDict, keys: &[String], order: &[u32], value: &[u8]) -> Run {
    timed(|| {
        for &i in order {
            store
                .set_bytes_with(&keys[i as usize], value, TTL)
                .expect("livedict set_bytes_with");
        }
        order.len() as u64
    })
}

// ---- the suite -------------------------------------------------------------------------------------

pub fn run(cfg: &Config) {
    let n = cfg.store_keys();
    let keys: Vec<String> = (0..n).map(|i| format!("key:{i}")).collect();
    let value: Vec<u8> = (0..VALUE_LEN as u8).collect();
    let all: Vec<u32> = (0..n as u32).collect();

    let dir = tempfile::Builder::new()
        .prefix("livedict-bench-sqlite-")
        .tempdir()
        .expect("create a temporary directory");
    let store = open_livedict(&dir.path().join("livedict.db"));
    let mut raw = Raw::open(&dir.path().join("raw.db")).expect("open the raw SQLite file");
    livedict_set_many(&store, &keys, &all, &value);
    raw_set_many(&mut raw, &keys, &all, &value);

    // get
    let order = XorShift::new(1).indices(GET_PASSES * n, n);
    let ops = order.len() as u64;
    compare(
        cfg,
        SUITE,
        "get",
        "rusqlite",
        ops,
        || livedict_gets(&store, &keys, &order, "get"),
        || raw_gets(&raw, &keys, &order),
        expect_count(ops),
    );

    // set
    let order = XorShift::new(2).indices(n, n);
    let ops = order.len() as u64;
    compare(
        cfg,
        SUITE,
        "set",
        "rusqlite",
        ops,
        || livedict_sets(&store, &keys, &order, &value),
        || {
            let raw = &mut raw;
            timed(|| {
                for &i in &order {
                    raw.set(&keys[i as usize], &value);
                }
                order.len() as u64
            })
        },
        expect_count(ops),
    );

    // set_many_1000
    let mut rng = XorShift::new(3);
    let order: Vec<u32> = (0..SET_MANY_PASSES)
        .flat_map(|_| rng.permutation(0, n))
        .collect();
    let ops = order.len() as u64;
    compare(
        cfg,
        SUITE,
        &format!("set_many_{BATCH}"),
        "rusqlite",
        ops,
        || {
            timed(|| {
                livedict_set_many(&store, &keys, &order, &value);
                order.len() as u64
            })
        },
        || {
            let raw = &mut raw;
            timed(|| {
                raw_set_many(raw, &keys, &order, &value);
                order.len() as u64
            })
        },
        expect_count(ops),
    );

    // delete (every key once per run, written back before each run, untimed)
    let order = XorShift::new(4).permutation(0, n);
    let ops = order.len() as u64;
    compare(
        cfg,
        SUITE,
        "delete",
        "rusqlite",
        ops,
        || {
            livedict_set_many(&store, &keys, &all, &value);
            timed(|| {
                order
                    .iter()
                    .filter(|&&i| store.delete(&keys[i as usize]).expect("livedict delete"))
                    .count() as u64
            })
        },
        || {
            let raw = &mut raw;
            raw_set_many(raw, &keys, &all, &value);
            timed(|| {
                order
                    .iter()
                    .filter(|&&i| raw.delete(&keys[i as usize]))
                    .count() as u64
            })
        },
        expect_count(ops),
    );
    livedict_set_many(&store, &keys, &all, &value);
    raw_set_many(&mut raw, &keys, &all, &value);

    // get_idle: every key last accessed over a second before the run
    let order = XorShift::new(5).permutation(0, n);
    let ops = order.len() as u64;
    compare(
        &idle_config(cfg),
        SUITE,
        "get_idle",
        "rusqlite",
        ops,
        || {
            std::thread::sleep(IDLE);
            timed(|| count_gets(&store, &keys, &order))
        },
        || {
            timed(|| {
                order
                    .iter()
                    .filter(|&&i| black_box(raw.get(&keys[i as usize])).is_some())
                    .count() as u64
            })
        },
        expect_count(ops),
    );
    drop(raw);

    diskcache(cfg, &store, &keys, &value, dir.path());
    drop(store);
    dir.close().expect("remove the temporary directory");
}

// ---- the diskcache peer ------------------------------------------------------------------------

/// Where the virtual environment lives: `$LIVEDICT_BENCH_VENV`, or `bench-venv` in the target
/// directory (two levels above the bench binary, `target/release/livedict-bench`).
fn venv_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LIVEDICT_BENCH_VENV") {
        return PathBuf::from(dir);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("bench-venv")))
        .unwrap_or_else(|| std::env::temp_dir().join("livedict-bench-venv"))
}

/// Runs `cmd`; on failure, the reason (its last line of error output).
fn run_cmd(cmd: &mut Command, what: &str) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no error output");
    Err(format!("{what} failed ({}): {}", out.status, last.trim()))
}

/// The venv's Python, creating the venv (and installing diskcache) if needed and allowed.
fn diskcache_python(quick: bool) -> Result<PathBuf, String> {
    let dir = venv_dir();
    let python = dir.join("bin").join("python");
    let ready = |python: &Path| {
        python.exists()
            && run_cmd(
                Command::new(python).args(["-c", "import diskcache"]),
                "import",
            )
            .is_ok()
    };
    if ready(&python) {
        return Ok(python);
    }
    if quick {
        return Err(format!(
            "--quick, and no virtual environment with diskcache at {} yet (a full run creates it)",
            dir.display()
        ));
    }
    let start = Instant::now();
    let python3 = std::env::var_os("LIVEDICT_BENCH_PYTHON").unwrap_or_else(|| "python3".into());
    run_cmd(
        Command::new(&python3).arg("-m").arg("venv").arg(&dir),
        "python3 -m venv",
    )?;
    run_cmd(
        Command::new(&python).args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--retries",
            "1",
            "--timeout",
            "15",
            "diskcache",
        ]),
        "pip install diskcache",
    )?;
    if !ready(&python) {
        return Err(format!(
            "diskcache does not import in {} after installing it",
            dir.display()
        ));
    }
    println!(
        "# {SUITE}/diskcache: created a virtual environment with diskcache in {} ({:.1} s)",
        dir.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(python)
}

/// One run of the Python script; its own timing of the loop.
fn python_run(
    python: &Path,
    script: &Path,
    cache: &Path,
    op: &str,
    ops: usize,
    keys: usize,
    seed: u64,
) -> Result<Run, String> {
    let out = run_cmd(
        Command::new(python)
            .arg(script)
            .arg(cache)
            .arg(op)
            .arg(ops.to_string())
            .arg(keys.to_string())
            .arg(VALUE_LEN.to_string())
            .arg(seed.to_string()),
        "diskcache_bench.py",
    )?;
    let parse = || {
        let (secs, count) = out.split_once(' ')?;
        Some(Run {
            elapsed: Duration::from_secs_f64(secs.parse().ok()?),
            count: count.parse().ok()?,
        })
    };
    parse().ok_or_else(|| format!("diskcache_bench.py printed {out:?}"))
}

fn diskcache(cfg: &Config, store: &LiveDict, keys: &[String], value: &[u8], tmp: &Path) {
    let skip = |reason: &str| println!("# {SUITE}/diskcache: skipped: {reason}");
    let python = match diskcache_python(cfg.quick) {
        Ok(p) => p,
        Err(reason) => return skip(&reason),
    };
    let script = tmp.join("diskcache_bench.py");
    let cache = tmp.join("diskcache");
    if let Err(e) = std::fs::write(&script, DISKCACHE_SCRIPT) {
        return skip(&format!("writing the script: {e}"));
    }
    let n = cfg.store_keys();
    // A first, untimed call fills the cache (and checks that the script works).
    if let Err(reason) = python_run(&python, &script, &cache, "get", 1, n, 0) {
        return skip(&reason);
    }
    if let Ok(v) = run_cmd(
        Command::new(&python).args([
            "-c",
            "import sys, diskcache, sqlite3; \
             print(diskcache.__version__, sys.version.split()[0], sqlite3.sqlite_version)",
        ]),
        "version",
    ) {
        let mut v = v.split_whitespace();
        println!(
            "# {SUITE}/diskcache: diskcache {}, Python {}, SQLite {} (rusqlite bundles {})",
            v.next().unwrap_or("?"),
            v.next().unwrap_or("?"),
            v.next().unwrap_or("?"),
            rusqlite::version()
        );
    }
    let py = |op: &str, ops: usize, seed: u64| {
        python_run(&python, &script, &cache, op, ops, n, seed)
            .unwrap_or_else(|e| panic!("the diskcache peer failed: {e}"))
    };

    let order = XorShift::new(6).indices(GET_PASSES * n, n);
    let ops = order.len() as u64;
    compare(
        cfg,
        SUITE,
        "get_vs_diskcache",
        "diskcache",
        ops,
        || livedict_gets(store, keys, &order, "get_vs_diskcache"),
        || py("get", order.len(), 6),
        expect_count(ops),
    );

    let order = XorShift::new(7).indices(n, n);
    let ops = order.len() as u64;
    compare(
        cfg,
        SUITE,
        "set_vs_diskcache",
        "diskcache",
        ops,
        || livedict_sets(store, keys, &order, value),
        || py("set", order.len(), 7),
        expect_count(ops),
    );

    floor_vs_diskcache(cfg, &tmp.join("floor.db"), keys, value, &py);
}

// ---- what SQLite itself allows -------------------------------------------------------------------

/// The fastest a store that reads through SQLite and commits each write can go on this machine:
/// a bare two-column table (`key TEXT PRIMARY KEY, value BLOB`, WITHOUT ROWID, no index), WAL,
/// `synchronous = NORMAL` (livedict's weakest durability), one prepared statement per operation
/// in autocommit: `SELECT value ... WHERE key = ?` for a get, `INSERT OR REPLACE` for a set. No
/// deadline, no previous value, no transaction around the statement. Timed interleaved with
/// diskcache doing the same operations; printed as figures (this is not livedict), with the ratio
/// the floor reaches over diskcache: the most any SQLite-backed store could show in the
/// `*_vs_diskcache` lines. A third figure, `sqlite_floor_probe`, is the cheapest way SQLite offers
/// to learn whether another connection has committed since (`PRAGMA data_version`, which starts
/// a read transaction like a SELECT, but reads no row): the ceiling of any in-process read cache
/// that must see other processes' writes at once (SPEC 8), set against diskcache's gets.
fn floor_vs_diskcache(
    cfg: &Config,
    path: &Path,
    keys: &[String],
    value: &[u8],
    py: &dyn Fn(&str, usize, u64) -> Run,
) {
    if !cfg.wants(SUITE, "sqlite_floor") {
        return;
    }
    let conn = connect(path).expect("open the floor's SQLite file");
    conn.pragma_update(None, "journal_mode", "WAL")
        .expect("floor: WAL");
    conn.execute_batch(
        "CREATE TABLE kv (key TEXT PRIMARY KEY NOT NULL, value BLOB NOT NULL) WITHOUT ROWID",
    )
    .expect("floor: schema");
    // Each write stores a different value: SQLite leaves a page clean when a row is rewritten
    // with the bytes it holds, and a store's writes change at least the deadline.
    let writes = std::cell::Cell::new(0u64);
    let put = |key: &str| {
        writes.set(writes.get() + 1);
        let mut value = value.to_vec();
        value[..8].copy_from_slice(&writes.get().to_le_bytes());
        conn.prepare_cached("INSERT OR REPLACE INTO kv (key, value) VALUES (?1, ?2)")
            .and_then(|mut s| s.execute(params![key, value]))
            .expect("floor: set");
    };
    conn.execute_batch("BEGIN").expect("floor: begin");
    keys.iter().for_each(|k| put(k));
    conn.execute_batch("COMMIT").expect("floor: commit");
    let get = |key: &str| -> Option<Vec<u8>> {
        conn.prepare_cached("SELECT value FROM kv WHERE key = ?1")
            .and_then(|mut s| s.query_row([key], |r| r.get(0)).optional())
            .expect("floor: get")
    };

    let probe = || -> i64 {
        conn.prepare_cached("PRAGMA data_version")
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .expect("floor: data_version")
    };

    let n = keys.len();
    let gets = XorShift::new(6).indices(GET_PASSES * n, n);
    let sets = XorShift::new(7).indices(n, n);
    // (case, diskcache's operation, key order, its seed, the floor's run of that order)
    type FloorRun<'a> = &'a dyn Fn(&[u32]) -> u64;
    let cases: [(&str, &str, &[u32], u64, FloorRun<'_>); 3] = [
        ("get", "get", &gets, 6, &|order| {
            order
                .iter()
                .filter(|&&i| black_box(get(&keys[i as usize])).is_some())
                .count() as u64
        }),
        ("set", "set", &sets, 7, &|order| {
            order.iter().for_each(|&i| put(&keys[i as usize]));
            order.len() as u64
        }),
        ("probe", "get", &gets, 6, &|order| {
            order.iter().for_each(|_| {
                black_box(probe());
            });
            order.len() as u64
        }),
    ];
    for (case, op, order, seed, floor_run) in cases {
        let ops = order.len() as u64;
        let (mut floor, mut peer) = (Vec::new(), Vec::new());
        for _ in 0..cfg.rounds {
            let run = timed(|| floor_run(order));
            if run.count != ops {
                println!(
                    "# warning: {SUITE}/sqlite_floor_{case}: count {}, expected {ops}",
                    run.count
                );
            }
            floor.push(ops_per_sec(ops, run.elapsed));
            peer.push(ops_per_sec(ops, py(op, order.len(), seed).elapsed));
        }
        let (floor, peer) = (median(&mut floor), median(&mut peer));
        let case = format!("sqlite_floor_{case}");
        print_figure(SUITE, &case, "bare_sqlite", format!("{floor:.0}"), "ops/s");
        print_figure(SUITE, &case, "diskcache", format!("{peer:.0}"), "ops/s");
        print_figure(SUITE, &case, "ratio", format!("{:.2}", floor / peer), "x");
    }
}
