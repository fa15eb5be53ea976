//! # livedict
//!
//! A living dictionary: a key-value store whose values expire on time, with the dictionary API of
//! Python's `dict`, the atomic operations of Redis, and one contract over several backends.
//!
//! - **Time to live**: per-write or store-wide default TTLs, fixed or sliding ("active"), with
//!   millisecond resolution; an entry is invisible from the instant of its deadline, and a
//!   background driver removes expired entries without any read touching them.
//! - **The whole dict protocol**: `get`/`require`/`get_or`, `set`, `delete`, `contains`, `len`,
//!   `keys`/`values`/`items`/`iter`, `set_many`/`get_many`, `setdefault`, `pop`, `popitem`,
//!   `clear`, partial updates of map-shaped values (`merge`).
//! - **Atomic read-modify-write**: `update(key, |old| new)` and `incr`, linearizable per key, the
//!   closure run exactly once; `replace` returns the true previous value; all-or-nothing batches.
//! - **Typed values** through serde, encoded as JSON (default) or MessagePack (feature
//!   `msgpack`), behind a small self-describing header; raw bytes too.
//! - **Backends** behind one small byte-level trait, [`Backend`]: [`MemoryBackend`] (default) and
//!   `SqliteBackend` (feature `sqlite`: one file, persistent, shared by processes) and
//!   `RedisBackend` (feature `redis`: a server or a cluster, shared by processes and hosts).
//! - **Events**: hooks per event kind or per entry, run on background workers with timeouts,
//!   isolation and per-key order; external programs as hooks, under resource limits.
//! - **Encryption at rest** with a rotating [`Keyring`] (AES-256-GCM bound to the key name),
//!   secret values and password keys (argon2id).
//! - **Sync and async**: [`LiveDict`] and, with the `async` feature, `AsyncLiveDict` (tokio),
//!   with the same method names; every operation is written once for both.
//! - **Namespaces and access control**: handles bound to a key prefix with parameters
//!   ([`Namespace`], typed [`Key`]s), an access policy per operation, locks with fencing tokens
//!   that hold across processes ([`LockGuard`]), and `get_or_compute` that computes once.
//! - **Testable time**: give the store a [`ManualClock`] and TTL tests need no sleeps.
//!
//! ## Cargo features
//! - `msgpack`: the MessagePack codec (`Codec::MessagePack`).
//! - `sqlite`: the SQLite backend (`SqliteBackend`), SQLite compiled in.
//! - `redis`: the Redis backend (`RedisBackend`), over redis-rs (single server or cluster).
//! - `async`: the async front-end (`AsyncLiveDict`, tokio), with native async I/O for Redis.
//! - `full`: every feature.
//!
//! ## Example
//! ```
//! use std::time::Duration;
//! use livedict::{Clock, KeyTtl, LiveDict, ManualClock, WriteOptions};
//!
//! let clock = ManualClock::new();
//! let store = LiveDict::builder()
//!     .clock(Clock::Manual(clock.clone()))
//!     .default_ttl(Duration::from_secs(60))
//!     .build()?;
//!
//! store.set("user:1", &serde_json::json!({"name": "ann"}))?;
//! store.set_with("session", &"abc", WriteOptions::ttl(Duration::from_secs(10)).sliding(true))?;
//! assert_eq!(store.incr("hits", 5)?, 5);
//!
//! clock.advance(Duration::from_secs(9));
//! assert!(store.get::<String>("session")?.is_some()); // a read renews the sliding TTL
//! clock.advance(Duration::from_secs(9));
//! assert!(store.contains("session")?);
//! clock.advance(Duration::from_secs(10));
//! assert!(!store.contains("session")?);                // 10 s without a read: gone
//!
//! assert!(matches!(store.ttl("hits")?, KeyTtl::Remaining(_)));
//! assert_eq!(store.stats().hits, 1);
//! # Ok::<(), livedict::Error>(())
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]
#![doc(html_no_source)]

mod access;
pub mod backend;
mod batch;
mod builder;
mod clock;
mod codec;
pub mod crypto;
mod dict;
mod engine;
mod error;
pub mod events;
mod expiry;
#[cfg(feature = "async")]
mod future;
mod key;
mod lock;
mod namespace;
mod stats;
mod sync;
mod transfer;
mod ttl;

pub use access::Operation;
pub use backend::memory::MemoryBackend;
#[cfg(feature = "redis")]
pub use backend::redis::{RedisBackend, RedisOptions};
#[cfg(feature = "sqlite")]
pub use backend::sqlite::{Durability, SqliteBackend, SqliteOptions};
pub use backend::{Backend, KeyTtl};
pub use batch::Batch;
pub use builder::Builder;
pub use clock::{Clock, ManualClock, Millis, Now};
pub use codec::Codec;
pub use crypto::Keyring;
pub use engine::DEFAULT_MAX_VALUE_SIZE;
pub use error::{BoxError, Error, Result};
pub use events::{
    Cause, CommandHook, Event, EventKind, EventSettings, Hook, HookId, HookResult, QueueFullPolicy,
};
#[cfg(feature = "async")]
#[cfg_attr(docsrs, doc(cfg(feature = "async")))]
pub use future::{AsyncLiveDict, WeakAsyncLiveDict};
pub use key::MAX_KEY_LEN;
#[cfg(feature = "async")]
pub use lock::AsyncLockGuard;
pub use lock::{DEFAULT_LOCK_LEASE, LockGuard};
pub use namespace::{Key, KeyInfo, KeyKind, Namespace, NamespaceInfo};
pub use stats::Stats;
pub use sync::{LiveDict, WeakLiveDict};
pub use ttl::{MAX_TTL, Ttl, WriteOptions};

/// Shared buffer type of raw values ([`LiveDict::get_bytes`]), re-exported from `bytes`.
pub use bytes::Bytes;

#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
