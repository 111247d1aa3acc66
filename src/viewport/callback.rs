//! The viewport inside egui: GPU resources live in egui-wgpu's
//! `callback_resources`; each frame a [`ViewportCallback`] renders the scene into
//! the viewer's own offscreen target in `prepare` (own depth buffer and MSAA,
//! whatever egui's pass has) and copies it into egui's pass in `paint`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use eframe::egui;
use eframe::egui_wgpu::{self, wgpu};

use parking_lot::Mutex;

use super::gpu::{RenderCaps, describe_adapter};
use super::renderer::{
    COLOR_FORMAT, COLOR_FORMAT_RAW, FrameTarget, GpuMesh, MeshVertices, SceneRenderer,
    SceneSettings, pick_sample_count, texture_bind_group, texture_bind_group_layout,
};

/// The attachments of egui's render pass, which the blit pipeline must match.
/// eframe builds them from `NativeOptions::{multisampling, depth_buffer}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EguiPassConfig {
    pub target_format: wgpu::TextureFormat,
    pub msaa_samples: u32,
    pub depth_format: Option<wgpu::TextureFormat>,
}

impl EguiPassConfig {
    /// eframe's defaults (`multisampling: 0`, `depth_buffer: 0`).
    pub fn eframe_default(target_format: wgpu::TextureFormat) -> Self {
        Self {
            target_format,
            msaa_samples: 1,
            depth_format: None,
        }
    }

    /// What eframe sets up for `options` (call from `App::new` with
    /// `cc.wgpu_render_state`'s target format).
    pub fn from_native_options(
        options: &eframe::NativeOptions,
        target_format: wgpu::TextureFormat,
    ) -> Self {
        Self {
            target_format,
            msaa_samples: u32::from(options.multisampling).max(1),
            depth_format: egui_wgpu::depth_format_from_bits(
                options.depth_buffer,
                options.stencil_buffer,
            ),
        }
    }
}

/// Puts the viewport's pipelines into the egui renderer's callback resources.
/// Call once at start-up with the pass configuration the app asked eframe for;
/// [`super::viewer_ui`] installs eframe's defaults itself if this was not done.
///
/// Also replaces wgpu's default handler for uncaptured errors on the shared
/// device (it panics) with one that logs and records the first error: a GPU
/// problem then costs the 3D view, not the studio. Pipelines that cannot be
/// created leave a [`ViewportUnavailable`] with the reason instead.
pub fn install(render_state: &egui_wgpu::RenderState, egui_pass: EguiPassConfig) {
    let device = &render_state.device;
    let gpu_error = Arc::new(Mutex::new(None::<String>));
    let sink = Arc::clone(&gpu_error);
    device.on_uncaptured_error(Arc::new(move |err: wgpu::Error| {
        tracing::error!("wgpu: {err}");
        sink.lock().get_or_insert_with(|| err.to_string());
    }));
    let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let resources = ViewportResources::new(render_state, egui_pass, Arc::clone(&gpu_error));
    let failed = pollster::block_on(scope.pop());
    let mut renderer = render_state.renderer.write();
    match failed {
        None => {
            tracing::info!(
                "viewport on {}{}",
                describe_adapter(&render_state.adapter.get_info()),
                fallback_note(resources.scene.caps())
            );
            renderer.callback_resources.insert(resources);
        }
        Some(err) => {
            tracing::error!("the 3D view cannot start: {err}");
            renderer.callback_resources.insert(ViewportUnavailable {
                reason: format!("{err}"),
            });
        }
    }
}

/// Set instead of [`ViewportResources`] when the pipelines could not be made.
pub struct ViewportUnavailable {
    pub reason: String,
}

pub fn is_installed(render_state: &egui_wgpu::RenderState) -> bool {
    let renderer = render_state.renderer.read();
    renderer.callback_resources.contains::<ViewportResources>()
        || renderer
            .callback_resources
            .contains::<ViewportUnavailable>()
}

/// What the viewer can tell the user about the 3D view's GPU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ViewportHealth {
    /// Drawing; `note` names fallbacks in use ("" on a full device).
    Ready { adapter: String, note: String },
    /// Not drawing: why, and what to try.
    Failed(String),
}

/// The state of the installed viewport (`None` before [`install`]).
pub fn health(render_state: &egui_wgpu::RenderState) -> Option<ViewportHealth> {
    let renderer = render_state.renderer.read();
    if let Some(unavailable) = renderer.callback_resources.get::<ViewportUnavailable>() {
        return Some(ViewportHealth::Failed(unavailable.reason.clone()));
    }
    let resources = renderer.callback_resources.get::<ViewportResources>()?;
    if let Some(err) = resources.gpu_error.lock().as_ref() {
        return Some(ViewportHealth::Failed(err.clone()));
    }
    Some(ViewportHealth::Ready {
        adapter: describe_adapter(&render_state.adapter.get_info()),
        note: fallback_note(resources.scene.caps()),
    })
}

fn fallback_note(caps: RenderCaps) -> String {
    if caps.is_full() {
        String::new()
    } else {
        format!(" (downlevel, fallbacks for: {})", caps.missing())
    }
}

pub struct ViewportResources {
    scene: SceneRenderer,
    blit_pipeline: wgpu::RenderPipeline,
    blit_layout: wgpu::BindGroupLayout,
    blit_sampler: wgpu::Sampler,
    /// The view format the blit samples: linear values for an sRGB target (it
    /// re-encodes) and for `fs_blit_encode`, the raw bytes otherwise.
    blit_view_format: wgpu::TextureFormat,
    viewers: HashMap<egui::Id, ViewerGpu>,
    /// The first uncaptured wgpu error on the device; the view stops drawing.
    gpu_error: Arc<Mutex<Option<String>>>,
}

/// GPU state of one viewer widget.
struct ViewerGpu {
    target: FrameTarget,
    blit_bind_group: wgpu::BindGroup,
    mesh: Option<(u64, GpuMesh)>,
}

impl ViewportResources {
    fn new(
        render_state: &egui_wgpu::RenderState,
        egui_pass: EguiPassConfig,
        gpu_error: Arc<Mutex<Option<String>>>,
    ) -> Self {
        let device = &render_state.device;
        let caps = RenderCaps::of(&render_state.adapter, device);
        let scene = SceneRenderer::new(
            device,
            &render_state.queue,
            pick_sample_count(&render_state.adapter),
            caps,
        );
        // egui writes gamma-encoded values into a non-sRGB target, so the image is
        // read back raw there; an sRGB target re-encodes, so it gets decoded texels.
        let (blit_view_format, blit_entry) = if egui_pass.target_format.is_srgb() {
            (COLOR_FORMAT, "fs_blit")
        } else if caps.view_formats {
            (COLOR_FORMAT_RAW, "fs_blit")
        } else {
            (COLOR_FORMAT, "fs_blit_encode")
        };
        let shader = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("viewport blit"),
            source: wgpu::ShaderSource::Wgsl(include_str!("../../shaders/blit.wgsl").into()),
        });
        let blit_layout = texture_bind_group_layout(device, "viewport blit");
        let layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("viewport blit"),
            bind_group_layouts: &[Some(&blit_layout)],
            immediate_size: 0,
        });
        let blit_pipeline = device.create_render_pipeline(&wgpu::RenderPipelineDescriptor {
            label: Some("viewport blit"),
            layout: Some(&layout),
            vertex: wgpu::VertexState {
                module: &shader,
                entry_point: Some("vs_blit"),
                compilation_options: Default::default(),
                buffers: &[],
            },
            primitive: Default::default(),
            // egui's pass may carry a depth buffer; the blit neither tests nor writes it.
            depth_stencil: egui_pass
                .depth_format
                .map(|format| wgpu::DepthStencilState {
                    format,
                    depth_write_enabled: Some(false),
                    depth_compare: Some(wgpu::CompareFunction::Always),
                    stencil: Default::default(),
                    bias: Default::default(),
                }),
            multisample: wgpu::MultisampleState {
                count: egui_pass.msaa_samples.max(1),
                ..Default::default()
            },
            fragment: Some(wgpu::FragmentState {
                module: &shader,
                entry_point: Some(blit_entry),
                compilation_options: Default::default(),
                targets: &[Some(egui_pass.target_format.into())],
            }),
            multiview_mask: None,
            cache: None,
        });
        let blit_sampler = device.create_sampler(&wgpu::SamplerDescriptor {
            label: Some("viewport blit"),
            mag_filter: wgpu::FilterMode::Linear,
            min_filter: wgpu::FilterMode::Linear,
            ..Default::default()
        });
        Self {
            scene,
            blit_pipeline,
            blit_layout,
            blit_sampler,
            blit_view_format,
            viewers: HashMap::new(),
            gpu_error,
        }
    }

    fn blit_bind_group(&self, device: &wgpu::Device, target: &FrameTarget) -> wgpu::BindGroup {
        let view = target.color_view_as(self.blit_view_format);
        texture_bind_group(
            device,
            "viewport blit",
            &self.blit_layout,
            &self.blit_sampler,
            &view,
        )
    }
}

/// One frame of one viewer, queued with `ui.painter().add(...)`.
pub struct ViewportCallback {
    pub viewer_id: egui::Id,
    pub size_px: [u32; 2],
    pub pixels_per_point: f32,
    /// The mesh and a number that changes whenever the mesh does.
    pub mesh: Option<(u64, Arc<MeshVertices>)>,
    pub settings: SceneSettings,
}

static WARNED_MISSING: AtomicBool = AtomicBool::new(false);

fn warn_missing_once() {
    if !WARNED_MISSING.swap(true, Ordering::Relaxed) {
        tracing::error!("viewport GPU resources are missing; call viewport::install at start-up");
    }
}

impl egui_wgpu::CallbackTrait for ViewportCallback {
    fn prepare(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        _screen_descriptor: &egui_wgpu::ScreenDescriptor,
        egui_encoder: &mut wgpu::CommandEncoder,
        callback_resources: &mut egui_wgpu::CallbackResources,
    ) -> Vec<wgpu::CommandBuffer> {
        let Some(resources) = callback_resources.get_mut::<ViewportResources>() else {
            warn_missing_once();
            return Vec::new();
        };
        if resources.gpu_error.lock().is_some() {
            // The viewer shows the error; more commands would repeat it every frame.
            return Vec::new();
        }
        let [width, height] = self
            .size_px
            .map(|side| side.clamp(1, super::headless::MAX_SIZE_PX));
        let stale = resources.viewers.get(&self.viewer_id).is_none_or(|viewer| {
            viewer.target.width != width
                || viewer.target.height != height
                || viewer.target.pixels_per_point != self.pixels_per_point
        });
        if stale {
            let target = FrameTarget::new(
                &resources.scene,
                device,
                width,
                height,
                self.pixels_per_point,
            );
            let blit_bind_group = resources.blit_bind_group(device, &target);
            let mesh = resources
                .viewers
                .remove(&self.viewer_id)
                .and_then(|viewer| viewer.mesh);
            resources.viewers.insert(
                self.viewer_id,
                ViewerGpu {
                    target,
                    blit_bind_group,
                    mesh,
                },
            );
        }
        let ViewportResources { scene, viewers, .. } = resources;
        let Some(viewer) = viewers.get_mut(&self.viewer_id) else {
            return Vec::new();
        };
        match &self.mesh {
            Some((generation, vertices)) => {
                if viewer
                    .mesh
                    .as_ref()
                    .is_none_or(|(uploaded, _)| uploaded != generation)
                {
                    viewer.mesh =
                        Some((*generation, GpuMesh::upload(scene, device, queue, vertices)));
                }
            }
            None => viewer.mesh = None,
        }
        let mesh = viewer
            .mesh
            .as_ref()
            .map(|(_, mesh)| mesh)
            .filter(|m| m.triangle_count > 0);
        scene.render(queue, egui_encoder, &viewer.target, mesh, &self.settings);
        Vec::new()
    }

    fn paint(
        &self,
        _info: egui::PaintCallbackInfo,
        render_pass: &mut wgpu::RenderPass<'static>,
        callback_resources: &egui_wgpu::CallbackResources,
    ) {
        let Some(resources) = callback_resources.get::<ViewportResources>() else {
            warn_missing_once();
            return;
        };
        let Some(viewer) = resources.viewers.get(&self.viewer_id) else {
            return;
        };
        if resources.gpu_error.lock().is_some() {
            return;
        }
        render_pass.set_pipeline(&resources.blit_pipeline);
        render_pass.set_bind_group(0, &viewer.blit_bind_group, &[]);
        render_pass.draw(0..3, 0..1);
    }
}
