//! `memory::HugePageHeap`: blocks from the system allocator, intact, with the
//! huge-page advice on the large ones.

use std::alloc::{GlobalAlloc, Layout};

use orfeas_ml::memory::{HUGE_PAGE_MIN_BLOCK, HugePageHeap};

/// The `VmFlags` of every mapping that overlaps `[start, end)`, from
/// /proc/self/smaps.
#[cfg(target_os = "linux")]
fn vm_flags_over(start: usize, end: usize) -> Vec<String> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut flags = Vec::new();
    let mut overlaps = false;
    for line in smaps.lines() {
        let range = line
            .split_whitespace()
            .next()
            .and_then(|r| r.split_once('-'));
        if let Some((lo, hi)) = range
            && let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
        {
            overlaps = lo < end && start < hi;
        } else if overlaps && let Some(f) = line.strip_prefix("VmFlags:") {
            flags.push(f.trim().to_owned());
        }
    }
    flags
}

#[cfg(target_os = "linux")]
#[test]
fn large_blocks_are_advised_to_use_huge_pages() {
    let heap = HugePageHeap;
    let layout = Layout::from_size_align(4 * HUGE_PAGE_MIN_BLOCK + 12_345, 64).unwrap();
    // SAFETY: a non-zero size; the block is freed below with the same layout.
    #[allow(unsafe_code)]
    let p = unsafe { heap.alloc(layout) };
    assert!(!p.is_null());
    // The whole 2 MiB pages inside the block.
    let start = (p as usize).next_multiple_of(2 << 20);
    let end = (p as usize + layout.size()) / (2 << 20) * (2 << 20);
    let flags = vm_flags_over(start, end);
    // SAFETY: as above.
    #[allow(unsafe_code)]
    unsafe {
        heap.dealloc(p, layout);
    }
    assert!(!flags.is_empty(), "no mapping found under the block");
    for f in &flags {
        assert!(
            f.split_whitespace().any(|flag| flag == "hg"),
            "a mapping under the block is not advised for huge pages: {f}"
        );
    }
}

#[test]
fn blocks_keep_their_contents_and_zeroes() {
    let heap = HugePageHeap;
    let small = Layout::from_size_align(1 << 20, 16).unwrap();
    let big = 6 * HUGE_PAGE_MIN_BLOCK + 4;
    // SAFETY: non-zero sizes; each block is written only within its size and
    // freed once with the layout it has at that point.
    #[allow(unsafe_code)]
    unsafe {
        let p = heap.alloc(small);
        assert!(!p.is_null());
        for i in 0..small.size() {
            p.add(i).write((i % 251) as u8);
        }
        // Grown past the advice's threshold: the old bytes stay, the new ones are ours.
        let q = heap.realloc(p, small, big);
        assert!(!q.is_null());
        for i in 0..small.size() {
            assert_eq!(
                q.add(i).read(),
                (i % 251) as u8,
                "byte {i} changed in realloc"
            );
        }
        q.add(big - 1).write(7);
        assert_eq!(q.add(big - 1).read(), 7);
        heap.dealloc(q, Layout::from_size_align(big, 16).unwrap());

        // Zeroed, also where the allocator reuses memory it just handed out dirty.
        let layout = Layout::from_size_align(big, 64).unwrap();
        let dirty = heap.alloc(layout);
        assert!(!dirty.is_null());
        std::ptr::write_bytes(dirty, 0xAB, big);
        heap.dealloc(dirty, layout);
        let z = heap.alloc_zeroed(layout);
        assert!(!z.is_null());
        let zeroed = std::slice::from_raw_parts(z, big);
        assert!(
            zeroed.iter().all(|&b| b == 0),
            "alloc_zeroed returned non-zero bytes"
        );
        heap.dealloc(z, layout);
    }
}
