//! The crypto suite: livedict's encryption at rest (AES-256-GCM envelope) against raw `aes-gcm`
//! doing the same work by hand, and an encrypted memory store against a plain one.
//!
//! - `roundtrip_{64B,1KiB,64KiB}`: one operation is a write then a read of the same key, single
//!   threaded, cycling over a fixed set of keys. livedict: `set_bytes_with(key, payload,
//!   Ttl::Never)` + `get_bytes(key)` on a memory store built with a keyring (every value
//!   encrypted). The peer (`aes-gcm+store`) is what a user would write by hand for the same
//!   result: `Aes256Gcm::encrypt` of the payload with a fresh random nonce and the same associated
//!   data as livedict's envelope (header bytes + key id + key name), the key id, nonce and
//!   ciphertext+tag stored with `set_bytes_with` in a plain memory store (so it holds exactly as
//!   many bytes as the encrypted store), then `get_bytes` + `Aes256Gcm::decrypt`. The peer builds
//!   its cipher once, as a user would; livedict's envelope builds one per seal and per open, and
//!   that key setup is part of what the ratio shows. Both sides check, outside the timed loop,
//!   that every read returned the payload; before the runs, one value written by livedict is read
//!   from its backend and decrypted with the peer's code, which checks that both bind the same
//!   associated data.
//! - `plain_roundtrip_*`: the same round trip on a plain store with no encryption at all, for
//!   context (interleaved with the two above, median of the same rounds).
//! - `get_encrypted_vs_plain`, `set_encrypted_vs_plain`: `get_bytes` hits and `set_bytes_with`
//!   overwrites of 64-byte values in a random (fixed-seed) key order, on an encrypted memory store
//!   against a plain one (ratio = encrypted / plain, below 1 by the cost of the envelope).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use aes_gcm::aead::{Aead, Generate as _, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use livedict::backend::ReadMode;
use livedict::{Backend, Keyring, LiveDict, MemoryBackend, Now, Ttl};

use crate::harness::{
    Config, Run, XorShift, compare, median, ops_per_sec, print_comparison, print_figure,
};

const SUITE: &str = "crypto";
const PEER: &str = "aes-gcm+store";
const KEY_ID: u32 = 1;
const KEY_MATERIAL: [u8; 32] = [7; 32];
/// The header livedict writes in front of an encrypted raw-bytes value: magic 0xD7, format
/// version 1, payload kind 0 (raw bytes) with the "encrypted" bit (0x10). Checked against a value
/// livedict wrote before any run.
const ENCRYPTED_RAW_HEADER: [u8; 3] = [0xD7, 1, 0x10];
const KEY_ID_LEN: usize = 4;
const NONCE_LEN: usize = 12;
/// Payload sizes of the round-trip cases, with their case-name suffix.
const PAYLOADS: [(usize, &str); 3] = [(64, "64B"), (1024, "1KiB"), (64 * 1024, "64KiB")];
/// Value size of the get/set cases.
const VALUE_LEN: usize = 64;

struct Sizes {
    /// Round trips per run, by payload size.
    roundtrips: fn(usize) -> usize,
    /// Keys of the get/set cases.
    keys: usize,
    /// Operations per run of the get/set cases are `keys * passes`.
    passes: usize,
}

impl Sizes {
    fn new(quick: bool) -> Self {
        if quick {
            Sizes {
                roundtrips: |len| if len >= 64 * 1024 { 200 } else { 5_000 },
                keys: 1_000,
                passes: 10,
            }
        } else {
            Sizes {
                roundtrips: |len| match len {
                    0..=1023 => 200_000,
                    1024..=65535 => 100_000,
                    _ => 4_000,
                },
                keys: 10_000,
                passes: 20,
            }
        }
    }
}

/// Keys the round trips cycle over: few for the large payload, so the stores stay small.
fn roundtrip_keys(len: usize) -> usize {
    if len >= 64 * 1024 { 64 } else { 1024 }
}

/// The settings of this suite, for the header line.
pub fn settings(cfg: &Config) -> String {
    let s = Sizes::new(cfg.quick);
    let trips: Vec<String> = PAYLOADS
        .iter()
        .map(|&(len, name)| {
            format!(
                "{name} {} over {} keys",
                (s.roundtrips)(len),
                roundtrip_keys(len)
            )
        })
        .collect();
    format!(
        "crypto: AES-256-GCM, round trips/run {}; get/set keys {}, value {VALUE_LEN} B, ops/run {}",
        trips.join(", "),
        s.keys,
        s.keys * s.passes
    )
}

fn keyring() -> Keyring {
    Keyring::from_bytes(KEY_ID, &KEY_MATERIAL).expect("a 32-byte key")
}

fn encrypted_store(backend: Arc<MemoryBackend>) -> LiveDict {
    LiveDict::builder()
        .shared_backend(backend)
        .keyring(keyring())
        .build()
        .expect("build an encrypted livedict store")
}

fn plain_store() -> LiveDict {
    LiveDict::builder()
        .build()
        .expect("build a plain livedict store")
}

// ---- the peer: raw aes-gcm plus a plain store ------------------------------------------------------

/// What a user would write by hand: one cipher, an envelope of key id + nonce + ciphertext+tag
/// stored in a plain store, bound to the key name by the same associated data as livedict's.
struct ByHand {
    cipher: Aes256Gcm,
    store: LiveDict,
}

/// The associated data, built as livedict's envelope builds it.
fn aad(key: &str) -> Vec<u8> {
    let key_id = KEY_ID.to_be_bytes();
    let mut aad = Vec::with_capacity(ENCRYPTED_RAW_HEADER.len() + key_id.len() + key.len());
    aad.extend_from_slice(&ENCRYPTED_RAW_HEADER);
    aad.extend_from_slice(&key_id);
    aad.extend_from_slice(key.as_bytes());
    aad
}

impl ByHand {
    fn new() -> Self {
        ByHand {
            cipher: Aes256Gcm::new_from_slice(&KEY_MATERIAL).expect("a 32-byte key"),
            store: plain_store(),
        }
    }

    fn seal(&self, key: &str, payload: &[u8]) -> Vec<u8> {
        let nonce = Nonce::generate();
        let sealed = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: payload,
                    aad: &aad(key),
                },
            )
            .expect("aes-gcm encrypt");
        let mut out = Vec::with_capacity(KEY_ID_LEN + NONCE_LEN + sealed.len());
        out.extend_from_slice(&KEY_ID.to_be_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// Decrypts key id + nonce + ciphertext+tag; `None` if it does not authenticate.
    fn open(&self, key: &str, envelope: &[u8]) -> Option<Vec<u8>> {
        let rest = envelope.get(KEY_ID_LEN..)?;
        if rest.len() < NONCE_LEN {
            return None;
        }
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_from(nonce).ok()?;
        self.cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: sealed,
                    aad: &aad(key),
                },
            )
            .ok()
    }

    fn set(&self, key: &str, payload: &[u8]) {
        self.store
            .set_bytes_with(key, &self.seal(key, payload), Ttl::Never)
            .expect("plain set_bytes_with");
    }

    fn get(&self, key: &str) -> Option<Vec<u8>> {
        let stored = self.store.get_bytes(key).expect("plain get_bytes")?;
        Some(
            self.open(key, &stored)
                .expect("the peer's envelope authenticates"),
        )
    }
}

/// Writes one value through the encrypted store, reads the stored envelope from its backend and
/// decrypts it with the peer's code: both must bind the same header, key id and key name.
fn check_same_envelope(backend: &MemoryBackend, store: &LiveDict, peer: &ByHand) {
    let (key, payload) = ("crypto:check", b"the same associated data".as_slice());
    store
        .set_bytes_with(key, payload, Ttl::Never)
        .expect("livedict set_bytes_with");
    let stored = backend
        .get(key, &Now::fixed(1), ReadMode::Peek)
        .expect("backend get")
        .expect("the value just written");
    assert_eq!(
        stored[..ENCRYPTED_RAW_HEADER.len()],
        ENCRYPTED_RAW_HEADER,
        "livedict's encrypted header is not the one the peer binds"
    );
    let opened = peer.open(key, &stored[ENCRYPTED_RAW_HEADER.len()..]);
    assert_eq!(
        opened.as_deref(),
        Some(payload),
        "the peer cannot decrypt livedict's envelope: different associated data or layout"
    );
    assert_eq!(
        stored.len(),
        ENCRYPTED_RAW_HEADER.len() + peer.seal(key, payload).len(),
        "the peer stores a different number of bytes"
    );
    store.delete(key).expect("livedict delete");
}

// ---- round trips -------------------------------------------------------------------------------------

/// `trips` round trips over `keys`, each a set then a get of the same key through `set`/`get`;
/// counts the reads that returned `len` bytes.
fn roundtrip_run<G: AsRef<[u8]>>(
    keys: &[String],
    trips: usize,
    len: usize,
    set: impl Fn(&str),
    get: impl Fn(&str) -> Option<G>,
) -> Run {
    let start = Instant::now();
    let mut count = 0;
    for i in 0..trips {
        let key = &keys[i % keys.len()];
        set(key);
        let got = black_box(get(key));
        count += u64::from(got.is_some_and(|v| v.as_ref().len() == len));
    }
    Run {
        elapsed: start.elapsed(),
        count,
    }
}

fn roundtrips(cfg: &Config, sizes: &Sizes) {
    let backend = Arc::new(MemoryBackend::new());
    let encrypted = encrypted_store(Arc::clone(&backend));
    let peer = ByHand::new();
    let plain = plain_store();
    check_same_envelope(&backend, &encrypted, &peer);

    for (len, name) in PAYLOADS {
        let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let keys: Vec<String> = (0..roundtrip_keys(len))
            .map(|i| format!("crypto:{name}:{i}"))
            .collect();
        let trips = (sizes.roundtrips)(len);
        let case = format!("roundtrip_{name}");

        // Every side ends with the payload under every key: check it, untimed, after the runs.
        let verify = |side: &str, get: &dyn Fn(&str) -> Option<Vec<u8>>| {
            let bad = keys
                .iter()
                .filter(|k| get(k).as_deref() != Some(&payload[..]))
                .count();
            if bad > 0 {
                println!("# warning: {SUITE}/{case}: {side}: {bad} keys without the payload");
            }
        };
        let livedict_run = || {
            roundtrip_run(
                &keys,
                trips,
                len,
                |k| {
                    encrypted
                        .set_bytes_with(k, &payload, Ttl::Never)
                        .expect("livedict set_bytes_with");
                },
                |k| encrypted.get_bytes(k).expect("livedict get_bytes"),
            )
        };
        let peer_run = || {
            roundtrip_run(
                &keys,
                trips,
                len,
                |k| peer.set(k, &payload),
                |k| peer.get(k),
            )
        };
        let plain_run = || {
            roundtrip_run(
                &keys,
                trips,
                len,
                |k| {
                    plain
                        .set_bytes_with(k, &payload, Ttl::Never)
                        .expect("plain set_bytes_with");
                },
                |k| plain.get_bytes(k).expect("plain get_bytes"),
            )
        };

        // Interleaved: livedict, peer, plain, livedict, peer, plain, ...
        let (mut ours, mut theirs, mut plains) = (Vec::new(), Vec::new(), Vec::new());
        let mut short = Vec::new();
        for _ in 0..cfg.rounds {
            for (side, run, rates) in [
                ("livedict", &livedict_run as &dyn Fn() -> Run, &mut ours),
                (PEER, &peer_run, &mut theirs),
                ("plain", &plain_run, &mut plains),
            ] {
                let r = run();
                if r.count != trips as u64 {
                    short.push(format!(
                        "{side}: {} of {trips} reads returned {len} bytes",
                        r.count
                    ));
                }
                rates.push(ops_per_sec(trips as u64, r.elapsed));
            }
        }
        for w in short {
            println!("# warning: {SUITE}/{case}: {w}");
        }
        verify("livedict", &|k| {
            encrypted
                .get_bytes(k)
                .expect("livedict get_bytes")
                .map(|b| b.to_vec())
        });
        verify(PEER, &|k| peer.get(k));
        verify("plain", &|k| {
            plain
                .get_bytes(k)
                .expect("plain get_bytes")
                .map(|b| b.to_vec())
        });
        print_comparison(SUITE, &case, PEER, median(&mut ours), median(&mut theirs));
        print_figure(
            SUITE,
            &format!("plain_roundtrip_{name}"),
            "ops",
            format!("{:.0}", median(&mut plains)),
            "ops/s",
        );
        for k in &keys {
            encrypted.delete(k).expect("livedict delete");
            peer.store.delete(k).expect("plain delete");
            plain.delete(k).expect("plain delete");
        }
    }
}

// ---- encrypted against plain get/set -------------------------------------------------------------

fn encrypted_vs_plain(cfg: &Config, sizes: &Sizes) {
    let keys: Vec<String> = (0..sizes.keys).map(|i| format!("key:{i}")).collect();
    let value: Vec<u8> = (0..VALUE_LEN as u8).collect();
    let encrypted = encrypted_store(Arc::new(MemoryBackend::new()));
    let plain = plain_store();
    for k in &keys {
        encrypted
            .set_bytes_with(k, &value, Ttl::Never)
            .expect("livedict set_bytes_with");
        plain
            .set_bytes_with(k, &value, Ttl::Never)
            .expect("plain set_bytes_with");
    }
    let order = XorShift::new(11).indices(sizes.keys * sizes.passes, sizes.keys);
    let ops = order.len() as u64;
    let check = |count: u64| (count != ops).then(|| format!("count {count}, expected {ops}"));

    let gets = |store: &LiveDict| {
        let start = Instant::now();
        let mut count = 0;
        for &i in &order {
            let got = black_box(store.get_bytes(&keys[i as usize]).expect("get_bytes"));
            count += u64::from(got.is_some_and(|v| v.len() == VALUE_LEN));
        }
        Run {
            elapsed: start.elapsed(),
            count,
        }
    };
    compare(
        cfg,
        SUITE,
        "get_encrypted_vs_plain",
        "plain",
        ops,
        || gets(&encrypted),
        || gets(&plain),
        check,
    );

    let sets = |store: &LiveDict| {
        let start = Instant::now();
        for &i in &order {
            store
                .set_bytes_with(&keys[i as usize], &value, Ttl::Never)
                .expect("set_bytes_with");
        }
        Run {
            elapsed: start.elapsed(),
            count: ops,
        }
    };
    compare(
        cfg,
        SUITE,
        "set_encrypted_vs_plain",
        "plain",
        ops,
        || sets(&encrypted),
        || sets(&plain),
        check,
    );
    // The writes must have stayed readable (and encrypted values authentic).
    let bad = keys
        .iter()
        .filter(|k| encrypted.get_bytes(k).ok().flatten().as_deref() != Some(&value[..]))
        .count();
    if bad > 0 {
        println!("# warning: {SUITE}/set_encrypted_vs_plain: {bad} keys without the value");
    }
}

// ---- the suite -----------------------------------------------------------------------------------

pub fn run(cfg: &Config) {
    let sizes = Sizes::new(cfg.quick);
    roundtrips(cfg, &sizes);
    encrypted_vs_plain(cfg, &sizes);
}
