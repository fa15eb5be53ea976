//! The cost of one call on the memory backend, for instruction counting: `get_bytes` of keys that
//! exist (`hit`), of a key that does not (`miss`), `set_bytes` overwrites (`set`), or the same
//! with one trivial store-wide `Set` hook registered (`set-hooked`), N times over 10,000 keys of 64
//! bytes (a third argument sets another key count); or `set_bytes` of keys not stored yet
//! (`insert`: the store starts empty, and N is at most the key count).
//!
//! `insert-rounds N T` and `insert-rounds-apart N T` time N rounds of 100,000 inserts (64-byte
//! values, one-hour TTL) into a fresh store by T threads, each inserting its share of the keys:
//! into one store shared by the threads, or into a store of each thread's own. They print the
//! wall time per insert of each round (for the scaling of inserts, not instruction counts).
//!
//! ```text
//! cargo build --release -p livedict --example call_cost
//! valgrind --tool=cachegrind --cache-sim=no --fair-sched=yes target/release/examples/call_cost hit 0
//! valgrind --tool=cachegrind --cache-sim=no --fair-sched=yes target/release/examples/call_cost hit 100000
//! ```
//! (instructions of the second run minus the first, divided by 100,000: one call). `--fair-sched`
//! lets the store's clock thread run under valgrind; without it the cached clock never ticks and
//! every call also pays for reading the system clock (a few hundred more instructions). The wall time
//! it prints is for a rough look only; the benchmarks are `livedict-bench`.
//!
//! `set-hooked` runs a hook worker thread too; to count the caller's thread alone, use
//! `valgrind --tool=callgrind --fair-sched=yes --separate-threads=yes` and read the totals of the
//! output file ending in `-01` (the main thread), for both counts.

use std::hint::black_box;

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "hit".into());
    let n: usize = args
        .next()
        .map_or(2_000_000, |s| s.parse().expect("a count"));
    // The key count; for `insert-rounds`, the thread count.
    let third: Option<usize> = args.next().map(|s| s.parse().expect("a count"));
    if let Some(apart) = match mode.as_str() {
        "insert-rounds" => Some(false),
        "insert-rounds-apart" => Some(true),
        _ => None,
    } {
        return insert_rounds(n, third.unwrap_or(1), apart);
    }
    let key_count = third.unwrap_or(10_000);
    let store = livedict::LiveDict::new();
    let keys: Vec<String> = (0..key_count).map(|i| format!("key:{i}")).collect();
    let value = vec![7u8; 64];
    if mode == "insert" {
        assert!(n <= key_count, "insert: at most one call per key");
    } else {
        for k in &keys {
            store.set_bytes(k, &value).expect("fill");
        }
    }
    if mode == "set-hooked" {
        store
            .on(livedict::EventKind::Set, |_| Ok(()))
            .expect("register a hook");
    }
    let start = std::time::Instant::now();
    let mut hits = 0;
    for i in 0..n {
        let key = &keys[(i * 7919) % keys.len()];
        match mode.as_str() {
            "hit" => hits += usize::from(black_box(store.get_bytes(key).expect("get")).is_some()),
            "miss" => {
                hits += usize::from(black_box(store.get_bytes("absent").expect("get")).is_some())
            }
            "set" | "set-hooked" | "insert" => store.set_bytes(key, &value).expect("set"),
            other => panic!("unknown mode {other:?}: hit, miss, set, set-hooked or insert"),
        }
    }
    let per_call = start.elapsed().as_nanos() as f64 / n.max(1) as f64;
    println!("{mode}: {n} calls, {per_call:.1} ns each, {hits} hits");
}

/// `insert-rounds`: `rounds` rounds of 100,000 inserts into fresh stores by `threads` threads.
fn insert_rounds(rounds: usize, threads: usize, apart: bool) {
    const KEYS: usize = 100_000;
    let threads = threads.max(1);
    let keys: Vec<String> = (0..KEYS)
        .map(|i| format!("key:{}", (i * 7919) % KEYS))
        .collect();
    let value = vec![7u8; 64];
    let ttl = std::time::Duration::from_secs(3600);
    for _ in 0..rounds {
        let stores: Vec<livedict::LiveDict> = (0..if apart { threads } else { 1 })
            .map(|_| livedict::LiveDict::new())
            .collect();
        let start = std::time::Instant::now();
        std::thread::scope(|s| {
            for t in 0..threads {
                let store = &stores[if apart { t } else { 0 }];
                let (keys, value) = (&keys[t * KEYS / threads..(t + 1) * KEYS / threads], &value);
                s.spawn(move || {
                    for k in keys {
                        store.set_bytes_with(k, value, ttl).expect("set");
                    }
                });
            }
        });
        let per_insert = start.elapsed().as_nanos() as f64 / KEYS as f64;
        println!("{per_insert:.0} ns per insert ({threads} threads, apart: {apart})");
    }
}
