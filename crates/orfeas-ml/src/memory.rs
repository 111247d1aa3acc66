//! How the process's heap treats the models' large activations.
//!
//! A 512² SD-Turbo step allocates and frees tens of gigabytes of activations (a
//! 128-channel 512² map is 128 MB). glibc serves every block over its mmap
//! threshold (at most 32 MB) with a fresh `mmap` and unmaps it on free, so each
//! use is paid again in 4 KiB page faults and the kernel's page zeroing: about
//! 3.7 million faults per step, 11 % of the step's profile
//! (`docs/benchmarks.md`). [`keep_freed_memory`] makes glibc serve large blocks
//! from its heap and keep what is freed there for the next block, and
//! [`release_freed_memory`] hands the free part back when a job ends, so an
//! idle process holds only what is alive.
//!
//! The heap's pages still have to be mapped in once: the weights at load (5 GB
//! for SD-Turbo) and the activations on the first call, as 4 KiB page faults, a
//! few microseconds each on a VM (150,000 of them in SD-Turbo's first 512² call,
//! 1–1.5 s on the 2-core VM of `docs/benchmarks.md`). [`HugePageHeap`], the
//! binaries' global allocator, asks Linux for transparent huge pages under every
//! large block, so those pages come 2 MiB at a time.
//!
//! Elsewhere (other C libraries, other systems) these are no-ops and
//! [`HugePageHeap`] is the system allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, Ordering};

/// Heap top padding: the heap grows this much beyond a request (untouched
/// pages cost no memory) so growing it is rare.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TOP_PAD: libc::c_int = 64 << 20;

/// Serves large blocks from the heap and keeps freed memory for reuse (call
/// once, at the start of `main`, before the models load). Returns whether the
/// C library took the settings.
#[allow(unsafe_code)]
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes glibc's allocation parameters (under
        // its own arena locks) and takes plain integers.
        unsafe {
            libc::mallopt(libc::M_MMAP_MAX, 0) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX) == 1
                && libc::mallopt(libc::M_TOP_PAD, TOP_PAD) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}

/// Returns the heap's free pages to the system (after a job: the activations
/// are gone, the weights stay).
#[allow(unsafe_code)]
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only gives free heap pages back; no pointer is involved.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Blocks from this size up get transparent huge pages: a weight matrix or an
/// activation map, not the small allocations between them.
pub const HUGE_PAGE_MIN_BLOCK: usize = 4 << 20;

/// Whether [`HugePageHeap`] advises (set by [`huge_pages_from_env`]).
static HUGE_PAGES: AtomicBool = AtomicBool::new(true);

/// Turns [`HugePageHeap`]'s advice off when `ORFEAS_HUGE_PAGES=0` (to measure
/// without it, or where the kernel's compaction for huge pages stalls); call
/// at the start of `main`. Returns whether the advice is on.
pub fn huge_pages_from_env() -> bool {
    let on = std::env::var_os("ORFEAS_HUGE_PAGES").is_none_or(|v| v != "0");
    HUGE_PAGES.store(on, Ordering::Relaxed);
    on
}

/// The size of a transparent huge page on x86_64 and (4 KiB-page) aarch64.
const HUGE_PAGE: usize = 2 << 20;

/// The system allocator, with `madvise(MADV_HUGEPAGE)` over the whole 2 MiB
/// pages inside every block of at least [`HUGE_PAGE_MIN_BLOCK`], on Linux.
/// Where transparent huge pages are `madvise` (Debian's and Ubuntu's default)
/// the block's untouched pages are then mapped 2 MiB at a time: 512 times fewer
/// page faults when the weights load and when a first call grows the heap
/// (`docs/benchmarks.md`). Where they are `always` this changes nothing, where
/// `never` the advice is ignored. Declare it in a binary:
///
/// ```ignore
/// #[global_allocator]
/// static HEAP: orfeas_ml::memory::HugePageHeap = orfeas_ml::memory::HugePageHeap;
/// ```
pub struct HugePageHeap;

// SAFETY: every method hands the layout to `System` unchanged and returns what
// it returns; the advice only changes how the kernel backs pages of a block the
// caller now owns, never their contents or its size.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for HugePageHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc`, passed on.
        let p = unsafe { System.alloc(layout) };
        advise_huge_pages(p, layout.size());
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as above. calloc leaves fresh heap untouched (it is zero
        // already), so those pages still fault in after the advice.
        let p = unsafe { System.alloc_zeroed(layout) };
        advise_huge_pages(p, layout.size());
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` with this layout (every method above).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as `dealloc`; the caller's contract for `realloc`, passed on.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        advise_huge_pages(p, new_size);
        p
    }
}

/// `madvise(MADV_HUGEPAGE)` over the whole huge pages inside `[p, p + len)`,
/// for a block of at least [`HUGE_PAGE_MIN_BLOCK`]; nothing for a null `p`.
fn advise_huge_pages(p: *mut u8, len: usize) {
    if p.is_null() || len < HUGE_PAGE_MIN_BLOCK || !HUGE_PAGES.load(Ordering::Relaxed) {
        return;
    }
    let start = (p as usize).next_multiple_of(HUGE_PAGE);
    let end = (p as usize + len) / HUGE_PAGE * HUGE_PAGE;
    if end <= start {
        return;
    }
    #[cfg(target_os = "linux")]
    // SAFETY: `[start, end)` lies inside the block just allocated, which the
    // caller owns; MADV_HUGEPAGE changes how its pages are backed, not their
    // contents. A failure (no THP support) leaves the block as it was.
    #[allow(unsafe_code)]
    unsafe {
        libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
    }
}
