//! The conformance suite on the Redis backend, against a real server and a real 3-master cluster
//! (`scripts/test` starts both with `scripts/redis` and exports their addresses), plus what only
//! Redis can show: native expiry, the server's clock, several processes on one store, connections
//! killed and servers restarted mid-stream, foreign keys left alone, and `redis-cli` reading what
//! livedict wrote.
//!
//! Without `LIVEDICT_TEST_REDIS_URL` (and `LIVEDICT_TEST_REDIS_CLUSTER_URLS`) these tests fail:
//! a missing server is never a pass. `scripts/test` leaves the `redis` feature out when it cannot
//! start a server (and fails instead under `LIVEDICT_REQUIRE_REDIS=1`, as in CI).
//!
//! Child processes are this test binary run again with `LIVEDICT_CHILD` set (see
//! [`child_process`]).
#![cfg(feature = "redis")]

#[macro_use]
mod conformance;
mod children;
mod redis_servers;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use livedict::{
    Backend, Error, KeyTtl, LiveDict, RedisBackend, RedisOptions, Result, WriteOptions,
};
use redis_servers::{cluster_urls, fresh_prefix, server_url};

/// Options of the conformance runs: the store's (manual) clock judges deadlines.
fn test_options() -> RedisOptions {
    RedisOptions::new()
        .prefix(fresh_prefix())
        .server_clock(false)
}

fn server_backend() -> Arc<dyn Backend> {
    Arc::new(RedisBackend::open_with(&server_url(), test_options()).unwrap())
}

fn cluster_backend() -> Arc<dyn Backend> {
    Arc::new(RedisBackend::open_cluster_with(cluster_urls(), test_options()).unwrap())
}

conformance_suite!(redis_server, server_backend);
conformance_suite!(
    redis_server_encrypted,
    server_backend,
    conformance::Mode::Encrypted
);
conformance_suite!(redis_cluster, cluster_backend);
// Through AsyncLiveDict on the server only: on the cluster too, this file takes 2.1 times as
// long as without the async mode (1.5 times with the server alone), most of it in the 64-thread
// concurrency cases; the async cluster transport is covered by tests/redis_async.rs.
#[cfg(feature = "async")]
conformance_suite!(redis_server_async, server_backend, conformance::Mode::Async);

/// A raw connection to the test server, for checking what livedict wrote.
fn raw() -> redis::Connection {
    redis::Client::open(server_url())
        .unwrap()
        .get_connection()
        .unwrap()
}

fn open(prefix: &str) -> Result<LiveDict> {
    LiveDict::builder()
        .backend(RedisBackend::open_with(
            &server_url(),
            RedisOptions::new().prefix(prefix),
        )?)
        .build()
}

fn redis_cli(args: &[&str]) -> Vec<u8> {
    let out = Command::new("redis-cli")
        .args(["-u", &server_url()])
        .args(args)
        .output()
        .expect("run redis-cli (scripts/test installs it)");
    assert!(out.status.success(), "redis-cli {args:?} failed: {out:?}");
    out.stdout
}

// ---- what Redis itself shows ---------------------------------------------------------------------

/// The deadline, sliding TTL, last access and native expiry in the head of an entry string
/// (format 3).
fn entry_head(entry: &[u8]) -> (u64, u64, u64, u64) {
    assert_eq!(entry[0], b'L', "{:?}", String::from_utf8_lossy(entry));
    let field = |at: usize| f64::from_be_bytes(entry[at..at + 8].try_into().unwrap()) as u64;
    (field(1), field(9), field(17), field(25))
}

#[test]
fn redis_cli_reads_a_livedict_key_and_its_ttl() -> Result<()> {
    let prefix = fresh_prefix();
    let store = open(&prefix)?;
    store.set_with("greeting", &"hello", Duration::from_secs(3600))?;
    let key = RedisBackend::open_with(&server_url(), RedisOptions::new().prefix(&prefix))?
        .redis_key("greeting");
    assert!(key.starts_with(&format!("{prefix}:{{")), "{key}");
    // One string: a 33-byte head (`L`, then the deadline, the sliding TTL, the last access and
    // the native expiry as big-endian doubles), then livedict's 3-byte header and the JSON text.
    let entry = redis_cli(&["GET", &key]);
    assert!(
        entry.ends_with(b"\"hello\"\n"),
        "{:?}",
        String::from_utf8_lossy(&entry)
    );
    let (deadline, sliding, _, native) = entry_head(&entry);
    assert_eq!(native, deadline + 15_000, "the deadline plus 1.5 graces");
    let pttl: u64 = String::from_utf8(redis_cli(&["PTTL", &key]))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The native TTL is the deadline plus 1.5 graces (10 s by default).
    assert!(
        (3_600_000..=3_615_000).contains(&pttl),
        "native ttl {pttl} ms"
    );
    assert_eq!(sliding, 0, "a fixed deadline");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(deadline > now + 3_590_000 && deadline <= now + 3_600_000);
    Ok(())
}

#[test]
fn writes_keep_the_native_ttl_while_it_falls_within_the_grace() -> Result<()> {
    // The server's clock (the default), so deadlines move by changing TTLs, not by waiting; the
    // default grace, 10 s: a native expiry is kept while it ends 10 to 15 s after the deadline.
    let prefix = fresh_prefix();
    let store = open(&prefix)?;
    let key =
        RedisBackend::open_with(&server_url(), RedisOptions::new().prefix(&prefix))?.redis_key("k");
    let mut conn = raw();
    let mut head = || {
        let entry: Vec<u8> = redis::cmd("GET").arg(&key).query(&mut conn).unwrap();
        let pttl: i64 = redis::cmd("PTTL").arg(&key).query(&mut conn).unwrap();
        let (d, s, _, n) = entry_head(&entry);
        (d, s, n, pttl)
    };
    // Shortens the key's native TTL behind livedict's back, so that a write that keeps it shows.
    let mark = |ms: i64| {
        let key = RedisBackend::open_with(&server_url(), RedisOptions::new().prefix(&prefix))
            .unwrap()
            .redis_key("k");
        redis::cmd("PEXPIRE")
            .arg(&key)
            .arg(ms)
            .query::<()>(&mut raw())
            .unwrap();
    };
    let s = Duration::from_secs(1);
    store.set_with("k", &1, 100 * s)?;
    let (d0, _, n0, pttl) = head();
    assert_eq!(n0, d0 + 15_000);
    assert!((114_000..=115_000).contains(&pttl), "{pttl}");
    // A deadline ~3 s later leaves the native expiry ~12 s after it: kept.
    mark(100_000);
    store.set_with("k", &2, 103 * s)?;
    let (d1, _, n1, pttl) = head();
    assert!(d1 >= d0 + 3_000 && d1 < d0 + 4_000, "{d0} {d1}");
    assert_eq!(n1, n0);
    assert!((99_000..=100_000).contains(&pttl), "kept: {pttl}");
    // ~7 s later, it would end ~8 s after the deadline, less than the grace: a new one.
    store.set_with("k", &3, 107 * s)?;
    let (d2, _, n2, pttl) = head();
    assert_eq!(n2, d2 + 15_000);
    assert!((121_000..=122_000).contains(&pttl), "new: {pttl}");
    // A much shorter TTL: the expiry would end far more than 1.5 graces after it: a new one.
    store.set_with("k", &4, s)?;
    let (d3, _, n3, pttl) = head();
    assert_eq!(n3, d3 + 15_000);
    assert!((15_000..=16_000).contains(&pttl), "{pttl}");
    // Reads that slide a deadline follow the same rule.
    store.set_with("k", &5, WriteOptions::ttl(100 * s).sliding(true))?;
    let (_, _, n4, _) = head();
    mark(100_000);
    assert_eq!(store.get::<i32>("k")?, Some(5));
    let (_, s5, n5, pttl) = head();
    assert_eq!((s5, n5), (100_000, n4));
    assert!((99_000..=100_000).contains(&pttl), "kept: {pttl}");
    // So does `expire`.
    assert!(store.expire("k", 103 * s)?);
    assert_eq!(head().2, n4);
    assert!(store.expire("k", 200 * s)?);
    let (d6, _, n6, pttl) = head();
    assert_eq!(n6, d6 + 15_000);
    assert!((214_000..=215_000).contains(&pttl), "new: {pttl}");
    // `persist` takes the native TTL away.
    assert!(store.persist("k")?);
    let (d, _, n, pttl) = head();
    assert_eq!((d, n, pttl), (0, 0, -1));
    assert_eq!(store.get::<i32>("k")?, Some(5));
    Ok(())
}

#[test]
fn with_the_callers_clock_every_write_gives_a_new_native_ttl() -> Result<()> {
    // The head's native expiry would be on the caller's clock, Redis's on its own: never kept.
    let prefix = fresh_prefix();
    let clock = livedict::ManualClock::new();
    let options = || RedisOptions::new().prefix(&prefix).server_clock(false);
    let store = LiveDict::builder()
        .backend(RedisBackend::open_with(&server_url(), options())?)
        .clock(livedict::Clock::Manual(clock.clone()))
        .active_expiry(false)
        .build()?;
    let key = RedisBackend::open_with(&server_url(), options())?.redis_key("k");
    let mut conn = raw();
    store.set_with("k", &1, Duration::from_secs(100))?;
    redis::cmd("PEXPIRE")
        .arg(&key)
        .arg(50_000)
        .query::<()>(&mut conn)
        .unwrap();
    store.set_with("k", &2, Duration::from_secs(100))?;
    let pttl: i64 = redis::cmd("PTTL").arg(&key).query(&mut conn).unwrap();
    assert!((114_000..=115_000).contains(&pttl), "{pttl}");
    Ok(())
}

#[test]
fn redis_expires_entries_natively_when_no_process_runs() -> Result<()> {
    let prefix = fresh_prefix();
    let options = || {
        RedisOptions::new()
            .prefix(&prefix)
            .expiry_grace(Duration::from_millis(50))
    };
    let key = {
        let backend = RedisBackend::open_with(&server_url(), options())?;
        let key = backend.redis_key("short");
        let store = LiveDict::builder()
            .backend(backend)
            .active_expiry(false)
            .build()?;
        store.set_with("short", &1, Duration::from_millis(100))?;
        store.set("long", &2)?;
        key
    }; // no livedict process is left to sweep
    let mut conn = raw();
    let gone = conformance::eventually(Duration::from_secs(10), || {
        redis::cmd("EXISTS")
            .arg(&key)
            .query::<i64>(&mut conn)
            .unwrap()
            == 0
    });
    assert!(gone, "Redis did not expire {key} by itself");
    // A store opened later sees only what is left, and tidies the index without an event.
    let store = LiveDict::builder()
        .backend(RedisBackend::open_with(&server_url(), options())?)
        .build()?;
    assert_eq!(store.keys()?, vec!["long".to_string()]);
    assert_eq!(store.len()?, 1);
    store.sweep_expired()?;
    assert_eq!(store.stats().expirations, 0, "nothing was left to report");
    Ok(())
}

#[test]
fn deadlines_follow_the_server_clock_not_the_process_clock() -> Result<()> {
    // A process whose clock is far off (here: a manual clock in 2023) still agrees with the
    // server on what has expired.
    let clock = livedict::ManualClock::new();
    let store = LiveDict::builder()
        .backend(RedisBackend::open_with(
            &server_url(),
            RedisOptions::new().prefix(fresh_prefix()),
        )?)
        .clock(livedict::Clock::Manual(clock.clone()))
        .build()?;
    store.set_with("k", &1, Duration::from_secs(3600))?;
    clock.advance(Duration::from_secs(7200));
    assert_eq!(store.get::<i32>("k")?, Some(1));
    assert!(
        matches!(store.ttl("k")?, KeyTtl::Remaining(d) if d > Duration::from_secs(3590)),
        "the server's clock has not moved an hour"
    );
    Ok(())
}

/// The expiry index's score of `member` in the single bucket of a store opened with one bucket.
fn index_score(conn: &mut redis::Connection, prefix: &str, member: &str) -> Option<u64> {
    redis::cmd("ZSCORE")
        .arg(format!("{prefix}:{{0}}:index"))
        .arg(member)
        .query(conn)
        .unwrap()
}

#[test]
fn a_later_deadline_leaves_the_index_alone_and_every_read_stays_exact() -> Result<()> {
    let prefix = fresh_prefix();
    let clock = livedict::ManualClock::new();
    let store = LiveDict::builder()
        .backend(RedisBackend::open_with(
            &server_url(),
            RedisOptions::new()
                .prefix(&prefix)
                .buckets(1)
                .server_clock(false),
        )?)
        .clock(livedict::Clock::Manual(clock.clone()))
        .active_expiry(false)
        .build()?;
    let (tx, expired) = std::sync::mpsc::channel();
    store.on(livedict::EventKind::Expire, move |e| {
        Ok(tx.send((e.key().to_string(), e.value::<i32>()?))?)
    })?;
    let next_expired = || expired.recv_timeout(Duration::from_secs(10)).unwrap();
    let mut conn = raw();
    let s = Duration::from_secs(1);
    let t0 = clock.now();

    // A write that moves the deadline later leaves the score where it was.
    store.set_with("a", &1, 10 * s)?;
    assert_eq!(index_score(&mut conn, &prefix, "a"), Some(t0 + 10_000));
    clock.advance(5 * s);
    store.set_with("a", &2, 10 * s)?; // deadline t0 + 15 s
    assert_eq!(index_score(&mut conn, &prefix, "a"), Some(t0 + 10_000));
    // So does a sliding deadline renewed by a read, and a later expire().
    store.set_with("b", &3, WriteOptions::ttl(10 * s).sliding(true))?; // t0 + 15 s
    clock.advance(2 * s);
    assert_eq!(store.get::<i32>("b")?, Some(3)); // deadline t0 + 17 s
    assert_eq!(index_score(&mut conn, &prefix, "b"), Some(t0 + 15_000));
    store.set("c", &4)?; // no deadline
    store.set_with("d", &5, 20 * s)?; // t0 + 27 s
    assert!(store.expire("d", 30 * s)?); // t0 + 37 s
    assert_eq!(index_score(&mut conn, &prefix, "d"), Some(t0 + 27_000));
    // An earlier deadline moves the score at once.
    store.set_with("e", &6, 3 * s)?; // t0 + 10 s
    store.set_with("e", &7, 100 * s)?; // t0 + 107 s: the score stays at t0 + 10 s
    assert!(store.expire("e", 2 * s)?); // t0 + 9 s
    assert_eq!(index_score(&mut conn, &prefix, "e"), Some(t0 + 9_000));

    // t0 + 12 s: a's score (t0 + 10 s) has passed, its deadline (t0 + 15 s) has not. Every read
    // path sees it; e (deadline t0 + 9 s) is gone from all of them.
    clock.advance(5 * s);
    assert_eq!(store.get::<i32>("a")?, Some(2));
    assert!(store.contains("a")?);
    assert_eq!(store.len()?, 4);
    let mut keys = store.keys()?;
    keys.sort();
    assert_eq!(keys, ["a", "b", "c", "d"]);
    let mut items = store.items::<i32>()?;
    items.sort();
    assert_eq!(
        items,
        [
            ("a".to_string(), 2),
            ("b".to_string(), 3),
            ("c".to_string(), 4),
            ("d".to_string(), 5)
        ]
    );
    assert!(matches!(store.ttl("a")?, KeyTtl::Remaining(d) if d == 3 * s));
    // The sweep reports e once, moves a's score to its deadline and removes nothing else.
    assert_eq!(store.sweep_expired()?, 1);
    assert_eq!(
        next_expired(),
        ("e".to_string(), Some(7)),
        "with its last value"
    );
    assert_eq!(index_score(&mut conn, &prefix, "a"), Some(t0 + 15_000));
    assert_eq!(store.len()?, 4);

    // At its real deadline a expires, once, with its last value.
    clock.advance(3 * s); // t0 + 15 s
    assert_eq!(store.get::<i32>("a")?, None);
    assert_eq!(store.sweep_expired()?, 1);
    assert_eq!(next_expired(), ("a".to_string(), Some(2)));

    // popitem finds an entry whose score has passed while its deadline has not.
    store.clear()?;
    store.set_with("p", &8, 10 * s)?;
    clock.advance(5 * s);
    store.set_with("p", &9, 10 * s)?;
    clock.advance(6 * s); // past p's score, before its deadline
    assert_eq!(store.popitem::<i32>()?, Some(("p".to_string(), 9)));
    assert_eq!(store.popitem::<i32>()?, None);
    // cleanup_inactive, too.
    store.set_with("q", &10, 10 * s)?;
    clock.advance(5 * s);
    store.set_with("q", &11, 10 * s)?;
    clock.advance(6 * s);
    assert_eq!(store.cleanup_inactive(5 * s)?, 1);
    assert_eq!(store.len()?, 0);
    Ok(())
}

/// With every score of a store passed at once (each key rewritten with a later deadline), each
/// sweep call looks at a bounded number of members and the sweep calls again until it is done,
/// and `len` counts them in chunks, instead of one call loading every early member of every
/// bucket. On a server of its own, to count the calls.
#[test]
fn many_passed_scores_are_swept_and_counted_in_bounded_calls() -> Result<()> {
    let server = OwnServer::start();
    let clock = livedict::ManualClock::new();
    let store = LiveDict::builder()
        .backend(server.backend(RedisOptions::new().server_clock(false))?)
        .clock(livedict::Clock::Manual(clock.clone()))
        .active_expiry(false)
        .build()?;
    let s = Duration::from_secs(1);
    const N: usize = 2500; // more than a chunk (1,000) of passed scores
    let keys: Vec<String> = (0..N).map(|i| format!("k{i}")).collect();
    let write_all = |ttl, value| -> Result<()> {
        let mut batch = store.batch();
        for k in &keys {
            batch.set_with(k, &value, ttl)?;
        }
        store.apply(batch)
    };
    write_all(10 * s, 1)?;
    clock.advance(5 * s);
    write_all(10 * s, 2)?; // the scores stay 5 s early
    store.set_with("due", &3, s)?;
    clock.advance(6 * s); // every score has passed, only one deadline has
    let mut conn = server.connect();
    let now = clock.now();
    let passed = |conn: &mut redis::Connection| -> usize {
        (0..16)
            .map(|b| {
                redis::cmd("ZCOUNT")
                    .arg(format!("livedict:{{{b}}}:index"))
                    .arg("-inf")
                    .arg(now)
                    .query::<usize>(conn)
                    .unwrap()
            })
            .sum()
    };
    assert_eq!(passed(&mut conn), N + 1);
    assert_eq!(store.len()?, N, "counted in chunks");
    let calls =
        |conn: &mut redis::Connection| info_number(conn, "commandstats", "cmdstat_fcall:calls=");
    let before = calls(&mut conn);
    assert_eq!(store.sweep_expired()?, 1, "due expires, nothing else");
    let sweeps = calls(&mut conn) - before;
    assert!(
        sweeps >= (N / 256) as u64,
        "{sweeps} calls swept {N} early scores"
    );
    assert_eq!(
        passed(&mut conn),
        0,
        "every early score moved to its deadline"
    );
    assert_eq!(store.len()?, N);
    Ok(())
}

#[test]
fn popitem_finds_a_live_entry_behind_many_unswept_dead_ones() -> Result<()> {
    let prefix = fresh_prefix();
    let clock = livedict::ManualClock::new();
    let store = LiveDict::builder()
        .backend(RedisBackend::open_with(
            &server_url(),
            RedisOptions::new().prefix(&prefix).server_clock(false),
        )?)
        .clock(livedict::Clock::Manual(clock.clone()))
        .active_expiry(false)
        .build()?;
    let s = Duration::from_secs(1);
    // One bucket (a shared hash tag): 150 entries due at 6 s, and one whose score (10 s) is
    // behind all of theirs while its deadline (15 s) has not come.
    store.set_with("{t}live", &1, 10 * s)?;
    clock.advance(5 * s);
    store.set_with("{t}live", &2, 10 * s)?;
    for i in 0..150 {
        store.set_with(&format!("{{t}}dead{i}"), &0, s)?;
    }
    clock.advance(6 * s);
    assert_eq!(store.popitem::<i32>()?, Some(("{t}live".to_string(), 2)));
    assert_eq!(store.popitem::<i32>()?, None);
    Ok(())
}

/// Marks the store whose metadata is `meta` as of `format`, as an older livedict left it.
fn set_format(conn: &mut redis::Connection, meta: &str, format: &str) {
    redis::cmd("HSET")
        .arg(meta)
        .arg("format")
        .arg(format)
        .query::<()>(conn)
        .unwrap();
}

fn format_of(conn: &mut redis::Connection, meta: &str) -> String {
    redis::cmd("HGET")
        .arg(meta)
        .arg("format")
        .query(conn)
        .unwrap()
}

#[test]
fn a_format_1_store_is_upgraded_when_opened() -> Result<()> {
    // A format-1 store: what format 2 writes, with exact scores and the format field at 1.
    let prefix = fresh_prefix();
    let mut conn = raw();
    let clock = livedict::ManualClock::new();
    let open_manual = || -> Result<LiveDict> {
        LiveDict::builder()
            .backend(RedisBackend::open_with(
                &server_url(),
                RedisOptions::new().prefix(&prefix).server_clock(false),
            )?)
            .clock(livedict::Clock::Manual(clock.clone()))
            .active_expiry(false)
            .build()
    };
    let s = Duration::from_secs(1);
    let store = open_manual()?;
    store.set("k", &1)?;
    store.set_with("t", &2, 10 * s)?;
    drop(store);
    let meta = format!("{prefix}:meta");
    set_format(&mut conn, &meta, "1");
    let store = open_manual()?;
    assert_eq!(format_of(&mut conn, &meta), "3");
    assert_eq!(store.get::<i32>("k")?, Some(1));
    // Its entries follow format 2's rules from now on: a later deadline leaves the score.
    clock.advance(5 * s);
    store.set_with("t", &3, 10 * s)?;
    clock.advance(6 * s); // past the old score, before the new deadline
    assert_eq!(store.len()?, 2);
    assert_eq!(store.sweep_expired()?, 0);
    clock.advance(4 * s);
    assert_eq!(store.sweep_expired()?, 1);
    assert_eq!(store.keys()?, ["k"]);
    Ok(())
}

#[test]
fn foreign_keys_are_never_read_counted_or_deleted() -> Result<()> {
    let prefix = fresh_prefix();
    let mut conn = raw();
    let foreign = [
        "foreign".to_string(),
        format!("{prefix}x"),
        format!("{prefix}2:{{0}}:k:a"),
        format!("{prefix}2:{{0}}:index"),
        format!("{prefix}2:meta"),
    ];
    for k in &foreign {
        redis::cmd("SET")
            .arg(k)
            .arg("not yours")
            .query::<()>(&mut conn)
            .unwrap();
    }
    let store = open(&prefix)?;
    store.set("a", &1)?;
    store.set_with("b", &2, Duration::from_millis(1))?;
    // The server's clock decides: wait (bounded) until that millisecond has passed there.
    let give_up = std::time::Instant::now() + Duration::from_secs(5);
    while store.contains("b")? {
        assert!(std::time::Instant::now() < give_up, "b never expired");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(store.keys()?, vec!["a".to_string()]);
    assert_eq!(store.len()?, 1);
    store.sweep_expired()?;
    store.cleanup_inactive(Duration::from_millis(1))?;
    store.clear()?;
    assert!(store.is_empty()?);
    for k in &foreign {
        let v: Option<String> = redis::cmd("GET").arg(k).query(&mut conn).unwrap();
        assert_eq!(v.as_deref(), Some("not yours"), "{k}");
    }
    Ok(())
}

#[test]
fn an_undecodable_entry_is_reported_and_kept() -> Result<()> {
    let prefix = fresh_prefix();
    let store = open(&prefix)?;
    let backend = RedisBackend::open_with(&server_url(), RedisOptions::new().prefix(&prefix))?;
    store.set_with("k", &1, Duration::from_secs(60))?;
    let key = backend.redis_key("k");
    let mut conn = raw();
    let refused_everywhere = |store: &LiveDict| {
        assert!(matches!(store.get::<i32>("k"), Err(Error::Format(_))));
        assert!(matches!(store.peek::<i32>("k"), Err(Error::Format(_))));
        assert!(matches!(store.ttl("k"), Err(Error::Format(_))));
        assert!(matches!(store.delete("k"), Err(Error::Format(_))));
        assert!(matches!(store.set("k", &2), Err(Error::Format(_))));
        assert!(matches!(
            store.expire("k", Duration::from_secs(5)),
            Err(Error::Format(_))
        ));
        // A batch that reaches it writes nothing.
        assert!(matches!(
            store.set_many([("other", 3), ("k", 4)]),
            Err(Error::Format(_))
        ));
        assert!(!store.contains("other").unwrap());
    };
    // Strings that are not entries: too short, a head without its tag, a deadline that is not a
    // whole number, a sliding TTL below zero.
    let good: Vec<u8> = redis::cmd("GET").arg(&key).query(&mut conn).unwrap();
    let mut untagged = good.clone();
    untagged[0] = b'D';
    let mut fractional = good.clone();
    fractional[1..9].copy_from_slice(&1_795_326_030_123.5f64.to_be_bytes());
    let mut negative = good.clone();
    negative[9..17].copy_from_slice(&(-1000f64).to_be_bytes());
    for corrupt in [
        b"x".to_vec(),
        good[..32].to_vec(),
        untagged,
        fractional,
        negative,
    ] {
        redis::cmd("SET")
            .arg(&key)
            .arg(&corrupt)
            .query::<()>(&mut conn)
            .unwrap();
        refused_everywhere(&store);
        let kept: Vec<u8> = redis::cmd("GET").arg(&key).query(&mut conn).unwrap();
        assert_eq!(kept, corrupt, "left as it was");
    }
    // A hash (an entry of format 2) with a field that is not a whole number of digits below 2^53
    // (tonumber would take the last four).
    for d in ["soon", "inf", "1e300", "0x10", "9007199254740992"] {
        redis::cmd("DEL").arg(&key).query::<()>(&mut conn).unwrap();
        redis::cmd("HSET")
            .arg(&key)
            .arg("v")
            .arg(&good[33..])
            .arg("d")
            .arg(d)
            .query::<()>(&mut conn)
            .unwrap();
        refused_everywhere(&store);
        let kept: Option<String> = redis::cmd("HGET")
            .arg(&key)
            .arg("d")
            .query(&mut conn)
            .unwrap();
        assert_eq!(kept.as_deref(), Some(d), "left as it was");
    }
    // Neither a string nor a hash.
    redis::cmd("DEL").arg(&key).query::<()>(&mut conn).unwrap();
    redis::cmd("RPUSH")
        .arg(&key)
        .arg("x")
        .query::<()>(&mut conn)
        .unwrap();
    refused_everywhere(&store);
    let v: Vec<String> = redis::cmd("LRANGE")
        .arg(&key)
        .arg(0)
        .arg(-1)
        .query(&mut conn)
        .unwrap();
    assert_eq!(v, ["x"]);
    Ok(())
}

/// An entry that does not decode, due to expire, does not stop expiry for the rest of the
/// store: the sweep leaves it as it is and passes it by, and every other entry due expires with
/// its event. (Before, the one entry made every sweep script fail, for every bucket, forever.)
#[test]
fn an_undecodable_due_entry_does_not_stop_the_sweep() -> Result<()> {
    let prefix = fresh_prefix();
    let clock = livedict::ManualClock::new();
    let backend = RedisBackend::open_with(
        &server_url(),
        RedisOptions::new().prefix(&prefix).server_clock(false),
    )?;
    let key = backend.redis_key("bad");
    let store = LiveDict::builder()
        .backend(backend)
        .clock(livedict::Clock::Manual(clock.clone()))
        .active_expiry(false)
        .build()?;
    let expired = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = expired.clone();
    store.on(livedict::EventKind::Expire, move |e| {
        seen.lock().unwrap().push(e.key().to_owned());
        Ok(())
    })?;
    let ttl = Duration::from_secs(1);
    store.set_with("bad", &0, ttl)?;
    const N: usize = 100;
    for i in 0..N {
        store.set_with(&format!("ok:{i}"), &i, ttl)?;
    }
    let mut conn = raw();
    redis::cmd("SET")
        .arg(&key)
        .arg("garbage")
        .query::<()>(&mut conn)
        .unwrap();
    clock.advance(2 * ttl);
    assert_eq!(store.sweep_expired()?, N);
    assert_eq!(store.sweep_expired()?, 0, "passed by from now on");
    let mut conn2 = raw();
    let kept: Vec<u8> = redis::cmd("GET").arg(&key).query(&mut conn2).unwrap();
    assert_eq!(kept, b"garbage", "left as it was");
    // Looked at again a minute later: gone by then (removed by hand), its member goes too.
    redis::cmd("DEL").arg(&key).query::<()>(&mut conn2).unwrap();
    clock.advance(Duration::from_secs(61));
    assert_eq!(store.sweep_expired()?, 0);
    let members: usize = (0..16)
        .map(|b| {
            redis::cmd("ZCARD")
                .arg(format!("{prefix}:{{{b}}}:index"))
                .query::<usize>(&mut conn2)
                .unwrap()
        })
        .sum();
    assert_eq!(members, 0, "no member left behind");
    store.close();
    let mut expired = expired.lock().unwrap().clone();
    expired.sort();
    let mut expected: Vec<String> = (0..N).map(|i| format!("ok:{i}")).collect();
    expected.sort();
    assert_eq!(expired, expected);
    Ok(())
}

/// An update whose read found the entry live applies its change as of that read, even when
/// the entry's deadline (on the server's clock) passes while the closure runs: the new value
/// keeps the TTL, and so is already expired, as in the memory and SQLite backends. (Before,
/// the commit judged the entry expired at its own time, found no TTL to keep, and left the new
/// value without one: a counter with a TTL became permanent.)
#[test]
fn an_update_across_the_deadline_keeps_the_ttl_it_read() -> Result<()> {
    let store = open(&fresh_prefix())?;
    store.set_with("k", &0, Duration::from_millis(200))?;
    let new = store.update("k", |old: Option<i32>| {
        std::thread::sleep(Duration::from_millis(400));
        old.unwrap_or(100) + 1
    })?;
    assert_eq!(new, 1, "the closure saw the live value");
    assert_eq!(store.get::<i32>("k")?, None, "the kept deadline has passed");
    assert!(!store.contains("k")?);
    Ok(())
}

/// A clear waits for an update in progress on one of its keys (of another process: another
/// store on the same prefix) instead of landing between the update's read and its commit, which
/// left the update's value behind as if the clear had never seen the key.
#[test]
fn a_clear_waits_for_an_update_in_progress() -> Result<()> {
    let prefix = fresh_prefix();
    let updater = open(&prefix)?;
    let clearer = open(&prefix)?;
    updater.set("c", &5)?;
    let (reading, read) = std::sync::mpsc::channel::<()>();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let cleared = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| -> Result<()> {
        let updater = &updater;
        let update = scope.spawn(move || {
            updater.update("c", move |old: Option<i32>| {
                reading.send(()).unwrap();
                released.recv().unwrap();
                old.unwrap_or(0) + 1
            })
        });
        read.recv().unwrap(); // the update holds the key's lock
        let clear = scope.spawn(|| {
            let r = clearer.clear();
            cleared.store(true, Ordering::SeqCst);
            r
        });
        std::thread::sleep(Duration::from_millis(300));
        let cleared_meanwhile = cleared.load(Ordering::SeqCst);
        release.send(()).unwrap();
        assert!(!cleared_meanwhile, "the clear waits for the update");
        assert_eq!(update.join().unwrap()?, 6);
        clear.join().unwrap()?;
        Ok(())
    })?;
    assert_eq!(clearer.get::<i32>("c")?, None, "cleared after the update");
    Ok(())
}

/// An entry whose deadline passes while an update holds its key is not removed by Redis's own
/// expiry meanwhile (the sweep passes locked entries by, so no process would see its
/// `Expire`): taking the lock makes its native TTL outlast the lease by the grace.
#[test]
fn a_locked_entry_outlives_its_native_expiry_until_the_update_ends() -> Result<()> {
    let prefix = fresh_prefix();
    let backend = RedisBackend::open_with(
        &server_url(),
        RedisOptions::new()
            .prefix(&prefix)
            .expiry_grace(Duration::from_millis(500)),
    )?;
    let key = backend.redis_key("k");
    let store = LiveDict::builder().backend(backend).build()?;
    store.set_with("k", &0, Duration::from_millis(100))?;
    let mut conn = raw();
    let mut exists = false;
    let value = store.update("k", |old: Option<i32>| {
        // Past the deadline (100 ms) and the native expiry (at most 100 + 750 ms).
        std::thread::sleep(Duration::from_millis(1500));
        exists = redis::cmd("EXISTS").arg(&key).query(&mut conn).unwrap();
        old.unwrap_or(-1) + 1
    })?;
    assert_eq!(value, 1, "the update read the live value");
    assert!(exists, "Redis kept the locked entry");
    Ok(())
}

/// A read renewing a sliding deadline while an update holds the key does not shorten the native
/// TTL that taking the lock extended (with the caller's clock every renewal sets one).
#[test]
fn a_sliding_read_during_an_update_keeps_the_extended_native_ttl() -> Result<()> {
    let prefix = fresh_prefix();
    let options = || {
        RedisOptions::new()
            .prefix(&prefix)
            .server_clock(false)
            .expiry_grace(Duration::from_millis(500))
    };
    let backend = RedisBackend::open_with(&server_url(), options())?;
    let key = backend.redis_key("k");
    let store = LiveDict::builder().backend(backend).build()?;
    let reader = LiveDict::builder()
        .backend(RedisBackend::open_with(&server_url(), options())?)
        .build()?;
    store.set_with(
        "k",
        &0,
        WriteOptions::ttl(Duration::from_millis(300)).sliding(true),
    )?;
    let mut conn = raw();
    let mut exists = false;
    store.update("k", |old: Option<i32>| {
        // Renews the deadline to now + 300 ms; a native TTL set from it would end within
        // 300 + 750 ms.
        assert_eq!(reader.get::<i32>("k").unwrap(), Some(0));
        std::thread::sleep(Duration::from_millis(1500));
        exists = redis::cmd("EXISTS").arg(&key).query(&mut conn).unwrap();
        old.unwrap_or(-1) + 1
    })?;
    assert!(exists, "Redis kept the locked entry");
    Ok(())
}

/// A clear goes on past a key an update holds, removes everything else, and takes that key once
/// the update is done.
#[test]
fn a_clear_removes_the_rest_while_one_key_is_held() -> Result<()> {
    let prefix = fresh_prefix();
    let updater = open(&prefix)?;
    let clearer = open(&prefix)?;
    for i in 0..50 {
        updater.set(&format!("k{i}"), &i)?;
    }
    let (reading, read) = std::sync::mpsc::channel::<()>();
    let (release, released) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|scope| -> Result<()> {
        let updater = &updater;
        let update = scope.spawn(move || {
            updater.update("k7", move |old: Option<i32>| {
                reading.send(()).unwrap();
                released.recv().unwrap();
                old.unwrap_or(0) + 1
            })
        });
        read.recv().unwrap();
        let clear = scope.spawn(|| clearer.clear());
        let give_up = std::time::Instant::now() + Duration::from_secs(10);
        let mut left = usize::MAX;
        while std::time::Instant::now() < give_up {
            left = clearer.keys()?.len();
            if left == 1 {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        release.send(()).unwrap();
        assert_eq!(left, 1, "everything but the held key went first");
        assert_eq!(update.join().unwrap()?, 8);
        clear.join().unwrap()?;
        Ok(())
    })?;
    assert!(clearer.keys()?.is_empty());
    Ok(())
}

/// An entry as format 2 kept it: a hash with fields `v`, `d`, `s`, `a`, made from the entry
/// string that format 3 wrote under `key` (with its native TTL).
fn to_format_2_hash(conn: &mut redis::Connection, key: &str) {
    let entry: Vec<u8> = redis::cmd("GET").arg(key).query(conn).unwrap();
    let pttl: i64 = redis::cmd("PTTL").arg(key).query(conn).unwrap();
    let (d, s, a, _) = entry_head(&entry);
    redis::cmd("DEL").arg(key).query::<()>(conn).unwrap();
    let mut hset = redis::cmd("HSET");
    hset.arg(key).arg("v").arg(&entry[33..]).arg("a").arg(a);
    if d > 0 {
        hset.arg("d").arg(d).arg("s").arg(s);
    }
    hset.query::<()>(conn).unwrap();
    if pttl > 0 {
        redis::cmd("PEXPIRE")
            .arg(key)
            .arg(pttl)
            .query::<()>(conn)
            .unwrap();
    }
}

fn key_type(conn: &mut redis::Connection, key: &str) -> String {
    redis::cmd("TYPE").arg(key).query(conn).unwrap()
}

#[test]
fn a_format_2_store_is_read_and_its_entries_become_strings_when_written() -> Result<()> {
    let prefix = fresh_prefix();
    let mut conn = raw();
    let clock = livedict::ManualClock::new();
    let options = || RedisOptions::new().prefix(&prefix).server_clock(false);
    let open_manual = || -> Result<LiveDict> {
        LiveDict::builder()
            .backend(RedisBackend::open_with(&server_url(), options())?)
            .clock(livedict::Clock::Manual(clock.clone()))
            .active_expiry(false)
            .build()
    };
    let backend = RedisBackend::open_with(&server_url(), options())?;
    let s = Duration::from_secs(1);
    let store = open_manual()?;
    store.set("plain", &1)?;
    store.set_with("fixed", &2, 100 * s)?;
    store.set_with("slide", &3, WriteOptions::ttl(100 * s).sliding(true))?;
    store.set_with("due", &4, 10 * s)?;
    store.set_with("batch", &5, 100 * s)?;
    store.set("gone", &6)?;
    store.set("replaced", &7)?;
    store.set_with("kept", &8, 100 * s)?;
    store.set("default", &9)?;
    store.set_with("dead", &10, 10 * s)?;
    drop(store);
    let names = [
        "plain", "fixed", "slide", "due", "batch", "gone", "replaced", "kept", "default", "dead",
    ];
    for k in names {
        let key = backend.redis_key(k);
        to_format_2_hash(&mut conn, &key);
        assert_eq!(key_type(&mut conn, &key), "hash");
    }
    let meta = format!("{prefix}:meta");
    set_format(&mut conn, &meta, "2");

    let store = open_manual()?;
    assert_eq!(format_of(&mut conn, &meta), "3");
    // Read as they are, deadlines included; a read that is no access rewrites nothing.
    assert_eq!(store.get::<i32>("plain")?, Some(1));
    assert_eq!(store.peek::<i32>("slide")?, Some(3));
    assert_eq!(store.ttl("fixed")?, KeyTtl::Remaining(100 * s));
    assert_eq!(store.len()?, names.len());
    assert_eq!(key_type(&mut conn, &backend.redis_key("slide")), "hash");
    clock.advance(50 * s);
    // The due entry expires, once, with its value.
    let expired = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = Arc::clone(&expired);
    store.on(livedict::EventKind::Expire, move |event| {
        let value: i32 = event.value()?.expect("an expired value");
        seen.lock().unwrap().push((event.key().to_string(), value));
        Ok(())
    })?;
    // A batch over a dead hash entry reports its expiry, with its value, instead of the sweep.
    let mut batch = store.batch();
    batch.set("dead", &11)?;
    store.apply(batch)?;
    assert_eq!(store.sweep_expired()?, 1);
    assert_eq!(store.sweep_expired()?, 0, "once");
    store.close();
    let mut seen = expired.lock().unwrap().clone();
    seen.sort();
    assert_eq!(seen, [("dead".to_string(), 10), ("due".to_string(), 4)]);

    let store = open_manual()?;
    // Each kind of write turns the hash into a string, and sees what it held.
    assert_eq!(
        store.get::<i32>("slide")?,
        Some(3),
        "renews the sliding deadline"
    );
    assert_eq!(store.ttl("slide")?, KeyTtl::Remaining(100 * s));
    assert!(store.expire("fixed", 200 * s)?);
    assert_eq!(store.ttl("fixed")?, KeyTtl::Remaining(200 * s));
    assert_eq!(store.replace("replaced", &8)?, Some(7));
    store.set_many([("batch", 9)])?;
    assert_eq!(store.ttl("batch")?, KeyTtl::Never);
    store.update("plain", |v: Option<i32>| v.unwrap_or(0) + 10)?;
    // A batch that keeps the existing TTL keeps the hash entry's deadline (at 100 s, 50 s from
    // now); setdefault leaves its value.
    let mut batch = store.batch();
    batch.set_with("kept", &80, WriteOptions::keep_ttl())?;
    store.apply(batch)?;
    assert_eq!(store.ttl("kept")?, KeyTtl::Remaining(50 * s));
    assert_eq!(store.setdefault("default", 90)?, 9);
    for k in ["slide", "fixed", "replaced", "batch", "plain", "kept"] {
        assert_eq!(key_type(&mut conn, &backend.redis_key(k)), "string", "{k}");
    }
    assert!(store.delete("gone")?);
    assert_eq!(
        (
            store.get::<i32>("plain")?,
            store.get::<i32>("fixed")?,
            store.get::<i32>("replaced")?,
            store.get::<i32>("batch")?,
        ),
        (Some(11), Some(2), Some(8), Some(9))
    );
    assert_eq!(store.get::<i32>("kept")?, Some(80));
    // And their deadlines still hold: the sliding one (renewed at 50 s) is due at 150 s, the
    // kept one at 100 s.
    clock.advance(101 * s);
    assert_eq!(store.sweep_expired()?, 2);
    let mut keys = store.keys()?;
    keys.sort();
    assert_eq!(
        keys,
        ["batch", "dead", "default", "fixed", "plain", "replaced"]
    );
    Ok(())
}

#[test]
fn a_prefix_holding_something_else_is_refused_and_left_alone() {
    let prefix = fresh_prefix();
    let mut conn = raw();
    let meta = format!("{prefix}:meta");
    redis::cmd("SET")
        .arg(&meta)
        .arg("mine")
        .query::<()>(&mut conn)
        .unwrap();
    let opened = RedisBackend::open_with(&server_url(), RedisOptions::new().prefix(&prefix));
    assert!(matches!(opened, Err(Error::Format(_))), "{opened:?}");
    let v: String = redis::cmd("GET").arg(&meta).query(&mut conn).unwrap();
    assert_eq!(v, "mine");
    // A newer format.
    let prefix = fresh_prefix();
    redis::cmd("HSET")
        .arg(format!("{prefix}:meta"))
        .arg("format")
        .arg("99")
        .arg("buckets")
        .arg("16")
        .query::<()>(&mut conn)
        .unwrap();
    let opened = RedisBackend::open_with(&server_url(), RedisOptions::new().prefix(&prefix));
    assert!(matches!(opened, Err(Error::Format(_))), "{opened:?}");
    // A grace too long for the server's numbers.
    let opened = RedisBackend::open_with(
        &server_url(),
        RedisOptions::new()
            .prefix(fresh_prefix())
            .expiry_grace(livedict::MAX_TTL + Duration::from_millis(1)),
    );
    assert!(matches!(opened, Err(Error::Backend(_))), "{opened:?}");
    // Bad prefixes.
    for bad in ["", "a{b}", "has space"] {
        let opened = RedisBackend::open_with(&server_url(), RedisOptions::new().prefix(bad));
        assert!(matches!(opened, Err(Error::Backend(_))), "{bad:?}");
    }
}

#[test]
fn an_existing_store_keeps_its_bucket_count() -> Result<()> {
    let prefix = fresh_prefix();
    let first = RedisBackend::open_with(
        &server_url(),
        RedisOptions::new().prefix(&prefix).buckets(4),
    )?;
    let second = RedisBackend::open_with(
        &server_url(),
        RedisOptions::new().prefix(&prefix).buckets(64),
    )?;
    assert_eq!((first.buckets(), second.buckets()), (4, 4));
    assert_eq!(first.redis_key("k"), second.redis_key("k"));
    Ok(())
}

// ---- connections and restarts --------------------------------------------------------------------

/// On a server of its own: `CLIENT KILL` of every other client would also cut the connections
/// of the tests running beside it on the shared server (it did, now and then).
/// A batch whose every write has its own TTL sends as many shapes (numbered past one digit),
/// and each key gets its own TTL, on a single server and on a cluster.
#[test]
fn a_batch_of_many_shapes_gives_each_write_its_own() -> Result<()> {
    for backend in [server_backend(), cluster_backend()] {
        let (clock, _handle) = livedict::Clock::manual();
        let store = LiveDict::builder()
            .shared_backend(backend)
            .clock(clock)
            .build()?;
        let mut batch = store.batch();
        for i in 0..300u64 {
            let ttl = Duration::from_secs(100 + i);
            if i % 10 == 9 {
                batch.set_with(&format!("s{i}"), &i, WriteOptions::ttl(ttl).sliding(true))?;
            } else {
                batch.set_with(&format!("s{i}"), &i, ttl)?;
            }
        }
        store.apply(batch)?;
        for i in 0..300u64 {
            assert_eq!(store.get::<u64>(&format!("s{i}"))?, Some(i));
            assert_eq!(
                store.ttl(&format!("s{i}"))?,
                KeyTtl::Remaining(Duration::from_secs(100 + i)),
                "s{i}"
            );
        }
    }
    Ok(())
}

#[test]
fn a_killed_connection_fails_one_call_then_the_store_works_again() -> Result<()> {
    let server = OwnServer::start();
    let store = LiveDict::builder()
        .backend(server.backend(RedisOptions::new())?)
        .active_expiry(false)
        .build()?;
    store.set("k", &1)?;
    let mut conn = server.connect();
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .arg("SKIPME")
        .arg("yes")
        .query(&mut conn)
        .unwrap();
    assert!(killed >= 1);
    match store.get::<i32>("k") {
        Err(Error::Backend(_)) => {}
        other => panic!("a call on the killed connection must fail, got {other:?}"),
    }
    // The next call reconnects; nothing was lost.
    assert_eq!(store.get::<i32>("k")?, Some(1));
    assert_eq!(store.incr("k", 1)?, 2);
    Ok(())
}

/// The names of the function libraries on the server.
fn libraries(conn: &mut redis::Connection) -> Vec<String> {
    let list: Vec<Vec<redis::Value>> = redis::cmd("FUNCTION").arg("LIST").query(conn).unwrap();
    list.iter()
        .filter_map(|library| match &library[..] {
            [
                redis::Value::BulkString(field),
                redis::Value::BulkString(name),
                ..,
            ] if field == b"library_name" => Some(String::from_utf8_lossy(name).into_owned()),
            _ => None,
        })
        .collect()
}

/// On a server of its own: flushing every function and script would make calls of the tests
/// beside it load them again (which works, but is not what those tests are about).
#[test]
fn a_flushed_library_is_loaded_again_and_a_server_refusing_functions_runs_scripts() -> Result<()> {
    let server = OwnServer::start();
    let mut conn = server.connect();
    let store = LiveDict::builder()
        .backend(server.backend(RedisOptions::new())?)
        .active_expiry(false)
        .build()?;
    store.set("k", &1)?;
    let loaded = libraries(&mut conn);
    assert!(
        matches!(&loaded[..], [name] if name.starts_with("livedict_")),
        "{loaded:?}"
    );
    // Flushed (as a restart without persistence would): the next call loads it again.
    redis::cmd("FUNCTION")
        .arg("FLUSH")
        .query::<()>(&mut conn)
        .unwrap();
    assert_eq!(store.incr("k", 1)?, 2);
    assert_eq!(libraries(&mut conn), loaded);

    // Users of the server, and stores opened as them.
    let acl = |conn: &mut redis::Connection, user: &str, rules: &[&str]| {
        redis::cmd("ACL")
            .arg("SETUSER")
            .arg(user)
            .arg(rules)
            .query::<()>(conn)
            .unwrap()
    };
    let open_as = |user: &str| -> Result<LiveDict> {
        let url = format!("redis://{user}:any@127.0.0.1:{}", server.port);
        LiveDict::builder()
            .backend(RedisBackend::open_with(&url, RedisOptions::new())?)
            .active_expiry(false)
            .build()
    };
    const ALL: [&str; 5] = ["on", "nopass", "~*", "&*", "+@all"];
    const NO_FUNCTIONS: [&str; 3] = ["-function", "-fcall", "-fcall_ro"];

    // A user who may not load or call functions: the store runs its script instead, and loads
    // it again after SCRIPT FLUSH.
    acl(&mut conn, "no-functions", &ALL);
    acl(&mut conn, "no-functions", &NO_FUNCTIONS);
    let scripted = open_as("no-functions")?;
    assert_eq!(scripted.get::<i32>("k")?, Some(2));
    assert_eq!(scripted.incr("k", 1)?, 3);
    redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query::<()>(&mut conn)
        .unwrap();
    scripted.set_with("t", &4, Duration::from_secs(60))?;
    assert!(matches!(scripted.ttl("t")?, KeyTtl::Remaining(_)));
    assert_eq!(
        store.get::<i32>("t")?,
        Some(4),
        "both forms share the store"
    );

    // A user who loses the right to call functions while the store runs: it turns to scripts.
    acl(&mut conn, "losing-functions", &ALL);
    let switching = open_as("losing-functions")?;
    assert_eq!(switching.incr("k", 1)?, 4);
    acl(&mut conn, "losing-functions", &NO_FUNCTIONS);
    assert_eq!(switching.incr("k", 1)?, 5);
    assert_eq!(switching.get::<i32>("k")?, Some(5));
    Ok(())
}

/// On a server of its own, whose memory limit it lowers.
#[test]
fn a_full_server_refuses_writes_and_still_serves_reads_and_removals() -> Result<()> {
    let server = OwnServer::start();
    let store = LiveDict::builder()
        .backend(server.backend(RedisOptions::new())?)
        .build()?;
    for i in 0..100 {
        store.set_with(&format!("k{i}"), &i, Duration::from_secs(3600))?;
    }
    let mut conn = server.connect();
    let used = info_number(&mut conn, "memory", "used_memory:");
    let set_config = |conn: &mut redis::Connection, name: &str, value: String| {
        redis::cmd("CONFIG")
            .arg("SET")
            .arg(name)
            .arg(value)
            .query::<()>(conn)
            .unwrap()
    };
    set_config(&mut conn, "maxmemory-policy", "noeviction".into());
    set_config(&mut conn, "maxmemory", (used / 2).to_string());
    assert!(matches!(store.set("new", &1), Err(Error::Backend(_))));
    assert!(matches!(store.incr("k1", 1), Err(Error::Backend(_))));
    assert_eq!(store.get::<i64>("k1")?, Some(1));
    assert_eq!(store.get_many::<i64>(&["k2", "new"])?, vec![Some(2), None]);
    assert!(matches!(store.ttl("k3")?, KeyTtl::Remaining(_)));
    // A store opened now (the server refuses to load a library) reads too.
    let late = LiveDict::builder()
        .backend(server.backend(RedisOptions::new())?)
        .build()?;
    assert_eq!(late.get::<i64>("k4")?, Some(4));
    assert!(matches!(late.set("new", &1), Err(Error::Backend(_))));
    assert_eq!(store.len()?, 100);
    assert_eq!(store.keys()?.len(), 100);
    assert!(store.delete("k1")?);
    assert!(store.popitem::<i64>()?.is_some());
    store.clear()?;
    assert_eq!(store.len()?, 0);
    set_config(&mut conn, "maxmemory", "0".into());
    store.set("new", &1)?;
    assert_eq!(store.get::<i64>("new")?, Some(1));
    Ok(())
}

/// A number from `INFO section`: the text after `prefix` on its line, up to a comma (0 when the
/// line is missing, as `cmdstat_` lines are before a command's first call).
fn info_number(conn: &mut redis::Connection, section: &str, prefix: &str) -> u64 {
    let info: String = redis::cmd("INFO").arg(section).query(conn).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.trim().parse().unwrap())
}

/// A redis-server of this test's own (so that it can be restarted), with an append-only file
/// synced on every write.
struct OwnServer {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl OwnServer {
    /// Starts the server; like every test here, only in the test environment (a missing
    /// `LIVEDICT_TEST_REDIS_URL` fails the test, even though this server does not use it).
    fn start() -> Self {
        let _ = server_url();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = OwnServer {
            dir: tempfile::tempdir().unwrap(),
            port,
            child: None,
        };
        server.run();
        server
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A backend on this server.
    fn backend(&self, options: RedisOptions) -> livedict::Result<RedisBackend> {
        RedisBackend::open_with(&self.url(), options)
    }

    /// A raw connection, for looking at and configuring the server.
    fn connect(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .unwrap()
    }

    fn run(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server (scripts/test installs it)");
        self.child = Some(child);
        let client = redis::Client::open(self.url()).unwrap();
        assert!(
            conformance::eventually(Duration::from_secs(10), || client.get_connection().is_ok()),
            "redis-server did not start"
        );
    }

    /// Stops the server (it writes nothing more: every acknowledged write is in the AOF).
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
fn a_server_restart_mid_stream_fails_calls_then_recovers_losing_nothing() -> Result<()> {
    let mut server = OwnServer::start();
    let store = LiveDict::builder()
        .backend(server.backend(RedisOptions::new().timeout(Duration::from_secs(1)))?)
        .build()?;
    let writer = store.clone();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_writer = stop.clone();
    let t = std::thread::spawn(move || {
        let (mut acknowledged, mut failures) = (Vec::new(), 0);
        let mut i = 0u64;
        while !stop_writer.load(Ordering::SeqCst) {
            match writer.set(&format!("w{i}"), &i) {
                Ok(()) => acknowledged.push(i),
                Err(Error::Backend(_)) => failures += 1,
                Err(other) => panic!("an outage must be Error::Backend, got {other}"),
            }
            i += 1;
            if failures > 0 && failures % 50 == 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        (acknowledged, failures)
    });
    std::thread::sleep(Duration::from_millis(300));
    server.stop(); // killed: only the append-only file remains
    std::thread::sleep(Duration::from_millis(300));
    server.run();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    let (acknowledged, failures) = t.join().unwrap();
    assert!(failures > 0, "calls during the outage fail");
    let after = *acknowledged.last().unwrap();
    assert!(
        acknowledged.len() > 10 && store.get::<u64>(&format!("w{after}"))? == Some(after),
        "the store works again without being rebuilt"
    );
    let keys: Vec<String> = acknowledged.iter().map(|i| format!("w{i}")).collect();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let values: Vec<Option<u64>> = store.get_many(&refs)?;
    for (i, v) in acknowledged.iter().zip(values) {
        assert_eq!(v, Some(*i), "acknowledged write w{i} was lost");
    }
    Ok(())
}

// ---- several processes -----------------------------------------------------------------------------

/// The body of the child processes: a no-op unless run by [`spawn_child`].
#[test]
fn child_process() -> Result<()> {
    let Ok(role) = std::env::var("LIVEDICT_CHILD") else {
        return Ok(());
    };
    let prefix = std::env::var("LIVEDICT_PREFIX").unwrap();
    let arg: u64 = std::env::var("LIVEDICT_ARG").unwrap().parse().unwrap();
    match role.as_str() {
        "incr" => children::incrementer(&open(&prefix)?, arg)?,
        "sweep" => children::sweeper(&open(&prefix)?)?,
        other => panic!("unknown child role {other}"),
    }
    Ok(())
}

fn spawn_child(role: &str, prefix: &str, arg: u64) -> Child {
    children::spawn(
        role,
        &[
            ("LIVEDICT_PREFIX", prefix.to_owned()),
            ("LIVEDICT_ARG", arg.to_string()),
        ],
    )
}

#[test]
fn increments_from_four_processes_lose_nothing() -> Result<()> {
    let prefix = fresh_prefix();
    let children: Vec<_> = (0..4).map(|_| spawn_child("incr", &prefix, 500)).collect();
    for c in children {
        assert_eq!(children::lines(c), ["done"]);
    }
    assert_eq!(open(&prefix)?.get::<i64>("counter")?, Some(2000));
    Ok(())
}

#[test]
fn each_expired_entry_goes_to_exactly_one_of_three_processes() -> Result<()> {
    let prefix = fresh_prefix();
    let n = 900u64;
    {
        let store = LiveDict::builder()
            .backend(RedisBackend::open_with(
                &server_url(),
                RedisOptions::new().prefix(&prefix),
            )?)
            .active_expiry(false) // this process never sweeps
            .build()?;
        children::fill_expiring(
            &store,
            n,
            Duration::from_millis(1500),
            Duration::from_millis(500),
        )?;
    }
    let sweepers = (0..3).map(|_| spawn_child("sweep", &prefix, 0)).collect();
    children::assert_each_expired_once(sweepers, n);
    Ok(())
}

// ---- the cluster -----------------------------------------------------------------------------------

#[test]
fn a_cluster_store_spreads_over_every_master() -> Result<()> {
    let prefix = fresh_prefix();
    let store = LiveDict::builder()
        .backend(RedisBackend::open_cluster_with(
            cluster_urls(),
            RedisOptions::new().prefix(&prefix),
        )?)
        .build()?;
    let mut batch = store.batch();
    for i in 0..300 {
        batch.set(&format!("k{i}"), &i)?;
    }
    store.apply(batch)?;
    assert_eq!(store.len()?, 300);
    for url in cluster_urls() {
        // Count this store's keys on each node (SCAN is fine in a test).
        let mut conn = redis::Client::open(url.as_str())
            .unwrap()
            .get_connection()
            .unwrap();
        let mut cursor = 0u64;
        let mut mine = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{prefix}:*"))
                .arg("COUNT")
                .arg(1000)
                .query(&mut conn)
                .unwrap();
            mine += keys.len();
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        assert!(mine > 0, "master {url} holds none of the store's keys");
    }
    // Keys sharing a hash tag share a bucket, as in Redis.
    let backend =
        RedisBackend::open_cluster_with(cluster_urls(), RedisOptions::new().prefix(&prefix))?;
    let tag = |k: &str| {
        let rk = backend.redis_key(k);
        rk[..rk.find('}').unwrap()].to_owned()
    };
    assert_eq!(tag("user:{42}:name"), tag("user:{42}:email"));
    Ok(())
}

// ---- fuzzing the entry decoder ---------------------------------------------------------------------

mod entry_fuzz {
    use super::*;
    use proptest::prelude::*;

    /// Edits of a well-formed entry string: bytes overwritten, cut or appended.
    #[derive(Clone, Debug)]
    enum Edit {
        Set(usize, u8),
        Truncate(usize),
        Append(Vec<u8>),
    }

    fn edit() -> impl Strategy<Value = Edit> {
        prop_oneof![
            4 => (0usize..48, any::<u8>()).prop_map(|(at, b)| Edit::Set(at, b)),
            1 => (0usize..48).prop_map(Edit::Truncate),
            1 => proptest::collection::vec(any::<u8>(), 1..8).prop_map(Edit::Append),
        ]
    }

    fn apply(mut entry: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
        for e in edits {
            match e {
                Edit::Set(at, b) => {
                    if let Some(x) = entry.get_mut(*at) {
                        *x = *b;
                    }
                }
                Edit::Truncate(len) => entry.truncate(*len),
                Edit::Append(bytes) => entry.extend_from_slice(bytes),
            }
        }
        entry
    }

    /// Whether an entry string's head is well formed: `L` and four whole numbers in [0, 2^53).
    fn head_is_valid(entry: &[u8]) -> bool {
        entry.len() >= 33
            && entry[0] == b'L'
            && (0..4).all(|i| {
                let x = f64::from_be_bytes(entry[1 + 8 * i..9 + 8 * i].try_into().unwrap());
                (0.0..9_007_199_254_740_992.0).contains(&x) && x.fract() == 0.0
            })
    }

    /// What a call may answer for bytes livedict did not write: a value, or a decoding error (a
    /// damaged value header may also claim encryption this store has no key for).
    fn acceptable<T: std::fmt::Debug>(r: &Result<T>) -> bool {
        matches!(
            r,
            Ok(_) | Err(Error::Format(_) | Error::Decode { .. } | Error::Crypto(_))
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Every read and write of a damaged entry string either works or fails with a decoding
        /// error, and a write that fails leaves the bytes as they were.
        #[test]
        fn a_damaged_entry_string_is_read_or_refused_never_half_written(
            edits in proptest::collection::vec(edit(), 1..4),
            next in any::<i32>(),
        ) {
            let prefix = fresh_prefix();
            let store = open(&prefix).unwrap();
            store.set_with("k", &12345, Duration::from_secs(60)).unwrap();
            let key = RedisBackend::open_with(&server_url(), RedisOptions::new().prefix(&prefix))
                .unwrap()
                .redis_key("k");
            let mut conn = raw();
            let good: Vec<u8> = redis::cmd("GET").arg(&key).query(&mut conn).unwrap();
            let damaged = apply(good, &edits);
            redis::cmd("SET").arg(&key).arg(&damaged).query::<()>(&mut conn).unwrap();
            if !head_is_valid(&damaged) {
                // Refused by every path, and left as it is.
                prop_assert!(matches!(store.get::<i32>("k"), Err(Error::Format(_))));
                prop_assert!(matches!(store.ttl("k"), Err(Error::Format(_))));
                prop_assert!(matches!(store.set("k", &next), Err(Error::Format(_))));
                prop_assert!(matches!(store.delete("k"), Err(Error::Format(_))));
                let now: Vec<u8> = redis::cmd("GET").arg(&key).query(&mut conn).unwrap();
                prop_assert_eq!(now, damaged);
                return Ok(());
            }
            let read = store.get::<i32>("k");
            prop_assert!(acceptable(&read), "{read:?}");
            let ttl = store.ttl("k");
            prop_assert!(acceptable(&ttl), "{ttl:?}");
            let written = store.set("k", &next);
            prop_assert!(acceptable(&written), "{written:?}");
            if written.is_ok() {
                prop_assert_eq!(store.get::<i32>("k").unwrap(), Some(next));
            } else {
                let now: Vec<u8> = redis::cmd("GET").arg(&key).query(&mut conn).unwrap();
                prop_assert_eq!(now, damaged, "a refused write changed nothing");
                let deleted = store.delete("k");
                prop_assert!(matches!(deleted, Err(Error::Format(_))), "{deleted:?}");
            }
            store.clear().ok();
        }
    }
}
