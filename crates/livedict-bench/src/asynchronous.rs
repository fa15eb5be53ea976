//! The async suite: livedict's async front-end (`AsyncLiveDict`) with 1 and 64 concurrent tasks,
//! against the sync front-end (`LiveDict`) on one thread, on the same backend, in the same run.
//!
//! For each backend (memory; SQLite on a temporary file; Redis on `$LIVEDICT_BENCH_REDIS_URL` or
//! a throwaway server, as in the redis suite) and each operation (`get` of 64-byte values that
//! exist, `set` overwriting them with a TTL of an hour), every run does the same number of
//! operations: the async side split evenly over its tasks, on a tokio multi-thread runtime with
//! one worker per core; the sync side in a loop on the calling thread. The ratio is async over
//! sync: what concurrency buys on that backend. The memory backend never waits, so tasks add
//! only scheduling there; SQLite runs on tokio's blocking threads (reads in parallel, one writer);
//! Redis pipelines the requests of all tasks on one multiplexed connection.

use std::sync::Arc;
use std::time::{Duration, Instant};

use livedict::{
    AsyncLiveDict, Backend, LiveDict, MemoryBackend, RedisBackend, RedisOptions, SqliteBackend,
};

use crate::harness::{Config, Run, compare, expect_count};
use crate::redis_server::Server;

const SUITE: &str = "async";
const VALUE_LEN: usize = 64;
const TTL: Duration = Duration::from_secs(3600);
const TASKS: [usize; 2] = [1, 64];

/// Operations per run, per backend.
fn ops(backend: &str, quick: bool) -> usize {
    let full = match backend {
        "memory" => 200_000,
        "sqlite" => 20_000,
        _ => 20_000,
    };
    if quick { full / 10 } else { full }
}

const KEYS: usize = 1_000;

/// The settings of this suite, for the header line.
pub fn settings(cfg: &Config) -> String {
    format!(
        "async: {KEYS} keys, value {VALUE_LEN} B, ttl {} s, tasks {TASKS:?} on a multi-thread \
         runtime ({} workers) vs the sync front-end on 1 thread; ops/run memory {}, sqlite {}, \
         redis {}",
        TTL.as_secs(),
        workers(),
        ops("memory", cfg.quick),
        ops("sqlite", cfg.quick),
        ops("redis", cfg.quick),
    )
}

fn workers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

#[derive(Clone, Copy)]
enum Op {
    Get,
    Set,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Set => "set",
        }
    }
}

pub fn run(cfg: &Config) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers())
        .enable_all()
        .build()
        .expect("start the tokio runtime");
    let keys: Arc<Vec<String>> = Arc::new((0..KEYS).map(|i| format!("key:{i}")).collect());

    run_backend(
        cfg,
        &runtime,
        "memory",
        Arc::new(MemoryBackend::new()),
        &keys,
    );

    let dir = tempfile::tempdir().expect("temporary directory");
    let sqlite = SqliteBackend::open(dir.path().join("async.db")).expect("open the SQLite file");
    run_backend(cfg, &runtime, "sqlite", Arc::new(sqlite), &keys);

    match Server::find() {
        Some(server) => {
            let prefix = format!("bench-async{}", std::process::id());
            let redis = RedisBackend::open_with(&server.url, RedisOptions::new().prefix(prefix))
                .expect("open the livedict Redis store");
            run_backend(cfg, &runtime, "redis", Arc::new(redis), &keys);
            raw_redis_ceiling(cfg, &runtime, &server.url);
        }
        None => println!(
            "# async/redis: skipped: no server (set LIVEDICT_BENCH_REDIS_URL, or install \
             redis-server)"
        ),
    }
}

fn run_backend(
    cfg: &Config,
    runtime: &tokio::runtime::Runtime,
    name: &str,
    backend: Arc<dyn Backend>,
    keys: &Arc<Vec<String>>,
) {
    let value: Arc<Vec<u8>> = Arc::new((0..VALUE_LEN as u8).collect());
    let sync_store = LiveDict::builder()
        .shared_backend(backend.clone())
        .build()
        .expect("build the sync store");
    let async_store = runtime
        .block_on(async { LiveDict::builder().shared_backend(backend).build_async() })
        .expect("build the async store");
    for k in keys.iter() {
        sync_store
            .set_bytes_with(k, &value, TTL)
            .expect("fill the store");
    }
    let n = ops(name, cfg.quick);
    for op in [Op::Get, Op::Set] {
        for tasks in TASKS {
            let case = format!("{name}_{}_{tasks}_tasks", op.name());
            let expect = match op {
                Op::Get => n as u64,
                Op::Set => 0,
            };
            compare(
                cfg,
                SUITE,
                &case,
                "sync-1-thread",
                n as u64,
                || run_async(runtime, &async_store, keys, &value, op, tasks, n),
                || run_sync(&sync_store, keys, &value, op, n),
                expect_count(expect),
            );
        }
    }
}

/// The same measure for raw redis-rs `GET`s: a multiplexed connection with 64 tasks against one
/// sync connection. It bounds what any client can gain from concurrency on this machine and
/// server (both share the same cores), whatever the cost of each command.
fn raw_redis_ceiling(cfg: &Config, runtime: &tokio::runtime::Runtime, url: &str) {
    let client = redis::Client::open(url).expect("redis client");
    let keys: Arc<Vec<String>> =
        Arc::new((0..KEYS).map(|i| format!("bench-async-raw:{i}")).collect());
    let mut sync_conn = client.get_connection().expect("connect");
    for k in keys.iter() {
        redis::cmd("SET")
            .arg(k)
            .arg(&[7u8; VALUE_LEN][..])
            .query::<()>(&mut sync_conn)
            .expect("SET");
    }
    let multiplexed = runtime
        .block_on(client.get_multiplexed_async_connection())
        .expect("connect multiplexed");
    let n = ops("redis", cfg.quick);
    let sync_conn = std::cell::RefCell::new(sync_conn);
    compare(
        cfg,
        SUITE,
        "redis_raw_get_64_tasks",
        "redis-rs-1-connection",
        n as u64,
        || {
            let start = Instant::now();
            let count = runtime.block_on(async {
                let handles: Vec<_> = (0..64)
                    .map(|t| {
                        let (mut conn, keys) = (multiplexed.clone(), keys.clone());
                        tokio::spawn(async move {
                            let mut hits = 0u64;
                            for i in 0..n / 64 + usize::from(t < n % 64) {
                                let v: Option<Vec<u8>> = redis::cmd("GET")
                                    .arg(&keys[(t * 7919 + i * 31) % keys.len()])
                                    .query_async(&mut conn)
                                    .await
                                    .expect("GET");
                                hits += u64::from(v.is_some());
                            }
                            hits
                        })
                    })
                    .collect();
                let mut hits = 0;
                for h in handles {
                    hits += h.await.expect("task");
                }
                hits
            });
            Run {
                elapsed: start.elapsed(),
                count,
            }
        },
        || {
            let mut conn = sync_conn.borrow_mut();
            let start = Instant::now();
            let mut hits = 0u64;
            for i in 0..n {
                let v: Option<Vec<u8>> = redis::cmd("GET")
                    .arg(&keys[(i * 31) % keys.len()])
                    .query(&mut *conn)
                    .expect("GET");
                hits += u64::from(v.is_some());
            }
            Run {
                elapsed: start.elapsed(),
                count: hits,
            }
        },
        expect_count(n as u64),
    );
}

/// `n` operations split over `tasks` tasks; the count is the hits found (gets) or 0 (sets).
fn run_async(
    runtime: &tokio::runtime::Runtime,
    store: &AsyncLiveDict,
    keys: &Arc<Vec<String>>,
    value: &Arc<Vec<u8>>,
    op: Op,
    tasks: usize,
    n: usize,
) -> Run {
    let start = Instant::now();
    let count = runtime.block_on(async {
        let handles: Vec<_> = (0..tasks)
            .map(|t| {
                let (store, keys, value) = (store.clone(), keys.clone(), value.clone());
                let share = n / tasks + usize::from(t < n % tasks);
                tokio::spawn(async move {
                    let mut hits = 0u64;
                    for i in 0..share {
                        let key = &keys[(t * 7919 + i * 31) % keys.len()];
                        match op {
                            Op::Get => {
                                hits +=
                                    u64::from(store.get_bytes(key).await.expect("get").is_some());
                            }
                            Op::Set => store.set_bytes_with(key, &value, TTL).await.expect("set"),
                        }
                    }
                    hits
                })
            })
            .collect();
        let mut hits = 0;
        for h in handles {
            hits += h.await.expect("task");
        }
        hits
    });
    Run {
        elapsed: start.elapsed(),
        count,
    }
}

fn run_sync(store: &LiveDict, keys: &[String], value: &[u8], op: Op, n: usize) -> Run {
    let start = Instant::now();
    let mut hits = 0u64;
    for i in 0..n {
        let key = &keys[(i * 31) % keys.len()];
        match op {
            Op::Get => hits += u64::from(store.get_bytes(key).expect("get").is_some()),
            Op::Set => store.set_bytes_with(key, value, TTL).expect("set"),
        }
    }
    Run {
        elapsed: start.elapsed(),
        count: hits,
    }
}
