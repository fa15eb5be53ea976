//! What only the async front-end (`AsyncLiveDict`) can show: dropping the last handle inside and
//! outside a runtime, `close().await`, many tasks on one key, async hooks, the builder outside a
//! runtime, and futures dropped before they complete. Each scenario runs on a current-thread and
//! on a multi-thread runtime (the conformance suite covers the rest in its async modes).
#![cfg(feature = "async")]

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use livedict::{AsyncLiveDict, Error, Event, EventKind, EventSettings, LiveDict, Result};

/// How long a test waits for something that should take milliseconds.
const WAIT: Duration = Duration::from_secs(20);

/// Each scenario as a `#[tokio::test]` on both runtime flavours.
macro_rules! on_both_runtimes {
    ($($scenario:ident),* $(,)?) => {
        mod current_thread {
            $(
                #[tokio::test(flavor = "current_thread")]
                async fn $scenario() -> livedict::Result<()> {
                    super::$scenario().await
                }
            )*
        }
        mod multi_thread {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() -> livedict::Result<()> {
                    super::$scenario().await
                }
            )*
        }
    };
}

on_both_runtimes!(
    dropping_the_last_handle_with_hooks_and_queued_events_returns_promptly,
    close_delivers_queued_events,
    a_full_event_queue_parks_the_writing_task_not_its_thread,
    a_write_that_waited_for_room_sees_the_clock_of_its_moment,
    incr_from_64_tasks_loses_nothing_on_memory,
    async_hook_that_sleeps_gets_every_set_of_a_key_in_order,
    update_closure_runs_once_per_call_under_contention_on_memory,
);

#[cfg(feature = "sqlite")]
mod sqlite {
    use super::*;

    on_both_runtimes!(
        incr_from_64_tasks_loses_nothing_on_sqlite,
        update_closure_runs_once_per_call_under_contention_on_sqlite,
        dropped_futures_leave_sqlite_consistent,
        a_call_given_up_on_sqlite_is_done_whole,
        dropping_the_last_sqlite_handle_while_the_file_is_locked_returns_promptly,
        a_lock_given_up_on_sqlite_stops_waiting_and_lets_the_store_go,
    );

    /// A store built on a runtime that is no longer driven still writes when called from
    /// another: a write's task runs on the caller's runtime. (With the task on the store's
    /// runtime, this `set` never finished.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_store_built_on_an_idle_runtime_writes_from_another() -> Result<()> {
        let dir = tempfile::tempdir().unwrap();
        let idle = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let store = std::thread::scope(|s| {
            s.spawn(|| idle.block_on(async { sqlite_store(&dir) }))
                .join()
                .unwrap()
        })?;
        let set = tokio::time::timeout(Duration::from_secs(10), store.set("k", &1)).await;
        assert!(matches!(set, Ok(Ok(()))), "{set:?}");
        assert_eq!(store.get::<i32>("k").await?, Some(1));
        drop(store);
        tokio::task::spawn_blocking(move || drop(idle))
            .await
            .unwrap();
        Ok(())
    }
}

/// Waits (bounded, without blocking the runtime) until `condition` holds.
async fn eventually(mut condition: impl FnMut() -> bool) -> bool {
    let give_up = Instant::now() + WAIT;
    while Instant::now() < give_up {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    condition()
}

/// A gate a hook can be held at until the test opens it.
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    cv: Condvar,
}

impl Gate {
    fn pass(&self) {
        let open = self.open.lock().unwrap();
        drop(self.cv.wait_while(open, |open| !*open).unwrap());
    }
    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.cv.notify_all();
    }
}

/// A store over a fresh SQLite file in `dir`.
#[cfg(feature = "sqlite")]
fn sqlite_store(dir: &tempfile::TempDir) -> Result<AsyncLiveDict> {
    LiveDict::builder()
        .backend(livedict::SqliteBackend::open(dir.path().join("store.db"))?)
        .build_async()
}

// ---- dropping and closing --------------------------------------------------------------------

async fn dropping_the_last_handle_with_hooks_and_queued_events_returns_promptly() -> Result<()> {
    let n = 100;
    let store = LiveDict::builder()
        .events(
            EventSettings::default()
                .workers(1)
                .hook_timeout(Duration::from_secs(60))
                .shutdown_grace(Duration::from_secs(30)),
        )
        .build_async()?;
    // A sync hook held at a gate by the first event, and an async hook that awaits a timer:
    // every other event stays queued behind the first.
    let (gate, held, sync_seen, async_seen) = (
        Arc::new(Gate::default()),
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let (g, h, s) = (gate.clone(), held.clone(), sync_seen.clone());
    store.on(EventKind::Set, move |_| {
        h.store(true, Ordering::SeqCst);
        g.pass();
        s.fetch_add(1, Ordering::SeqCst);
        Ok(())
    })?;
    let a = async_seen.clone();
    store.on_async(EventKind::Set, move |_| {
        let a = a.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            a.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    })?;
    for i in 0..n {
        store.set(&format!("k{i}"), &i).await?;
    }
    assert!(eventually(|| held.load(Ordering::SeqCst)).await);

    // Delivering what is queued cannot happen now (the hook is held, for up to the 30 s grace
    // period): the drop must not wait for it, nor block this runtime's only thread.
    let started = Instant::now();
    drop(store);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "dropping took {:?}",
        started.elapsed()
    );
    // The queued events are still delivered, in the background, once the hook lets go.
    gate.open();
    assert!(
        eventually(
            || sync_seen.load(Ordering::SeqCst) == n && async_seen.load(Ordering::SeqCst) == n
        )
        .await,
        "delivered {} sync and {} async of {n}",
        sync_seen.load(Ordering::SeqCst),
        async_seen.load(Ordering::SeqCst)
    );
    Ok(())
}

#[test]
fn dropping_the_last_handle_outside_any_runtime_works() -> Result<()> {
    for flavour in ["current_thread", "multi_thread"] {
        let rt = match flavour {
            "current_thread" => tokio::runtime::Builder::new_current_thread(),
            _ => tokio::runtime::Builder::new_multi_thread(),
        }
        .enable_all()
        .build()
        .unwrap();
        let seen = Arc::new(AtomicUsize::new(0));
        let s = seen.clone();
        let store = rt.block_on(async {
            let store = LiveDict::builder()
                .events(EventSettings::default().workers(1))
                .build_async()?;
            store.on(EventKind::Set, move |_| {
                std::thread::sleep(Duration::from_millis(1));
                s.fetch_add(1, Ordering::SeqCst);
                Ok(())
            })?;
            for i in 0..50 {
                store.set(&format!("k{i}"), &i).await?;
            }
            Ok::<_, Error>(store)
        })?;
        // Outside the runtime, the drop delivers what is queued before returning.
        let other = rt.block_on(async { LiveDict::builder().build_async() })?;
        drop(store);
        assert_eq!(seen.load(Ordering::SeqCst), 50, "{flavour}");

        // A store that outlives its runtime is dropped quietly too.
        let s = seen.clone();
        other.on(EventKind::Set, move |_| {
            s.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })?;
        rt.block_on(other.set("k", &1))?;
        drop(rt);
        let started = Instant::now();
        drop(other);
        assert!(started.elapsed() < Duration::from_secs(5), "{flavour}");
        assert_eq!(seen.load(Ordering::SeqCst), 51, "{flavour}");
    }
    Ok(())
}

async fn close_delivers_queued_events() -> Result<()> {
    let n = 200;
    let store = LiveDict::builder()
        .events(
            EventSettings::default()
                .workers(1)
                .shutdown_grace(Duration::from_secs(30)),
        )
        .build_async()?;
    let (sync_seen, async_seen) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let s = sync_seen.clone();
    store.on(EventKind::Set, move |_| {
        std::thread::sleep(Duration::from_millis(1));
        s.fetch_add(1, Ordering::SeqCst);
        Ok(())
    })?;
    let a = async_seen.clone();
    store.on_async(EventKind::Set, move |_| {
        let a = a.clone();
        async move {
            tokio::task::yield_now().await;
            a.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    })?;
    for i in 0..n {
        store.set(&format!("k{i}"), &i).await?;
    }
    let other_handle = store.clone();
    store.close().await;
    assert_eq!(sync_seen.load(Ordering::SeqCst), n);
    assert_eq!(async_seen.load(Ordering::SeqCst), n);
    assert!(matches!(
        other_handle.get::<i32>("k0").await,
        Err(Error::Closed)
    ));
    store.close().await; // idempotent
    Ok(())
}

/// What a hook of [`full_queue`] saw: kind, key, value and previous value.
type Seen = (EventKind, String, Option<i32>, Option<i32>);

/// A store whose one event lane is full (`Block` policy, the default, room for one event): the
/// hook of `Set` and `Expire` events holds the lane at key "a" until `release` sends who released
/// it (kept in `freed_by`), and the event of "b" waits in the queue. With `old_ttl`, "old" is
/// written first (value 1, that TTL).
struct FullQueue {
    store: AsyncLiveDict,
    release: std::sync::mpsc::Sender<&'static str>,
    freed_by: Arc<Mutex<Option<&'static str>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

async fn full_queue(builder: livedict::Builder, old_ttl: Option<Duration>) -> Result<FullQueue> {
    let store = builder
        .events(
            EventSettings::default()
                .workers(1)
                .queue_capacity(1)
                .hook_timeout(Duration::from_secs(60)),
        )
        .build_async()?;
    let (started, hook_started) = std::sync::mpsc::channel::<()>();
    let (release, released) = std::sync::mpsc::channel::<&'static str>();
    let (started, released) = (Mutex::new(started), Mutex::new(released));
    let freed_by = Arc::new(Mutex::new(None));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (f, s) = (freed_by.clone(), seen.clone());
    store.on([EventKind::Set, EventKind::Expire], move |e| {
        if e.key() == "a" {
            started.lock().unwrap().send(()).ok();
            *f.lock().unwrap() = released.lock().unwrap().recv().ok();
        }
        let (value, previous) = (e.value().ok().flatten(), e.previous().ok().flatten());
        s.lock()
            .unwrap()
            .push((e.kind(), e.key().to_owned(), value, previous));
        Ok(())
    })?;
    if let Some(ttl) = old_ttl {
        store.set_with("old", &1, ttl).await?;
    }
    store.set("a", &0).await?;
    // The worker took "a" and its hook holds the lane; "b" fills the queue.
    hook_started
        .recv_timeout(WAIT)
        .expect("the hook of \"a\" started");
    store.set("b", &0).await?;
    Ok(FullQueue {
        store,
        release,
        freed_by,
        seen,
    })
}

/// A full event queue parks the writing task, not its thread: the write waits for room while
/// another future of the same task releases the hook that holds the queue up. (Before, the write
/// blocked its thread inside the publish, and only a fallback thread could free it.)
async fn a_full_event_queue_parks_the_writing_task_not_its_thread() -> Result<()> {
    let q = full_queue(LiveDict::builder(), None).await?;
    let fallback = q.release.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(5));
        fallback.send("a fallback thread").ok();
    });
    let (written, ()) = tokio::join!(q.store.set("c", &3), async {
        tokio::task::yield_now().await;
        q.release.send("the writing task").ok();
    });
    written?;
    assert_eq!(*q.freed_by.lock().unwrap(), Some("the writing task"));
    assert!(eventually(|| q.seen.lock().unwrap().len() == 3).await);
    let keys: Vec<String> = q.seen.lock().unwrap().iter().map(|s| s.1.clone()).collect();
    assert_eq!(keys, ["a", "b", "c"]);
    q.store.close().await;
    assert_eq!(q.store.stats().events_dropped, 0);
    Ok(())
}

/// A write that waited for room reads the clock again: an entry whose deadline passed during the
/// wait is replaced as expired (its `Expire` event fires, with its last value), not as a live one.
async fn a_write_that_waited_for_room_sees_the_clock_of_its_moment() -> Result<()> {
    let clock = livedict::ManualClock::new();
    let builder = LiveDict::builder()
        .clock(livedict::Clock::Manual(clock.clone()))
        .active_expiry(false);
    let q = full_queue(builder, Some(Duration::from_secs(10))).await?;
    let (written, ()) = tokio::join!(q.store.set("old", &2), async {
        tokio::task::yield_now().await;
        clock.advance(Duration::from_secs(20));
        q.release.send("the writing task").ok();
    });
    written?;
    assert!(eventually(|| q.seen.lock().unwrap().len() == 5).await);
    let seen = q.seen.lock().unwrap().clone();
    // Set old, Set a, Set b, then the write that waited:
    assert_eq!(
        seen[3..],
        [
            (EventKind::Expire, "old".to_owned(), Some(1), None),
            (EventKind::Set, "old".to_owned(), Some(2), None),
        ],
        "{seen:?}"
    );
    Ok(())
}

// ---- many tasks ---------------------------------------------------------------------------------

/// 64 tasks × 100 `incr` of one key: 6400, and every intermediate value returned exactly once.
async fn incr_from_64_tasks(store: AsyncLiveDict) -> Result<()> {
    let (tasks, per_task) = (64, 100);
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut seen = Vec::with_capacity(per_task);
                for _ in 0..per_task {
                    seen.push(store.incr("n", 1).await?);
                }
                Ok::<_, Error>(seen)
            })
        })
        .collect();
    let mut seen = Vec::new();
    for h in handles {
        seen.extend(h.await.unwrap()?);
    }
    let total = (tasks * per_task) as i64;
    assert_eq!(store.get::<i64>("n").await?, Some(total));
    seen.sort_unstable();
    assert_eq!(seen, (1..=total).collect::<Vec<_>>());
    Ok(())
}

async fn incr_from_64_tasks_loses_nothing_on_memory() -> Result<()> {
    incr_from_64_tasks(LiveDict::builder().build_async()?).await
}

#[cfg(feature = "sqlite")]
async fn incr_from_64_tasks_loses_nothing_on_sqlite() -> Result<()> {
    let dir = tempfile::tempdir().unwrap();
    incr_from_64_tasks(sqlite_store(&dir)?).await
}

/// Contended `update`s of one key: each call runs its closure exactly once, and none is lost.
async fn update_closure_runs_once(store: AsyncLiveDict) -> Result<()> {
    let (tasks, per_task) = (16, 50);
    let calls = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let (store, calls) = (store.clone(), calls.clone());
            tokio::spawn(async move {
                for i in 0..per_task {
                    let before = calls.load(Ordering::SeqCst);
                    let mut ran = 0;
                    let new = store
                        .update("list", |old: Option<Vec<u32>>| {
                            ran += 1;
                            calls.fetch_add(1, Ordering::SeqCst);
                            let mut v = old.unwrap_or_default();
                            v.push(t * 1000 + i);
                            v
                        })
                        .await?;
                    assert_eq!(ran, 1, "the closure of one call ran {ran} times");
                    assert!(calls.load(Ordering::SeqCst) > before);
                    assert!(new.contains(&(t * 1000 + i)));
                }
                Ok::<_, Error>(())
            })
        })
        .collect();
    for h in handles {
        h.await.unwrap()?;
    }
    let n = (tasks * per_task) as usize;
    assert_eq!(calls.load(Ordering::SeqCst), n);
    let list = store.get::<Vec<u32>>("list").await?.unwrap();
    assert_eq!(list.len(), n);
    // Each task's values are in its order: its updates were applied one after the other.
    for t in 0..tasks {
        let mine: Vec<u32> = list.iter().copied().filter(|v| v / 1000 == t).collect();
        assert_eq!(
            mine,
            (0..per_task).map(|i| t * 1000 + i).collect::<Vec<_>>()
        );
    }
    Ok(())
}

async fn update_closure_runs_once_per_call_under_contention_on_memory() -> Result<()> {
    update_closure_runs_once(LiveDict::builder().build_async()?).await
}

#[cfg(feature = "sqlite")]
async fn update_closure_runs_once_per_call_under_contention_on_sqlite() -> Result<()> {
    let dir = tempfile::tempdir().unwrap();
    update_closure_runs_once(sqlite_store(&dir)?).await
}

// ---- async hooks ----------------------------------------------------------------------------------

async fn async_hook_that_sleeps_gets_every_set_of_a_key_in_order() -> Result<()> {
    let store = LiveDict::builder()
        .events(EventSettings::default().workers(4))
        .build_async()?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    store.on_async(EventKind::Set, move |e: Event| {
        let tx = tx.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            if e.key() == "k" {
                tx.send(e.value::<u32>()?.unwrap())?;
            }
            Ok(())
        }
    })?;
    let n = 200;
    for i in 0..n {
        store.set("k", &i).await?;
        store.set(&format!("other{}", i % 7), &i).await?;
    }
    let mut seen = Vec::new();
    while seen.len() < n as usize {
        match tokio::time::timeout(WAIT, rx.recv()).await {
            Ok(Some(v)) => seen.push(v),
            _ => panic!("got {} of {n} events: {seen:?}", seen.len()),
        }
    }
    assert_eq!(seen, (0..n).collect::<Vec<_>>());
    assert_eq!(store.stats().hooks_failed, 0);
    Ok(())
}

// ---- the builder ----------------------------------------------------------------------------------

#[test]
fn build_async_outside_a_runtime_is_a_backend_error() {
    match LiveDict::builder().build_async() {
        Err(Error::Backend(e)) => assert!(e.to_string().contains("runtime"), "{e}"),
        other => panic!("expected Error::Backend, got {other:?}"),
    }
}

// ---- futures dropped before they complete -------------------------------------------------------

/// Writes whose futures are dropped at their first poll (a zero timeout) or mid-way (losing a
/// `select!`) leave an SQLite store consistent: each key holds an old or a new value, no update
/// is applied twice or half, and the store (and the file, reopened) works on.
#[cfg(feature = "sqlite")]
async fn dropped_futures_leave_sqlite_consistent() -> Result<()> {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(&dir)?;
    store.set("k", "v0").await?;
    let mut written = HashSet::from(["v0".to_string()]);
    let (mut attempts, mut completed) = (0, Vec::new());
    for i in 1..=150 {
        let v = format!("v{i}");
        written.insert(v.clone());
        match i % 3 {
            0 => {
                let _ = tokio::time::timeout(Duration::ZERO, store.set("k", &v)).await;
                attempts += 1;
                if let Ok(Ok(n)) = tokio::time::timeout(Duration::ZERO, store.incr("n", 1)).await {
                    completed.push(n);
                }
            }
            1 => {
                tokio::select! {
                    biased;
                    r = store.set("k", &v) => r?,
                    () = tokio::task::yield_now() => {}
                }
                attempts += 1;
                tokio::select! {
                    biased;
                    r = store.incr("n", 1) => completed.push(r?),
                    () = tokio::task::yield_now() => {}
                }
            }
            _ => {
                // Dropped while the update holds the key, waiting for its closure's decision.
                tokio::select! {
                    biased;
                    r = store.update("k", |old: Option<String>| {
                        assert!(written.contains(old.as_deref().unwrap()));
                        v.clone()
                    }) => { r?; }
                    () = tokio::time::sleep(Duration::from_micros(200)) => {}
                }
                attempts += 1;
                completed.push(store.incr("n", 1).await?);
            }
        }
        let now: String = store.get("k").await?.unwrap();
        assert!(written.contains(&now), "k holds {now:?}, never written");
    }
    // Every incr that completed returned a distinct count, and the count is within bounds.
    let returned: HashSet<i64> = completed.iter().copied().collect();
    assert_eq!(
        returned.len(),
        completed.len(),
        "an increment was applied twice"
    );
    // The store works on: a write and a read go through (behind any write still in flight).
    store.set("after", &1).await?;
    assert_eq!(store.get::<i32>("after").await?, Some(1));
    let n = store.incr("n", 1).await? - 1;
    assert!(
        n >= completed.len() as i64 && n <= attempts,
        "count {n}: {} completed of {attempts} attempts",
        completed.len()
    );
    store.close().await;
    // The file, reopened by a sync store, holds one of the written values and the same count.
    let reopened = LiveDict::builder()
        .backend(livedict::SqliteBackend::open(dir.path().join("store.db"))?)
        .build()?;
    assert!(written.contains(&reopened.get::<String>("k")?.unwrap()));
    assert_eq!(reopened.get::<i64>("n")?, Some(n + 1));
    assert_eq!(reopened.len()?, 3);
    Ok(())
}

/// Holds `path`'s write lock from another connection for `held`, from a thread of its own;
/// returns once the lock is taken.
#[cfg(feature = "sqlite")]
fn hold_write_lock(path: std::path::PathBuf, held: Duration) -> std::thread::JoinHandle<()> {
    let (taken, is_taken) = std::sync::mpsc::channel();
    let holder = std::thread::spawn(move || {
        let c = rusqlite::Connection::open(path).unwrap();
        c.execute_batch("BEGIN IMMEDIATE").unwrap();
        taken.send(()).unwrap();
        std::thread::sleep(held);
        c.execute_batch("COMMIT").unwrap();
    });
    is_taken.recv().unwrap();
    holder
}

/// A call whose future is dropped while it waits for SQLite (here for another connection's
/// write lock) is done whole or not at all: a delete that goes on fires its `Delete` event, and
/// a lock taken after the caller gave up is released. (Before, the blocking task went on and
/// deleted the key, but the accounting after it was dropped with the future: no event, no
/// statistics; and the lock stayed held for its 30-second lease.)
#[cfg(feature = "sqlite")]
async fn a_call_given_up_on_sqlite_is_done_whole() -> Result<()> {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(&dir)?;
    let deleted = Arc::new(Mutex::new(Vec::new()));
    let seen = deleted.clone();
    store.on(EventKind::Delete, move |e| {
        seen.lock().unwrap().push(e.key().to_owned());
        Ok(())
    })?;
    store.set("k", &1).await?;
    let holder = hold_write_lock(dir.path().join("store.db"), Duration::from_millis(300));
    let gave_up = tokio::time::timeout(Duration::from_millis(50), store.delete("k")).await;
    assert!(gave_up.is_err(), "the delete waited for the write lock");
    let holder = tokio::task::spawn_blocking(move || holder.join().unwrap());
    holder.await.unwrap();
    assert!(
        eventually(|| *deleted.lock().unwrap() == ["k"]).await,
        "the delete went on, with its event: {:?}",
        deleted.lock().unwrap()
    );
    assert!(!store.contains("k").await?);
    assert_eq!(store.stats().deletes, 1);

    let holder = hold_write_lock(dir.path().join("store.db"), Duration::from_millis(300));
    let gave_up = tokio::time::timeout(Duration::from_millis(50), store.lock("job", WAIT)).await;
    assert!(gave_up.is_err(), "the lock waited for the write lock");
    let holder = tokio::task::spawn_blocking(move || holder.join().unwrap());
    holder.await.unwrap();
    let again = store.lock("job", Duration::from_secs(10)).await?;
    assert!(
        again.is_some(),
        "the lock taken after the caller gave up was released"
    );
    Ok(())
}

/// Dropping the last handle inside a runtime never blocks it, even when the backend's last
/// write (the pending last-access times of reads) must wait for another connection's write lock:
/// it is done from a thread of its own, and lands once the lock is free. (Before, the drop
/// waited for the lock on the runtime's thread: 2 s here.)
#[cfg(feature = "sqlite")]
async fn dropping_the_last_sqlite_handle_while_the_file_is_locked_returns_promptly() -> Result<()> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let store = sqlite_store(&dir)?;
    store.set("k", &1).await?;
    let recorded = || -> i64 {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.query_row(
            "SELECT last_access FROM livedict_entries WHERE key = 'k'",
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    let at_write = recorded();
    // Reads record their time when the last one is over a second old.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(store.get::<i32>("k").await?, Some(1)); // a last-access time to record
    let holder = hold_write_lock(path.clone(), Duration::from_millis(1500));
    let started = Instant::now();
    drop(store);
    // The runtime goes on meanwhile (the store's expiry task ends on it, and may hold the last
    // reference to the backend).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(700),
        "the drop held the runtime up: {took:?}"
    );
    let holder = tokio::task::spawn_blocking(move || holder.join().unwrap());
    holder.await.unwrap();
    // The read's time lands once the lock is free.
    assert!(
        eventually(|| recorded() > at_write).await,
        "the last read's time was recorded"
    );
    Ok(())
}

/// A `lock` whose caller gives up while another holder keeps the lock stops waiting at its next
/// attempt: the task it runs in holds the store, which must not outlive its last handle by the
/// caller's whole timeout (a minute here).
#[cfg(feature = "sqlite")]
async fn a_lock_given_up_on_sqlite_stops_waiting_and_lets_the_store_go() -> Result<()> {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(&dir)?;
    let other = sqlite_store(&dir)?;
    let held = other.lock("L", Duration::ZERO).await?.expect("free");
    let gave_up = tokio::time::timeout(
        Duration::from_millis(50),
        store.lock("L", Duration::from_secs(60)),
    )
    .await;
    assert!(gave_up.is_err(), "the lock is held");
    let weak = store.downgrade();
    drop(store);
    assert!(
        eventually(|| weak.upgrade().is_none()).await,
        "the store outlived its last handle"
    );
    drop(held);
    Ok(())
}
