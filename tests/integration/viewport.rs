//! The Viewer widget inside egui (egui_kittest on the wgpu renderer) and WGSL validation.

use eframe::egui;
use eframe::egui_wgpu;
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable as _;
use orfeas::viewport::{self, EguiPassConfig, ViewerState};

use super::render::{box_mesh, renderer};

#[test]
fn every_wgsl_shader_validates_with_naga() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "wgsl") {
            continue;
        }
        let source = std::fs::read_to_string(&path).unwrap();
        let module = naga::front::wgsl::parse_str(&source)
            .unwrap_or_else(|err| panic!("{}: {}", path.display(), err.emit_to_string(&source)));
        naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::default(),
        )
        .validate(&module)
        .unwrap_or_else(|err| panic!("{}: {}", path.display(), err.emit_to_string(&source)));
        checked += 1;
    }
    assert!(
        checked >= 2,
        "found only {checked} shaders in {}",
        dir.display()
    );
}

const SIZE: egui::Vec2 = egui::vec2(640.0, 480.0);

fn harness(render_state: &egui_wgpu::RenderState) -> Harness<'static, ViewerState> {
    viewport::install(
        render_state,
        EguiPassConfig::eframe_default(render_state.target_format),
    );
    let in_ui = render_state.clone();
    Harness::builder()
        .with_size(SIZE)
        .renderer(egui_kittest::wgpu::WgpuTestRenderer::from_render_state(
            render_state.clone(),
        ))
        .build_ui_state(
            move |ui, state: &mut ViewerState| {
                viewport::viewer_ui(ui, state, Some(&in_ui));
            },
            ViewerState::new(egui::Id::unique("test viewer")),
        )
}

/// Share of pixels that differ noticeably between two renders.
pub(crate) fn changed_fraction(a: &image::RgbaImage, b: &image::RgbaImage) -> f64 {
    let changed = a
        .pixels()
        .zip(b.pixels())
        .filter(|(p, q)| p.0.iter().zip(q.0).any(|(x, y)| x.abs_diff(y) > 24))
        .count();
    changed as f64 / f64::from(a.width() * a.height())
}

/// Drags with the primary button from `start` to the right in ten moves of `step` pixels.
pub(crate) fn drag_right<S>(h: &mut Harness<'_, S>, start: egui::Pos2, step: f32) {
    h.drag_at(start);
    h.step();
    for i in 1..=10 {
        h.hover_at(start + egui::vec2(step * i as f32, 0.0));
        h.step();
    }
    h.drop_at(start + egui::vec2(step * 10.0, 0.0));
    h.run();
}

#[test]
fn viewer_shows_a_mesh_and_dragging_orbits_it() {
    // Skips (or fails under ORFEAS_REQUIRE_TOOLS=1) where there is no adapter.
    if renderer().is_none() {
        return;
    }
    let render_state = egui_kittest::wgpu::create_render_state(
        egui_kittest::wgpu::default_wgpu_setup(),
        egui_wgpu::RendererOptions::PREDICTABLE,
    );
    let mut harness = harness(&render_state);
    let empty = harness.render().unwrap();
    harness.get_by_label("No mesh loaded");

    let ctx = harness.ctx.clone();
    // Long along X so a turn changes the silhouette a lot.
    harness
        .state_mut()
        .set_mesh(&ctx, "box", box_mesh([-1.0, -0.3, -0.3], [1.0, 0.3, 0.3]));
    harness.run();
    harness.get_by_label("12 faces");
    harness.get_by_label("watertight");
    let shown = harness.render().unwrap();
    assert!(changed_fraction(&empty, &shown) > 0.05, "the mesh appears");
    harness.snapshot_options(
        "viewer_box",
        &egui_kittest::SnapshotOptions::new()
            .threshold(2.0)
            .max_failed_pixels(200),
    );

    // Drag across the middle of the view (below the toolbar) with the primary button.
    drag_right(&mut harness, egui::pos2(SIZE.x * 0.5, SIZE.y * 0.6), 18.0);
    let dragged = harness.render().unwrap();
    assert!(
        changed_fraction(&shown, &dragged) > 0.02,
        "dragging orbits the camera"
    );

    // The Front preset looks straight at +Z: the box is wide again.
    harness.get_by_label("Front").click();
    harness.run();
    let front = harness.render().unwrap();
    assert!(
        changed_fraction(&dragged, &front) > 0.02,
        "the Front button changes the view"
    );
}
