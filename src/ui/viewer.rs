//! Viewer tab: the 3D viewport widget ([`crate::viewport::viewer_ui`]) on the app's
//! [`ViewerState`]. Unlike the other panels it gets the viewer state mutably, because
//! the camera is moved by input every frame; everything slow (file dialogs, import,
//! export) still happens in the app, off the UI thread.

use eframe::egui_wgpu;

use crate::viewport::{ViewerCommand, ViewerState, viewer_ui};

pub fn viewer_tab_ui(
    ui: &mut egui::Ui,
    state: &mut ViewerState,
    render_state: Option<&egui_wgpu::RenderState>,
) -> Option<ViewerCommand> {
    viewer_ui(ui, state, render_state)
}
