//! The in-memory peers of livedict's memory benchmark, `moka::sync::Cache` and
//! `quick_cache::sync::Cache`, behind non-generic functions that are never inlined, so that the
//! peers' code is compiled here, in a crate where nothing of livedict's is.
//!
//! Why a crate of its own: a generic cache is compiled in the crate that names its type. In the
//! benchmark's crate, how moka's `get` was split into code-generation units and inlined depended
//! on the rest of that crate, livedict's inlined code included: a change to livedict's clock
//! (no change to moka, nor to how the benchmark calls it) moved moka's `get` from ~1.0 M to
//! ~0.7 M a second, and with it every ratio against moka's reads. Here, a change to livedict
//! changes nothing that is compiled. The cost is one direct call per operation on the peer's
//! side, a nanosecond against its ~1 µs `get`.

use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A wrapper around `moka::sync::Cache<String, $value>` with a time to live, whose methods
/// are compiled here (see the crate's documentation).
macro_rules! moka_cache {
    ($(#[$doc:meta])* $name:ident, $value:ty) => {
        $(#[$doc])*
        pub struct $name {
            cache: moka::sync::Cache<String, $value>,
        }

        impl $name {
            /// A cache of at most `max_capacity` entries, each living `ttl`.
            #[inline(never)]
            pub fn new(max_capacity: u64, ttl: Duration) -> Self {
                $name {
                    cache: moka::sync::Cache::builder()
                        .max_capacity(max_capacity)
                        .time_to_live(ttl)
                        .build(),
                }
            }

            /// The value under `key`, if any.
            #[inline(never)]
            pub fn get(&self, key: &str) -> Option<$value> {
                self.cache.get(key)
            }

            /// Stores `value` under `key`.
            #[inline(never)]
            pub fn insert(&self, key: String, value: $value) {
                self.cache.insert(key, value);
            }

            /// Applies moka's pending bookkeeping (so that `entry_count` is exact).
            #[inline(never)]
            pub fn run_pending_tasks(&self) {
                self.cache.run_pending_tasks();
            }

            /// The number of entries (exact after `run_pending_tasks`).
            #[inline(never)]
            pub fn entry_count(&self) -> u64 {
                self.cache.entry_count()
            }
        }
    };
}

moka_cache!(
    /// `moka::sync::Cache<String, Bytes>` with a time to live.
    MokaBytes,
    Bytes
);

/// The typed value of the memory suite's `typed_get` and `typed_set`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// A number.
    pub id: u64,
    /// A name (one allocation per clone).
    pub name: String,
    /// A float.
    pub score: f64,
}

moka_cache!(
    /// `moka::sync::Cache<String, Item>` with a time to live: moka holding the struct itself.
    MokaItems,
    Item
);

/// `quick_cache::sync::Cache<String, Bytes>` (no time to live).
pub struct QuickBytes {
    cache: quick_cache::sync::Cache<String, Bytes>,
}

impl QuickBytes {
    /// A cache of at most `capacity` entries.
    #[inline(never)]
    pub fn new(capacity: usize) -> Self {
        QuickBytes {
            cache: quick_cache::sync::Cache::new(capacity),
        }
    }

    /// The value under `key`, if any.
    #[inline(never)]
    pub fn get(&self, key: &str) -> Option<Bytes> {
        self.cache.get(key)
    }

    /// Stores `value` under `key`.
    #[inline(never)]
    pub fn insert(&self, key: String, value: Bytes) {
        self.cache.insert(key, value);
    }
}
