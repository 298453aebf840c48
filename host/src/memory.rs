//! Memory the broker accounts for: a counting global allocator that the server binary
//! installs, and a way to give freed memory back to the system.
//!
//! The memory alarm is based on these live heap bytes, not on the resident set size: an
//! allocator keeps some freed pages mapped, so RSS stays high for a while after a burst has
//! been consumed, and an alarm on RSS would block publishers. Each thread keeps a small local
//! balance and adds it to the shared count in steps, so an allocation costs no shared atomic
//! in the common case.
//!
//! Underneath is mimalloc, not glibc's malloc: a message is mostly allocated on the thread
//! that reads it from a socket and freed on the one that writes it out or settles it, and
//! glibc's arenas pay a lock for every such free (profiles of the transient 1p/1c run showed
//! malloc and free as the largest item); mimalloc frees across threads without a lock, and
//! returns freed pages to the system on its own.

use std::alloc::{GlobalAlloc, Layout};

use mimalloc::MiMalloc as Underlying;
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};

/// How far a thread's balance may drift before it is added to the shared count. The count is
/// short by at most this much per thread.
const FLUSH_BYTES: isize = 256 * 1024;

static ALLOCATED: AtomicIsize = AtomicIsize::new(0);
static INSTALLED: AtomicBool = AtomicBool::new(false);

thread_local! {
    // A const-initialised Cell without Drop: usable from the allocator at any point of a
    // thread's life, never allocates.
    static LOCAL: Cell<isize> = const { Cell::new(0) };
}

fn account(delta: isize) {
    let flushed = LOCAL.try_with(|l| {
        let v = l.get() + delta;
        if v.abs() >= FLUSH_BYTES {
            l.set(0);
            ALLOCATED.fetch_add(v, Ordering::Relaxed);
        } else {
            l.set(v);
        }
    });
    if flushed.is_err() {
        ALLOCATED.fetch_add(delta, Ordering::Relaxed);
    }
}

/// mimalloc, counting live bytes. Installed by `warren-server` with
/// `#[global_allocator]`.
pub struct CountingAllocator;

// SAFETY: every call is forwarded unchanged to mimalloc; the counting has no effect on the
// memory handed out.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is passed on as is.
        let p = unsafe { Underlying.alloc(layout) };
        if !p.is_null() {
            account(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for alloc.
        let p = unsafe { Underlying.alloc_zeroed(layout) };
        if !p.is_null() {
            account(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as for alloc.
        unsafe { Underlying.dealloc(ptr, layout) };
        account(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for alloc.
        let p = unsafe { Underlying.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            account(new_size as isize - layout.size() as isize);
        }
        p
    }
}

impl CountingAllocator {
    /// Marks the allocator as the process's: [`allocated`] answers only then.
    pub fn mark_installed() {
        INSTALLED.store(true, Ordering::Relaxed);
    }
}

/// Live heap bytes, when the counting allocator is the process's global allocator (the
/// server's is; test harnesses and other binaries linking the library may not have it).
pub fn allocated() -> Option<u64> {
    INSTALLED
        .load(Ordering::Relaxed)
        .then(|| ALLOCATED.load(Ordering::Relaxed).max(0) as u64)
}

/// Returns freed heap pages to the system, so that RSS follows the live heap down after a
/// burst: mimalloc's forced collection (it purges freed pages on its own after a delay; this
/// also takes what threads that ended left behind), and glibc's malloc_trim for anything
/// allocated before mimalloc was in place or by C code. Walks the heap: call it from a
/// blocking thread, rarely.
pub fn give_back() {
    // SAFETY: both only release free memory of the allocators' own heaps.
    unsafe {
        libmimalloc_sys::mi_collect(true);
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balances_flush_in_steps_and_stay_close() {
        let before = ALLOCATED.load(Ordering::Relaxed);
        for _ in 0..10 {
            account(FLUSH_BYTES / 4);
        }
        let after = ALLOCATED.load(Ordering::Relaxed);
        // 10 quarters: two flushes of at least a whole step reached the shared count.
        assert!(after - before >= 2 * FLUSH_BYTES, "{before} -> {after}");
        for _ in 0..10 {
            account(-(FLUSH_BYTES / 4));
        }
        let back = ALLOCATED.load(Ordering::Relaxed);
        assert!((back - before).abs() < FLUSH_BYTES, "{before} -> {back}");
    }
}
