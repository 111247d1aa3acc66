//! Marching cubes time on TripoSR-sized grids (128³, 256³, 512³ points) of a
//! bumpy blob, the kind of density field TripoSR's decoder gives: median of
//! several runs, with the mesh size. The density query, not this, is
//! TripoSR's mesh-extraction cost; this shows the surface step stays small.
//! Run: `cargo bench -p orfeas-core --bench marching_cubes`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark fails loudly

use std::time::Instant;

use orfeas_core::mesh::marching_cubes::extract_isosurface;

fn blob(n: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(n * n * n);
    let s = 2.0 / (n - 1) as f32;
    for i in 0..n {
        for j in 0..n {
            for k in 0..n {
                let (x, y, z) = (i as f32 * s - 1.0, j as f32 * s - 1.0, k as f32 * s - 1.0);
                let r = (x * x + y * y + z * z).sqrt();
                let bumps = 0.08 * (9.0 * x).sin() * (7.0 * y).cos() * (11.0 * z).sin();
                // A density: 40 at the centre, 25 (the threshold) near r = 0.6.
                v.push(40.0 - 25.0 * (r + bumps));
            }
        }
    }
    v
}

fn main() {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("marching_cubes: median of runs, {threads} threads (release build expected)");
    for (n, runs) in [(128, 9), (256, 5), (512, 3)] {
        let grid = blob(n);
        let mut times = Vec::new();
        let mut size = (0, 0);
        for _ in 0..runs {
            let t = Instant::now();
            let s = extract_isosurface(&grid, [n; 3], 25.0).unwrap();
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            size = (s.positions.len(), s.triangle_count());
        }
        times.sort_by(f64::total_cmp);
        println!(
            "  {n}³ ({:.1} M points): {:8.1} ms median, {:8.1} ms min; {} vertices, {} triangles",
            (n * n * n) as f64 / 1e6,
            times[runs / 2],
            times[0],
            size.0,
            size.1
        );
    }
}
