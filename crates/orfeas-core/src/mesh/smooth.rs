//! Taubin smoothing: alternating shrink (λ) and inflate (μ) Laplacian steps,
//! which smooths without the shrinkage of plain Laplacian smoothing.

use super::Mesh;

/// Smooths vertex positions in place with `iterations` Taubin λ|μ passes
/// (λ = 0.5, μ = −0.53). Only positions move: connectivity is untouched, so a
/// closed, manifold, consistently wound mesh stays exactly that. Vertices that
/// share a position (UV seams) move together. Normals are stale afterwards;
/// call [`Mesh::compute_normals`].
pub fn smooth_taubin(mesh: &mut Mesh, iterations: u32) {
    if iterations == 0 || mesh.positions.is_empty() {
        return;
    }
    let n = mesh.positions.len();
    let map = mesh.weld_map();
    // Neighbour lists (CSR) of the welded representatives.
    let mut pairs: Vec<(u32, u32)> = Vec::with_capacity(mesh.indices.len() * 2);
    for t in mesh.indices.chunks_exact(3) {
        let w = [
            map.get(t[0] as usize).copied(),
            map.get(t[1] as usize).copied(),
            map.get(t[2] as usize).copied(),
        ];
        let [Some(a), Some(b), Some(c)] = w else {
            continue;
        };
        for (x, y) in [(a, b), (b, c), (c, a)] {
            if x != y {
                pairs.push((x, y));
                pairs.push((y, x));
            }
        }
    }
    pairs.sort_unstable();
    pairs.dedup();
    let mut start = vec![0usize; n + 1];
    for &(a, _) in &pairs {
        start[a as usize + 1] += 1;
    }
    for v in 0..n {
        start[v + 1] += start[v];
    }
    let mut pos: Vec<[f32; 3]> = mesh.positions.clone();
    let mut next = pos.clone();
    for _ in 0..iterations {
        for factor in [0.5f32, -0.53] {
            for v in 0..n {
                let around = &pairs[start[v]..start[v + 1]];
                if around.is_empty() {
                    continue;
                }
                let mut avg = [0.0f32; 3];
                for &(_, u) in around {
                    let p = pos[u as usize];
                    avg[0] += p[0];
                    avg[1] += p[1];
                    avg[2] += p[2];
                }
                let inv = 1.0 / around.len() as f32;
                let p = pos[v];
                for k in 0..3 {
                    next[v][k] = p[k] + factor * (avg[k] * inv - p[k]);
                }
            }
            std::mem::swap(&mut pos, &mut next);
        }
    }
    for (v, p) in mesh.positions.iter_mut().enumerate() {
        *p = pos[map[v] as usize];
    }
}
