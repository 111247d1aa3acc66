//! Image previews and gallery thumbnails, decoded (images) or rendered offscreen
//! through the viewport's renderer (meshes) on a named worker thread and cached
//! as textures. Panels ask with `&self` (the request set sits behind a lock) so they can
//! stay read-only; the app turns finished decodes into textures once per frame.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use parking_lot::Mutex;

use crate::viewport::{HeadlessConfig, HeadlessRenderer, RenderOptions, ShadingMode, View};

/// Longest side of a decoded preview, in pixels. Large enough for the Create preview,
/// small enough that a 40-megapixel photo does not sit in GPU memory.
pub const PREVIEW_MAX_SIDE_PX: u32 = 512;

/// Decoding refuses images that declare more pixels than this (decompression bombs).
const MAX_DECODE_PIXELS: u64 = 64 * 1024 * 1024;

/// Requests waiting for the worker; beyond this, requests are retried on a later frame.
const QUEUE_CAPACITY: usize = 64;

#[derive(Clone)]
pub enum Thumb {
    Loading,
    Ready(egui::TextureHandle),
    Failed(String),
}

type Decoded = (PathBuf, Result<egui::ColorImage, String>);

pub struct Thumbnails {
    requests: mpsc::SyncSender<PathBuf>,
    results: mpsc::Receiver<Decoded>,
    cache: Mutex<HashMap<PathBuf, Thumb>>,
}

impl Thumbnails {
    /// Starts the decoder thread; it calls `repaint` after each decode so results show up
    /// without the UI polling.
    /// Meshes are rendered on `backend` (`None`: the best adapter found).
    pub fn new(
        backend: Option<crate::viewport::GpuBackend>,
        repaint: impl Fn() + Send + 'static,
    ) -> std::io::Result<Self> {
        let (req_tx, req_rx) = mpsc::sync_channel::<PathBuf>(QUEUE_CAPACITY);
        let (res_tx, res_rx) = mpsc::sync_channel::<Decoded>(QUEUE_CAPACITY);
        std::thread::Builder::new()
            .name("orfeas-thumbnails".into())
            .spawn(move || {
                // Opened at the first mesh; a machine without a usable GPU adapter
                // gets "no render" once per mesh and image thumbnails still work.
                let mut renderer: Option<Result<HeadlessRenderer, String>> = None;
                for path in req_rx {
                    let decoded = if orfeas_core::import::MeshFormat::from_path(&path).is_some() {
                        let r = renderer.get_or_insert_with(|| {
                            HeadlessRenderer::open(&HeadlessConfig {
                                backend,
                                force_downlevel: false,
                            })
                            .map_err(|e| format!("no GPU to render with: {e}"))
                        });
                        match r {
                            Ok(r) => render_mesh(r, &path),
                            Err(err) => Err(err.clone()),
                        }
                    } else {
                        decode(&path)
                    };
                    if res_tx.send((path, decoded)).is_err() {
                        break;
                    }
                    repaint();
                }
            })?;
        Ok(Self {
            requests: req_tx,
            results: res_rx,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// A loader without a thread (when one cannot be started): previews never load,
    /// everything else keeps working.
    pub fn disabled() -> Self {
        let (requests, _) = mpsc::sync_channel(0);
        let (_, results) = mpsc::sync_channel(0);
        Self {
            requests,
            results,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The cached state for `path`, starting a decode the first time it is asked for.
    pub fn get(&self, path: &Path) -> Thumb {
        let mut cache = self.cache.lock();
        if let Some(t) = cache.get(path) {
            return t.clone();
        }
        // A full queue leaves the entry absent, so the next frame asks again.
        if self.requests.try_send(path.to_path_buf()).is_ok() {
            cache.insert(path.to_path_buf(), Thumb::Loading);
        }
        Thumb::Loading
    }

    /// Forgets `path`, e.g. after the file was regenerated or deleted.
    pub fn forget(&self, path: &Path) {
        self.cache.lock().remove(path);
    }

    /// Uploads finished decodes as textures. Call once per frame.
    pub fn poll(&self, ctx: &egui::Context) {
        while let Ok((path, decoded)) = self.results.try_recv() {
            let thumb = match decoded {
                Ok(image) => Thumb::Ready(ctx.load_texture(
                    format!("thumb:{}", path.display()),
                    image,
                    egui::TextureOptions::LINEAR,
                )),
                Err(err) => Thumb::Failed(err),
            };
            self.cache.lock().insert(path, thumb);
        }
    }
}

/// Side of a rendered mesh thumbnail, in pixels.
pub const MESH_THUMB_SIDE_PX: u32 = 256;

fn render_mesh(renderer: &HeadlessRenderer, path: &Path) -> Result<egui::ColorImage, String> {
    let mesh = orfeas_core::import::import_mesh(path).map_err(|e| format!("cannot read: {e}"))?;
    let options = RenderOptions {
        width: MESH_THUMB_SIDE_PX,
        height: MESH_THUMB_SIDE_PX,
        view: View::Iso,
        mode: ShadingMode::Lit,
        grid: false,
        ..RenderOptions::default()
    };
    let rgba = renderer
        .render(&mesh, &options)
        .map_err(|e| format!("cannot render: {e}"))?;
    let size = [rgba.width() as usize, rgba.height() as usize];
    Ok(egui::ColorImage::from_rgba_unmultiplied(
        size,
        rgba.as_raw(),
    ))
}

fn decode(path: &Path) -> Result<egui::ColorImage, String> {
    let reader = image::ImageReader::open(path)
        .map_err(|e| format!("cannot open: {e}"))?
        .with_guessed_format()
        .map_err(|e| format!("cannot read: {e}"))?;
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| format!("not a readable image: {e}"))?;
    if u64::from(w) * u64::from(h) > MAX_DECODE_PIXELS {
        return Err(format!("{w}×{h} is too large to preview"));
    }
    let img = image::ImageReader::open(path)
        .map_err(|e| format!("cannot open: {e}"))?
        .with_guessed_format()
        .map_err(|e| format!("cannot read: {e}"))?
        .decode()
        .map_err(|e| format!("not a readable image: {e}"))?;
    let img = if img.width().max(img.height()) > PREVIEW_MAX_SIDE_PX {
        img.thumbnail(PREVIEW_MAX_SIDE_PX, PREVIEW_MAX_SIDE_PX)
    } else {
        img
    };
    let rgba = img.to_rgba8();
    let size = [rgba.width() as usize, rgba.height() as usize];
    Ok(egui::ColorImage::from_rgba_unmultiplied(
        size,
        rgba.as_raw(),
    ))
}
