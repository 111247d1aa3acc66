//! The Viewer widget: toolbar, the 3D view with camera input, mesh stats, and
//! loading of mesh files on a background thread.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError};

use eframe::egui;
use eframe::egui_wgpu;
use glam::Vec2;
use orfeas_core::import::MeshFormat;
use orfeas_core::mesh::Mesh;

use super::callback::{self, EguiPassConfig, ViewportCallback, ViewportHealth};
use super::camera::{Bounds, OrbitCamera, View};
use super::renderer::{Background, MeshVertices, SceneSettings, ShadingMode};

/// Summary numbers of the shown mesh.
#[derive(Clone, Debug, PartialEq)]
pub struct MeshStats {
    pub vertices: usize,
    pub faces: usize,
    pub bounds: Option<Bounds>,
    /// Every edge (after welding equal positions) is shared by exactly two faces.
    pub watertight: bool,
}

impl MeshStats {
    pub fn of(mesh: &Mesh) -> Self {
        Self {
            vertices: mesh.vertex_count(),
            faces: mesh.triangle_count(),
            bounds: mesh
                .bounds()
                .map(|(min, max)| Bounds::from_min_max(min, max)),
            // Welded by position, so UV seams (split vertices) do not count as holes.
            watertight: mesh.topology().is_closed(),
        }
    }
}

/// A mesh ready to show: the CPU-side GPU vertices plus stats.
struct LoadedMesh {
    name: String,
    generation: u64,
    vertices: Arc<MeshVertices>,
    stats: MeshStats,
}

enum LoadMessage {
    Stage(&'static str),
    Done(Result<(Arc<Mesh>, Arc<MeshVertices>, MeshStats), String>),
}

struct LoadJob {
    name: String,
    stage: &'static str,
    receiver: Receiver<LoadMessage>,
}

/// What the viewer asks the app to do (the app owns dialogs and exporters).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ViewerCommand {
    /// The user clicked "Open…".
    OpenDialog,
    /// The user asked to export the shown mesh.
    Export(MeshFormat),
}

/// Runtime state of one viewer (camera, toggles, the mesh); not persisted.
pub struct ViewerState {
    pub id: egui::Id,
    pub camera: OrbitCamera,
    pub mode: ShadingMode,
    pub wireframe: bool,
    pub grid: bool,
    pub turntable: bool,
    pub background: Background,
    /// Quality score (0..1) of the shown mesh, when it came from a generation.
    pub quality_score: Option<f32>,
    /// The last load error, shown until the next load.
    pub error: Option<String>,
    mesh: Option<LoadedMesh>,
    /// The shown mesh itself, for export.
    source: Option<Arc<Mesh>>,
    loading: Option<LoadJob>,
    next_generation: u64,
    /// Fit the camera on the next frame (the aspect is known only then).
    fit_pending: bool,
}

impl Default for ViewerState {
    fn default() -> Self {
        Self::new(egui::Id::unique("orfeas_viewer"))
    }
}

/// Meshes larger than this are prepared on a background thread.
const INLINE_PREPARE_TRIANGLES: usize = 50_000;

impl ViewerState {
    pub fn new(id: egui::Id) -> Self {
        let mut camera = OrbitCamera::default();
        camera.set_view(View::Iso);
        Self {
            id,
            camera,
            mode: ShadingMode::Lit,
            wireframe: false,
            grid: true,
            turntable: false,
            background: Background::default(),
            quality_score: None,
            error: None,
            mesh: None,
            source: None,
            loading: None,
            next_generation: 1,
            fit_pending: false,
        }
    }

    /// Shows `mesh`; large meshes are prepared on a background thread.
    pub fn set_mesh(&mut self, ctx: &egui::Context, name: impl Into<String>, mesh: Mesh) {
        let name = name.into();
        self.quality_score = None;
        if mesh.triangle_count() <= INLINE_PREPARE_TRIANGLES {
            let vertices = Arc::new(MeshVertices::from_mesh(&mesh));
            let stats = MeshStats::of(&mesh);
            self.loading = None;
            self.finish_load(name, Arc::new(mesh), vertices, stats);
        } else {
            let mesh = Arc::new(mesh);
            self.spawn_load(ctx, name, move |_| Ok(mesh));
        }
    }

    /// Imports a mesh file on a background thread; progress shows in the viewer.
    pub fn open_file(&mut self, ctx: &egui::Context, path: &Path) {
        let name = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let path = path.to_owned();
        self.quality_score = None;
        self.spawn_load(ctx, name, move |progress| {
            let _ = progress.send(LoadMessage::Stage("reading file"));
            super::open_mesh_file(&path)
                .map(Arc::new)
                .map_err(|err| format!("{err:#}"))
        });
    }

    fn spawn_load(
        &mut self,
        ctx: &egui::Context,
        name: String,
        load: impl FnOnce(&SyncSender<LoadMessage>) -> Result<Arc<Mesh>, String> + Send + 'static,
    ) {
        // Bounded: the loader sends a handful of messages; it blocks if the UI is slow.
        let (sender, receiver) = std::sync::mpsc::sync_channel(4);
        let ctx = ctx.clone();
        let spawned = std::thread::Builder::new()
            .name("viewer-mesh-load".into())
            .spawn(move || {
                let result = load(&sender).map(|mesh| {
                    let _ = sender.send(LoadMessage::Stage("preparing GPU buffers"));
                    ctx.request_repaint();
                    let vertices = Arc::new(MeshVertices::from_mesh(&mesh));
                    let stats = MeshStats::of(&mesh);
                    (mesh, vertices, stats)
                });
                // The viewer may have been closed meanwhile; then the result is not wanted.
                let _ = sender.send(LoadMessage::Done(result));
                ctx.request_repaint();
            });
        match spawned {
            Ok(_) => {
                self.error = None;
                self.loading = Some(LoadJob {
                    name,
                    stage: "starting",
                    receiver,
                });
            }
            Err(err) => self.error = Some(format!("cannot start loading {name}: {err}")),
        }
    }

    fn finish_load(
        &mut self,
        name: String,
        mesh: Arc<Mesh>,
        vertices: Arc<MeshVertices>,
        stats: MeshStats,
    ) {
        self.mesh = Some(LoadedMesh {
            name,
            generation: self.next_generation,
            vertices,
            stats,
        });
        self.source = Some(mesh);
        self.next_generation += 1;
        self.error = None;
        self.fit_pending = true;
    }

    fn poll_loading(&mut self) {
        let Some(job) = &mut self.loading else {
            return;
        };
        loop {
            match job.receiver.try_recv() {
                Ok(LoadMessage::Stage(stage)) => job.stage = stage,
                Ok(LoadMessage::Done(result)) => {
                    let name = job.name.clone();
                    self.loading = None;
                    match result {
                        Ok((mesh, vertices, stats)) => {
                            self.finish_load(name, mesh, vertices, stats)
                        }
                        Err(err) => self.error = Some(err),
                    }
                    return;
                }
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => {
                    self.error = Some(format!("loading {} stopped unexpectedly", job.name));
                    self.loading = None;
                    return;
                }
            }
        }
    }

    pub fn is_loading(&self) -> bool {
        self.loading.is_some()
    }

    pub fn stats(&self) -> Option<&MeshStats> {
        self.mesh.as_ref().map(|m| &m.stats)
    }

    /// The mesh on show, e.g. for export.
    pub fn mesh(&self) -> Option<&Arc<Mesh>> {
        self.source.as_ref()
    }

    pub fn mesh_name(&self) -> Option<&str> {
        self.mesh.as_ref().map(|m| m.name.as_str())
    }

    fn bounds(&self) -> Bounds {
        self.mesh
            .as_ref()
            .and_then(|m| m.stats.bounds)
            .unwrap_or(Bounds::from_min_max([-0.5; 3], [0.5; 3]))
    }

    /// Fits the camera to the mesh, keeping the viewing direction.
    pub fn fit(&mut self, aspect: f32) {
        let bounds = self.bounds();
        self.camera.fit(&bounds, aspect);
    }

    pub fn show_view(&mut self, view: View, aspect: f32) {
        self.camera.set_view(view);
        self.fit(aspect);
    }
}

/// The Viewer: toolbar, 3D view and stats. `render_state` is eframe's
/// (`frame.wgpu_render_state()`); without one the widget says why it is empty.
pub fn viewer_ui(
    ui: &mut egui::Ui,
    state: &mut ViewerState,
    render_state: Option<&egui_wgpu::RenderState>,
) -> Option<ViewerCommand> {
    state.poll_loading();
    let health = render_state.map(|render_state| {
        if !callback::is_installed(render_state) {
            callback::install(
                render_state,
                EguiPassConfig::eframe_default(render_state.target_format),
            );
        }
        callback::health(render_state)
    });
    let mut command = None;
    let mut view_request = None;
    let mut fit_request = false;

    ui.horizontal_wrapped(|ui| {
        if ui
            .button("Open…")
            .on_hover_text("Open a GLB, glTF, OBJ, PLY or STL file")
            .clicked()
        {
            command = Some(ViewerCommand::OpenDialog);
        }
        ui.separator();
        egui::ComboBox::from_label("Shading")
            .selected_text(mode_label(state.mode))
            .show_ui(ui, |ui| {
                for mode in ShadingMode::ALL {
                    ui.selectable_value(&mut state.mode, mode, mode_label(mode));
                }
            });
        ui.checkbox(&mut state.wireframe, "Wireframe");
        ui.checkbox(&mut state.grid, "Grid");
        ui.checkbox(&mut state.turntable, "Turntable");
        ui.separator();
        for view in View::ALL {
            if ui.button(view_label(view)).clicked() {
                view_request = Some(view);
            }
        }
        if ui
            .button("Fit")
            .on_hover_text("Fit the mesh in view (F)")
            .clicked()
        {
            fit_request = true;
        }
        if ui
            .button("Reset")
            .on_hover_text("Back to the default three-quarter view")
            .clicked()
        {
            view_request = Some(View::Iso);
        }
        if state.source.is_some() {
            ui.separator();
            ui.menu_button("Export", |ui| {
                for format in [
                    MeshFormat::Glb,
                    MeshFormat::Obj,
                    MeshFormat::Ply,
                    MeshFormat::Stl,
                ] {
                    if ui.button(format.name()).clicked() {
                        command = Some(ViewerCommand::Export(format));
                        ui.close();
                    }
                }
            });
        }
    });

    stats_ui(ui, state);
    if let Some(Some(ViewportHealth::Ready { adapter, note })) = &health
        && !note.is_empty()
    {
        ui.weak(format!("GPU: {adapter}{note}"));
    }

    let available = ui.available_size().max(egui::vec2(64.0, 64.0));
    let (rect, response) = ui.allocate_exact_size(available, egui::Sense::click_and_drag());
    let aspect = rect.width() / rect.height().max(1.0);

    if state.fit_pending {
        state.fit_pending = false;
        fit_request = true;
    }
    if let Some(view) = view_request {
        state.show_view(view, aspect);
    }
    if response.hovered() && ui.input(|i| i.key_pressed(egui::Key::F)) {
        fit_request = true;
    }
    if response.double_clicked() {
        fit_request = true;
    }
    if fit_request {
        state.fit(aspect);
    }
    camera_input(ui, state, &response, rect);
    if state.turntable {
        let dt_secs = ui.input(|i| i.stable_dt).min(0.1);
        state.camera.turn(dt_secs * 0.6);
        ui.ctx().request_repaint();
    }
    open_dropped_files(ui, state);

    if render_state.is_none() {
        message_ui(
            ui,
            rect,
            "3D view unavailable: the app is not running on the wgpu renderer",
        );
        return command;
    }
    if let Some(Some(ViewportHealth::Failed(reason))) = &health {
        let text = format!(
            "3D view unavailable: the GPU reported an error.\n{reason}\n\
             The rest of the studio keeps working; try `orfeas --backend gl` \
             or `--backend vulkan`, or update the graphics driver."
        );
        ui.put(rect.shrink(24.0), |ui: &mut egui::Ui| {
            egui::Frame::popup(ui.style())
                .show(ui, |ui| ui.add(egui::Label::new(text).wrap()))
                .response
        });
        return command;
    }
    let pixels_per_point = ui.ctx().pixels_per_point();
    let size_px =
        [rect.width(), rect.height()].map(|side| (side * pixels_per_point).round().max(1.0) as u32);
    let callback = ViewportCallback {
        viewer_id: state.id,
        size_px,
        pixels_per_point,
        mesh: state
            .mesh
            .as_ref()
            .map(|m| (m.generation, Arc::clone(&m.vertices))),
        settings: SceneSettings {
            camera: state.camera,
            mode: state.mode,
            wireframe: state.wireframe,
            grid: state.grid,
            background: state.background,
        },
    };
    ui.painter()
        .add(egui_wgpu::Callback::new_paint_callback(rect, callback));

    if let Some(job) = &state.loading {
        let text = format!("Loading {}: {}…", job.name, job.stage);
        ui.put(
            egui::Rect::from_center_size(rect.center(), egui::vec2(rect.width().min(360.0), 40.0)),
            |ui: &mut egui::Ui| {
                egui::Frame::popup(ui.style())
                    .show(ui, |ui| {
                        ui.horizontal(|ui| {
                            ui.spinner();
                            ui.label(text);
                        })
                    })
                    .response
            },
        );
    } else if let Some(err) = &state.error {
        message_ui(ui, rect, err);
    } else if state.mesh.is_none() {
        message_ui(
            ui,
            rect,
            "Drop a GLB, glTF, OBJ, PLY or STL file here, or click Open…",
        );
    }
    command
}

fn camera_input(
    ui: &egui::Ui,
    state: &mut ViewerState,
    response: &egui::Response,
    rect: egui::Rect,
) {
    let delta = response.drag_delta();
    let delta_px = Vec2::new(delta.x, delta.y) * ui.ctx().pixels_per_point();
    if response.dragged_by(egui::PointerButton::Primary) {
        state.camera.orbit(delta_px);
    } else if response.dragged_by(egui::PointerButton::Secondary)
        || response.dragged_by(egui::PointerButton::Middle)
    {
        state.camera.pan(Vec2::new(delta.x, delta.y), rect.height());
    }
    if response.hovered() {
        let scroll = ui.input(|i| i.smooth_scroll_delta.y);
        if scroll != 0.0 {
            let pointer = ui.input(|i| i.pointer.hover_pos()).unwrap_or(rect.center());
            let cursor_ndc = Vec2::new(
                (pointer.x - rect.center().x) / (rect.width() * 0.5),
                -(pointer.y - rect.center().y) / (rect.height() * 0.5),
            );
            let aspect = rect.width() / rect.height().max(1.0);
            state
                .camera
                .zoom_toward((-scroll * 0.002).exp(), cursor_ndc, aspect);
        }
    }
}

fn open_dropped_files(ui: &egui::Ui, state: &mut ViewerState) {
    let dropped: Vec<PathBuf> = ui.input(|i| {
        i.raw
            .dropped_files
            .iter()
            .map(|f| f.path().to_owned())
            .collect()
    });
    if let Some(path) = dropped.iter().find(|p| MeshFormat::from_path(p).is_some()) {
        state.open_file(ui.ctx(), path);
    } else if let Some(path) = dropped.first() {
        state.error = Some(format!(
            "{} is not a mesh file; drop a .glb, .gltf, .obj, .ply or .stl file",
            path.display()
        ));
    }
}

fn stats_ui(ui: &mut egui::Ui, state: &ViewerState) {
    ui.horizontal_wrapped(|ui| match (&state.mesh, state.stats()) {
        (Some(mesh), Some(stats)) => {
            ui.strong(&mesh.name);
            ui.label(format!("{} vertices", thousands(stats.vertices)));
            ui.label(format!("{} faces", thousands(stats.faces)));
            if let Some(bounds) = stats.bounds {
                let size = bounds.size();
                ui.label(format!(
                    "size {:.3} × {:.3} × {:.3}",
                    size.x, size.y, size.z
                ));
            }
            ui.label(if stats.watertight {
                "watertight"
            } else {
                "open (not watertight)"
            });
            if let Some(score) = state.quality_score {
                ui.label(format!("quality {score:.2}"));
            }
        }
        _ => {
            ui.weak("No mesh loaded");
        }
    });
}

fn message_ui(ui: &egui::Ui, rect: egui::Rect, text: &str) {
    ui.painter().text(
        rect.center(),
        egui::Align2::CENTER_CENTER,
        text,
        egui::FontId::proportional(15.0),
        ui.visuals().strong_text_color(),
    );
}

fn mode_label(mode: ShadingMode) -> &'static str {
    match mode {
        ShadingMode::Lit => "Lit",
        ShadingMode::Flat => "Flat lit",
        ShadingMode::Clay => "Clay",
        ShadingMode::Textured => "Textured (unlit)",
        ShadingMode::VertexColor => "Vertex colour",
        ShadingMode::Normals => "Normals",
    }
}

fn view_label(view: View) -> &'static str {
    match view {
        View::Front => "Front",
        View::Back => "Back",
        View::Left => "Left",
        View::Right => "Right",
        View::Top => "Top",
        View::Bottom => "Bottom",
        View::Iso => "Iso",
    }
}

fn thousands(value: usize) -> String {
    let digits = value.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
