//! A counting global allocator: forwards every call to [`System`] and, while counting is switched
//! on, keeps the number of live heap bytes (bytes requested, not the allocator's rounding or
//! bookkeeping), so a suite can measure what a store holds per entry.
//!
//! Counting is off by default so that the throughput cases pay one relaxed load per allocation and
//! no shared counter (which would make 2-thread cases contend on one cache line).

// The only unsafe code of the crate: implementing `GlobalAlloc` is an unsafe trait impl.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering::Relaxed};

static ENABLED: AtomicBool = AtomicBool::new(false);
static LIVE: AtomicIsize = AtomicIsize::new(0);

struct Counting;

#[global_allocator]
static GLOBAL: Counting = Counting;

#[inline]
fn note(delta: isize) {
    if ENABLED.load(Relaxed) {
        LIVE.fetch_add(delta, Relaxed);
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged and returns what
// `System` returned, so `Counting` upholds exactly the contract `System` does. The bookkeeping
// only touches atomics in statics and never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds `GlobalAlloc::alloc`'s contract.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            note(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            note(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, i.e. from `System`, with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        note(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from `System` with `layout`; the caller upholds `realloc`'s contract.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            note(new_size as isize - layout.size() as isize);
        }
        p
    }
}

/// Runs `f` with counting on and returns its result. Measure with [`live_bytes`] inside `f`, and
/// free inside `f` only what was allocated inside it (memory allocated before counting started
/// and freed while counting would be subtracted).
pub fn counting<R>(f: impl FnOnce() -> R) -> R {
    ENABLED.store(true, Relaxed);
    let r = f();
    ENABLED.store(false, Relaxed);
    r
}

/// Live heap bytes allocated while counting was on (a difference of two readings is meaningful,
/// not the absolute value).
pub fn live_bytes() -> isize {
    LIVE.load(Relaxed)
}
