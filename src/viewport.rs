//! The 3D viewport: a wgpu scene renderer (no egui inside), the egui paint
//! callback and Viewer widget around it, and headless offscreen rendering.
//!
//! Data flow: file → [`open_mesh_file`] (background thread) → `Mesh` →
//! [`MeshVertices`] (CPU, background) → `GpuMesh` (uploaded in the callback's
//! `prepare`) → offscreen frame → copied into egui's pass in `paint`.

pub mod bench;
pub mod callback;
pub mod camera;
pub mod gpu;
pub mod headless;
pub mod renderer;
pub mod widget;

use std::path::Path;

pub use callback::{EguiPassConfig, install};
pub use camera::{Bounds, OrbitCamera, View};
pub use gpu::{GpuBackend, RenderCaps};
pub use headless::{
    HeadlessConfig, HeadlessRenderer, Pacing, RenderError, RenderOptions, render_mesh_to_image,
    render_turntable,
};
pub use renderer::{Background, MeshVertices, ShadingMode};
pub use widget::{MeshStats, ViewerCommand, ViewerState, viewer_ui};

/// Opens a GLB/glTF, OBJ, PLY or STL file (slow for large files: call it off the UI thread).
pub fn open_mesh_file(
    path: &Path,
) -> Result<orfeas_core::mesh::Mesh, orfeas_core::import::ImportError> {
    orfeas_core::import::import_mesh(path)
}
