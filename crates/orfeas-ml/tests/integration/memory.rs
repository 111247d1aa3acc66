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

/// A file of `floats` little-endian f32s after an 8-byte prefix, and its bytes.
fn f32_file(dir: &std::path::Path, floats: &[f32]) -> (std::path::PathBuf, Vec<u8>) {
    let mut bytes = b"PREFIX!!".to_vec();
    for f in floats {
        bytes.extend_from_slice(&f.to_le_bytes());
    }
    let path = dir.join("weights.bin");
    std::fs::write(&path, &bytes).unwrap();
    (path, bytes)
}

#[cfg(target_os = "linux")]
#[test]
fn mapped_floats_are_the_files_and_writes_stay_private() {
    use orfeas_ml::memory::MappedFile;
    assert!(
        orfeas_ml::memory::is_global_allocator(),
        "the test binary declares HugePageHeap as its allocator"
    );
    let dir = tempfile::tempdir().unwrap();
    let floats: Vec<f32> = (0..300_000).map(|i| (i as f32).sin() * 1e3).collect();
    let (path, bytes) = f32_file(dir.path(), &floats);
    let file = std::fs::File::open(&path).unwrap();
    let map = MappedFile::map(&file, bytes.len()).expect("a mapping on Linux");

    let mut a = map.vec_f32(8, floats.len()).unwrap();
    assert_eq!(a, floats);
    let b = map.vec_f32(8 + 4 * 1000, 5).unwrap();
    assert_eq!(b, floats[1000..1005]);
    // Misaligned, past the end, empty: read those instead.
    assert!(map.vec_f32(9, 4).is_none());
    assert!(map.vec_f32(8, floats.len() + 1).is_none());
    assert!(map.vec_f32(8, 0).is_none());

    // Writing goes to private copies of the pages: the file keeps its bytes.
    a[0] = -1.0;
    a[299_999] = -2.0;
    a.push(3.0); // moves it to the heap
    assert_eq!(a.len(), floats.len() + 1);
    assert_eq!(a[1..299_999], floats[1..299_999]);
    assert_eq!((a[0], a[299_999], a[300_000]), (-1.0, -2.0, 3.0));
    drop(a);
    assert_eq!(std::fs::read(&path).unwrap(), bytes);

    // The mapping stays while anything holds it and goes with the last holder.
    let mapped = || {
        std::fs::read_to_string("/proc/self/maps")
            .unwrap()
            .contains(path.to_str().unwrap())
    };
    drop(map);
    assert!(mapped(), "unmapped while a Vec still lives over it");
    assert_eq!(b, floats[1000..1005]);
    drop(b);
    assert!(!mapped(), "still mapped after its last holder was dropped");
}

#[test]
fn weights_load_the_same_mapped_or_read() {
    // `load_weights` maps the file here (this binary's allocator is HugePageHeap);
    // candle's own reader copies it.
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/sd-tiny/vae/diffusion_pytorch_model-00001-of-00002.safetensors");
    let device = candle_core::Device::Cpu;
    let theirs = candle_core::safetensors::load(&path, &device).unwrap();
    let vb = orfeas_ml::sd::weights::load_weights(
        std::slice::from_ref(&path),
        candle_core::DType::F32,
        &device,
    )
    .unwrap();
    assert!(!theirs.is_empty());
    for (name, t) in &theirs {
        let ours = vb.get(t.shape(), name).unwrap();
        let (a, b) = (
            ours.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            t.to_dtype(candle_core::DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
        );
        assert_eq!(a, b, "tensor {name}");
    }
}
