//! Marching cubes: the surface `value == level` of a scalar grid, as a
//! welded, crack-free triangle mesh.
//!
//! The grid is C-ordered: value `[i][j][k]` is at `(i * ny + j) * nz + k`,
//! and vertex positions come back in index units `(i, j, k)` (the caller
//! scales them). "Inside" is `value > level`, as for a density field; every
//! triangle's right-hand-rule normal points to lower values (outwards).
//!
//! Each cell's surface is built from its six faces instead of a lookup
//! table: on every face the crossing points are joined into segments, the
//! segments of the cell chain into closed loops, and each loop becomes a fan
//! of triangles. A face with four crossings is ambiguous; it is resolved with
//! the asymptotic decider (the value of the face's bilinear interpolant at
//! its saddle point), computed from that face's four values alone, so the two
//! cells sharing a face always agree and the surface has no cracks. Vertices
//! are keyed by the grid edge they lie on, so a vertex shared by neighbouring
//! cells is one vertex: the mesh is watertight wherever the surface closes
//! inside the grid. (Ambiguities inside a cell, Lewiner's cases with a
//! tunnel, are not resolved: such a cell gets the separated surfaces.)
//!
//! Cells are processed in slabs of `i` on all cores; the result does not
//! depend on the thread count (vertices are numbered by first use in
//! `i`-`j`-`k` cell order).

use std::collections::HashMap;

/// A triangle mesh in grid index units.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IsoSurface {
    pub positions: Vec<[f32; 3]>,
    /// Three indices per triangle.
    pub indices: Vec<u32>,
}

impl IsoSurface {
    pub fn triangle_count(&self) -> usize {
        self.indices.len() / 3
    }
}

/// Why a grid could not be meshed.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MarchingCubesError {
    #[error("the grid has {got} values but {dims:?} needs {want}")]
    SizeMismatch {
        dims: [usize; 3],
        got: usize,
        want: usize,
    },
    #[error("a grid needs at least 2 points along every axis, not {0:?}")]
    TooSmall([usize; 3]),
    #[error("the level {0} is not a finite number")]
    BadLevel(f32),
    #[error("the surface has more than {} vertices; use a coarser grid", u32::MAX)]
    TooManyVertices,
}

/// Corner `c` of a cell is offset `(c & 1, c >> 1 & 1, c >> 2 & 1)` in `(i, j, k)`.
const fn corner(c: usize) -> [usize; 3] {
    [c & 1, (c >> 1) & 1, (c >> 2) & 1]
}

/// The 12 edges of a cell: (lower corner, axis).
const EDGES: [(usize, usize); 12] = {
    let mut edges = [(0, 0); 12];
    let mut n = 0;
    let mut axis = 0;
    while axis < 3 {
        let mut c = 0;
        while c < 8 {
            if c & (1 << axis) == 0 {
                edges[n] = (c, axis);
                n += 1;
            }
            c += 1;
        }
        axis += 1;
    }
    edges
};

/// The local edge joining corners `a` and `b` (which differ in one bit).
const fn edge_between(a: usize, b: usize) -> usize {
    let low = if a < b { a } else { b };
    let axis = (a ^ b).trailing_zeros() as usize;
    let mut e = 0;
    while e < 12 {
        if EDGES[e].0 == low && EDGES[e].1 == axis {
            return e;
        }
        e += 1;
    }
    usize::MAX
}

/// One face of a cell: its corners in counter-clockwise order seen from
/// outside the cell, and the same four corners in canonical order (u, v
/// ascending axes: u0v0, u1v0, u0v1, u1v1) for the asymptotic decider.
struct Face {
    ring: [usize; 4],
    canonical: [usize; 4],
}

const fn face(axis: usize, side: usize) -> Face {
    let (u, v) = match axis {
        0 => (1, 2),
        1 => (0, 2),
        _ => (0, 1),
    };
    let base = side << axis;
    let (cu, cv) = (1 << u, 1 << v);
    let canonical = [base, base | cu, base | cv, base | cu | cv];
    // Stepping +u then +v turns around +axis for x and z (e_y × e_z = e_x,
    // e_x × e_y = e_z) and around −axis for y (e_x × e_z = −e_y). The ring
    // must turn around the outward normal: +axis on side 1, −axis on side 0.
    let u_then_v = [base, base | cu, base | cu | cv, base | cv];
    let ring = if (axis != 1) == (side == 1) {
        u_then_v
    } else {
        [base, base | cv, base | cu | cv, base | cu]
    };
    Face { ring, canonical }
}

const FACES: [Face; 6] = [
    face(0, 0),
    face(0, 1),
    face(1, 0),
    face(1, 1),
    face(2, 0),
    face(2, 1),
];

/// The surface `value == level` of the grid `values` with `dims` points per
/// axis (see the module docs for the layout and the orientation). NaN
/// values count as outside.
pub fn extract_isosurface(
    values: &[f32],
    dims: [usize; 3],
    level: f32,
) -> Result<IsoSurface, MarchingCubesError> {
    let want = dims.iter().product::<usize>();
    if values.len() != want {
        return Err(MarchingCubesError::SizeMismatch {
            dims,
            got: values.len(),
            want,
        });
    }
    if dims.iter().any(|&d| d < 2) {
        return Err(MarchingCubesError::TooSmall(dims));
    }
    if !level.is_finite() {
        return Err(MarchingCubesError::BadLevel(level));
    }
    let cells_i = dims[0] - 1;
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, cells_i);
    let per = cells_i.div_ceil(threads);
    let slabs: Vec<Slab> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let range = (t * per)..((t + 1) * per).min(cells_i);
                scope.spawn(move || march_slab(values, dims, level, range))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    merge(slabs)
}

/// What one slab of cells produced: vertices keyed by grid edge, triangles
/// over the slab's own vertex numbers.
#[derive(Default)]
struct Slab {
    edge_ids: Vec<u64>,
    positions: Vec<[f32; 3]>,
    indices: Vec<u32>,
}

/// Keys of loop-centre vertices: one per cell and loop, never an edge's.
const CENTRE_ID: u64 = 1 << 63;

impl Slab {
    fn push(&mut self, id: u64, pos: [f32; 3]) -> u32 {
        self.edge_ids.push(id);
        self.positions.push(pos);
        (self.positions.len() - 1) as u32
    }
}

fn march_slab(values: &[f32], dims: [usize; 3], level: f32, cells: std::ops::Range<usize>) -> Slab {
    let [_, ny, nz] = dims;
    let at = |p: [usize; 3]| (p[0] * ny + p[1]) * nz + p[2];
    let inside = |v: f32| v > level;
    let mut slab = Slab::default();
    let mut local: HashMap<u64, u32> = HashMap::new();
    let mut value = [0f32; 8];
    let mut loops = Vec::with_capacity(4);
    for i in cells {
        for j in 0..ny - 1 {
            for k in 0..nz - 1 {
                let mut mask = 0u8;
                for (c, v) in value.iter_mut().enumerate() {
                    let [di, dj, dk] = corner(c);
                    *v = values[at([i + di, j + dj, k + dk])];
                    if inside(*v) {
                        mask |= 1 << c;
                    }
                }
                if mask == 0 || mask == 0xff {
                    continue;
                }
                cell_loops(&value, mask, level, &mut loops);
                let cell_id = at([i, j, k]) as u64;
                for (n, l) in loops.iter().enumerate() {
                    let mut ring = [0u32; 12];
                    for (slot, &e) in ring.iter_mut().zip(&l.edges[..l.len]) {
                        let (c, axis) = EDGES[e];
                        let [di, dj, dk] = corner(c);
                        let p = [i + di, j + dj, k + dk];
                        let id = at(p) as u64 * 3 + axis as u64;
                        *slot = *local.entry(id).or_insert_with(|| {
                            let t = crossing(value[c], value[c | (1 << axis)], level);
                            let mut pos = p.map(|x| x as f32);
                            pos[axis] += t;
                            slab.push(id, pos)
                        });
                    }
                    let ring = &ring[..l.len];
                    match fan_apex(l) {
                        Some(apex) => {
                            let len = ring.len();
                            for step in 1..len - 1 {
                                slab.indices.extend([
                                    ring[apex],
                                    ring[(apex + step) % len],
                                    ring[(apex + step + 1) % len],
                                ]);
                            }
                        }
                        None => {
                            // A vertex at the loop's centre, owned by this cell alone.
                            let mut centre = [0f32; 3];
                            for &v in ring {
                                let p = slab.positions[v as usize];
                                for (c, x) in centre.iter_mut().zip(p) {
                                    *c += x / ring.len() as f32;
                                }
                            }
                            let mid = slab.push(CENTRE_ID | (cell_id * 4 + n as u64), centre);
                            for (s, &v) in ring.iter().enumerate() {
                                slab.indices.extend([mid, v, ring[(s + 1) % ring.len()]]);
                            }
                        }
                    }
                }
            }
        }
    }
    slab
}

/// Where on an edge from `v0` to `v1` the value crosses `level`, in 0..=1.
fn crossing(v0: f32, v1: f32, level: f32) -> f32 {
    let d = v1 - v0;
    if d == 0.0 || !d.is_finite() {
        return 0.5;
    }
    ((level - v0) / d).clamp(0.0, 1.0)
}

/// A closed loop of crossings in one cell, as local edges in surface order.
#[derive(Clone, Copy)]
struct Loop {
    edges: [usize; 12],
    len: usize,
}

/// The loops of one cell (corner values `value`, inside-mask `mask`), in
/// the order that makes their fans face outwards.
fn cell_loops(value: &[f32; 8], mask: u8, level: f32, loops: &mut Vec<Loop>) {
    loops.clear();
    let is_in = |c: usize| mask & (1 << c) != 0;
    // next[e]: the edge the loop goes to after the crossing on edge e.
    let mut next = [usize::MAX; 12];
    for f in &FACES {
        let ring = f.ring;
        // Walking the ring, an entry is an outside→inside step, an exit the opposite.
        let mut entries = [0usize; 2];
        let mut exits = [0usize; 2];
        let (mut ne, mut nx) = (0, 0);
        let mut order = [0usize; 4]; // crossings in ring order, as edges
        let mut n = 0;
        for s in 0..4 {
            let (a, b) = (ring[s], ring[(s + 1) % 4]);
            if is_in(a) == is_in(b) {
                continue;
            }
            let e = edge_between(a, b);
            order[n] = e;
            n += 1;
            if is_in(b) {
                entries[ne] = e;
                ne += 1;
            } else {
                exits[nx] = e;
                nx += 1;
            }
        }
        match n {
            2 => next[entries[0]] = exits[0],
            4 => {
                // Ring order alternates entry, exit, entry, exit. Joining each
                // entry to the exit right after it cuts off each inside corner
                // alone; joining it to the exit before it connects the inside
                // corners across the face.
                let [a, b, c, d] = f.canonical.map(|c| value[c] - level);
                let saddle = (a * d - b * c) / (a + d - b - c);
                let connect_inside = saddle > 0.0;
                let first_is_entry = entries.contains(&order[0]);
                let o = if first_is_entry {
                    order
                } else {
                    [order[1], order[2], order[3], order[0]]
                };
                if connect_inside {
                    next[o[0]] = o[3];
                    next[o[2]] = o[1];
                } else {
                    next[o[0]] = o[1];
                    next[o[2]] = o[3];
                }
            }
            _ => {}
        }
    }
    let mut used = [false; 12];
    for start in 0..12 {
        if next[start] == usize::MAX || used[start] {
            continue;
        }
        let mut l = Loop {
            edges: [0; 12],
            len: 0,
        };
        let mut e = start;
        while e != usize::MAX && !used[e] && l.len < 12 {
            used[e] = true;
            l.edges[l.len] = e;
            l.len += 1;
            e = next[e];
        }
        if l.len >= 3 {
            loops.push(l);
        }
    }
}

/// Whether local edges `a` and `b` lie on one face of the cell.
fn share_a_face(a: usize, b: usize) -> bool {
    let ((ca, xa), (cb, xb)) = (EDGES[a], EDGES[b]);
    (0..3).any(|axis| axis != xa && axis != xb && (ca >> axis) & 1 == (cb >> axis) & 1)
}

/// The loop vertex to fan from so that no diagonal lies on a face of the
/// cell (a diagonal on a face could meet the neighbour's across it, making
/// an edge with four triangles); `None` when every choice has one.
fn fan_apex(l: &Loop) -> Option<usize> {
    let n = l.len;
    (0..n).find(|&apex| {
        (2..n - 1).all(|step| !share_a_face(l.edges[apex], l.edges[(apex + step) % n]))
    })
}

fn merge(slabs: Vec<Slab>) -> Result<IsoSurface, MarchingCubesError> {
    let total: usize = slabs.iter().map(|s| s.positions.len()).sum();
    let mut out = IsoSurface {
        positions: Vec::with_capacity(total),
        indices: Vec::with_capacity(slabs.iter().map(|s| s.indices.len()).sum()),
    };
    // Only vertices on a slab's first plane can be shared with the slab before.
    let mut global: HashMap<u64, u32> = HashMap::new();
    for slab in slabs {
        let mut map = Vec::with_capacity(slab.positions.len());
        for (id, pos) in slab.edge_ids.iter().zip(&slab.positions) {
            let index = match global.get(id) {
                Some(&g) => g,
                None => {
                    let g = u32::try_from(out.positions.len())
                        .map_err(|_| MarchingCubesError::TooManyVertices)?;
                    out.positions.push(*pos);
                    global.insert(*id, g);
                    g
                }
            };
            map.push(index);
        }
        out.indices
            .extend(slab.indices.iter().map(|&l| map[l as usize]));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::Mesh;

    fn grid(n: usize, f: impl Fn(f32, f32, f32) -> f32) -> Vec<f32> {
        let mut v = Vec::with_capacity(n * n * n);
        for i in 0..n {
            for j in 0..n {
                for k in 0..n {
                    v.push(f(i as f32, j as f32, k as f32));
                }
            }
        }
        v
    }

    fn as_mesh(s: &IsoSurface) -> Mesh {
        Mesh {
            positions: s.positions.clone(),
            indices: s.indices.clone(),
            ..Mesh::default()
        }
    }

    #[test]
    fn a_sphere_is_closed_outward_and_its_vertices_lie_on_it() {
        let n = 24;
        let c = (n - 1) as f32 / 2.0;
        let r = 8.3;
        // A density: high inside, the surface where it equals 10.
        let values = grid(n, |x, y, z| {
            10.0 + r - ((x - c).powi(2) + (y - c).powi(2) + (z - c).powi(2)).sqrt()
        });
        let s = extract_isosurface(&values, [n, n, n], 10.0).unwrap();
        let topology = as_mesh(&s).topology();
        assert!(topology.is_closed(), "{topology:?}");
        assert!(topology.is_manifold(), "{topology:?}");
        assert!(
            topology.is_closed_outward(),
            "outward normals: {topology:?}"
        );
        assert_eq!(topology.components(), 1);
        assert_eq!(topology.euler_characteristic, 2, "a sphere");
        for p in &s.positions {
            let d = ((p[0] - c).powi(2) + (p[1] - c).powi(2) + (p[2] - c).powi(2)).sqrt();
            // Linear interpolation of a distance field along grid edges.
            assert!((d - r).abs() < 0.05, "{p:?} is {d} from the centre");
        }
        // The enclosed volume is the ball's, to the discretisation.
        let want = 4.0 / 3.0 * std::f64::consts::PI * f64::from(r).powi(3);
        assert!(
            (topology.signed_volume - want).abs() / want < 0.02,
            "{}",
            topology.signed_volume
        );
    }

    #[test]
    fn ambiguous_faces_never_crack_on_random_fields() {
        // Noise gives every ambiguous configuration many times; a face decided
        // differently by its two cells would leave boundary edges.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut rand = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32
        };
        let n = 20;
        let mut values = vec![0.0; n * n * n];
        for v in &mut values {
            *v = rand();
        }
        // Outside at the border, so every surface closes inside the grid.
        for i in 0..n {
            for j in 0..n {
                for k in 0..n {
                    if [i, j, k].iter().any(|&x| x == 0 || x == n - 1) {
                        values[(i * n + j) * n + k] = 0.0;
                    }
                }
            }
        }
        let s = extract_isosurface(&values, [n, n, n], 0.5).unwrap();
        assert!(s.triangle_count() > 5000);
        let topology = as_mesh(&s).topology();
        assert_eq!(topology.boundary_edges, 0, "{topology:?}");
        assert_eq!(topology.non_manifold_edges, 0, "{topology:?}");
        assert_eq!(topology.inconsistent_edges, 0, "{topology:?}");
        assert!(topology.signed_volume > 0.0);
    }

    #[test]
    fn the_thread_count_does_not_change_the_mesh() {
        let n = 17;
        let values = grid(n, |x, y, z| {
            (x * 0.7).sin() + (y * 0.5).cos() * (z * 0.3).sin()
        });
        let whole = extract_isosurface(&values, [n, n, n], 0.2).unwrap();
        // One slab by hand: the same cells in the same order.
        let one = merge(vec![march_slab(&values, [n, n, n], 0.2, 0..n - 1)]).unwrap();
        assert_eq!(whole, one);
    }

    #[test]
    fn bad_grids_are_refused() {
        assert!(matches!(
            extract_isosurface(&[0.0; 7], [2, 2, 2], 0.0),
            Err(MarchingCubesError::SizeMismatch { .. })
        ));
        assert_eq!(
            extract_isosurface(&[0.0; 4], [1, 2, 2], 0.0),
            Err(MarchingCubesError::TooSmall([1, 2, 2]))
        );
        assert!(matches!(
            extract_isosurface(&[0.0; 8], [2, 2, 2], f32::NAN),
            Err(MarchingCubesError::BadLevel(_))
        ));
        // Nothing crosses: an empty mesh, not an error.
        let empty = extract_isosurface(&[1.0; 8], [2, 2, 2], 0.0).unwrap();
        assert!(empty.positions.is_empty() && empty.indices.is_empty());
    }
}
