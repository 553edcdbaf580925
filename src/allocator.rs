//! The global allocator of ringd's binaries and benchmarks: mimalloc, entered the way Rust's
//! own `System` allocator enters malloc.
//!
//! The `mimalloc` crate's `MiMalloc` hands every request to `mi_malloc_aligned`, at alignment 1
//! or 8 too. mimalloc 3 serves such a request from its fast path only while the size's page has
//! a free block at hand (after a free it usually has not: frees go to a second list that only
//! the generic path collects); its generic aligned path then takes plain malloc only for sizes
//! that round up to a power of two, and over-allocates `size + align - 1` for any other size,
//! marking the page as holding interior pointers. A point get of the store (three small `Vec`s)
//! spent about 250 instructions of its 2,600 there (callgrind, `benches/mvcc.rs`'s point get).
//! Every mimalloc block is aligned to at least a machine word, so a request aligned to at most
//! that goes to `mi_malloc` (as `System` sends an alignment up to 16 to glibc's malloc).

use core::alloc::{GlobalAlloc, Layout};
use core::ffi::c_void;

use libmimalloc_sys as mi;

/// The alignment every mimalloc block has (its size classes are multiples of a word).
const WORD_BYTES: usize = core::mem::size_of::<usize>();

pub struct Allocator;

fn plain(layout: Layout) -> bool {
    layout.align() <= WORD_BYTES && layout.align() <= layout.size()
}

/// A block for `layout` from `plain_entry` (size) when word alignment covers it, else from
/// `aligned_entry` (size, alignment).
///
/// # Safety
/// As `GlobalAlloc::alloc`: `layout` has a nonzero size.
#[inline]
unsafe fn allocate(
    layout: Layout,
    plain_entry: unsafe extern "C" fn(usize) -> *mut c_void,
    aligned_entry: unsafe extern "C" fn(usize, usize) -> *mut c_void,
) -> *mut u8 {
    let block = if plain(layout) {
        unsafe { plain_entry(layout.size()) }
    } else {
        unsafe { aligned_entry(layout.size(), layout.align()) }
    };
    debug_assert!((block as usize).is_multiple_of(layout.align()));
    block.cast()
}

// SAFETY: every path returns a block of at least `layout.size()` bytes aligned to
// `layout.align()` (mimalloc's word alignment covers the plain path, the aligned entry points
// the rest) or null, and frees with mimalloc what mimalloc allocated.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe { allocate(layout, mi::mi_malloc, mi::mi_malloc_aligned) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        unsafe { allocate(layout, mi::mi_zalloc, mi::mi_zalloc_aligned) }
    }

    #[inline]
    unsafe fn dealloc(&self, block: *mut u8, _layout: Layout) {
        unsafe { mi::mi_free(block.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if plain(new_layout) {
            unsafe { mi::mi_realloc(block.cast::<c_void>(), new_size) }.cast()
        } else {
            unsafe { mi::mi_realloc_aligned(block.cast::<c_void>(), new_size, layout.align()) }.cast()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sizes around the word and the small size classes, at every alignment up to a page: the
    /// block is aligned, holds its bytes, and survives growing and shrinking.
    #[test]
    fn blocks_are_aligned_and_keep_their_bytes_through_realloc() {
        for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
            for size in [1, 7, 8, 9, 24, 40, 320, 1000, 4096, 70_000] {
                let layout = Layout::from_size_align(size, align).unwrap();
                unsafe {
                    let block = Allocator.alloc(layout);
                    assert!(!block.is_null() && (block as usize).is_multiple_of(align), "{size} at {align}");
                    core::ptr::write_bytes(block, 0xA5, size);
                    let grown = Allocator.realloc(block, layout, size * 3);
                    assert!((grown as usize).is_multiple_of(align), "grown {size} at {align}");
                    assert!((0..size).all(|at| *grown.add(at) == 0xA5));
                    let shrunk =
                        Allocator.realloc(grown, Layout::from_size_align(size * 3, align).unwrap(), size.div_ceil(2));
                    assert!((shrunk as usize).is_multiple_of(align), "shrunk {size} at {align}");
                    assert!((0..size.div_ceil(2)).all(|at| *shrunk.add(at) == 0xA5));
                    Allocator.dealloc(shrunk, Layout::from_size_align(size.div_ceil(2), align).unwrap());
                    let zeroed = Allocator.alloc_zeroed(layout);
                    assert!((zeroed as usize).is_multiple_of(align) && (0..size).all(|at| *zeroed.add(at) == 0));
                    Allocator.dealloc(zeroed, layout);
                }
            }
        }
    }
}
