//! OBJ (+ MTL + PNG), PLY (binary, vertex colours) and STL (binary).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::ExportError;
use crate::mesh::Mesh;

/// The .obj, and when textured its .mtl and .png, named after the .obj's stem.
pub(super) fn obj_files(mesh: &Mesh, path: &Path) -> Result<Vec<(PathBuf, Vec<u8>)>, ExportError> {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("model")
        .to_owned();
    let n = mesh.positions.len();
    let textured = mesh.texture.is_some() && mesh.uvs.len() == n;
    let has_normals = mesh.normals.len() == n;
    let mut obj = String::with_capacity(n * 64 + mesh.indices.len() * 12);
    obj.push_str("# ORFEAS Studio\n");
    if textured {
        let _ = writeln!(obj, "mtllib {stem}.mtl\nusemtl orfeas");
    }
    // `write!` into a String cannot fail.
    for p in &mesh.positions {
        let _ = writeln!(obj, "v {} {} {}", p[0], p[1], p[2]);
    }
    if textured {
        for t in &mesh.uvs {
            // OBJ's v axis points up; glTF's (ours) points down.
            let _ = writeln!(obj, "vt {} {}", t[0], 1.0 - t[1]);
        }
    }
    if has_normals {
        for v in &mesh.normals {
            let _ = writeln!(obj, "vn {} {} {}", v[0], v[1], v[2]);
        }
    }
    for t in mesh.indices.chunks_exact(3) {
        let [a, b, c] = [t[0] + 1, t[1] + 1, t[2] + 1];
        let _ = match (textured, has_normals) {
            (true, true) => writeln!(obj, "f {a}/{a}/{a} {b}/{b}/{b} {c}/{c}/{c}"),
            (true, false) => writeln!(obj, "f {a}/{a} {b}/{b} {c}/{c}"),
            (false, true) => writeln!(obj, "f {a}//{a} {b}//{b} {c}//{c}"),
            (false, false) => writeln!(obj, "f {a} {b} {c}"),
        };
    }
    let mut files = vec![(path.to_path_buf(), obj.into_bytes())];
    if let (true, Some(texture)) = (textured, mesh.texture.as_ref()) {
        let mtl = format!(
            "# ORFEAS Studio\nnewmtl orfeas\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nd 1\nillum 1\nmap_Kd {stem}.png\n"
        );
        files.push((path.with_extension("mtl"), mtl.into_bytes()));
        files.push((path.with_extension("png"), super::png_bytes(texture)?));
    }
    Ok(files)
}

/// Binary little-endian PLY of the welded mesh: positions, normals, RGBA colours.
pub(super) fn ply_bytes(mesh: &Mesh) -> Vec<u8> {
    let mut m = mesh.welded();
    if m.normals.len() != m.positions.len() {
        m.compute_normals();
    }
    let colors = m.colors.len() == m.positions.len();
    let mut out = Vec::new();
    let mut header = format!(
        "ply\nformat binary_little_endian 1.0\ncomment ORFEAS Studio\nelement vertex {}\n\
         property float x\nproperty float y\nproperty float z\n\
         property float nx\nproperty float ny\nproperty float nz\n",
        m.positions.len()
    );
    if colors {
        header.push_str(
            "property uchar red\nproperty uchar green\nproperty uchar blue\nproperty uchar alpha\n",
        );
    }
    let _ = write!(
        header,
        "element face {}\nproperty list uchar int vertex_indices\nend_header\n",
        m.triangle_count()
    );
    out.extend_from_slice(header.as_bytes());
    for (i, p) in m.positions.iter().enumerate() {
        for x in p.iter().chain(m.normals[i].iter()) {
            out.extend_from_slice(&x.to_le_bytes());
        }
        if colors {
            out.extend_from_slice(&m.colors[i]);
        }
    }
    for t in m.indices.chunks_exact(3) {
        out.push(3);
        for &i in t {
            out.extend_from_slice(&(i as i32).to_le_bytes());
        }
    }
    out
}

/// Binary STL: an 80-byte header, the count, then a normal and three corners per triangle.
pub(super) fn stl_bytes(mesh: &Mesh) -> Vec<u8> {
    let tris = mesh.triangle_count();
    let mut out = Vec::with_capacity(84 + tris * 50);
    let mut header = [0u8; 80];
    let tag = b"ORFEAS Studio binary STL";
    header[..tag.len()].copy_from_slice(tag);
    out.extend_from_slice(&header);
    out.extend_from_slice(&(tris as u32).to_le_bytes());
    for t in mesh.indices.chunks_exact(3) {
        let p =
            [t[0], t[1], t[2]].map(|i| mesh.positions.get(i as usize).copied().unwrap_or_default());
        let n = crate::mesh::triangle_normal(p[0], p[1], p[2]);
        let len = (n[0] * n[0] + n[1] * n[1] + n[2] * n[2]).sqrt().max(1e-30);
        for x in n {
            out.extend_from_slice(&((x / len) as f32).to_le_bytes());
        }
        for v in p {
            for x in v {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
        out.extend_from_slice(&0u16.to_le_bytes());
    }
    out
}
