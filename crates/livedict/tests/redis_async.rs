//! The Redis backend's [`AsyncBackend`] implementation (native async redis-rs I/O), used
//! directly, against a real server and a real 3-master cluster (`scripts/test` starts both with
//! `scripts/redis` and exports their addresses): the basic operations, updates from many tasks
//! at once, batches across cluster slots, sweeps, a killed connection, and the same backend
//! value used from sync and async code alike.
//!
//! Without `LIVEDICT_TEST_REDIS_URL` and `LIVEDICT_TEST_REDIS_CLUSTER_URLS` these tests fail: a
//! missing server is never a pass.
#![cfg(all(feature = "redis", feature = "async"))]

mod redis_servers;

use std::collections::HashSet;
use std::sync::Arc;

use async_lock::RwLock;
use std::time::Duration;

use livedict::backend::{
    AsyncBackend, BatchOp, Change, Condition, ExpiredEntry, Expiry, ReadMode, WriteExpiry,
};
use livedict::{Backend, Bytes, Error, KeyTtl, Millis, Now, RedisBackend, RedisOptions, Result};
use redis_servers::{cluster_urls, fresh_prefix, server_url};

/// The store's clock judges deadlines, so that tests can pass times of their own.
fn options() -> RedisOptions {
    RedisOptions::new()
        .prefix(fresh_prefix())
        .server_clock(false)
}

fn server() -> Arc<RedisBackend> {
    Arc::new(RedisBackend::open_with(&server_url(), options()).unwrap())
}

fn cluster() -> Arc<RedisBackend> {
    Arc::new(RedisBackend::open_cluster_with(cluster_urls(), options()).unwrap())
}

/// Held (shared) by every test on the single server while it runs, and exclusively by the test
/// that kills the server's client connections, so that the kill hits no other test.
static SERVER_CONNECTIONS: RwLock<()> = RwLock::new(());

fn wall_clock() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as Millis
}

fn never() -> WriteExpiry {
    WriteExpiry::replace(Expiry::Never)
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// The backend seen through its async side only.
fn a(backend: &RedisBackend) -> &dyn AsyncBackend {
    backend
}

async fn get(backend: &RedisBackend, key: &str, now: Millis) -> Result<Option<Bytes>> {
    a(backend).get(key, &Now::fixed(now), ReadMode::Touch).await
}

/// An update adding 1 to the decimal number under `key` (0 when missing).
async fn increment(backend: &RedisBackend, key: &str, now: Millis) -> Result<u64> {
    let mut next = 0;
    let mut f = |current: Option<&Bytes>| {
        let n: u64 = current.map_or(0, |v| std::str::from_utf8(v).unwrap().parse().unwrap());
        next = n + 1;
        Ok(Change::Write {
            value: b(&next.to_string()),
            expiry: WriteExpiry::keep_or(Expiry::Never),
        })
    };
    a(backend).update(key, now, &mut f).await?;
    Ok(next)
}

/// The basic operations, through the async side.
async fn basic_operations(backend: Arc<RedisBackend>) -> Result<()> {
    let now = wall_clock();
    let ab = a(&backend);
    let w = ab
        .set("k", b("v1"), never(), Condition::Always, now)
        .await?;
    assert!(w.written);
    assert_eq!(w.previous, None);
    assert_eq!(get(&backend, "k", now).await?, Some(b("v1")));
    assert!(ab.contains("k", &Now::fixed(now)).await?);
    assert!(!ab.contains("nope", &Now::fixed(now)).await?);

    let w = ab
        .set("k", b("v2"), never(), Condition::IfAbsent, now)
        .await?;
    assert!(!w.written);
    assert_eq!(w.previous, Some(b("v1")));
    let w = ab
        .set("k", b("v2"), never(), Condition::IfPresent, now)
        .await?;
    assert!(w.written);
    assert_eq!(w.previous, Some(b("v1")));

    // The closure is called exactly once, and sees the live value.
    let mut calls = 0;
    let mut f = |current: Option<&Bytes>| {
        calls += 1;
        assert_eq!(current, Some(&b("v2")));
        Ok(Change::Write {
            value: b("v3"),
            expiry: WriteExpiry::keep_or(Expiry::Never),
        })
    };
    let u = ab.update("k", now, &mut f).await?;
    assert_eq!(calls, 1);
    assert_eq!(u.previous, Some(b("v2")));
    assert_eq!(get(&backend, "k", now).await?, Some(b("v3")));

    // A closure that fails changes nothing and leaves the key free.
    let mut calls = 0;
    let mut failing = |_: Option<&Bytes>| {
        calls += 1;
        Err(Error::Backend("refused".into()))
    };
    assert!(ab.update("k", now, &mut failing).await.is_err());
    assert_eq!(calls, 1);
    let w = ab
        .set("k", b("v4"), never(), Condition::Always, now)
        .await?;
    assert_eq!(w.previous, Some(b("v3")));

    // Expiry and TTLs.
    let ttl = Expiry::After {
        ttl: 60_000,
        sliding: false,
    };
    assert!(ab.set_expiry("k", ttl, now).await?);
    assert_eq!(
        ab.ttl("k", now + 1000).await?,
        KeyTtl::Remaining(Duration::from_millis(59_000))
    );
    assert_eq!(ab.ttl("nope", now).await?, KeyTtl::Missing);
    assert!(!ab.set_expiry("nope", ttl, now).await?);
    assert_eq!(get(&backend, "k", now + 60_000).await?, None);

    // Many keys, scans, counts.
    for i in 0..20 {
        let key = format!("item:{i}");
        ab.set(&key, b(&i.to_string()), never(), Condition::Always, now)
            .await?;
    }
    let keys: Vec<String> = (0..22).map(|i| format!("item:{i}")).collect();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let values = ab.get_many(&refs, &Now::fixed(now), ReadMode::Peek).await?;
    for (i, v) in values.iter().enumerate() {
        assert_eq!(v.clone(), (i < 20).then(|| b(&i.to_string())), "item:{i}");
    }
    assert_eq!(ab.len(now).await?, 21);
    let mut scanned = ab.scan("item:", now, true).await?;
    scanned.sort();
    assert_eq!(scanned.len(), 20);
    assert!(scanned.contains(&("item:7".to_owned(), Some(b("7")))));

    let r = ab.delete("item:3", now).await?;
    assert_eq!(r.previous, Some(b("3")));
    assert_eq!(ab.delete("item:3", now).await?.previous, None);
    assert_eq!(ab.next_deadline().await?, Some(now + 60_000));
    let (key, _) = ab.pop_any(now).await?.expect("an entry to pop");
    assert_eq!(get(&backend, &key, now).await?, None);
    assert_eq!(ab.len(now).await?, 19);
    let inactive = ab.remove_inactive("", now + 5_000, now + 10_000).await?;
    assert_eq!(inactive.len(), 19);
    assert_eq!(ab.clear(now).await?.removed, 0);
    assert_eq!(ab.len(now).await?, 0);
    assert!(ab.is_shared());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn basic_operations_on_a_server() -> Result<()> {
    let _shared = SERVER_CONNECTIONS.read().await;
    basic_operations(server()).await
}

#[tokio::test(flavor = "multi_thread")]
async fn basic_operations_on_a_cluster() -> Result<()> {
    basic_operations(cluster()).await
}

/// 64 tasks each adding 1, 50 times, to one key: nothing is lost.
async fn concurrent_increments(backend: Arc<RedisBackend>) -> Result<()> {
    const TASKS: u64 = 64;
    const EACH: u64 = 50;
    let now = wall_clock();
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let backend = Arc::clone(&backend);
            tokio::spawn(async move {
                for _ in 0..EACH {
                    increment(&backend, "counter", now).await?;
                }
                Ok::<(), Error>(())
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap()?;
    }
    assert_eq!(
        get(&backend, "counter", now).await?,
        Some(b(&(TASKS * EACH).to_string()))
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_updates_of_one_key_lose_nothing_on_a_server() -> Result<()> {
    let _shared = SERVER_CONNECTIONS.read().await;
    concurrent_increments(server()).await
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_updates_of_one_key_lose_nothing_on_a_cluster() -> Result<()> {
    concurrent_increments(cluster()).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_across_cluster_buckets_is_applied_whole() -> Result<()> {
    let backend = cluster();
    let ab = a(&backend);
    let now = wall_clock();
    // Keys in (almost surely) every bucket.
    let keys: Vec<String> = (0..64).map(|i| format!("batch:{i}")).collect();
    ab.set(&keys[0], b("old"), never(), Condition::Always, now)
        .await?;
    let mut ops: Vec<BatchOp> = keys
        .iter()
        .map(|k| BatchOp::Set {
            key: k.clone(),
            value: b(k),
            expiry: never(),
        })
        .collect();
    ops.push(BatchOp::Delete {
        key: keys[1].clone(),
    });
    let removed = ab.apply_batch(ops, now).await?;
    assert_eq!(removed.len(), keys.len() + 1);
    assert_eq!(removed[0].previous, Some(b("old")));
    assert_eq!(removed[1].previous, None);
    assert_eq!(removed[keys.len()].previous, Some(b(&keys[1])));

    // Readers while a second batch runs: each value is the first batch's or the second's.
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let second: Vec<BatchOp> = keys
        .iter()
        .map(|k| BatchOp::Set {
            key: k.clone(),
            value: b("second"),
            expiry: never(),
        })
        .collect();
    let writer = {
        let backend = Arc::clone(&backend);
        tokio::spawn(async move { a(&backend).apply_batch(second, now).await })
    };
    while !writer.is_finished() {
        let values = ab.get_many(&refs, &Now::fixed(now), ReadMode::Peek).await?;
        for (i, v) in values.iter().enumerate().skip(2) {
            assert!(
                v.as_ref() == Some(&b(&keys[i])) || v.as_ref() == Some(&b("second")),
                "{}: {v:?}",
                keys[i]
            );
        }
    }
    assert_eq!(writer.await.unwrap()?.len(), keys.len());
    let values = ab.get_many(&refs, &Now::fixed(now), ReadMode::Peek).await?;
    assert!(values.iter().all(|v| v.as_ref() == Some(&b("second"))));
    assert_eq!(ab.len(now).await?, keys.len());
    Ok(())
}

/// Entries expire; sweeps from several tasks at once return each exactly once.
async fn sweeps_exactly_once(backend: Arc<RedisBackend>) -> Result<()> {
    const N: usize = 300;
    let now = wall_clock();
    let ab = a(&backend);
    let short = WriteExpiry::replace(Expiry::After {
        ttl: 1,
        sliding: false,
    });
    for i in 0..N {
        ab.set(&format!("e{i}"), b("x"), short, Condition::Always, now)
            .await?;
    }
    ab.set("stays", b("y"), never(), Condition::Always, now)
        .await?;
    let later = now + 10;
    let sweepers: Vec<_> = (0..8)
        .map(|_| {
            let backend = Arc::clone(&backend);
            tokio::spawn(async move {
                let mut mine: Vec<ExpiredEntry> = Vec::new();
                loop {
                    let before = mine.len();
                    a(&backend).sweep(later, 16, &mut mine).await?;
                    if mine.len() == before {
                        return Ok::<_, Error>(mine);
                    }
                }
            })
        })
        .collect();
    let mut seen = HashSet::new();
    for sweeper in sweepers {
        for entry in sweeper.await.unwrap()? {
            assert_eq!(entry.value, b("x"));
            assert_eq!(entry.deadline, now + 1);
            assert!(seen.insert(entry.key.to_string()), "{} twice", entry.key);
        }
    }
    assert_eq!(seen.len(), N);
    let mut again = Vec::new();
    ab.sweep(later, 100, &mut again).await?;
    assert!(again.is_empty());
    assert_eq!(ab.len(later).await?, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn each_expired_entry_is_swept_exactly_once_on_a_server() -> Result<()> {
    let _shared = SERVER_CONNECTIONS.read().await;
    sweeps_exactly_once(server()).await
}

#[tokio::test(flavor = "multi_thread")]
async fn each_expired_entry_is_swept_exactly_once_on_a_cluster() -> Result<()> {
    sweeps_exactly_once(cluster()).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_connection_fails_at_most_one_call_then_works_again() -> Result<()> {
    let _alone = SERVER_CONNECTIONS.write().await;
    let backend = server();
    let now = wall_clock();
    a(&backend)
        .set("k", b("1"), never(), Condition::Always, now)
        .await?;
    assert_eq!(get(&backend, "k", now).await?, Some(b("1")));

    let mut raw = redis::Client::open(server_url())
        .unwrap()
        .get_connection()
        .unwrap();
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .arg("SKIPME")
        .arg("yes")
        .query(&mut raw)
        .unwrap();
    assert!(killed >= 1);

    match get(&backend, "k", now).await {
        Ok(v) => assert_eq!(v, Some(b("1"))),
        Err(Error::Backend(_)) => {}
        Err(other) => panic!("a call on the killed connection may fail as Backend, got {other:?}"),
    }
    // The connection came back: nothing was lost, and every call works.
    for i in 0..5 {
        assert_eq!(get(&backend, "k", now).await?, Some(b("1")), "call {i}");
    }
    assert_eq!(increment(&backend, "k", now).await?, 2);
    // The sync side's connections were killed too: one call may fail, then it reconnects.
    let peek = || Backend::get(&*backend, "k", &Now::fixed(now), ReadMode::Peek);
    match peek() {
        Ok(v) => assert_eq!(v, Some(b("2"))),
        Err(Error::Backend(_)) => {}
        Err(other) => panic!("a call on a killed connection may fail as Backend, got {other:?}"),
    }
    assert_eq!(peek()?, Some(b("2")));
    Ok(())
}

/// An update that ends without committing (its closure panics: the future, or the sync call,
/// unwinds) releases the key's lock at once, instead of leaving writers waiting for its lease.
#[tokio::test(flavor = "multi_thread")]
async fn an_update_that_unwinds_frees_its_key() -> Result<()> {
    let _shared = SERVER_CONNECTIONS.read().await;
    let backend = Arc::new(
        RedisBackend::open_with(&server_url(), options().lock_lease(Duration::from_secs(60)))
            .unwrap(),
    );
    let now = wall_clock();
    let write_soon = |value: &'static str| {
        let backend = Arc::clone(&backend);
        async move {
            tokio::time::timeout(
                Duration::from_secs(5),
                a(&backend).set("k", b(value), never(), Condition::Always, now),
            )
            .await
            .expect("the key is free again")
        }
    };
    write_soon("0").await?;

    let task = {
        let backend = Arc::clone(&backend);
        tokio::spawn(async move {
            let mut f = |_: Option<&Bytes>| -> Result<Change> { panic!("the closure panics") };
            a(&backend).update("k", now, &mut f).await
        })
    };
    assert!(task.await.unwrap_err().is_panic());
    assert_eq!(write_soon("1").await?.previous, Some(b("0")));

    let sync_side = {
        let backend = Arc::clone(&backend);
        tokio::task::spawn_blocking(move || {
            let mut f = |_: Option<&Bytes>| -> Result<Change> { panic!("the closure panics") };
            Backend::update(&*backend, "k", now, &mut f)
        })
    };
    assert!(sync_side.await.unwrap_err().is_panic());
    assert_eq!(write_soon("2").await?.previous, Some(b("1")));
    Ok(())
}

/// Updates dropped at every stage (by a timeout) leave no lock behind: writers of the key go on
/// at once instead of waiting for a lease.
#[tokio::test(flavor = "multi_thread")]
async fn cancelled_updates_leave_the_key_free() -> Result<()> {
    let _shared = SERVER_CONNECTIONS.read().await;
    let backend = Arc::new(
        RedisBackend::open_with(&server_url(), options().lock_lease(Duration::from_secs(60)))
            .unwrap(),
    );
    let now = wall_clock();
    let mut cancelled = 0;
    for i in 0..200u64 {
        let update = increment(&backend, "k", now);
        if tokio::time::timeout(Duration::from_micros(10 * (i % 40)), update)
            .await
            .is_err()
        {
            cancelled += 1;
        }
    }
    assert!(cancelled > 0);
    let w = tokio::time::timeout(
        Duration::from_secs(5),
        a(&backend).set("k", b("0"), never(), Condition::Always, now),
    )
    .await
    .expect("the key is free");
    assert!(w?.written);
    Ok(())
}

/// Sync and async updates of one key through one backend value, at once: nothing is lost, and
/// either side sees what the other wrote.
async fn sync_and_async_interleaved(backend: Arc<RedisBackend>) -> Result<()> {
    const EACH: u64 = 100;
    let now = wall_clock();
    Backend::set(&*backend, "shared", b("0"), never(), Condition::Always, now)?;
    assert_eq!(get(&backend, "shared", now).await?, Some(b("0")));
    a(&backend)
        .set("shared", b("10"), never(), Condition::Always, now)
        .await?;
    assert_eq!(
        Backend::get(&*backend, "shared", &Now::fixed(now), ReadMode::Touch)?,
        Some(b("10"))
    );

    let sync_side = {
        let backend = Arc::clone(&backend);
        tokio::task::spawn_blocking(move || {
            for _ in 0..EACH {
                let mut f = |current: Option<&Bytes>| {
                    let n: u64 = std::str::from_utf8(current.unwrap())
                        .unwrap()
                        .parse()
                        .unwrap();
                    Ok(Change::Write {
                        value: b(&(n + 1).to_string()),
                        expiry: WriteExpiry::keep_or(Expiry::Never),
                    })
                };
                Backend::update(&*backend, "shared", now, &mut f)?;
            }
            Ok::<(), Error>(())
        })
    };
    let async_sides: Vec<_> = (0..4)
        .map(|_| {
            let backend = Arc::clone(&backend);
            tokio::spawn(async move {
                for _ in 0..EACH {
                    increment(&backend, "shared", now).await?;
                }
                Ok::<(), Error>(())
            })
        })
        .collect();
    sync_side.await.unwrap()?;
    for side in async_sides {
        side.await.unwrap()?;
    }
    let total = 10 + 5 * EACH;
    assert_eq!(
        Backend::get(&*backend, "shared", &Now::fixed(now), ReadMode::Peek)?,
        Some(b(&total.to_string()))
    );
    assert_eq!(
        get(&backend, "shared", now).await?,
        Some(b(&total.to_string()))
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn sync_and_async_calls_share_one_backend_on_a_server() -> Result<()> {
    let _shared = SERVER_CONNECTIONS.read().await;
    sync_and_async_interleaved(server()).await
}

#[tokio::test(flavor = "multi_thread")]
async fn sync_and_async_calls_share_one_backend_on_a_cluster() -> Result<()> {
    sync_and_async_interleaved(cluster()).await
}

/// A backend opened before any runtime exists connects its async side on first async use.
#[test]
fn a_backend_opened_outside_a_runtime_serves_async_callers() -> Result<()> {
    let _shared = SERVER_CONNECTIONS.read_blocking();
    let backend = server();
    let now = wall_clock();
    Backend::set(&*backend, "k", b("sync"), never(), Condition::Always, now)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        assert_eq!(get(&backend, "k", now).await?, Some(b("sync")));
        a(&backend)
            .set("k", b("async"), never(), Condition::Always, now)
            .await?;
        Ok::<(), Error>(())
    })?;
    assert_eq!(
        Backend::get(&*backend, "k", &Now::fixed(now), ReadMode::Peek)?,
        Some(b("async"))
    );
    Ok(())
}
