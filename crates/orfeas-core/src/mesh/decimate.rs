//! Edge-collapse decimation with quadric error metrics (Garland–Heckbert).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::Mesh;

/// Collapses edges, cheapest quadric error first, until about
/// `ratio × triangles` remain (`ratio >= 1` returns a welded copy).
///
/// Guarantees, for a closed, manifold, consistently wound input:
/// - the output is still closed, manifold and consistently wound with the
///   same number of shells and the same genus: an edge is only collapsed when
///   its endpoints' common neighbours are exactly the two vertices opposite
///   it (the link condition), and never when that would leave a vertex with
///   fewer than three neighbours;
/// - no face turns over: a collapse that would flip a surrounding face's
///   normal by more than ~80° or make it degenerate is skipped.
///
/// The output has positions and indices only (seam-split vertices are welded
/// first): recompute normals, UVs and colours afterwards.
pub fn decimate(mesh: &Mesh, ratio: f32) -> Mesh {
    let welded = mesh.welded();
    let mut pos: Vec<[f64; 3]> = welded
        .positions
        .iter()
        .map(|p| [p[0] as f64, p[1] as f64, p[2] as f64])
        .collect();
    let mut faces: Vec<[u32; 3]> = welded
        .indices
        .chunks_exact(3)
        .map(|t| [t[0], t[1], t[2]])
        .collect();
    let target = ((faces.len() as f64) * ratio.clamp(0.0, 1.0) as f64).round() as usize;
    if ratio >= 1.0 || faces.len() <= 4 {
        return Mesh {
            positions: welded.positions,
            indices: welded.indices,
            ..Mesh::default()
        };
    }
    let nv = pos.len();
    let mut face_alive = vec![true; faces.len()];
    let mut vert_faces: Vec<Vec<u32>> = vec![Vec::new(); nv];
    let mut quadric = vec![[0.0f64; 10]; nv];
    for (f, t) in faces.iter().enumerate() {
        let q = plane_quadric(pos[t[0] as usize], pos[t[1] as usize], pos[t[2] as usize]);
        for &v in t {
            vert_faces[v as usize].push(f as u32);
            for k in 0..10 {
                quadric[v as usize][k] += q[k];
            }
        }
    }
    let mut vert_alive = vec![true; nv];
    let mut stamp = vec![0u32; nv];
    let mut heap = Heap::new();
    for t in &faces {
        for k in 0..3 {
            let (a, b) = (t[k], t[(k + 1) % 3]);
            if a < b {
                push_edge(&mut heap, a, b, &stamp, &quadric, &pos);
            }
        }
    }

    let mut alive_faces = faces.len();
    let mut na: Vec<u32> = Vec::new();
    let mut nb: Vec<u32> = Vec::new();
    while alive_faces > target {
        let Some(Reverse((_, a, b, sa, sb))) = heap.pop() else {
            break;
        };
        let (ai, bi) = (a as usize, b as usize);
        if !vert_alive[ai] || !vert_alive[bi] || stamp[ai] != sa || stamp[bi] != sb {
            continue;
        }
        neighbours(a, &vert_faces[ai], &faces, &mut na);
        neighbours(b, &vert_faces[bi], &faces, &mut nb);
        if !na.contains(&b) {
            continue;
        }
        // Link condition: the common neighbours are exactly the two opposite vertices.
        let shared: Vec<u32> = vert_faces[ai]
            .iter()
            .copied()
            .filter(|&f| faces[f as usize].contains(&b))
            .collect();
        if shared.len() != 2 {
            continue;
        }
        let common = na.iter().filter(|v| nb.contains(v)).count();
        if common != 2 {
            continue;
        }
        let opposite_ok = shared.iter().all(|&f| {
            let t = faces[f as usize];
            let o = t.iter().copied().find(|&v| v != a && v != b).unwrap_or(a);
            let mut no = Vec::new();
            neighbours(o, &vert_faces[o as usize], &faces, &mut no);
            no.len() > 3
        });
        if !opposite_ok || na.len() + nb.len() < 7 {
            continue;
        }
        let (_, target_pos) = best_position(&quadric[ai], &quadric[bi], pos[ai], pos[bi]);
        // Reject collapses that flip or crush a surrounding face.
        let mut flips = false;
        for &f in vert_faces[ai].iter().chain(vert_faces[bi].iter()) {
            let t = faces[f as usize];
            if t.contains(&a) && t.contains(&b) {
                continue;
            }
            let before = normal(pos[t[0] as usize], pos[t[1] as usize], pos[t[2] as usize]);
            let moved = t.map(|v| {
                if v == a || v == b {
                    target_pos
                } else {
                    pos[v as usize]
                }
            });
            let after = normal(moved[0], moved[1], moved[2]);
            let (lb, la) = (len(before), len(after));
            if la <= 1e-12 * lb.max(1e-300) || dot(before, after) < 0.17 * lb * la {
                flips = true;
                break;
            }
        }
        if flips {
            continue;
        }
        // Apply: b merges into a.
        for &f in &shared {
            face_alive[f as usize] = false;
            alive_faces -= 1;
        }
        let b_faces = std::mem::take(&mut vert_faces[bi]);
        for &f in &b_faces {
            if !face_alive[f as usize] {
                continue;
            }
            for v in faces[f as usize].iter_mut() {
                if *v == b {
                    *v = a;
                }
            }
            vert_faces[ai].push(f);
        }
        vert_faces[ai].retain(|&f| face_alive[f as usize]);
        for &o in &nb {
            vert_faces[o as usize].retain(|&f| face_alive[f as usize]);
        }
        vert_alive[bi] = false;
        pos[ai] = target_pos;
        let qb = quadric[bi];
        for k in 0..10 {
            quadric[ai][k] += qb[k];
        }
        stamp[ai] += 1;
        for &o in &nb {
            stamp[o as usize] += 1;
        }
        neighbours(a, &vert_faces[ai], &faces, &mut na);
        let touched: Vec<u32> = na.clone();
        for &o in &touched {
            push_edge(&mut heap, a.min(o), a.max(o), &stamp, &quadric, &pos);
            let mut no = Vec::new();
            neighbours(o, &vert_faces[o as usize], &faces, &mut no);
            for &p in &no {
                if p != a {
                    push_edge(&mut heap, o.min(p), o.max(p), &stamp, &quadric, &pos);
                }
            }
        }
    }

    // Compact.
    let mut remap = vec![u32::MAX; nv];
    let mut out = Mesh::default();
    for (f, t) in faces.iter().enumerate() {
        if !face_alive[f] {
            continue;
        }
        for &v in t {
            if remap[v as usize] == u32::MAX {
                remap[v as usize] = out.positions.len() as u32;
                let p = pos[v as usize];
                out.positions.push([p[0] as f32, p[1] as f32, p[2] as f32]);
            }
            out.indices.push(remap[v as usize]);
        }
    }
    out
}

/// Candidate collapses, cheapest first, stamped with the endpoints' versions
/// so that entries made stale by a later collapse are skipped.
type Heap = BinaryHeap<Reverse<(u64, u32, u32, u32, u32)>>;

fn push_edge(
    heap: &mut Heap,
    a: u32,
    b: u32,
    stamp: &[u32],
    quadric: &[[f64; 10]],
    pos: &[[f64; 3]],
) {
    let (cost, _) = best_position(
        &quadric[a as usize],
        &quadric[b as usize],
        pos[a as usize],
        pos[b as usize],
    );
    // Non-negative floats order like their bit patterns.
    heap.push(Reverse((
        cost.max(0.0).to_bits(),
        a,
        b,
        stamp[a as usize],
        stamp[b as usize],
    )));
}

fn neighbours(v: u32, around: &[u32], faces: &[[u32; 3]], out: &mut Vec<u32>) {
    out.clear();
    for &f in around {
        for &u in &faces[f as usize] {
            if u != v && !out.contains(&u) {
                out.push(u);
            }
        }
    }
}

fn normal(a: [f64; 3], b: [f64; 3], c: [f64; 3]) -> [f64; 3] {
    let u = [b[0] - a[0], b[1] - a[1], b[2] - a[2]];
    let v = [c[0] - a[0], c[1] - a[1], c[2] - a[2]];
    [
        u[1] * v[2] - u[2] * v[1],
        u[2] * v[0] - u[0] * v[2],
        u[0] * v[1] - u[1] * v[0],
    ]
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn len(a: [f64; 3]) -> f64 {
    dot(a, a).sqrt()
}

/// The symmetric 4×4 quadric of the triangle's plane, area-weighted, stored
/// as its upper triangle (aa ab ac ad bb bc bd cc cd dd).
fn plane_quadric(a: [f64; 3], b: [f64; 3], c: [f64; 3]) -> [f64; 10] {
    let n = normal(a, b, c);
    let l = len(n);
    if l <= 0.0 {
        return [0.0; 10];
    }
    let (x, y, z) = (n[0] / l, n[1] / l, n[2] / l);
    let d = -(x * a[0] + y * a[1] + z * a[2]);
    let w = l * 0.5;
    [
        w * x * x,
        w * x * y,
        w * x * z,
        w * x * d,
        w * y * y,
        w * y * z,
        w * y * d,
        w * z * z,
        w * z * d,
        w * d * d,
    ]
}

fn quadric_error(q: &[f64; 10], p: [f64; 3]) -> f64 {
    let [x, y, z] = p;
    q[0] * x * x
        + 2.0 * q[1] * x * y
        + 2.0 * q[2] * x * z
        + 2.0 * q[3] * x
        + q[4] * y * y
        + 2.0 * q[5] * y * z
        + 2.0 * q[6] * y
        + q[7] * z * z
        + 2.0 * q[8] * z
        + q[9]
}

/// Cheapest of the two endpoints and the midpoint under the summed quadric
/// (solving the 3×3 system buys little on these smooth, dense meshes).
fn best_position(qa: &[f64; 10], qb: &[f64; 10], a: [f64; 3], b: [f64; 3]) -> (f64, [f64; 3]) {
    let mut q = [0.0; 10];
    for k in 0..10 {
        q[k] = qa[k] + qb[k];
    }
    let mid = [
        (a[0] + b[0]) * 0.5,
        (a[1] + b[1]) * 0.5,
        (a[2] + b[2]) * 0.5,
    ];
    [a, b, mid]
        .into_iter()
        .map(|p| (quadric_error(&q, p), p))
        .fold(
            (f64::INFINITY, mid),
            |best, c| if c.0 < best.0 { c } else { best },
        )
}
