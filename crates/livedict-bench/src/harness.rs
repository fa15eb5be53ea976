//! What every suite shares: the settings, interleaved rounds with medians, threads started
//! together, a fixed-seed xorshift, and the two kinds of output line.
//!
//! A comparison runs livedict, then the peer, then livedict, then the peer, ... for `rounds`
//! rounds, each run doing the same number of operations; the printed figures are the medians of
//! the per-round ops/s, and the ratio is livedict's median divided by the peer's.

use std::fmt::Display;
use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

/// Settings common to all suites.
#[derive(Clone, Debug)]
pub struct Config {
    /// A smoke run with small sizes (`--quick`).
    pub quick: bool,
    /// Interleaved rounds per comparison.
    pub rounds: usize,
    /// Runs only the cases whose `SUITE/CASE` name contains this (`--only`).
    pub only: Option<String>,
}

impl Config {
    /// Keys in the store of the suites against a server or a file (SQLite, Redis).
    pub fn store_keys(&self) -> usize {
        if self.quick { 1_000 } else { 10_000 }
    }

    pub fn new(quick: bool, only: Option<String>) -> Self {
        Config {
            quick,
            rounds: if quick { 2 } else { 5 },
            only,
        }
    }

    /// Whether the case `suite/case` is selected by `--only`.
    pub fn wants(&self, suite: &str, case: &str) -> bool {
        self.only
            .as_deref()
            .is_none_or(|only| format!("{suite}/{case}").contains(only))
    }
}

/// One timed run: its wall time, and a count the case checks afterwards (hits found, say).
#[derive(Clone, Copy, Debug)]
pub struct Run {
    pub elapsed: Duration,
    pub count: u64,
}

/// Runs `livedict` and `peer` interleaved for `cfg.rounds` rounds, each doing `ops` operations,
/// and prints the comparison line. `check` sees each run's count (livedict's and the peer's) and
/// returns a warning to print if the run did not do what it should (misses in a hit case...).
#[allow(clippy::too_many_arguments)]
pub fn compare(
    cfg: &Config,
    suite: &str,
    case: &str,
    peer: &str,
    ops: u64,
    mut livedict: impl FnMut() -> Run,
    mut peer_run: impl FnMut() -> Run,
    check: impl Fn(u64) -> Option<String>,
) {
    if !cfg.wants(suite, case) {
        return;
    }
    let mut ours = Vec::with_capacity(cfg.rounds);
    let mut theirs = Vec::with_capacity(cfg.rounds);
    let mut warnings = Vec::new();
    let mut record = |name: &str, r: Run, rates: &mut Vec<f64>| {
        if let Some(w) = check(r.count) {
            warnings.push(format!("{name}: {w}"));
        }
        rates.push(ops_per_sec(ops, r.elapsed));
    };
    for _ in 0..cfg.rounds {
        record("livedict", livedict(), &mut ours);
        record(peer, peer_run(), &mut theirs);
    }
    for w in warnings {
        println!("# warning: {suite}/{case}: {w}");
    }
    print_comparison(suite, case, peer, median(&mut ours), median(&mut theirs));
}

/// Times `f`, which returns its run's count.
pub fn timed(f: impl FnOnce() -> u64) -> Run {
    let start = Instant::now();
    let count = f();
    Run {
        elapsed: start.elapsed(),
        count,
    }
}

/// A `check` for [`compare`]: warns unless a run counted exactly `want`.
pub fn expect_count(want: u64) -> impl Fn(u64) -> Option<String> {
    move |count| (count != want).then(|| format!("count {count}, expected {want}"))
}

pub fn ops_per_sec(ops: u64, elapsed: Duration) -> f64 {
    ops as f64 / elapsed.as_secs_f64().max(1e-9)
}

/// The median (the mean of the middle two for an even count).
pub fn median(v: &mut [f64]) -> f64 {
    assert!(!v.is_empty(), "median of nothing");
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// `SUITE/CASE: livedict N ops/s, PEER N ops/s, ratio R`.
pub fn print_comparison(suite: &str, case: &str, peer: &str, livedict: f64, peer_ops: f64) {
    println!(
        "{suite}/{case}: livedict {:.0} ops/s, {peer} {:.0} ops/s, ratio {:.2}",
        livedict,
        peer_ops,
        livedict / peer_ops
    );
}

/// `SUITE/CASE: NAME VALUE UNIT`.
pub fn print_figure(suite: &str, case: &str, name: &str, value: impl Display, unit: &str) {
    println!("{suite}/{case}: {name} {value} {unit}");
}

/// Makes the allocator settle what earlier runs freed, before a timed part: one allocation of
/// 64 KiB (below glibc's mmap threshold, above its small-chunk sizes), freed at once. glibc merges
/// every freed small chunk of the thread's arena on the first such request ("consolidation"):
/// after a run that dropped a store of 100,000 entries, that is tens of milliseconds, which would
/// otherwise fall on the first growth of a hash table in the next timed run, whichever side's.
pub fn settle_allocator() {
    drop(black_box(vec![0u8; 64 << 10]));
}

/// Runs `work(thread_index)` on `threads` threads released together by a barrier (inline on the
/// calling thread when `threads == 1`). The elapsed time is from the first thread's start to the
/// last thread's end, so spawning is not counted; the counts are summed. Each thread settles the
/// allocator first ([`settle_allocator`]), untimed.
pub fn timed_threads(threads: usize, work: impl Fn(usize) -> u64 + Sync) -> Run {
    if threads == 1 {
        settle_allocator();
        let start = Instant::now();
        let count = work(0);
        return Run {
            elapsed: start.elapsed(),
            count,
        };
    }
    let barrier = Barrier::new(threads);
    let spans: Vec<(Instant, Instant, u64)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (barrier, work) = (&barrier, &work);
                s.spawn(move || {
                    settle_allocator();
                    barrier.wait();
                    let start = Instant::now();
                    let count = work(t);
                    (start, Instant::now(), count)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a bench thread panicked"))
            .collect()
    });
    let start = spans
        .iter()
        .map(|s| s.0)
        .min()
        .expect("at least one thread");
    let end = spans
        .iter()
        .map(|s| s.1)
        .max()
        .expect("at least one thread");
    Run {
        elapsed: end - start,
        count: spans.iter().map(|s| s.2).sum(),
    }
}

/// xorshift64: a fixed-seed pseudo-random sequence, the same on every run.
#[derive(Clone, Debug)]
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> Self {
        // Scramble the seed so small seeds (thread indices) give unrelated sequences; never 0.
        XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform-enough in `0..n` (multiply-shift, no division).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// `len` indices in `0..n`, drawn with replacement.
    pub fn indices(&mut self, len: usize, n: usize) -> Vec<u32> {
        assert!(n <= u32::MAX as usize);
        (0..len).map(|_| self.below(n as u64) as u32).collect()
    }

    /// `lo..hi` in a shuffled order (Fisher-Yates).
    pub fn permutation(&mut self, lo: usize, hi: usize) -> Vec<u32> {
        assert!(hi <= u32::MAX as usize);
        let mut v: Vec<u32> = (lo as u32..hi as u32).collect();
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i as u64 + 1) as usize);
        }
        v
    }
}

/// A description of this machine for the header line: CPUs, CPU model, compiler.
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!(
        "nproc {cpus}, {model}, {}, allocator {}",
        env!("LIVEDICT_BENCH_RUSTC"),
        crate::alloc_counter::ALLOCATOR
    )
}
