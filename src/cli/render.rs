//! `orfeas render`: a mesh drawn offscreen to a PNG (one view or a turntable).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;

use super::{ensure_png, parse_size};

#[derive(Debug, Args)]
pub struct RenderArgs {
    /// The mesh: GLB, glTF, OBJ, PLY or STL.
    pub mesh: PathBuf,
    /// The PNG to write. With --turntable N, frames go to NAME-000.png … NAME-(N-1).png.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Camera: front, back, left, right, top, bottom or iso.
    #[arg(long, default_value = "iso")]
    pub view: String,
    /// Image size as WIDTHxHEIGHT.
    #[arg(long, default_value = "1024x768")]
    pub size: String,
    /// Shading: lit, flat, clay, textured, vertex-color or normals.
    #[arg(long, default_value = "lit")]
    pub mode: String,
    /// Draw the triangle edges over the shading.
    #[arg(long)]
    pub wireframe: bool,
    /// Leave out the ground grid and axes.
    #[arg(long)]
    pub no_grid: bool,
    /// Render N frames around the object instead of one.
    #[arg(long)]
    pub turntable: Option<u32>,
}

pub(super) fn render(
    args: &RenderArgs,
    backend: Option<crate::viewport::GpuBackend>,
) -> anyhow::Result<ExitCode> {
    use crate::viewport::{RenderOptions, ShadingMode, View};
    let view = View::from_name(&args.view).with_context(|| {
        format!(
            "unknown view {:?}; use front, back, left, right, top, bottom or iso",
            args.view
        )
    })?;
    let mode = ShadingMode::from_name(&args.mode).with_context(|| {
        format!(
            "unknown mode {:?}; use lit, flat, clay, textured, vertex-color or normals",
            args.mode
        )
    })?;
    let (width, height) = parse_size(&args.size)?;
    ensure_png(&args.output)?;
    let mesh = crate::viewport::open_mesh_file(&args.mesh)?;
    let options = RenderOptions {
        width,
        height,
        view,
        mode,
        wireframe: args.wireframe,
        grid: !args.no_grid,
        ..RenderOptions::default()
    };
    if args.turntable == Some(0) {
        anyhow::bail!("--turntable needs at least 1 frame");
    }
    let renderer = crate::viewport::HeadlessRenderer::open(&crate::viewport::HeadlessConfig {
        backend,
        force_downlevel: false,
    })?;
    tracing::info!("rendering on {}", renderer.adapter_description());
    let frames = match args.turntable {
        None => vec![(args.output.clone(), renderer.render(&mesh, &options)?)],
        Some(n) => {
            let stem = args.output.with_extension("");
            renderer
                .render_turntable(&mesh, &options, n)?
                .into_iter()
                .enumerate()
                .map(|(i, img)| (PathBuf::from(format!("{}-{i:03}.png", stem.display())), img))
                .collect()
        }
    };
    for (path, image) in &frames {
        let mut png = Vec::new();
        image
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .context("cannot encode the PNG")?;
        orfeas_core::paths::write_bytes_atomic(path, &png)?;
    }
    println!(
        "wrote {} ({width}×{height}, {} triangles, {} view, {} shading{})",
        match frames.as_slice() {
            [(path, _)] => path.display().to_string(),
            _ => format!("{} frames", frames.len()),
        },
        mesh.triangle_count(),
        view.name(),
        mode.name(),
        if args.wireframe { ", wireframe" } else { "" }
    );
    Ok(ExitCode::SUCCESS)
}
