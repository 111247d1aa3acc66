//! The triangle mesh shared by generation, export, quality scoring, import and the viewport.

/// An indexed triangle mesh. Triangles are counter-clockwise seen from outside
/// (outward normals, glTF convention); units are arbitrary, +Y up, the camera of
/// the input view looks down -Z (the front faces +Z).
///
/// Every per-vertex vector is either empty or has `positions.len()` entries.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Mesh {
    pub positions: Vec<[f32; 3]>,
    pub normals: Vec<[f32; 3]>,
    /// Texture coordinates into `texture`, origin top-left (glTF convention).
    pub uvs: Vec<[f32; 2]>,
    /// Linear-free sRGB vertex colours, RGBA8.
    pub colors: Vec<[u8; 4]>,
    /// Three indices per triangle, 32-bit so meshes of millions of triangles fit.
    pub indices: Vec<u32>,
    /// Base-colour texture (sRGB), addressed by `uvs`.
    pub texture: Option<image::RgbaImage>,
}

impl Mesh {
    pub fn vertex_count(&self) -> usize {
        self.positions.len()
    }

    pub fn triangle_count(&self) -> usize {
        self.indices.len() / 3
    }

    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// Axis-aligned bounds `(min, max)`, or `None` for a mesh without vertices.
    pub fn bounds(&self) -> Option<([f32; 3], [f32; 3])> {
        let first = *self.positions.first()?;
        Some(
            self.positions
                .iter()
                .fold((first, first), |(mut lo, mut hi), p| {
                    for axis in 0..3 {
                        lo[axis] = lo[axis].min(p[axis]);
                        hi[axis] = hi[axis].max(p[axis]);
                    }
                    (lo, hi)
                }),
        )
    }
}

mod decimate;
pub mod marching_cubes;
mod smooth;
mod topology;

pub use decimate::decimate;
pub use smooth::smooth_taubin;
pub use topology::Topology;

impl Mesh {
    /// For every vertex, the index of the first vertex at the same position
    /// (bit-identical, except that -0.0 and 0.0 are one). Vertices split along
    /// UV seams (as glTF requires) weld back into one, so connectivity
    /// questions see the closed surface. The one weld: export, smoothing,
    /// decimation, the quality score and the viewer all use it.
    pub fn weld_map(&self) -> Vec<u32> {
        let mut first: std::collections::HashMap<[u32; 3], u32> =
            std::collections::HashMap::with_capacity(self.positions.len());
        self.positions
            .iter()
            .enumerate()
            .map(|(i, p)| {
                // Adding 0.0 turns -0.0 into 0.0 and leaves every other value as it is.
                let key = p.map(|c| (c + 0.0).to_bits());
                *first.entry(key).or_insert(i as u32)
            })
            .collect()
    }

    /// Triangle indices with seam-split vertices welded (see [`Mesh::weld_map`]).
    pub fn welded_indices(&self) -> Vec<u32> {
        let map = self.weld_map();
        self.indices
            .iter()
            .map(|&i| map.get(i as usize).copied().unwrap_or(i))
            .collect()
    }

    /// A copy whose vertices at identical positions are merged (keeping the
    /// first one's attributes) and whose unused vertices are dropped. PLY and
    /// STL have no UVs, so they get the closed, welded surface.
    pub fn welded(&self) -> Mesh {
        let map = self.weld_map();
        let mut new_index = vec![u32::MAX; self.positions.len()];
        let mut out = Mesh {
            texture: self.texture.clone(),
            ..Mesh::default()
        };
        let has = |len: usize| len == self.positions.len();
        for &old in &self.indices {
            let Some(&rep) = map.get(old as usize) else {
                continue;
            };
            let rep = rep as usize;
            if new_index[rep] == u32::MAX {
                new_index[rep] = out.positions.len() as u32;
                out.positions.push(self.positions[rep]);
                if has(self.normals.len()) {
                    out.normals.push(self.normals[rep]);
                }
                if has(self.uvs.len()) {
                    out.uvs.push(self.uvs[rep]);
                }
                if has(self.colors.len()) {
                    out.colors.push(self.colors[rep]);
                }
            }
            out.indices.push(new_index[rep]);
        }
        out
    }

    /// Area-weighted smooth vertex normals, unit length. Vertices that share a
    /// position share a normal, so UV seams do not show as creases. A vertex
    /// with no non-degenerate face gets +Z (glTF requires unit normals).
    pub fn compute_normals(&mut self) {
        let map = self.weld_map();
        let mut acc = vec![[0.0f64; 3]; self.positions.len()];
        for tri in self.indices.chunks_exact(3) {
            let (Some(a), Some(b), Some(c)) = (
                self.positions.get(tri[0] as usize),
                self.positions.get(tri[1] as usize),
                self.positions.get(tri[2] as usize),
            ) else {
                continue;
            };
            let n = triangle_normal(*a, *b, *c);
            for &v in tri {
                let rep = map[v as usize] as usize;
                for k in 0..3 {
                    acc[rep][k] += n[k];
                }
            }
        }
        self.normals = map
            .iter()
            .map(|&rep| {
                let n = acc[rep as usize];
                let len = (n[0] * n[0] + n[1] * n[1] + n[2] * n[2]).sqrt();
                if len > 1e-30 {
                    [
                        (n[0] / len) as f32,
                        (n[1] / len) as f32,
                        (n[2] / len) as f32,
                    ]
                } else {
                    [0.0, 0.0, 1.0]
                }
            })
            .collect();
    }

    /// Signed volume (positive for a closed, outward-wound mesh).
    pub fn signed_volume(&self) -> f64 {
        self.indices
            .chunks_exact(3)
            .filter_map(|t| {
                let a = self.positions.get(t[0] as usize)?;
                let b = self.positions.get(t[1] as usize)?;
                let c = self.positions.get(t[2] as usize)?;
                let (a, b, c) = (to_f64(*a), to_f64(*b), to_f64(*c));
                Some(
                    (a[0] * (b[1] * c[2] - b[2] * c[1]) - a[1] * (b[0] * c[2] - b[2] * c[0])
                        + a[2] * (b[0] * c[1] - b[1] * c[0]))
                        / 6.0,
                )
            })
            .sum()
    }

    /// Connectivity analysis of the welded surface; see [`Topology`].
    pub fn topology(&self) -> Topology {
        topology::analyze(self)
    }
}

fn to_f64(p: [f32; 3]) -> [f64; 3] {
    [p[0] as f64, p[1] as f64, p[2] as f64]
}

/// Cross product of the triangle's edges: direction = outward normal for CCW
/// winding, length = twice the area.
pub(crate) fn triangle_normal(a: [f32; 3], b: [f32; 3], c: [f32; 3]) -> [f64; 3] {
    let (a, b, c) = (to_f64(a), to_f64(b), to_f64(c));
    let u = [b[0] - a[0], b[1] - a[1], b[2] - a[2]];
    let v = [c[0] - a[0], c[1] - a[1], c[2] - a[2]];
    [
        u[1] * v[2] - u[2] * v[1],
        u[2] * v[0] - u[0] * v[2],
        u[0] * v[1] - u[1] * v[0],
    ]
}

#[cfg(test)]
mod tests {
    use super::Mesh;

    /// A closed tetrahedron, wound outwards.
    fn tetrahedron() -> Mesh {
        Mesh {
            positions: vec![
                [0.0, 0.0, 0.0],
                [1.0, 0.0, 0.0],
                [0.0, 1.0, 0.0],
                [0.0, 0.0, 1.0],
            ],
            indices: vec![0, 2, 1, 0, 1, 3, 0, 3, 2, 1, 2, 3],
            ..Mesh::default()
        }
    }

    #[test]
    fn the_weld_treats_negative_zero_as_zero() {
        // Each face gets its own corners (as a flat-shaded export writes them),
        // and one copy of the origin is written as -0.0.
        let t = tetrahedron();
        let mut split = Mesh::default();
        for &i in &t.indices {
            split.indices.push(split.positions.len() as u32);
            split.positions.push(t.positions[i as usize]);
        }
        split.positions[0] = [-0.0, 0.0, -0.0];
        let topology = split.topology();
        assert!(topology.is_closed(), "{topology:?}");
        assert!(topology.is_closed_outward());
        assert_eq!(topology.vertices, 4);
        assert_eq!(split.welded().positions.len(), 4);
    }

    #[test]
    fn faces_collapsed_by_the_weld_do_not_open_or_break_the_surface() {
        // The tetrahedron plus a sliver whose two corners weld into one: a UV
        // sphere's pole triangles look like this.
        let mut m = tetrahedron();
        m.positions.push([1.0, 0.0, 0.0]); // a seam copy of vertex 1
        m.indices.extend([1, 4, 2]);
        let topology = m.topology();
        assert_eq!(topology.degenerate_faces, 1);
        assert!(
            topology.is_closed() && topology.is_manifold(),
            "{topology:?}"
        );
        assert!(topology.is_closed_outward());
        // Flipping a real face is still seen.
        m.indices.swap(1, 2);
        assert!(!m.topology().is_closed_outward());
    }
}
