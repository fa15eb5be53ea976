//! Named locks with leases and fencing tokens, for one process.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::clock::Millis;

/// The locks of a memory backend. A released or expired lock leaves nothing behind; fencing
/// tokens come from one counter, so they grow with every acquisition of every lock.
#[derive(Debug, Default)]
pub(crate) struct Locks {
    held: Mutex<HashMap<String, Held>>,
    fence: AtomicU64,
}

#[derive(Debug)]
struct Held {
    owner: String,
    expires: Millis,
}

impl Locks {
    pub(crate) fn try_lock(
        &self,
        name: &str,
        owner: &str,
        lease: Millis,
        now: Millis,
    ) -> Option<u64> {
        let mut held = self.held.lock();
        if held.get(name).is_some_and(|h| h.expires > now) {
            return None;
        }
        held.insert(
            name.to_owned(),
            Held {
                owner: owner.to_owned(),
                expires: now.saturating_add(lease),
            },
        );
        Some(self.fence.fetch_add(1, Ordering::Relaxed) + 1)
    }

    pub(crate) fn unlock(&self, name: &str, owner: &str, now: Millis) -> bool {
        let mut held = self.held.lock();
        match held.get(name) {
            Some(h) if h.owner == owner => {
                let live = h.expires > now;
                held.remove(name);
                live
            }
            _ => false,
        }
    }
}
