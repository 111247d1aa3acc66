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
//! Weights need not be copied at all: on the CPU a weight file is mapped
//! ([`MappedFile`]) and its `f32` tensors are `Vec`s over the file's cached
//! pages, which [`HugePageHeap`] knows when they are freed. Loading SD-Turbo's
//! 4.9 GB then takes 0.6 s instead of 4–26 s.
//!
//! Elsewhere (other C libraries, other systems) these are no-ops,
//! [`HugePageHeap`] is the system allocator and weights are read.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

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

/// Turns [`HugePageHeap`]'s advice and [`MappedFile`] off when
/// `ORFEAS_HUGE_PAGES=0` (to measure without them, or where the kernel's
/// compaction for huge pages stalls); call at the start of `main`. Returns
/// whether they are on.
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
/// ```
/// #[global_allocator]
/// static HEAP: orfeas_ml::memory::HugePageHeap = orfeas_ml::memory::HugePageHeap;
/// # fn main() {
/// #     assert!(orfeas_ml::memory::is_global_allocator());
/// # }
/// ```
pub struct HugePageHeap;

// SAFETY: every method hands the layout to `System` unchanged and returns what
// it returns; the advice only changes how the kernel backs pages of a block the
// caller now owns, never their contents or its size. The one exception: a block
// that lies in a file mapped by [`MappedFile`] was never `System`'s, and freeing
// it releases its share of that mapping instead.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for HugePageHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if PROBING.load(Ordering::Relaxed) {
            PROBED.fetch_add(1, Ordering::Relaxed);
        }
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
        if release_mapped(ptr) {
            return;
        }
        // SAFETY: `ptr` came from `System` with this layout (every method above).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if let Some(mapping) = mapping_of(ptr) {
            // A block over a mapped file moves to the heap.
            // SAFETY: `new_size` with the old alignment is the caller's valid layout.
            let new =
                unsafe { self.alloc(Layout::from_size_align_unchecked(new_size, layout.align())) };
            if !new.is_null() {
                // SAFETY: both blocks hold at least the smaller size and do not overlap.
                unsafe { std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size)) };
                release(mapping);
            }
            return new;
        }
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

/// Set while [`is_global_allocator`] allocates; [`HugePageHeap::alloc`] then counts
/// into [`PROBED`].
static PROBING: AtomicBool = AtomicBool::new(false);
static PROBED: AtomicUsize = AtomicUsize::new(0);

/// Whether [`HugePageHeap`] is this process's global allocator: only then can a
/// `Vec` live over a [`MappedFile`] (freeing it anywhere else would hand the
/// mapping to `free`).
pub fn is_global_allocator() -> bool {
    static ANSWER: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ANSWER.get_or_init(|| {
        PROBING.store(true, Ordering::SeqCst);
        let before = PROBED.load(Ordering::SeqCst);
        drop(std::hint::black_box(Box::new(0u64)));
        let after = PROBED.load(Ordering::SeqCst);
        PROBING.store(false, Ordering::SeqCst);
        after > before
    })
}

/// Mapped files at once (each model component's weight file is one).
const MAPPINGS: usize = 64;

/// One mapped file: its address range and how many holders it has (the
/// [`MappedFile`] and each `Vec` over it); a free slot has `start == 0`.
struct Mapping {
    start: AtomicUsize,
    end: AtomicUsize,
    holders: AtomicUsize,
}

static SLOTS: [Mapping; MAPPINGS] = [const {
    Mapping {
        start: AtomicUsize::new(0),
        end: AtomicUsize::new(0),
        holders: AtomicUsize::new(0),
    }
}; MAPPINGS];
/// Slots in use: 0 lets every `dealloc` skip the search.
static MAPPED: AtomicUsize = AtomicUsize::new(0);
/// One past the highest slot ever claimed: the search stops there.
static CLAIMED: AtomicUsize = AtomicUsize::new(0);

/// The slot of the mapping `p` lies in.
fn mapping_of(p: *mut u8) -> Option<&'static Mapping> {
    if MAPPED.load(Ordering::Acquire) == 0 {
        return None;
    }
    let p = p as usize;
    SLOTS[..CLAIMED.load(Ordering::Acquire)].iter().find(|m| {
        let start = m.start.load(Ordering::Acquire);
        start != 0 && start <= p && p < m.end.load(Ordering::Acquire)
    })
}

/// Drops one holder of the mapping `p` lies in, unmapping it with the last;
/// false when `p` is in no mapping.
fn release_mapped(p: *mut u8) -> bool {
    let Some(m) = mapping_of(p) else {
        return false;
    };
    release(m);
    true
}

fn release(m: &Mapping) {
    if m.holders.fetch_sub(1, Ordering::AcqRel) != 1 {
        return;
    }
    let (start, end) = (
        m.start.load(Ordering::Acquire),
        m.end.load(Ordering::Acquire),
    );
    // The slot is cleared before the range is unmapped: a later mapping at the
    // same address must not be mistaken for this one.
    m.end.store(0, Ordering::Release);
    m.start.store(0, Ordering::Release);
    MAPPED.fetch_sub(1, Ordering::AcqRel);
    #[cfg(target_os = "linux")]
    // SAFETY: `[start, end)` is the range `MappedFile::map` mapped, and its last
    // holder is gone: nothing reads it any more.
    #[allow(unsafe_code)]
    unsafe {
        libc::munmap(start as *mut libc::c_void, end - start);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (start, end);
}

/// A weight file mapped into memory (private, copy-on-write), whose `f32`
/// tensors become `Vec`s over the file's pages without a copy
/// ([`MappedFile::vec_f32`]). Loading a model then costs mapping the file's
/// cached pages, not copying every byte into freshly faulted memory; the
/// mapping goes when the last `Vec` over it and this handle are dropped.
///
/// Only where [`HugePageHeap`] is the global allocator (it recognises those
/// `Vec`s when they are freed) and on Linux; [`MappedFile::map`] says `None`
/// elsewhere, and the caller reads the file instead.
pub struct MappedFile {
    slot: &'static Mapping,
    len: usize,
}

impl MappedFile {
    /// Maps the first `len` bytes of `file` (its length, checked by the
    /// caller) and maps its pages in now, so the first use does not fault.
    /// `None` where mapping is not possible here (see the type's doc) or fails,
    /// or every slot is taken.
    pub fn map(file: &std::fs::File, len: usize) -> Option<Self> {
        if len == 0 || !is_global_allocator() || !HUGE_PAGES.load(Ordering::Relaxed) {
            return None;
        }
        Self::map_file(file, len)
    }

    #[cfg(target_os = "linux")]
    fn map_file(file: &std::fs::File, len: usize) -> Option<Self> {
        use std::os::fd::AsRawFd;
        // SAFETY: a fresh private mapping of an open file at an address the
        // kernel picks; nothing else refers to it yet.
        #[allow(unsafe_code)]
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return None;
        }
        // SAFETY: the mapping just made. Starts reading a file that is not
        // cached yet ahead of the page walk below; only a hint.
        #[allow(unsafe_code)]
        unsafe {
            libc::madvise(base, len, libc::MADV_WILLNEED);
        }
        let start = base as usize;
        let Some((index, slot)) = SLOTS.iter().enumerate().find(|(_, m)| {
            m.start
                .compare_exchange(0, usize::MAX, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        }) else {
            // SAFETY: the mapping just made, never handed out.
            #[allow(unsafe_code)]
            unsafe {
                libc::munmap(base, len);
            }
            return None;
        };
        slot.holders.store(1, Ordering::Release);
        slot.end.store(start + len, Ordering::Release);
        slot.start.store(start, Ordering::Release);
        CLAIMED.fetch_max(index + 1, Ordering::AcqRel);
        MAPPED.fetch_add(1, Ordering::AcqRel);
        // Read one byte of every page: the cached file pages are mapped now,
        // without copies (a read fault maps the page cache's own page).
        let page = 4096;
        let mut sum = 0u8;
        for off in (0..len).step_by(page) {
            // SAFETY: inside the mapping, which is readable.
            #[allow(unsafe_code)]
            {
                sum ^= unsafe { std::ptr::read_volatile((start + off) as *const u8) };
            }
        }
        std::hint::black_box(sum);
        Some(Self { slot, len })
    }

    #[cfg(not(target_os = "linux"))]
    fn map_file(_: &std::fs::File, _: usize) -> Option<Self> {
        None
    }

    /// The `n` little-endian `f32`s at byte `offset` of the file as a `Vec`
    /// over the mapping (no copy; writing to it copies the touched pages
    /// privately). `None` when they do not fit in the file, are not 4-byte
    /// aligned, or this is a big-endian machine: read them instead.
    pub fn vec_f32(&self, offset: usize, n: usize) -> Option<Vec<f32>> {
        let bytes = n.checked_mul(4)?;
        if n == 0 || cfg!(target_endian = "big") || offset.checked_add(bytes)? > self.len {
            return None;
        }
        let p = self.slot.start.load(Ordering::Acquire) + offset;
        if !p.is_multiple_of(std::mem::align_of::<f32>()) {
            return None;
        }
        self.slot.holders.fetch_add(1, Ordering::AcqRel);
        // SAFETY: `[p, p + bytes)` lies in the mapping, readable and writable,
        // aligned for f32, and any bit pattern is an f32. The Vec owns it until
        // it is freed, which `HugePageHeap` (the global allocator, checked in
        // `map`) turns into dropping this holder; it is never grown in place
        // (`realloc` moves it to the heap).
        #[allow(unsafe_code)]
        unsafe {
            Some(Vec::from_raw_parts(p as *mut f32, n, n))
        }
    }
}

impl Drop for MappedFile {
    fn drop(&mut self) {
        release(self.slot);
    }
}
