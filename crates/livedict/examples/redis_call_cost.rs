//! The client's cost of one `set` on the Redis backend, for instruction counting: N overwrites
//! of 1,000 keys with 64-byte values and a one-hour TTL through livedict (`set`), or the same as
//! raw redis-rs `SET key value PX ttl` on one connection (`peer-set`), against the server at
//! `$LIVEDICT_BENCH_REDIS_URL`. `batch` and `peer-pipeline` make the same writes 1,000 at a time:
//! livedict's `Batch` (one atomic call) against a pipeline of `SET`s.
//!
//! ```text
//! cargo build --release -p livedict --features redis --example redis_call_cost
//! valgrind --tool=callgrind target/release/examples/redis_call_cost set 2000
//! valgrind --tool=callgrind target/release/examples/redis_call_cost set 4000
//! ```
//! (instructions of the second run minus the first, divided by 2,000: one call, the client's
//! side only). Valgrind counts each byte of the `rep stosb` with which the reply reader clears its
//! buffer as an instruction (4-6 thousand a call on both sides): compare the two modes, not the
//! figures with the memory backend's.

use std::time::Duration;

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "set".into());
    let n: usize = args.next().map_or(2000, |s| s.parse().expect("a count"));
    let url = std::env::var("LIVEDICT_BENCH_REDIS_URL").expect("LIVEDICT_BENCH_REDIS_URL");
    let keys: Vec<String> = (0..1000).map(|i| format!("call_cost:{i}")).collect();
    let value = vec![7u8; 64];
    let ttl = Duration::from_secs(3600);
    match mode.as_str() {
        "set" => {
            let store = open(&url);
            for i in 0..n {
                store
                    .set_bytes_with(&keys[i % keys.len()], &value, ttl)
                    .expect("set");
            }
        }
        "batch" => {
            let store = open(&url);
            for round in 0..n.div_ceil(keys.len()) {
                let mut batch = store.batch();
                for i in round * keys.len()..((round + 1) * keys.len()).min(n) {
                    batch
                        .set_bytes_with(&keys[i % keys.len()], &value, ttl)
                        .expect("batch set");
                }
                store.apply(batch).expect("apply");
            }
        }
        "peer-pipeline" => {
            let mut conn = redis::Client::open(url.as_str())
                .and_then(|c| c.get_connection())
                .expect("connect");
            for round in 0..n.div_ceil(keys.len()) {
                let mut pipe = redis::pipe();
                for i in round * keys.len()..((round + 1) * keys.len()).min(n) {
                    pipe.cmd("SET")
                        .arg(&keys[i % keys.len()])
                        .arg(&value[..])
                        .arg("PX")
                        .arg(ttl.as_millis() as u64)
                        .ignore();
                }
                pipe.query::<()>(&mut conn).expect("pipeline");
            }
        }
        "peer-set" => {
            let mut conn = redis::Client::open(url.as_str())
                .and_then(|c| c.get_connection())
                .expect("connect");
            for i in 0..n {
                redis::cmd("SET")
                    .arg(&keys[i % keys.len()])
                    .arg(&value[..])
                    .arg("PX")
                    .arg(ttl.as_millis() as u64)
                    .query::<()>(&mut conn)
                    .expect("SET");
            }
        }
        other => panic!("unknown mode {other:?}: set, peer-set, batch or peer-pipeline"),
    }
}

/// The store the livedict modes write to.
fn open(url: &str) -> livedict::LiveDict {
    let backend = livedict::RedisBackend::open_with(
        url,
        livedict::RedisOptions::new().prefix("livedict-call-cost"),
    )
    .expect("open the store");
    livedict::LiveDict::builder()
        .backend(backend)
        .build()
        .expect("build the store")
}
