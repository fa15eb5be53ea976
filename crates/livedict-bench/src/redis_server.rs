//! The redis suite: livedict on its Redis backend against raw redis-rs on one connection, with
//! `redis-benchmark` figures for the same server as context.
//!
//! The server is `$LIVEDICT_BENCH_REDIS_URL` (scripts/test sets it), or else a throwaway
//! `redis-server` the suite starts on a free loopback port (no persistence) and stops afterwards.
//! One thread, so livedict uses one pooled connection, as the peer does. Values are 64 bytes
//! (livedict stores them behind its 3-byte header), TTL 3600 s, on keys `key:N`. The peer does
//! what a Rust user would write by hand:
//!
//! - `get`: `GET key` on string keys written with `SET key value PX ttl`. livedict runs its `get`
//!   script: the entry's hash fields, the deadline judged by the server's clock, a sliding
//!   deadline renewed and the last access refreshed at most once a second.
//! - `set`: `SET key value PX ttl` (overwrites). livedict's `set` script also keeps the expiry
//!   index, the native TTL and the lock check, and returns the previous value.
//! - `set_many_1000`: one pipeline of 1,000 `SET ... PX` (not atomic); livedict applies a
//!   [`livedict::Batch`] of 1,000 `set_bytes_with`: one script, all or nothing. Ops are keys
//!   written.
//!
//! `redis-benchmark` (when installed) runs `GET` and `SET` with one client (`-c 1`), unpipelined
//! and pipelined by 1,000, on the same server: the ceiling of one connection.

use std::hint::black_box;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use livedict::{LiveDict, RedisBackend, RedisOptions};

use crate::harness::{
    Config, XorShift, compare, expect_count, median, ops_per_sec, print_figure, timed,
};

const SUITE: &str = "redis";
const VALUE_LEN: usize = 64;
const TTL: Duration = Duration::from_secs(3600);
const BATCH: usize = 1000;
const GET_PASSES: usize = 3;

/// The settings of this suite, for the header line.
pub fn settings(cfg: &Config) -> String {
    let keys = cfg.store_keys();
    format!(
        "redis: keys {}, value {VALUE_LEN} B, ttl {} s, 1 thread, 1 connection, loopback, \
         gets/run {}, sets/run {}, set_many {} pipelines of {BATCH}/run",
        keys,
        TTL.as_secs(),
        GET_PASSES * keys,
        keys,
        keys / BATCH,
    )
}

/// A server to run against: the given one, or one of our own.
pub(crate) struct Server {
    pub(crate) url: String,
    own: Option<(Child, tempfile::TempDir)>,
}

impl Server {
    pub(crate) fn find() -> Option<Server> {
        if let Ok(url) = std::env::var("LIVEDICT_BENCH_REDIS_URL") {
            return Some(Server { url, own: None });
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let dir = tempfile::tempdir().ok()?;
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .spawn()
            .ok()?;
        let url = format!("redis://127.0.0.1:{port}");
        let client = redis::Client::open(url.as_str()).ok()?;
        let started = Instant::now();
        while client.get_connection().is_err() {
            if started.elapsed() > Duration::from_secs(10) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(Server {
            url,
            own: Some((child, dir)),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some((child, _)) = &mut self.own {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn run(cfg: &Config) {
    let Some(server) = Server::find() else {
        println!(
            "# redis: skipped: no server (set LIVEDICT_BENCH_REDIS_URL, or install redis-server)"
        );
        return;
    };
    let n = cfg.store_keys();
    let prefix = format!("bench{}", std::process::id());
    let keys: Vec<String> = (0..n).map(|i| format!("key:{i}")).collect();
    let raw_keys: Vec<String> = keys.iter().map(|k| format!("{prefix}-raw:{k}")).collect();
    let value: Vec<u8> = (0..VALUE_LEN as u8).collect();
    let ttl_ms = TTL.as_millis() as u64;

    let backend = RedisBackend::open_with(&server.url, RedisOptions::new().prefix(&prefix))
        .expect("open the livedict Redis store");
    let store = LiveDict::builder()
        .backend(backend)
        .build()
        .expect("build the store");
    let mut raw = redis::Client::open(server.url.as_str())
        .and_then(|c| c.get_connection())
        .expect("connect the raw peer");

    let livedict_set_many = |order: &[u32]| {
        for chunk in order.chunks(BATCH) {
            let mut batch = store.batch();
            for &i in chunk {
                batch
                    .set_bytes_with(&keys[i as usize], &value, TTL)
                    .expect("batch set");
            }
            store.apply(batch).expect("apply");
        }
        order.len() as u64
    };
    let raw_set_many = |raw: &mut redis::Connection, order: &[u32]| {
        for chunk in order.chunks(BATCH) {
            let mut pipe = redis::pipe();
            for &i in chunk {
                pipe.cmd("SET")
                    .arg(&raw_keys[i as usize])
                    .arg(&value[..])
                    .arg("PX")
                    .arg(ttl_ms)
                    .ignore();
            }
            pipe.query::<()>(raw).expect("raw pipeline");
        }
        order.len() as u64
    };
    let all: Vec<u32> = (0..n as u32).collect();
    livedict_set_many(&all);
    raw_set_many(&mut raw, &all);
    let raw = std::cell::RefCell::new(raw);

    // get
    let order = XorShift::new(1).indices(GET_PASSES * n, n);
    let ops = order.len() as u64;
    compare(
        cfg,
        SUITE,
        "get",
        "redis-rs",
        ops,
        || {
            timed(|| {
                order
                    .iter()
                    .filter(|&&i| {
                        black_box(store.get_bytes(&keys[i as usize]).expect("get")).is_some()
                    })
                    .count() as u64
            })
        },
        || {
            let mut raw = raw.borrow_mut();
            timed(|| {
                order
                    .iter()
                    .filter(|&&i| {
                        let v: Option<Vec<u8>> = redis::cmd("GET")
                            .arg(&raw_keys[i as usize])
                            .query(&mut *raw)
                            .expect("raw GET");
                        black_box(v).is_some()
                    })
                    .count() as u64
            })
        },
        expect_count(ops),
    );

    // set
    let order = XorShift::new(2).indices(n, n);
    let ops = order.len() as u64;
    compare(
        cfg,
        SUITE,
        "set",
        "redis-rs",
        ops,
        || {
            timed(|| {
                for &i in &order {
                    store
                        .set_bytes_with(&keys[i as usize], &value, TTL)
                        .expect("set");
                }
                order.len() as u64
            })
        },
        || {
            let mut raw = raw.borrow_mut();
            timed(|| {
                for &i in &order {
                    redis::cmd("SET")
                        .arg(&raw_keys[i as usize])
                        .arg(&value[..])
                        .arg("PX")
                        .arg(ttl_ms)
                        .query::<()>(&mut *raw)
                        .expect("raw SET");
                }
                order.len() as u64
            })
        },
        expect_count(ops),
    );

    // set_many_1000
    let order = XorShift::new(3).permutation(0, n);
    let ops = order.len() as u64;
    compare(
        cfg,
        SUITE,
        "set_many_1000",
        "redis-rs-pipeline",
        ops,
        || timed(|| livedict_set_many(&order)),
        || timed(|| raw_set_many(&mut raw.borrow_mut(), &order)),
        expect_count(ops),
    );

    set_floors(cfg, &mut raw.borrow_mut(), &raw_keys, &value, &prefix);
    floors(cfg, &mut raw.borrow_mut(), &raw_keys, &value, &prefix);
    redis_benchmark(cfg, &server.url);
    store.clear().expect("clear the bench store");
    let mut raw = raw.into_inner();
    for chunk in raw_keys.chunks(BATCH) {
        let _: redis::RedisResult<()> = redis::cmd("UNLINK").arg(chunk).query(&mut raw);
    }
}

/// What the server itself allows for one write judged by its own clock, timed interleaved with
/// the peer's `SET key value PX ttl` on the same keys, one round trip per key (figures, not
/// livedict):
///
/// - `floor_script_time_set`: a script that reads the server's clock (`TIME`) and writes the
///   value with its native expiry, returning the old value (`SET ... PXAT ... GET`): the least a
///   write needs whose deadline the server judges and whose previous value an event carries.
/// - `floor_script_time_lock_set_zadd`: the same with the update-lock check (`GET`) and the
///   expiry index (`ZADD`): the commands of livedict's `set` in a layout of string entries, with
///   no decoding and no conditions.
///
/// livedict's `set` reads the lock and the old entry with one `MGET`, decodes the entry and
/// writes the new one with `SET ... PX` (or `KEEPTTL`): three commands in all, `TIME` included.
fn set_floors(
    cfg: &Config,
    raw: &mut redis::Connection,
    raw_keys: &[String],
    value: &[u8],
    prefix: &str,
) {
    const CASES: [&str; 2] = ["floor_script_time_set", "floor_script_time_lock_set_zadd"];
    if !CASES.iter().any(|case| cfg.wants(SUITE, case)) {
        return;
    }
    let keys: Vec<String> = raw_keys.iter().map(|k| format!("{k}:floor1")).collect();
    let locks: Vec<String> = raw_keys.iter().map(|k| format!("{k}:floor1lock")).collect();
    let index = format!("{prefix}-floor1-index");
    let ttl_ms = TTL.as_millis() as u64;
    let time_set = redis::Script::new(
        "local t = redis.call('TIME')
         local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
         local at = string.format('%.0f', now + tonumber(ARGV[2]))
         return redis.call('SET', KEYS[1], ARGV[1], 'PXAT', at, 'GET')",
    );
    let time_lock_set_zadd = redis::Script::new(
        "local t = redis.call('TIME')
         local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
         if redis.call('GET', KEYS[2]) then
           return -1
         end
         local at = string.format('%.0f', now + tonumber(ARGV[2]))
         local old = redis.call('SET', KEYS[1], ARGV[1], 'PXAT', at, 'GET')
         redis.call('ZADD', KEYS[3], at, ARGV[3])
         return old",
    );
    let order = XorShift::new(4).indices(keys.len(), keys.len());
    let peer = |raw: &mut redis::Connection| {
        for &i in &order {
            redis::cmd("SET")
                .arg(&keys[i as usize])
                .arg(value)
                .arg("PX")
                .arg(ttl_ms)
                .query::<()>(raw)
                .expect("floor SET");
        }
        order.len() as u64
    };
    let script = |raw: &mut redis::Connection, with_index: bool| {
        for &i in &order {
            let i = i as usize;
            let old: Option<Vec<u8>> = if with_index {
                time_lock_set_zadd
                    .key(&keys[i])
                    .key(&locks[i])
                    .key(&index)
                    .arg(value)
                    .arg(ttl_ms)
                    .arg(&raw_keys[i])
                    .invoke(raw)
            } else {
                time_set.key(&keys[i]).arg(value).arg(ttl_ms).invoke(raw)
            }
            .expect("floor script");
            black_box(old);
        }
        order.len() as u64
    };
    peer(raw);
    let ops = order.len() as u64;
    for (case, with_index) in CASES.into_iter().zip([false, true]) {
        if !cfg.wants(SUITE, case) {
            continue;
        }
        let (mut scripted, mut plain) = (Vec::new(), Vec::new());
        for _ in 0..cfg.rounds {
            scripted.push(ops_per_sec(ops, timed(|| script(raw, with_index)).elapsed));
            plain.push(ops_per_sec(ops, timed(|| peer(raw)).elapsed));
        }
        let (scripted, plain) = (median(&mut scripted), median(&mut plain));
        print_figure(SUITE, case, "script", format!("{scripted:.0}"), "ops/s");
        print_figure(SUITE, case, "redis-rs", format!("{plain:.0}"), "ops/s");
        print_figure(
            SUITE,
            case,
            "ratio",
            format!("{:.2}", scripted / plain),
            "x",
        );
    }
    for chunk in keys.chunks(BATCH) {
        let _: redis::RedisResult<()> = redis::cmd("UNLINK").arg(chunk).query(raw);
    }
    let _: redis::RedisResult<()> = redis::cmd("UNLINK").arg(&index).query(raw);
}

/// What the server itself allows for a batch of 1,000 writes that is atomic, timed interleaved
/// with the peer's non-atomic pipeline of `SET ... PX` on the same keys (figures, not livedict):
///
/// - `floor_multi_set`: the same `SET`s in `MULTI`/`EXEC`: atomic, nothing read, no index.
/// - `floor_lua_get_set`: one script that reads each key's old value (`GET`) and writes it
///   (`SET ... PX`): what returning previous values and exact expiry events needs at the least,
///   still with no expiry index and no lock check.
/// - `floor_multi_set_get_zadd`: `MULTI`/`EXEC` of `SET ... PXAT ... GET` (the old values come
///   back) and one `ZADD ... LT` of the 1,000 deadlines into one index (moved only when earlier):
///   old values and an index, no lock check.
///
/// livedict's batch does all of these and checks each key's update lock.
fn floors(
    cfg: &Config,
    raw: &mut redis::Connection,
    raw_keys: &[String],
    value: &[u8],
    prefix: &str,
) {
    const CASES: [&str; 3] = [
        "floor_multi_set",
        "floor_lua_get_set",
        "floor_multi_set_get_zadd",
    ];
    if !CASES.iter().any(|case| cfg.wants(SUITE, case)) {
        return;
    }
    let keys: Vec<String> = raw_keys.iter().map(|k| format!("{k}:floor")).collect();
    let index = format!("{prefix}-floor-index");
    let ttl_ms = TTL.as_millis() as u64;
    let get_set = redis::Script::new(
        "for i, k in ipairs(KEYS) do
             redis.call('GET', k)
             redis.call('SET', k, ARGV[1], 'PX', ARGV[2])
         end
         return #KEYS",
    );
    let pipeline = |raw: &mut redis::Connection, atomic: bool| {
        for chunk in keys.chunks(BATCH) {
            let mut pipe = redis::pipe();
            if atomic {
                pipe.atomic();
            }
            for k in chunk {
                pipe.cmd("SET")
                    .arg(k)
                    .arg(value)
                    .arg("PX")
                    .arg(ttl_ms)
                    .ignore();
            }
            pipe.query::<()>(raw).expect("floor pipeline");
        }
        keys.len() as u64
    };
    let lua = |raw: &mut redis::Connection| {
        for chunk in keys.chunks(BATCH) {
            let mut call = get_set.prepare_invoke();
            for k in chunk {
                call.key(k);
            }
            call.arg(value).arg(ttl_ms);
            let _: u64 = call.invoke(raw).expect("floor script");
        }
        keys.len() as u64
    };
    let multi_get_zadd = |raw: &mut redis::Connection| {
        let deadline = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
            + ttl_ms;
        for chunk in keys.chunks(BATCH) {
            let mut pipe = redis::pipe();
            pipe.atomic();
            for k in chunk {
                pipe.cmd("SET")
                    .arg(k)
                    .arg(value)
                    .arg("PXAT")
                    .arg(deadline)
                    .arg("GET");
            }
            let mut zadd = redis::cmd("ZADD");
            zadd.arg(&index).arg("LT");
            for k in chunk {
                zadd.arg(deadline).arg(k);
            }
            pipe.add_command(zadd).ignore();
            let old: Vec<Option<Vec<u8>>> = pipe.query(raw).expect("floor transaction");
            black_box(old);
        }
        keys.len() as u64
    };
    pipeline(raw, false);
    type Floor<'a> = &'a dyn Fn(&mut redis::Connection) -> u64;
    let floors: [Floor<'_>; 3] = [&|raw| pipeline(raw, true), &lua, &multi_get_zadd];
    let cases = CASES.into_iter().zip(floors);
    let ops = keys.len() as u64;
    for (case, floor) in cases {
        if !cfg.wants(SUITE, case) {
            continue;
        }
        let (mut atomic, mut peer) = (Vec::new(), Vec::new());
        for _ in 0..cfg.rounds {
            atomic.push(ops_per_sec(ops, timed(|| floor(raw)).elapsed));
            peer.push(ops_per_sec(ops, timed(|| pipeline(raw, false)).elapsed));
        }
        let (atomic, peer) = (median(&mut atomic), median(&mut peer));
        print_figure(SUITE, case, "atomic", format!("{atomic:.0}"), "keys/s");
        print_figure(
            SUITE,
            case,
            "redis-rs-pipeline",
            format!("{peer:.0}"),
            "keys/s",
        );
        print_figure(SUITE, case, "ratio", format!("{:.2}", atomic / peer), "x");
    }
    for chunk in keys.chunks(BATCH) {
        let _: redis::RedisResult<()> = redis::cmd("UNLINK").arg(chunk).query(raw);
    }
    let _: redis::RedisResult<()> = redis::cmd("UNLINK").arg(&index).query(raw);
}

/// `redis-benchmark` on the same server, one client: the ceiling of one connection.
fn redis_benchmark(cfg: &Config, url: &str) {
    let requests = if cfg.quick { "2000" } else { "100000" };
    for (case, pipeline) in [("redis-benchmark", "1"), ("redis-benchmark_p1000", "1000")] {
        let out = Command::new("redis-benchmark")
            .args(["-u", url, "-t", "get,set", "-c", "1", "-d", "64", "-q"])
            .args(["-n", requests, "-P", pipeline])
            .output();
        let Some(out) = out.ok().filter(|o| o.status.success()) else {
            println!("# redis: redis-benchmark is not available; no context figures");
            return;
        };
        // Lines like "SET: 41666.67 requests per second, p50=0.023 msec".
        for line in String::from_utf8_lossy(&out.stdout).split(['\n', '\r']) {
            if let Some((name, rest)) = line.trim().split_once(": ")
                && let Some(rate) = rest.split_whitespace().next()
                && let Ok(rate) = rate.parse::<f64>()
            {
                print_figure(SUITE, case, name, format!("{rate:.0}"), "ops/s");
            }
        }
    }
}
