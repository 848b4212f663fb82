//! Keeps one malformed request from aborting the broker.
//!
//! The `kafka-protocol` decoders call `Vec::with_capacity(n)` with an array length
//! read from the request before checking it against the bytes present, so a 30-byte
//! frame claiming 2^31 elements asks for hundreds of GiB. The system allocator refuses
//! and Rust aborts the process. Here allocations of 1 GiB and more are served by an
//! `MAP_NORESERVE` anonymous mapping instead: reserving address space always succeeds
//! (except under strict overcommit), the decoder fails on the missing bytes, and the
//! mapping is returned untouched. Smaller allocations go to the system allocator.
//!
//! The broker binary installs it as its global allocator; the request-decoder
//! property test installs it too, so it exercises the same protection.

#![expect(unsafe_code, reason = "a global allocator is unsafe by definition")]

use std::alloc::{GlobalAlloc, Layout, System};

const HUGE: usize = 1 << 30;
const PAGE: usize = 4096;

/// See the module documentation.
pub struct HugeAllocGuard;

fn is_huge(layout: Layout) -> bool {
    layout.size() >= HUGE && layout.align() <= PAGE
}

// SAFETY: every method forwards to `System` except for huge layouts, which are
// always mapped and unmapped here: `dealloc` gets the same layout `alloc` got (the
// GlobalAlloc contract), so both sides take the same branch. mmap returns
// page-aligned (>= the layout's alignment, checked in is_huge), zero-filled memory.
// SAFETY (impl): as above.
unsafe impl GlobalAlloc for HugeAllocGuard {
    // SAFETY: the caller upholds GlobalAlloc::alloc's contract; see the impl comment.
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_huge(layout) {
            map(layout.size())
        } else {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { System.alloc(layout) }
        }
    }

    // SAFETY: the caller upholds GlobalAlloc::alloc_zeroed's contract; see the impl comment.
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_huge(layout) {
            map(layout.size()) // anonymous mappings are zero-filled
        } else {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    // SAFETY: the caller upholds GlobalAlloc::dealloc's contract; see the impl comment.
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_huge(layout) {
            // SAFETY: `ptr` came from `map(layout.size())` (same layout, same branch).
            unsafe { libc::munmap(ptr.cast(), layout.size()) };
        } else {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { System.dealloc(ptr, layout) }
        }
    }
}

/// Reserve address space without committing swap for it where the flag exists
/// (Linux and macOS; FreeBSD dropped it, its anonymous mappings never reserve).
#[cfg(any(target_os = "linux", target_os = "android", target_vendor = "apple"))]
const NORESERVE: libc::c_int = libc::MAP_NORESERVE;
#[cfg(not(any(target_os = "linux", target_os = "android", target_vendor = "apple")))]
const NORESERVE: libc::c_int = 0;

fn map(size: usize) -> *mut u8 {
    // SAFETY: a fresh anonymous private mapping; no existing memory is touched.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        std::ptr::null_mut()
    } else {
        p.cast()
    }
}
