//! A tour of livedict on the embedded default (the memory backend): set/get, TTL expiry, sliding
//! TTL, atomic update/incr, and statistics. Finishes in about two seconds.
//!
//! Run it with `cargo run --release --example tour`.

use std::thread;
use std::time::{Duration, Instant};

use livedict::{KeyTtl, LiveDict, WriteOptions};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug)]
struct Session {
    user: String,
    cart: Vec<String>,
}

fn main() -> livedict::Result<()> {
    let store = LiveDict::new();

    // A typed value, stored as JSON behind a small header.
    store.set(
        "session:ann",
        &Session {
            user: "ann".into(),
            cart: vec!["tea".into()],
        },
    )?;
    let session: Session = store.require("session:ann")?;
    println!("get            -> {session:?}");

    // A fixed TTL: gone 300 ms after it was written, removed in the background without a read.
    store.set_with("otp", &"492113", Duration::from_millis(300))?;
    println!("ttl(otp)       -> {:?}", store.ttl("otp")?);
    let started = Instant::now();
    while store.stats().expirations == 0 && started.elapsed() < Duration::from_secs(5) {
        thread::sleep(Duration::from_millis(10));
    }
    println!(
        "otp expired    -> removed by the expiry driver after {:?}; get = {:?}",
        started.elapsed(),
        store.get::<String>("otp")?
    );

    // A sliding TTL: every read pushes the deadline 400 ms further.
    store.set_with(
        "token",
        &"abc",
        WriteOptions::ttl(Duration::from_millis(400)).sliding(true),
    )?;
    for _ in 0..4 {
        thread::sleep(Duration::from_millis(250));
        assert!(store.get::<String>("token")?.is_some());
    }
    println!("sliding token  -> alive after 1 s of reads every 250 ms");
    thread::sleep(Duration::from_millis(450));
    println!(
        "sliding token  -> {:?} after 450 ms without a read",
        store.peek::<String>("token")?
    );

    // Atomic read-modify-write from many threads: nothing is lost.
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            thread::spawn(move || -> livedict::Result<()> {
                for _ in 0..1000 {
                    store.incr("visits", 1)?;
                    store.update("cart-size", |n: Option<u32>| n.unwrap_or(0) + 1)?;
                }
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join().expect("thread panicked")?;
    }
    println!(
        "incr/update    -> visits = {}, cart-size = {} (8 threads x 1000 each)",
        store.require::<i64>("visits")?,
        store.require::<u32>("cart-size")?
    );

    // The dict protocol.
    store.set_many([("a", 1), ("b", 2)])?;
    println!("setdefault(a)  -> {}", store.setdefault("a", 10)?);
    println!("pop(b)         -> {:?}", store.pop::<i32>("b")?);
    println!("len            -> {}", store.len()?);
    assert_eq!(store.ttl("a")?, KeyTtl::Never);

    println!("stats          -> {:?}", store.stats());
    Ok(())
}
