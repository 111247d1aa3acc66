//! The Viewer tab of the real app (egui_kittest on the wgpu renderer, lavapipe in CI):
//! `orfeas view MESH` opens on the Viewer with the mesh, and dragging orbits it.

use std::path::Path;

use eframe::egui_wgpu;
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable as _;
use orfeas::app::state::{SavedState, Settings, Tab, ThemeChoice};
use orfeas::app::{AppConfig, StudioApp};

use super::gui::{MemStorage, step_until};
use super::render::{box_mesh, renderer};
use super::viewport::{changed_fraction, drag_right};

const WINDOW: egui::Vec2 = egui::vec2(1280.0, 800.0);

/// The app as `orfeas view MESH` starts it, drawn by a wgpu test renderer.
pub(crate) fn viewer_app(
    render_state: &egui_wgpu::RenderState,
    data_dir: &Path,
    mesh: &Path,
) -> Harness<'static, StudioApp> {
    // Dark theme so the snapshot does not depend on the desktop's setting.
    let mut storage = MemStorage::default();
    let saved = SavedState {
        settings: Settings {
            theme: ThemeChoice::Dark,
            ..Default::default()
        },
        ..Default::default()
    };
    eframe::set_value(&mut storage, SavedState::STORAGE_KEY, &saved);
    let config = AppConfig {
        data_dir: Some(data_dir.to_path_buf()),
        open_mesh: Some(mesh.to_path_buf()),
        ..Default::default()
    };
    Harness::builder()
        .with_size(WINDOW)
        .with_max_steps(64)
        .renderer(egui_kittest::wgpu::WgpuTestRenderer::from_render_state(
            render_state.clone(),
        ))
        .build_eframe(move |cc| {
            StudioApp::with_storage(
                &cc.egui_ctx,
                Some(&storage as &dyn eframe::Storage),
                config.clone(),
            )
        })
}

#[test]
fn view_command_opens_the_mesh_on_the_viewer_tab_and_dragging_orbits() {
    // Skips (or fails under ORFEAS_REQUIRE_TOOLS=1) where there is no adapter.
    if renderer().is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // Long along X so an orbit changes the silhouette a lot.
    let mesh_path = tmp.path().join("long box.glb");
    orfeas_core::export::export_mesh(
        &box_mesh([-1.0, -0.3, -0.3], [1.0, 0.3, 0.3]),
        &mesh_path,
        orfeas_core::export::ExportFormat::Glb,
    )
    .unwrap();

    let render_state = egui_kittest::wgpu::create_render_state(
        egui_kittest::wgpu::default_wgpu_setup(),
        egui_wgpu::RendererOptions::PREDICTABLE,
    );
    let mut h = viewer_app(&render_state, &tmp.path().join("data"), &mesh_path);
    step_until(&mut h, "the mesh to load", |h| {
        h.state().viewer().stats().is_some() && !h.state().viewer().is_loading()
    });
    h.run();
    assert_eq!(h.state().saved_state().tab, Tab::Viewer);
    h.get_by_label("long box.glb");
    h.get_by_label("12 faces");
    h.get_by_label("watertight");
    assert!(
        h.query_by_label("Export").is_some(),
        "the loaded mesh can be exported"
    );
    let shown = h.render().unwrap();
    h.snapshot_options(
        "viewer_tab",
        &egui_kittest::SnapshotOptions::new()
            .threshold(2.0)
            .max_failed_pixels(400),
    );

    // Drag across the middle of the 3D view with the primary button.
    drag_right(&mut h, egui::pos2(WINDOW.x * 0.5, WINDOW.y * 0.6), 20.0);
    let dragged = h.render().unwrap();
    assert!(
        changed_fraction(&shown, &dragged) > 0.01,
        "dragging in the Viewer turns the model"
    );
}

#[test]
fn dropping_a_mesh_file_opens_it_in_the_viewer() {
    let tmp = tempfile::tempdir().unwrap();
    let mesh_path = tmp.path().join("cube.stl");
    orfeas_core::export::export_mesh(
        &box_mesh([-0.5; 3], [0.5; 3]),
        &mesh_path,
        orfeas_core::export::ExportFormat::Stl,
    )
    .unwrap();
    let data = tmp.path().join("data");
    let mut h = Harness::builder()
        .with_size(WINDOW)
        .with_max_steps(64)
        .build_eframe(move |cc| {
            StudioApp::with_storage(
                &cc.egui_ctx,
                None,
                AppConfig {
                    data_dir: Some(data),
                    ..Default::default()
                },
            )
        });
    h.run();
    assert_eq!(h.state().saved_state().tab, Tab::Create);
    super::gui::drop_file(&mut h, &mesh_path);
    step_until(&mut h, "the dropped mesh to load", |h| {
        h.state().viewer().stats().is_some()
    });
    h.run();
    assert_eq!(h.state().saved_state().tab, Tab::Viewer);
    h.get_by_label("cube.stl");
    assert!(
        h.state().jobs().is_empty(),
        "a mesh is viewed, not sent to image→3D"
    );
}
