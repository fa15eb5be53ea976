//! Detects a store used from inside one of its own update closures.
//!
//! Backends run update closures while holding the key (a shard lock, a SQLite transaction); a call
//! back into the same backend from there, through the same store or another store sharing the
//! backend, would deadlock or break atomicity. Each thread keeps the ids of the backends whose
//! closures it is running, and every operation checks it first. The fast path reads one
//! thread-local counter without a destructor (no lazy registration, no borrow flag): how many
//! closures the thread is inside, almost always zero.

use std::cell::{Cell, RefCell};

use crate::error::{Error, Result};

thread_local! {
    /// The length of `RUNNING`, readable without touching it.
    static DEPTH: Cell<usize> = const { Cell::new(0) };
    static RUNNING: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

/// `Err(Error::Reentrant)` if this thread is inside a closure of store `id`.
#[inline]
pub(crate) fn check(id: u64) -> Result<()> {
    if DEPTH.get() == 0 {
        return Ok(());
    }
    check_running(id)
}

#[cold]
fn check_running(id: u64) -> Result<()> {
    if RUNNING.with_borrow(|running| running.contains(&id)) {
        Err(Error::Reentrant)
    } else {
        Ok(())
    }
}

/// Marks this thread as running a closure of store `id` until dropped (also on unwind).
pub(crate) struct Guard(u64);

impl Guard {
    pub(crate) fn enter(id: u64) -> Guard {
        RUNNING.with_borrow_mut(|running| {
            running.push(id);
            DEPTH.set(running.len());
        });
        Guard(id)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        RUNNING.with_borrow_mut(|running| {
            if let Some(i) = running.iter().rposition(|&id| id == self.0) {
                running.remove(i);
            }
            DEPTH.set(running.len());
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_guards_for_different_stores() {
        check(1).unwrap();
        {
            let _a = Guard::enter(1);
            assert!(matches!(check(1), Err(Error::Reentrant)));
            check(2).unwrap();
            {
                let _b = Guard::enter(2);
                assert!(check(2).is_err());
            }
            check(2).unwrap();
        }
        check(1).unwrap();
    }

    #[test]
    fn guard_is_released_on_panic() {
        let r = std::panic::catch_unwind(|| {
            let _g = Guard::enter(7);
            panic!("boom");
        });
        assert!(r.is_err());
        check(7).unwrap();
    }
}
