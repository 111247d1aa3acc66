//! The studio on downlevel adapters: OpenGL/GLES through EGL (Mesa's llvmpipe
//! in CI; old laptops, VMs and remote desktops without a Vulkan driver). The
//! fallback paths draw what the full ones draw, `orfeas render` works with
//! Vulkan hidden, the Viewer opens a mesh on GL without a panic (wireframe on
//! and off), and a GPU error costs the 3D view, not the studio.

use std::path::Path;
use std::process::Command;

use eframe::egui_wgpu::{self, wgpu};
use egui_kittest::kittest::Queryable as _;
use orfeas::app::state::Tab;
use orfeas::viewport::{
    Background, GpuBackend, HeadlessConfig, HeadlessRenderer, OrbitCamera, RenderOptions,
    ShadingMode,
};

use super::gui::step_until;
use super::gui_viewer::viewer_app;
use super::render::{box_mesh, renderer};
use super::viewport::changed_fraction;

/// A headless renderer on `config`, or `None` (with a note) where no such
/// adapter exists and ORFEAS_REQUIRE_TOOLS is not set.
fn open_or_skip(config: &HeadlessConfig, what: &str) -> Option<HeadlessRenderer> {
    match HeadlessRenderer::open(config) {
        Ok(renderer) => Some(renderer),
        Err(err) if std::env::var("ORFEAS_REQUIRE_TOOLS").as_deref() == Ok("1") => {
            panic!("ORFEAS_REQUIRE_TOOLS=1 but {what} is unavailable: {err}")
        }
        Err(err) => {
            eprintln!("skipped: {what} missing: {err}");
            None
        }
    }
}

fn gl_config(force_downlevel: bool) -> HeadlessConfig {
    HeadlessConfig {
        backend: Some(GpuBackend::Gl),
        force_downlevel,
    }
}

/// The unit cube straight from the front, clay on black, 256² pixels.
fn front_cube(renderer: &HeadlessRenderer, wireframe: bool) -> image::RgbaImage {
    renderer
        .render(
            &box_mesh([-0.5; 3], [0.5; 3]),
            &RenderOptions {
                width: 256,
                height: 256,
                mode: ShadingMode::Clay,
                wireframe,
                grid: false,
                background: Background::Solid([0, 0, 0]),
                camera: Some(OrbitCamera {
                    distance: 3.0,
                    fov_y_rad: 45f32.to_radians(),
                    ..OrbitCamera::default()
                }),
                ..RenderOptions::default()
            },
        )
        .unwrap()
}

fn covered_fraction(image: &image::RgbaImage) -> f64 {
    let covered = image.pixels().filter(|p| p.0[..3] != [0, 0, 0]).count();
    covered as f64 / f64::from(image.width() * image.height())
}

/// Dark pixels inside the front face: lit clay is light (about 180), the
/// wire near black (about 80 where it is fully covered).
fn wire_pixels(image: &image::RgbaImage) -> usize {
    // The face spans about 66..190 of 256 pixels; stay inside it.
    (72..184)
        .flat_map(|y| (72..184).map(move |x| (x, y)))
        .filter(|&(x, y)| image.get_pixel(x, y).0[..3].iter().all(|&c| c < 120))
        .count()
}

/// The wireframe and the covered area of the cube, as the renderer tests check them.
fn assert_draws_the_cube(renderer: &HeadlessRenderer) {
    let solid = front_cube(renderer, false);
    let wire = front_cube(renderer, true);
    let covered = covered_fraction(&solid);
    // The face's half side 0.5 at 2.5 units under a 45° field of view.
    let half_extent = 0.5 / (2.5 * (45f64.to_radians() / 2.0).tan());
    let expected = half_extent * half_extent;
    assert!(
        (covered - expected).abs() < 0.01,
        "{}: covered {covered:.4}, expected {expected:.4}",
        renderer.adapter_description()
    );
    assert!(
        solid.get_pixel(100, 128).0[..3].iter().all(|&c| c > 120),
        "clay face is light: {:?}",
        solid.get_pixel(100, 128)
    );
    assert_eq!(wire_pixels(&solid), 0, "no edges without wireframe");
    // The face's diagonal crosses the sampled square: about 160 px long, 1.2 px wide.
    let edges = wire_pixels(&wire);
    assert!(
        edges > 100,
        "{}: the wireframe draws the diagonal ({edges} dark pixels)",
        renderer.adapter_description()
    );
}

#[test]
fn fallback_wireframe_draws_what_the_pulled_wireframe_draws() {
    let Some(full) = renderer() else { return };
    let Some(fallback) = open_or_skip(
        &HeadlessConfig {
            backend: None,
            force_downlevel: true,
        },
        "the default adapter",
    ) else {
        return;
    };
    assert!(!fallback.caps().vertex_storage && !fallback.caps().view_formats);
    assert_draws_the_cube(&fallback);
    if full.caps().vertex_storage {
        let pulled = front_cube(&full, true);
        let corners = front_cube(&fallback, true);
        let changed = changed_fraction(&pulled, &corners);
        assert!(
            changed < 0.002,
            "the two wireframe paths differ in {:.3} % of the pixels",
            changed * 100.0
        );
    }
}

#[test]
fn gl_adapter_draws_the_mesh_on_both_paths() {
    let Some(gl) = open_or_skip(&gl_config(false), "OpenGL through EGL (llvmpipe)") else {
        return;
    };
    assert_eq!(gl.backend(), wgpu::Backend::Gl);
    assert_draws_the_cube(&gl);
    let downlevel = open_or_skip(&gl_config(true), "OpenGL through EGL").unwrap();
    assert_draws_the_cube(&downlevel);
}

fn write_cube_glb(path: &Path) {
    orfeas_core::export::export_mesh(
        &box_mesh([-0.5; 3], [0.5; 3]),
        path,
        orfeas_core::export::ExportFormat::Glb,
    )
    .unwrap();
}

#[test]
fn render_command_draws_the_mesh_with_vulkan_hidden() {
    if open_or_skip(&gl_config(false), "OpenGL through EGL (llvmpipe)").is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mesh = tmp.path().join("cube.glb");
    write_cube_glb(&mesh);
    // No flag (wgpu falls back to GL by itself) and the forced backend.
    for (name, backend) in [("auto", None), ("forced", Some("gl"))] {
        let out = tmp.path().join(format!("{name}.png"));
        let mut command = Command::new(env!("CARGO_BIN_EXE_orfeas"));
        command
            .arg("render")
            .args([mesh.as_os_str(), "-o".as_ref(), out.as_os_str()])
            .args([
                "--view",
                "front",
                "--size",
                "256x256",
                "--no-grid",
                "--mode",
                "clay",
            ])
            .args(["--wireframe"])
            .env("VK_ICD_FILENAMES", "/nonexistent.json")
            .env("ORFEAS_DATA_DIR", tmp.path().join("data"))
            .env_remove("WGPU_BACKEND")
            .env_remove("ORFEAS_BACKEND");
        if let Some(backend) = backend {
            command.env("ORFEAS_BACKEND", backend);
        }
        let output = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "{name}: orfeas render failed: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        let image = image::open(&out).unwrap().to_rgba8();
        // Off the face's diagonals, which the wireframe darkens.
        let face = image.get_pixel(100, 128).0;
        assert!(
            face[..3].iter().all(|&c| c > 120),
            "{name}: the cube is in the middle: {face:?}"
        );
        let corner = image.get_pixel(4, 4).0;
        assert!(
            corner[..3].iter().all(|&c| c < 90),
            "{name}: background in the corner: {corner:?}"
        );
        assert!(
            wire_pixels(&image) > 100,
            "{name}: the wireframe shows on GL"
        );
    }
}

#[test]
fn render_command_refuses_an_unknown_backend() {
    let output = Command::new(env!("CARGO_BIN_EXE_orfeas"))
        .args(["--backend", "opengl-es9", "render", "x.glb", "-o", "x.png"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("vulkan") && stderr.contains("gl") && stderr.contains("metal"),
        "the error lists the choices: {stderr}"
    );
}

/// eframe's own set-up restricted to GL: WebGL2 limits, so no vertex storage.
fn gl_render_state() -> egui_wgpu::RenderState {
    let mut setup = egui_wgpu::WgpuSetupCreateNew::without_display_handle();
    setup.instance_descriptor.backends = wgpu::Backends::GL;
    egui_kittest::wgpu::create_render_state(
        egui_wgpu::WgpuSetup::CreateNew(setup),
        egui_wgpu::RendererOptions::PREDICTABLE,
    )
}

#[test]
fn viewer_opens_a_mesh_on_gl_with_wireframe_on_and_off() {
    if open_or_skip(&gl_config(false), "OpenGL through EGL (llvmpipe)").is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mesh = tmp.path().join("cube.glb");
    write_cube_glb(&mesh);
    let render_state = gl_render_state();
    assert_eq!(render_state.adapter.get_info().backend, wgpu::Backend::Gl);
    let mut h = viewer_app(&render_state, &tmp.path().join("data"), &mesh);
    step_until(&mut h, "the mesh to load", |h| {
        h.state().viewer().stats().is_some() && !h.state().viewer().is_loading()
    });
    h.run();
    assert_eq!(h.state().saved_state().tab, Tab::Viewer);
    h.get_by_label("12 faces");
    assert!(
        h.query_by_label_contains("downlevel, fallbacks for: vertex-stage storage buffers")
            .is_some(),
        "the viewer says which fallbacks it uses"
    );
    assert!(h.query_by_label_contains("3D view unavailable").is_none());
    let solid = h.render().unwrap();

    h.get_by_label("Wireframe").click();
    h.run();
    let wire = h.render().unwrap();
    let wire_change = changed_fraction(&solid, &wire);
    assert!(
        wire_change > 0.001,
        "wireframe on draws edges over the mesh on GL ({wire_change})"
    );
    h.get_by_label("Wireframe").click();
    h.run();
    let solid_again = h.render().unwrap();
    // Only the hovered checkbox differs from the first image.
    let back_change = changed_fraction(&solid, &solid_again);
    assert!(
        back_change < wire_change / 4.0,
        "wireframe off gives the first image back ({back_change} vs {wire_change})"
    );
    h.get_by_label("Front").click();
    h.run();
    let front = h.render().unwrap();
    assert!(
        changed_fraction(&solid_again, &front) > 0.01,
        "the camera still works on GL"
    );
}

#[test]
fn a_gpu_error_costs_the_3d_view_not_the_studio() {
    if renderer().is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mesh = tmp.path().join("cube.glb");
    write_cube_glb(&mesh);
    let render_state = egui_kittest::wgpu::create_render_state(
        egui_kittest::wgpu::default_wgpu_setup(),
        egui_wgpu::RendererOptions::PREDICTABLE,
    );
    let mut h = viewer_app(&render_state, &tmp.path().join("data"), &mesh);
    step_until(&mut h, "the mesh to load", |h| {
        h.state().viewer().stats().is_some() && !h.state().viewer().is_loading()
    });
    h.run();
    // A validation error outside any error scope: wgpu's default handler panics.
    let _invalid = render_state.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("invalid on purpose"),
        size: 4,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::MAP_WRITE,
        mapped_at_creation: false,
    });
    h.run();
    assert!(
        h.query_by_label_contains("3D view unavailable: the GPU reported an error")
            .is_some(),
        "the viewer says what happened"
    );
    h.render().unwrap();
    h.get_by_role_and_label(egui::accesskit::Role::Button, "Settings")
        .click();
    h.run();
    assert!(
        h.query_by_role_and_label(egui::accesskit::Role::Slider, "Jobs at once")
            .is_some(),
        "the rest of the studio keeps working"
    );
}

#[test]
fn a_forced_backend_without_a_driver_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let mesh = tmp.path().join("cube.glb");
    write_cube_glb(&mesh);
    let output = Command::new(env!("CARGO_BIN_EXE_orfeas"))
        .args(["--backend", "vulkan", "render"])
        .args([
            mesh.as_os_str(),
            "-o".as_ref(),
            tmp.path().join("x.png").as_os_str(),
        ])
        .env("VK_ICD_FILENAMES", "/nonexistent.json")
        .env("ORFEAS_DATA_DIR", tmp.path().join("data"))
        .env_remove("WGPU_BACKEND")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains("no GPU adapter found") && stderr.contains("--backend"),
        "the error says what to do: {stderr}"
    );
    assert!(!tmp.path().join("x.png").exists(), "nothing is written");
}
