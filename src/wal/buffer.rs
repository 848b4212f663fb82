//! Block-aligned byte buffers for O_DIRECT writes. No I/O.
#![expect(
    unsafe_code,
    reason = "aligned allocation for O_DIRECT needs the raw allocator"
)]

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;

use super::format::{align_up, BLOCK_SIZE};

/// A heap buffer whose start and capacity are multiples of [`BLOCK_SIZE`].
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    cap: usize,
    /// Index of this buffer in the io_uring registered-buffer table, if registered.
    #[cfg_attr(
        not(target_os = "linux"),
        allow(dead_code, reason = "read by the io_uring backend only")
    )]
    pub(crate) index: Option<u16>,
}

// SAFETY: AlignedBuf uniquely owns its allocation (like Vec<u8>); nothing aliases it,
// so moving it to another thread is sound.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    /// Allocates a zeroed buffer of at least `cap` bytes (rounded up to the block size).
    ///
    /// # Panics
    /// On allocation failure (like `Vec`), or when `cap` rounded up to the block
    /// size overflows.
    pub fn new(cap: usize) -> Self {
        // Checked: a wrapped `align_up` would make a zero-sized layout below.
        assert!(
            cap <= usize::MAX - BLOCK_SIZE,
            "buffer size {cap} overflows when rounded up to the block size"
        );
        let cap = align_up(cap.max(1));
        let layout =
            Layout::from_size_align(cap, BLOCK_SIZE).expect("buffer size overflows Layout");
        // SAFETY: layout has a non-zero size (cap >= BLOCK_SIZE after align_up of >= 1).
        let raw = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        AlignedBuf {
            ptr,
            cap,
            index: None,
        }
    }

    /// Capacity in bytes (a multiple of [`BLOCK_SIZE`]).
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Start of the allocation, for handing to the kernel.
    #[cfg_attr(
        not(target_os = "linux"),
        allow(dead_code, reason = "used by the io_uring backend only")
    )]
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// The whole buffer.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is a live allocation of cap initialised (zeroed) bytes owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.cap) }
    }

    /// The whole buffer, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in as_slice, and &mut self guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.cap) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout =
            Layout::from_size_align(self.cap, BLOCK_SIZE).expect("layout was valid at allocation");
        // SAFETY: ptr was allocated in new() with exactly this layout and is freed once.
        unsafe { dealloc(self.ptr.as_ptr(), layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_zeroed() {
        for size in [1, 4095, 4096, 4097, 1 << 20] {
            let b = AlignedBuf::new(size);
            assert_eq!(b.as_ptr() as usize % BLOCK_SIZE, 0);
            assert_eq!(b.capacity() % BLOCK_SIZE, 0);
            assert!(b.capacity() >= size);
            assert!(b.as_slice().iter().all(|&x| x == 0));
        }
    }
}
