//! Frame-time benchmark of the viewport renderer, offscreen: `cargo bench
//! --bench viewport` (and `scripts/gpu/viewport.sh` on a GPU machine).

use std::time::Duration;

use orfeas_core::mesh::Mesh;

use super::camera::View;
use super::headless::{HeadlessRenderer, Pacing, RenderError, RenderOptions};
use super::renderer::ShadingMode;

/// A UV sphere of about `triangles` triangles, with vertex colours, so the
/// benchmark exercises the same vertex format as generated meshes.
pub fn sphere_mesh(triangles: usize) -> Mesh {
    // A UV sphere of r rings and 2r segments has 4r² triangles (poles included).
    let rings = ((triangles as f64 / 4.0).sqrt().round() as u32).max(2);
    let segments = rings * 2;
    let mut mesh = Mesh::default();
    for ring in 0..=rings {
        let theta = std::f32::consts::PI * ring as f32 / rings as f32;
        // Exact poles and seam, so the sphere is closed once equal positions weld.
        let (sin_t, cos_t) = match ring {
            0 => (0.0, 1.0),
            r if r == rings => (0.0, -1.0),
            _ => (theta.sin(), theta.cos()),
        };
        for segment in 0..=segments {
            let phi = std::f32::consts::TAU * (segment % segments) as f32 / segments as f32;
            let normal = [sin_t * phi.cos(), cos_t, sin_t * phi.sin()];
            mesh.positions.push(normal);
            mesh.normals.push(normal);
            mesh.uvs
                .push([segment as f32 / segments as f32, ring as f32 / rings as f32]);
            // Both factors are in 0..=1, so the bytes cannot overflow.
            mesh.colors.push([
                (255.0 * ring as f32 / rings as f32) as u8,
                128,
                (255.0 * segment as f32 / segments as f32) as u8,
                255,
            ]);
        }
    }
    let stride = segments + 1;
    for ring in 0..rings {
        for segment in 0..segments {
            let a = ring * stride + segment;
            let b = a + stride;
            mesh.indices.extend([a, a + 1, b, a + 1, b + 1, b]);
        }
    }
    mesh
}

#[derive(Clone, Debug)]
pub struct FrameTiming {
    pub triangles: usize,
    pub width: u32,
    pub height: u32,
    /// Lit, each frame waited for (latency).
    pub mean_frame: Duration,
    /// Lit, frames submitted back to back (throughput).
    pub pipelined_frame: Duration,
    /// Lit with the wireframe overlay, each frame waited for.
    pub wireframe_frame: Duration,
}

/// Times `frames` frames for each mesh size at `width`×`height`, lit with wireframe
/// off (the default view); returns the adapter description and the timings.
pub fn frame_times(
    triangle_counts: &[usize],
    width: u32,
    height: u32,
    frames: u32,
) -> Result<(String, Vec<FrameTiming>), RenderError> {
    let renderer = HeadlessRenderer::new()?;
    let options = RenderOptions {
        width,
        height,
        view: View::Iso,
        mode: ShadingMode::Lit,
        ..RenderOptions::default()
    };
    let mut timings = Vec::new();
    for &triangles in triangle_counts {
        let mesh = sphere_mesh(triangles);
        let gpu_mesh = renderer.upload(&mesh);
        let mean_frame = renderer.time_frames(&gpu_mesh, &options, 3, frames, Pacing::Wait)?;
        let pipelined_frame =
            renderer.time_frames(&gpu_mesh, &options, 3, frames, Pacing::Pipelined)?;
        let wire = RenderOptions {
            wireframe: true,
            ..options.clone()
        };
        let wireframe_frame = renderer.time_frames(&gpu_mesh, &wire, 3, frames, Pacing::Wait)?;
        timings.push(FrameTiming {
            triangles: mesh.triangle_count(),
            width,
            height,
            mean_frame,
            pipelined_frame,
            wireframe_frame,
        });
    }
    let description = format!(
        "{}, {}x MSAA",
        renderer.adapter_description(),
        renderer.sample_count()
    );
    Ok((description, timings))
}
