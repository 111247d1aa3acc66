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
//! Elsewhere (other C libraries, other systems) both are no-ops.

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
