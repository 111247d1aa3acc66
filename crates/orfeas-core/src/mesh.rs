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
