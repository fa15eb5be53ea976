//! The cost of one call on the memory backend, for instruction counting: `get_bytes` of keys that
//! exist (`hit`), of a key that does not (`miss`), `set_bytes` overwrites (`set`), or the same
//! with one trivial store-wide `Set` hook registered (`set-hooked`), N times over 10,000 keys of 64
//! bytes (a third argument sets another key count); or `set_bytes` of keys not stored yet
//! (`insert`: the store starts empty, and N is at most the key count).
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
    let key_count: usize = args
        .next()
        .map_or(10_000, |s| s.parse().expect("a key count"));
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
