//! A counting global allocator: forwards every call to the underlying allocator
//! ([`System`](std::alloc::System), or mimalloc with the `mimalloc` feature) and, while counting is
//! switched on, keeps the number of live heap bytes (bytes requested, not the allocator's rounding or
//! bookkeeping), so a suite can measure what a store holds per entry.
//!
//! Counting is off by default so that the throughput cases pay one relaxed load per allocation and
//! no shared counter (which would make 2-thread cases contend on one cache line).

// The only unsafe code of the crate: implementing `GlobalAlloc` is an unsafe trait impl.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering::Relaxed};

/// The allocator every call goes to.
#[cfg(not(feature = "mimalloc"))]
const UNDERLYING: std::alloc::System = std::alloc::System;
#[cfg(feature = "mimalloc")]
const UNDERLYING: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The name of the underlying allocator, for the machine line.
pub const ALLOCATOR: &str = if cfg!(feature = "mimalloc") {
    "mimalloc"
} else {
    "system (glibc)"
};

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

// SAFETY: every method forwards to `UNDERLYING` with the caller's arguments unchanged and returns
// what it returned, so `Counting` upholds exactly the contract the underlying allocator does. The
// bookkeeping only touches atomics in statics and never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds `GlobalAlloc::alloc`'s contract.
        let p = unsafe { UNDERLYING.alloc(layout) };
        if !p.is_null() {
            note(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`.
        let p = unsafe { UNDERLYING.alloc_zeroed(layout) };
        if !p.is_null() {
            note(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, i.e. from `UNDERLYING`, with `layout`.
        unsafe { UNDERLYING.dealloc(ptr, layout) };
        note(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from `UNDERLYING` with `layout`; the caller upholds `realloc`'s contract.
        let p = unsafe { UNDERLYING.realloc(ptr, layout, new_size) };
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
