//! Benchmarks of livedict against its peers, printed as ratios measured in the same run.
//!
//! ```text
//! cargo run --release -p livedict-bench -- SUITE [--quick]
//! ```
//! `SUITE` is `memory` (livedict's memory store against `moka::sync::Cache` with the same TTL and
//! `quick_cache` without TTL, on the same byte values, plus bytes per entry and expiry lateness),
//! `redis` (livedict's Redis backend against raw redis-rs on one connection, with
//! `redis-benchmark` figures as context), `async` (the async front-end with 1 and 64 concurrent
//! tasks against the sync front-end on one thread, per backend), `events` (the cost of registered hooks on the set path against no hooks, delivery throughput
//! and latency), `sqlite` (livedict's SQLite backend against raw `rusqlite` running the same
//! statements with the same pragmas, and against Python's `diskcache`), `crypto` (an encrypted
//! store's set+get round trip against raw `aes-gcm` plus a plain store doing the same by hand, on
//! 64 B, 1 KiB and 64 KiB payloads, and encrypted against plain get/set) or `all`. `--quick` is a
//! smoke run with small sizes (seconds), for the test suite. `--only PATTERN` runs only the cases
//! whose `SUITE/CASE` name contains `PATTERN` (for example `--only get_hit_1t`).
//!
//! Each comparison runs livedict and the peer interleaved (livedict, peer, livedict, peer, ...)
//! for several rounds with the same operations, and prints the medians as one line:
//! `SUITE/CASE: livedict N ops/s, PEER N ops/s, ratio R` (ratio = livedict / peer). Other figures
//! print as `SUITE/CASE: NAME VALUE UNIT`; lines starting with `#` are the machine header, notes
//! and warnings. `scripts/bench-table` turns the output into Markdown tables. See
//! `design/BENCHMARKS.md` (shared design notes) for the method.
//!
//! A new suite is one module with `settings` and `run` functions, listed in [`SUITES`].

mod alloc_counter;
mod asynchronous;
mod crypto;
mod events;
mod harness;
mod memory;
mod redis_server;
mod sqlite;

use std::process::ExitCode;
use std::time::Instant;

use harness::Config;

struct Suite {
    name: &'static str,
    /// The suite's sizes, for the header line.
    settings: fn(&Config) -> String,
    run: fn(&Config),
}

const SUITES: &[Suite] = &[
    Suite {
        name: "memory",
        settings: memory::settings,
        run: memory::run,
    },
    Suite {
        name: "sqlite",
        settings: sqlite::settings,
        run: sqlite::run,
    },
    Suite {
        name: "redis",
        settings: redis_server::settings,
        run: redis_server::run,
    },
    Suite {
        name: "async",
        settings: asynchronous::settings,
        run: asynchronous::run,
    },
    Suite {
        name: "events",
        settings: events::settings,
        run: events::run,
    },
    Suite {
        name: "crypto",
        settings: crypto::settings,
        run: crypto::run,
    },
];

fn usage() -> String {
    let names: Vec<_> = SUITES.iter().map(|s| s.name).collect();
    format!(
        "usage: livedict-bench SUITE [--quick] [--only PATTERN]\n  SUITE: {} | all\n  PATTERN: run only the cases whose SUITE/CASE name contains it",
        names.join(" | ")
    )
}

fn main() -> ExitCode {
    let mut suite = None;
    let mut quick = false;
    let mut only = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--only" => match args.next() {
                Some(pattern) => only = Some(pattern),
                None => {
                    eprintln!("--only needs a pattern\n{}", usage());
                    return ExitCode::from(2);
                }
            },
            "-h" | "--help" => {
                println!("{}", usage());
                return ExitCode::SUCCESS;
            }
            s if !s.starts_with('-') && suite.is_none() => suite = Some(s.to_owned()),
            other => {
                eprintln!("unexpected argument {other:?}\n{}", usage());
                return ExitCode::from(2);
            }
        }
    }
    let Some(suite) = suite else {
        eprintln!("{}", usage());
        return ExitCode::from(2);
    };
    let selected: Vec<&Suite> = if suite == "all" {
        SUITES.iter().collect()
    } else if let Some(s) = SUITES.iter().find(|s| s.name == suite) {
        vec![s]
    } else {
        eprintln!("unknown suite {suite:?}\n{}", usage());
        return ExitCode::from(2);
    };

    let cfg = Config::new(quick, only);
    let settings: Vec<String> = selected.iter().map(|s| (s.settings)(&cfg)).collect();
    println!(
        "# machine: {}; settings: quick {}, rounds {}; {}",
        harness::machine(),
        if quick { "yes" } else { "no" },
        cfg.rounds,
        settings.join("; ")
    );
    for s in selected {
        let start = Instant::now();
        (s.run)(&cfg);
        println!(
            "# {}: done in {:.1} s",
            s.name,
            start.elapsed().as_secs_f64()
        );
    }
    ExitCode::SUCCESS
}
