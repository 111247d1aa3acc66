//! Mesh exports: GLB (embedded texture), OBJ + MTL + PNG, PLY, STL. Always atomic.
//!
//! Every file is encoded in memory first and then written through
//! [`crate::paths::write_atomic`] (temporary file + rename): a failure leaves
//! no partial file, and for OBJ any sibling already written is removed again.

mod gltf;
mod simple;

use std::path::{Path, PathBuf};

use crate::mesh::Mesh;
use crate::paths::PathError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    Glb,
    Obj,
    Ply,
    Stl,
}

impl ExportFormat {
    pub const ALL: [ExportFormat; 4] = [
        ExportFormat::Glb,
        ExportFormat::Obj,
        ExportFormat::Ply,
        ExportFormat::Stl,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ExportFormat::Glb => "glb",
            ExportFormat::Obj => "obj",
            ExportFormat::Ply => "ply",
            ExportFormat::Stl => "stl",
        }
    }

    /// File extension without the dot.
    pub fn extension(self) -> &'static str {
        self.as_str()
    }

    /// The format named by the path's extension (case-insensitive).
    pub fn from_path(path: &Path) -> Result<Self, ExportError> {
        let ext = path.extension().and_then(|e| e.to_str()).ok_or_else(|| {
            ExportError::UnknownExtension {
                path: path.to_path_buf(),
                extension: String::new(),
            }
        })?;
        ext.parse().map_err(|_| ExportError::UnknownExtension {
            path: path.to_path_buf(),
            extension: ext.to_owned(),
        })
    }
}

impl std::fmt::Display for ExportFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ExportFormat {
    type Err = ExportError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim().trim_start_matches('.');
        ExportFormat::ALL
            .into_iter()
            .find(|f| f.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| ExportError::UnknownFormat { name: s.to_owned() })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(
        "cannot tell the output format from {path} (extension '{extension}'); end the name in .glb, .obj, .ply or .stl, or pass a format"
    )]
    UnknownExtension { path: PathBuf, extension: String },
    #[error("unknown output format '{name}'; use glb, obj, ply or stl")]
    UnknownFormat { name: String },
    #[error("the mesh is empty; nothing to export")]
    EmptyMesh,
    #[error("output folder {dir} does not exist; create it or choose another output path")]
    MissingDir { dir: PathBuf },
    #[error(
        "{path} is not a folder, so the output cannot go inside it; choose another output path"
    )]
    NotADir { path: PathBuf },
    #[error("the output path {path} is a folder; give a file name such as model.glb")]
    OutputIsDir { path: PathBuf },
    #[error(transparent)]
    Write(#[from] PathError),
    #[error("cannot encode {what}: {detail}")]
    Encode { what: &'static str, detail: String },
}

impl ExportError {
    /// A bounded label for metrics and history.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::UnknownExtension { .. } | Self::UnknownFormat { .. } => "invalid_parameter",
            Self::EmptyMesh => "empty_mesh",
            Self::Encode { .. } => "encode",
            Self::MissingDir { .. }
            | Self::NotADir { .. }
            | Self::OutputIsDir { .. }
            | Self::Write(_) => "io",
        }
    }
}

/// Checks, without writing, that `path` can take `format`'s files: its folder
/// exists and is a folder, and `path` is not itself a folder. Writability is
/// only known when writing (which is atomic).
pub fn check_output(path: &Path, _format: ExportFormat) -> Result<(), ExportError> {
    if path.is_dir() {
        return Err(ExportError::OutputIsDir {
            path: path.to_path_buf(),
        });
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // Walk up to the first existing ancestor to say which part is wrong.
    let mut probe = dir.as_path();
    loop {
        match std::fs::metadata(probe) {
            Ok(meta) if meta.is_dir() => break,
            Ok(_) => {
                return Err(ExportError::NotADir {
                    path: probe.to_path_buf(),
                });
            }
            Err(_) => match probe.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => probe = parent,
                _ => break,
            },
        }
    }
    if !dir.is_dir() {
        return Err(ExportError::MissingDir { dir });
    }
    Ok(())
}

/// Writes `mesh` to `path` as `format`; returns every file written (OBJ:
/// the .obj, its .mtl and the .png texture beside it).
pub fn export_mesh(
    mesh: &Mesh,
    path: &Path,
    format: ExportFormat,
) -> Result<Vec<PathBuf>, ExportError> {
    if mesh.is_empty() {
        return Err(ExportError::EmptyMesh);
    }
    check_output(path, format)?;
    let files: Vec<(PathBuf, Vec<u8>)> = match format {
        ExportFormat::Glb => vec![(path.to_path_buf(), gltf::glb_bytes(mesh)?)],
        ExportFormat::Obj => simple::obj_files(mesh, path)?,
        ExportFormat::Ply => vec![(path.to_path_buf(), simple::ply_bytes(mesh))],
        ExportFormat::Stl => vec![(path.to_path_buf(), simple::stl_bytes(mesh))],
    };
    let mut written: Vec<PathBuf> = Vec::with_capacity(files.len());
    for (file, bytes) in &files {
        if let Err(e) = crate::paths::write_bytes_atomic(file, bytes) {
            for done in &written {
                // Best effort: the error being reported is the write failure.
                let _ = std::fs::remove_file(done);
            }
            return Err(e.into());
        }
        written.push(file.clone());
    }
    Ok(written)
}

/// PNG bytes of an RGBA image (fast compression: textures are re-encoded often).
pub(crate) fn png_bytes(image: &image::RgbaImage) -> Result<Vec<u8>, ExportError> {
    use image::ImageEncoder as _;
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new_with_quality(
        &mut out,
        image::codecs::png::CompressionType::Fast,
        image::codecs::png::FilterType::Adaptive,
    )
    .write_image(
        image.as_raw(),
        image.width(),
        image.height(),
        image::ExtendedColorType::Rgba8,
    )
    .map_err(|e| ExportError::Encode {
        what: "texture PNG",
        detail: e.to_string(),
    })?;
    Ok(out)
}
