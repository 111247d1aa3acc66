//! Mesh import: GLB/glTF, OBJ (+MTL + texture), PLY and STL files → [`Mesh`].
//!
//! Every importer returns a mesh that satisfies the [`Mesh`] invariants (per-vertex
//! vectors empty or full length, indices in range, finite positions) or an
//! [`ImportError`] that names the file and says what is wrong with it. No importer
//! panics on malformed input.

mod glb;
mod obj;
mod ply;
mod stl;

use std::fmt;
use std::path::{Path, PathBuf};

use crate::mesh::Mesh;

/// The mesh file formats the studio opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MeshFormat {
    /// Binary glTF (one file, embedded buffers and textures).
    Glb,
    /// JSON glTF, buffers embedded as data URIs or beside the file.
    Gltf,
    Obj,
    Ply,
    Stl,
}

impl MeshFormat {
    /// Every format, for file dialogs.
    pub const ALL: [Self; 5] = [Self::Glb, Self::Gltf, Self::Obj, Self::Ply, Self::Stl];

    /// File extensions (lower case, no dot) of every format, for file dialogs.
    pub const EXTENSIONS: [&'static str; 5] = ["glb", "gltf", "obj", "ply", "stl"];

    /// The format a file name's extension names, case-insensitively.
    pub fn from_path(path: &Path) -> Option<Self> {
        let extension = path.extension()?.to_str()?.to_ascii_lowercase();
        match extension.as_str() {
            "glb" => Some(Self::Glb),
            "gltf" => Some(Self::Gltf),
            "obj" => Some(Self::Obj),
            "ply" => Some(Self::Ply),
            "stl" => Some(Self::Stl),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Glb => "GLB",
            Self::Gltf => "glTF",
            Self::Obj => "OBJ",
            Self::Ply => "PLY",
            Self::Stl => "STL",
        }
    }
}

impl fmt::Display for MeshFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read mesh file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot open {path}: unknown mesh file type; open a .glb, .gltf, .obj, .ply or .stl file"
    )]
    UnsupportedFormat { path: PathBuf },
    #[error(
        "{format} file {name} is malformed: {reason}; re-export it from the program that made it"
    )]
    Malformed {
        format: MeshFormat,
        name: String,
        reason: String,
    },
    #[error(
        "{format} file {name} contains no triangles (points or lines only?); export it with triangle or polygon faces"
    )]
    NoTriangles { format: MeshFormat, name: String },
}

/// Reads a mesh file; the format comes from the extension. Textures and material
/// files referenced by OBJ, PLY and glTF files are looked up beside the file.
pub fn import_mesh(path: &Path) -> Result<Mesh, ImportError> {
    let format = MeshFormat::from_path(path).ok_or_else(|| ImportError::UnsupportedFormat {
        path: path.to_owned(),
    })?;
    let name = path.display().to_string();
    let mesh = match format {
        // A .gltf file may reference buffers and images beside it, so gltf reads it by path.
        MeshFormat::Gltf => glb::import_path(path),
        MeshFormat::Obj => obj::import_path(path),
        MeshFormat::Glb | MeshFormat::Ply | MeshFormat::Stl => {
            let bytes = std::fs::read(path).map_err(|source| ImportError::Io {
                path: path.to_owned(),
                source,
            })?;
            parse_bytes(&bytes, format, path.parent())
        }
    };
    finish(mesh, format, name)
}

/// Parses a mesh held in memory (an upload, a drag-and-drop payload). External
/// files (OBJ materials, PLY textures, glTF external buffers) cannot be resolved.
pub fn import_bytes(bytes: &[u8], format: MeshFormat, name: &str) -> Result<Mesh, ImportError> {
    let mesh = match format {
        MeshFormat::Obj => obj::import_bytes(bytes),
        MeshFormat::Gltf => glb::import_slice(bytes),
        MeshFormat::Glb | MeshFormat::Ply | MeshFormat::Stl => parse_bytes(bytes, format, None),
    };
    finish(mesh, format, name.to_owned())
}

fn parse_bytes(bytes: &[u8], format: MeshFormat, dir: Option<&Path>) -> Result<Mesh, String> {
    match format {
        MeshFormat::Glb | MeshFormat::Gltf => glb::import_slice(bytes),
        MeshFormat::Obj => obj::import_bytes(bytes),
        MeshFormat::Ply => ply::parse(bytes, dir),
        MeshFormat::Stl => stl::parse(bytes),
    }
}

fn finish(
    mesh: Result<Mesh, String>,
    format: MeshFormat,
    name: String,
) -> Result<Mesh, ImportError> {
    let mesh = mesh.and_then(|mesh| check_invariants(mesh).map_err(str::to_owned));
    match mesh {
        Ok(mesh) if mesh.is_empty() => Err(ImportError::NoTriangles { format, name }),
        Ok(mesh) => Ok(mesh),
        Err(reason) => Err(ImportError::Malformed {
            format,
            name,
            reason,
        }),
    }
}

/// Enforces the [`Mesh`] invariants the viewport and exporters rely on; optional
/// attributes of the wrong length are dropped rather than failing the import.
fn check_invariants(mut mesh: Mesh) -> Result<Mesh, &'static str> {
    let vertex_count = mesh.positions.len();
    if !mesh.indices.len().is_multiple_of(3) {
        return Err("the index count is not a multiple of three");
    }
    if mesh.indices.iter().any(|&i| i as usize >= vertex_count) {
        return Err("a face refers to a vertex that does not exist");
    }
    if mesh.positions.iter().flatten().any(|c| !c.is_finite()) {
        return Err("a vertex position is not a finite number");
    }
    if mesh.normals.len() != vertex_count {
        mesh.normals.clear();
    }
    if mesh.uvs.len() != vertex_count {
        mesh.uvs.clear();
    }
    if mesh.colors.len() != vertex_count {
        mesh.colors.clear();
    }
    if mesh.uvs.is_empty() {
        mesh.texture = None;
    }
    Ok(mesh)
}

/// Loads a texture referenced by a mesh file, relative to the mesh's folder. A
/// missing or unreadable texture is not fatal: the mesh still opens, untextured.
fn load_texture(dir: Option<&Path>, file_name: &str) -> Option<image::RgbaImage> {
    let path = match dir {
        Some(dir) => dir.join(file_name.trim()),
        None => {
            tracing::warn!("texture {file_name} skipped: the mesh was not opened from a file");
            return None;
        }
    };
    match image::open(&path) {
        Ok(image) => Some(image.to_rgba8()),
        Err(err) => {
            tracing::warn!(
                "texture {} skipped: {err:#}; the mesh opens untextured",
                path.display()
            );
            None
        }
    }
}

/// Converts a 0..1 colour channel to 8 bits, clamping out-of-range values.
fn unit_to_u8(value: f32) -> u8 {
    // The clamp keeps the product in 0..=255, so the cast cannot truncate.
    (value.clamp(0.0, 1.0) * 255.0).round() as u8
}
