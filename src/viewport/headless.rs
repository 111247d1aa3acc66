//! Offscreen rendering without a window: `orfeas render`, Gallery thumbnails,
//! renderer tests and the frame-time benchmark. Same renderer as the viewport.

use std::sync::Arc;
use std::time::{Duration, Instant};

use eframe::egui_wgpu::wgpu;
use orfeas_core::mesh::Mesh;
use parking_lot::Mutex;

use super::camera::{Bounds, OrbitCamera, View};
use super::gpu::{GpuBackend, RenderCaps, describe_adapter, instance_backends};
use super::renderer::{
    Background, FrameTarget, GpuMesh, MeshVertices, SceneRenderer, SceneSettings, ShadingMode,
    pick_sample_count,
};

/// Images larger than this are refused (the texture-size limit wgpu guarantees).
pub const MAX_SIZE_PX: u32 = 8192;

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error(
        "no GPU adapter found for offscreen rendering on {backends} ({reason}); install a \
         Vulkan or OpenGL driver (on Linux without a GPU: Mesa's lavapipe or llvmpipe, packages \
         mesa-vulkan-drivers or libegl1 + libgl1-mesa-dri), or pick another API with --backend"
    )]
    NoAdapter { backends: String, reason: String },
    #[error(
        "the GPU adapter {adapter} refused to open a device: {reason}; update the graphics driver"
    )]
    Device { adapter: String, reason: String },
    #[error("image size {width}×{height} is invalid; use 1..={MAX_SIZE_PX} pixels per side")]
    InvalidSize { width: u32, height: u32 },
    #[error("rendering failed on the GPU: {0}")]
    Gpu(String),
    #[error("reading the rendered image back from the GPU failed: {0}")]
    Readback(String),
}

/// What to render and how. `camera` overrides `view` with an exact camera.
#[derive(Clone, Debug, PartialEq)]
pub struct RenderOptions {
    pub width: u32,
    pub height: u32,
    pub view: View,
    pub mode: ShadingMode,
    pub wireframe: bool,
    pub grid: bool,
    pub background: Background,
    pub camera: Option<OrbitCamera>,
}

impl Default for RenderOptions {
    fn default() -> Self {
        Self {
            width: 800,
            height: 600,
            view: View::Iso,
            mode: ShadingMode::Lit,
            wireframe: false,
            grid: true,
            background: Background::default(),
            camera: None,
        }
    }
}

impl RenderOptions {
    fn camera_for(&self, bounds: Option<Bounds>) -> OrbitCamera {
        if let Some(camera) = self.camera {
            return camera;
        }
        let aspect = self.width as f32 / self.height.max(1) as f32;
        let bounds = bounds.unwrap_or(Bounds::from_min_max([-0.5; 3], [0.5; 3]));
        OrbitCamera::framing(&bounds, self.view, aspect)
    }

    fn check_size(&self) -> Result<(), RenderError> {
        let valid = |side: u32| (1..=MAX_SIZE_PX).contains(&side);
        if valid(self.width) && valid(self.height) {
            Ok(())
        } else {
            Err(RenderError::InvalidSize {
                width: self.width,
                height: self.height,
            })
        }
    }
}

/// Which adapter a [`HeadlessRenderer`] opens and which paths it may use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeadlessConfig {
    /// Only adapters of this API (`--backend`); `None`: `WGPU_BACKEND` or any.
    pub backend: Option<GpuBackend>,
    /// Use the downlevel fallback paths even where the device has more (tests
    /// compare both paths on one adapter).
    pub force_downlevel: bool,
}

/// A GPU device of its own plus the scene renderer; reuse one for many renders.
pub struct HeadlessRenderer {
    device: wgpu::Device,
    queue: wgpu::Queue,
    renderer: SceneRenderer,
    adapter_info: wgpu::AdapterInfo,
    /// Validation errors raised outside an error scope (the default handler panics).
    uncaptured: Arc<Mutex<Option<String>>>,
}

impl HeadlessRenderer {
    /// Opens the preferred adapter. `WGPU_BACKEND` (e.g. `vulkan`) and
    /// `WGPU_ADAPTER_NAME` select one explicitly, as everywhere in wgpu.
    pub fn new() -> Result<Self, RenderError> {
        Self::open(&HeadlessConfig::default())
    }

    /// Opens an adapter as `config` says (`WGPU_ADAPTER_NAME` still applies).
    pub fn open(config: &HeadlessConfig) -> Result<Self, RenderError> {
        let backends = instance_backends(config.backend);
        let mut descriptor = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
        descriptor.backends = backends;
        let instance = wgpu::Instance::new(descriptor);
        let adapter = pollster::block_on(wgpu::util::initialize_adapter_from_env_or_default(
            &instance, None,
        ))
        .map_err(|err| RenderError::NoAdapter {
            backends: format!("{backends:?}"),
            reason: err.to_string(),
        })?;
        let adapter_info = adapter.get_info();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("orfeas headless"),
            // The adapter's own limits: large meshes need its full buffer sizes.
            required_limits: adapter.limits(),
            ..Default::default()
        }))
        .map_err(|err| RenderError::Device {
            adapter: adapter_info.name.clone(),
            reason: err.to_string(),
        })?;
        let uncaptured = Arc::new(Mutex::new(None));
        let sink = Arc::clone(&uncaptured);
        device.on_uncaptured_error(Arc::new(move |err: wgpu::Error| {
            tracing::error!("wgpu: {err}");
            sink.lock().get_or_insert_with(|| err.to_string());
        }));
        let mut caps = RenderCaps::of(&adapter, &device);
        if config.force_downlevel {
            caps = caps.intersect(RenderCaps::DOWNLEVEL);
        }
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let renderer = SceneRenderer::new(&device, &queue, pick_sample_count(&adapter), caps);
        if let Some(err) = pollster::block_on(scope.pop()) {
            return Err(RenderError::Device {
                adapter: describe_adapter(&adapter_info),
                reason: format!("the scene pipelines do not build: {err}"),
            });
        }
        Ok(Self {
            device,
            queue,
            renderer,
            adapter_info,
            uncaptured,
        })
    }

    /// The device abilities the renderer uses (fallback paths for the rest).
    pub fn caps(&self) -> RenderCaps {
        self.renderer.caps()
    }

    /// The graphics API of the adapter, e.g. `Gl` or `Vulkan`.
    pub fn backend(&self) -> wgpu::Backend {
        self.adapter_info.backend
    }

    /// "name (backend, device type, driver)", for logs and benchmark output.
    pub fn adapter_description(&self) -> String {
        let info = &self.adapter_info;
        format!(
            "{} ({:?}, {:?}, driver {})",
            info.name, info.backend, info.device_type, info.driver_info
        )
    }

    pub fn sample_count(&self) -> u32 {
        self.renderer.sample_count()
    }

    pub fn upload(&self, mesh: &Mesh) -> GpuMesh {
        GpuMesh::upload(
            &self.renderer,
            &self.device,
            &self.queue,
            &MeshVertices::from_mesh(mesh),
        )
    }

    pub fn render(
        &self,
        mesh: &Mesh,
        options: &RenderOptions,
    ) -> Result<image::RgbaImage, RenderError> {
        options.check_size()?;
        let gpu_mesh = self.upload(mesh);
        let settings = settings_for(options, options.camera_for(gpu_mesh.bounds));
        self.render_uploaded(&gpu_mesh, options, &settings)
    }

    /// `frames` images turning the camera once around the vertical axis, starting at `options.view`.
    pub fn render_turntable(
        &self,
        mesh: &Mesh,
        options: &RenderOptions,
        frames: u32,
    ) -> Result<Vec<image::RgbaImage>, RenderError> {
        options.check_size()?;
        let gpu_mesh = self.upload(mesh);
        let start = options.camera_for(gpu_mesh.bounds);
        (0..frames)
            .map(|frame| {
                let mut camera = start;
                camera.turn(std::f32::consts::TAU * frame as f32 / frames as f32);
                self.render_uploaded(&gpu_mesh, options, &settings_for(options, camera))
            })
            .collect()
    }

    fn render_uploaded(
        &self,
        mesh: &GpuMesh,
        options: &RenderOptions,
        settings: &SceneSettings,
    ) -> Result<image::RgbaImage, RenderError> {
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let target = FrameTarget::new(
            &self.renderer,
            &self.device,
            options.width,
            options.height,
            1.0,
        );
        let mut encoder = self.device.create_command_encoder(&Default::default());
        let drawn = (mesh.triangle_count > 0).then_some(mesh);
        self.renderer
            .render(&self.queue, &mut encoder, &target, drawn, settings);
        let readback = Readback::record(&self.device, &mut encoder, &target);
        self.queue.submit([encoder.finish()]);
        if let Some(err) = pollster::block_on(scope.pop()) {
            return Err(RenderError::Gpu(err.to_string()));
        }
        if let Some(err) = self.uncaptured.lock().take() {
            return Err(RenderError::Gpu(err));
        }
        readback.read(&self.device, target.width, target.height)
    }

    /// Mean wall-clock time of `frames` frames of `mesh` at the given size (no
    /// readback), after `warmup` unmeasured frames. `Pacing::Wait` waits for each
    /// frame before recording the next (latency: includes the submit round trip);
    /// `Pacing::Pipelined` submits them back to back and waits once, as an
    /// interactive loop that does not stall on the GPU sees them (throughput).
    pub fn time_frames(
        &self,
        mesh: &GpuMesh,
        options: &RenderOptions,
        warmup: u32,
        frames: u32,
        pacing: Pacing,
    ) -> Result<Duration, RenderError> {
        options.check_size()?;
        let target = FrameTarget::new(
            &self.renderer,
            &self.device,
            options.width,
            options.height,
            1.0,
        );
        let mut camera = options.camera_for(mesh.bounds);
        let wait = |index: wgpu::SubmissionIndex| -> Result<(), RenderError> {
            self.device
                .poll(wgpu::PollType::Wait {
                    submission_index: Some(index),
                    timeout: None,
                })
                .map(|_| ())
                .map_err(|err| RenderError::Gpu(err.to_string()))
        };
        let submit = |camera: &OrbitCamera| -> wgpu::SubmissionIndex {
            let mut encoder = self.device.create_command_encoder(&Default::default());
            self.renderer.render(
                &self.queue,
                &mut encoder,
                &target,
                Some(mesh),
                &settings_for(options, *camera),
            );
            self.queue.submit([encoder.finish()])
        };
        for _ in 0..warmup {
            wait(submit(&camera))?;
        }
        let start = Instant::now();
        let mut last = None;
        for _ in 0..frames {
            // The view changes every frame, as when the user orbits.
            camera.turn(0.01);
            let index = submit(&camera);
            match pacing {
                Pacing::Wait => wait(index)?,
                Pacing::Pipelined => last = Some(index),
            }
        }
        if let Some(index) = last {
            wait(index)?;
        }
        Ok(start.elapsed() / frames.max(1))
    }
}

fn settings_for(options: &RenderOptions, camera: OrbitCamera) -> SceneSettings {
    SceneSettings {
        camera,
        mode: options.mode,
        wireframe: options.wireframe,
        grid: options.grid,
        background: options.background,
    }
}

/// A buffer the resolved colour image is copied into, rows padded to wgpu's
/// 256-byte alignment.
struct Readback {
    buffer: wgpu::Buffer,
    padded_row_bytes: u32,
}

impl Readback {
    fn record(
        device: &wgpu::Device,
        encoder: &mut wgpu::CommandEncoder,
        target: &FrameTarget,
    ) -> Self {
        let row_bytes = target.width * 4;
        let padded_row_bytes = row_bytes.div_ceil(wgpu::COPY_BYTES_PER_ROW_ALIGNMENT)
            * wgpu::COPY_BYTES_PER_ROW_ALIGNMENT;
        let buffer = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("viewport readback"),
            size: u64::from(padded_row_bytes) * u64::from(target.height),
            usage: wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::MAP_READ,
            mapped_at_creation: false,
        });
        encoder.copy_texture_to_buffer(
            target.color.as_image_copy(),
            wgpu::TexelCopyBufferInfo {
                buffer: &buffer,
                layout: wgpu::TexelCopyBufferLayout {
                    offset: 0,
                    bytes_per_row: Some(padded_row_bytes),
                    rows_per_image: Some(target.height),
                },
            },
            wgpu::Extent3d {
                width: target.width,
                height: target.height,
                depth_or_array_layers: 1,
            },
        );
        Self {
            buffer,
            padded_row_bytes,
        }
    }

    fn read(
        self,
        device: &wgpu::Device,
        width: u32,
        height: u32,
    ) -> Result<image::RgbaImage, RenderError> {
        let (sender, receiver) = std::sync::mpsc::sync_channel(1);
        self.buffer
            .map_async(wgpu::MapMode::Read, .., move |result| {
                // The receiver waits below; if it is gone there is no one to tell.
                let _ = sender.send(result);
            });
        device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|err| RenderError::Readback(err.to_string()))?;
        receiver
            .recv()
            .map_err(|err| RenderError::Readback(err.to_string()))?
            .map_err(|err| RenderError::Readback(err.to_string()))?;
        let mapped = self
            .buffer
            .get_mapped_range(..)
            .map_err(|err| RenderError::Readback(format!("{err:?}")))?;
        let row_bytes = (width * 4) as usize;
        let mut pixels = Vec::with_capacity(row_bytes * height as usize);
        for row in mapped
            .chunks(self.padded_row_bytes as usize)
            .take(height as usize)
        {
            pixels.extend_from_slice(row.get(..row_bytes).unwrap_or_default());
        }
        image::RgbaImage::from_raw(width, height, pixels).ok_or_else(|| {
            RenderError::Readback("the GPU returned fewer pixels than asked for".into())
        })
    }
}

/// How [`HeadlessRenderer::time_frames`] paces frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pacing {
    /// Wait for each frame: latency, including the submit round trip.
    Wait,
    /// Submit all frames, wait once: GPU throughput per frame.
    Pipelined,
}

/// Renders `mesh` offscreen into an sRGB image; opens a GPU device for the call
/// (use [`HeadlessRenderer`] to render many).
pub fn render_mesh_to_image(
    mesh: &Mesh,
    options: &RenderOptions,
) -> Result<image::RgbaImage, RenderError> {
    HeadlessRenderer::new()?.render(mesh, options)
}

/// `frames` images of a turntable around `mesh` (see [`HeadlessRenderer::render_turntable`]).
pub fn render_turntable(
    mesh: &Mesh,
    options: &RenderOptions,
    frames: u32,
) -> Result<Vec<image::RgbaImage>, RenderError> {
    HeadlessRenderer::new()?.render_turntable(mesh, options, frames)
}
