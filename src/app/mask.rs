//! The Create tab's mask editor: the foreground the job would find in the
//! selected picture, computed on a named worker thread (the segmenter can
//! take seconds to load), shown tinted over the picture and edited with a
//! brush at picture resolution. An edited mask is written into the data dir
//! when the job is submitted and travels in the request's `mask`.

use std::path::{Path, PathBuf};
use std::sync::mpsc;

use image::{GrayImage, RgbaImage};
use orfeas_core::image_to_3d::ImageTo3dParams;
use orfeas_core::request::Background;

/// Longest side of the overlay texture; painting still happens at full resolution.
const OVERLAY_MAX_SIDE_PX: u32 = 768;
/// Strokes Undo can take back.
const UNDO_DEPTH: usize = 20;
/// Colour laid over removed pixels, and how much of it.
const TINT: [f32; 3] = [200.0, 30.0, 120.0];
const TINT_SHARE: f32 = 0.6;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Brush {
    Add,
    Erase,
}

/// What the mask panel asks for; applied by the app once per frame.
#[derive(Clone, Debug, PartialEq)]
pub enum MaskCommand {
    SetBrush(Brush),
    SetBrushSize(f32),
    SetKeepLargest(bool),
    /// Show the picture with the mask tinted over it, or the plain picture.
    SetShow(bool),
    /// A drag started: the next paints are one stroke for Undo.
    BeginStroke,
    /// Paint the segment between two points, in picture pixels.
    Paint {
        from: [f32; 2],
        to: [f32; 2],
    },
    Undo,
    Reset,
    /// Ask where to save the picture with the mask as its alpha.
    SaveCutOut,
}

/// The parameters the automatic mask depends on, for telling when to recompute.
#[derive(Clone, Debug, PartialEq)]
struct Key {
    input: PathBuf,
    background: Background,
    mask_threshold: u8,
    border_tolerance: f32,
    erode_px: u32,
}

type Request = (u64, PathBuf, ImageTo3dParams);
type Computed = Result<(RgbaImage, GrayImage, Background), String>;

pub struct MaskEditor {
    requests: mpsc::SyncSender<Request>,
    results: mpsc::Receiver<(u64, Computed)>,
    generation: u64,
    key: Option<Key>,
    picture: Option<RgbaImage>,
    auto: Option<GrayImage>,
    mask: Option<GrayImage>,
    source: Option<Background>,
    edited: bool,
    undo: Vec<GrayImage>,
    pub keep_largest: bool,
    /// Whether the overlay (not the plain picture) is shown.
    pub show: bool,
    pub brush: Brush,
    /// Brush diameter in picture pixels.
    pub brush_px: f32,
    /// A stored mask to show for a picture once it is loaded (a re-run's).
    adopted: Option<(PathBuf, GrayImage)>,
    texture: Option<egui::TextureHandle>,
    texture_dirty: bool,
    /// Share of the picture the effective mask keeps, refreshed with the texture.
    share: Option<f32>,
    error: Option<String>,
    loading: bool,
}

impl MaskEditor {
    /// Starts the mask thread; it finds the segmenter under `data_dir`'s models.
    pub fn new(data_dir: &Path, repaint: impl Fn() + Send + 'static) -> std::io::Result<Self> {
        let (req_tx, req_rx) = mpsc::sync_channel::<Request>(4);
        let (res_tx, res_rx) = mpsc::sync_channel::<(u64, Computed)>(4);
        let roots = orfeas_ml::models::SearchRoots::for_data_dir(data_dir);
        std::thread::Builder::new()
            .name("orfeas-mask".into())
            .spawn(move || {
                // Keeps the segmenter loaded between pictures.
                let runner = orfeas_ml::image_to_3d::ImageTo3dRunner::new(
                    roots,
                    orfeas_ml::sd::pipeline::DevicePref::Auto,
                );
                while let Ok(mut request) = req_rx.recv() {
                    // Only the newest request matters: skip those a quick user outran.
                    while let Ok(newer) = req_rx.try_recv() {
                        request = newer;
                    }
                    let (generation, path, params) = request;
                    let computed = orfeas_core::image_input::load_image(
                        &path,
                        &orfeas_core::image_input::ImageLimits::default(),
                    )
                    .map_err(|e| e.to_string())
                    .and_then(|picture| {
                        let (mask, source) = runner.preview_mask(&picture, &params)?;
                        Ok((picture, mask, source))
                    });
                    if res_tx.send((generation, computed)).is_err() {
                        break;
                    }
                    repaint();
                }
            })?;
        Ok(Self::with_channels(req_tx, res_rx))
    }

    /// An editor without a thread (when one cannot be started): no overlay.
    pub fn disabled() -> Self {
        let (requests, _) = mpsc::sync_channel(0);
        let (_, results) = mpsc::sync_channel(0);
        Self::with_channels(requests, results)
    }

    fn with_channels(
        requests: mpsc::SyncSender<Request>,
        results: mpsc::Receiver<(u64, Computed)>,
    ) -> Self {
        Self {
            requests,
            results,
            generation: 0,
            key: None,
            picture: None,
            auto: None,
            mask: None,
            source: None,
            edited: false,
            undo: Vec::new(),
            keep_largest: false,
            show: true,
            brush: Brush::Erase,
            brush_px: 24.0,
            adopted: None,
            texture: None,
            texture_dirty: false,
            share: None,
            error: None,
            loading: false,
        }
    }

    /// Asks for the automatic mask when the picture or the parameters it
    /// depends on changed. Called once per frame.
    pub fn sync(&mut self, input: Option<&Path>, params: &ImageTo3dParams) {
        let Some(input) = input else {
            if self.key.take().is_some() {
                self.clear();
            }
            return;
        };
        let key = Key {
            input: input.to_path_buf(),
            background: params.background,
            mask_threshold: params.mask_threshold,
            border_tolerance: params.border_tolerance,
            erode_px: params.erode_px,
        };
        if self.key.as_ref() == Some(&key) {
            return;
        }
        // A stored mask waits only for its own picture.
        if self.adopted.as_ref().is_some_and(|(p, _)| *p != key.input) {
            self.adopted = None;
        }
        let same_picture = self.key.as_ref().is_some_and(|k| k.input == key.input);
        let generation = self.generation + 1;
        match self
            .requests
            .try_send((generation, input.to_path_buf(), params.clone()))
        {
            Ok(()) => {
                self.generation = generation;
                if !same_picture {
                    self.clear();
                }
                self.key = Some(key);
                self.loading = true;
                self.error = None;
            }
            // Full: the worker is busy; ask again next frame.
            Err(mpsc::TrySendError::Full(_)) => {}
            Err(mpsc::TrySendError::Disconnected(_)) => {
                self.key = Some(key);
                self.error = Some("the mask thread stopped; restart the app".to_owned());
            }
        }
    }

    fn clear(&mut self) {
        self.picture = None;
        self.auto = None;
        self.mask = None;
        self.source = None;
        self.edited = false;
        self.undo.clear();
        self.texture = None;
        self.share = None;
        self.error = None;
        self.loading = false;
    }

    /// Takes finished masks and refreshes the overlay texture.
    pub fn poll(&mut self, ctx: &egui::Context) {
        while let Ok((generation, computed)) = self.results.try_recv() {
            if generation != self.generation {
                continue; // for a picture or settings since replaced
            }
            self.loading = false;
            match computed {
                Ok((picture, auto, source)) => {
                    // New settings replace an edited mask; Undo brings it back.
                    if let Some(old) = self.mask.take().filter(|_| self.edited) {
                        self.push_undo(old);
                    }
                    self.picture = Some(picture);
                    self.mask = Some(auto.clone());
                    self.auto = Some(auto);
                    self.source = Some(source);
                    self.edited = false;
                    self.error = None;
                    self.take_adopted();
                }
                Err(err) => {
                    self.error = Some(err);
                    self.picture = None;
                    self.mask = None;
                    self.auto = None;
                    self.texture = None;
                }
            }
            self.texture_dirty = true;
        }
        if self.texture_dirty {
            self.texture_dirty = false;
            if let (Some(picture), Some(mask)) = (&self.picture, self.effective()) {
                self.share = Some(foreground_share(&mask));
                let image = overlay(picture, &mask);
                match &mut self.texture {
                    Some(t) => t.set(image, egui::TextureOptions::LINEAR),
                    None => {
                        self.texture =
                            Some(ctx.load_texture("mask-overlay", image, Default::default()))
                    }
                }
            }
        }
    }

    /// Applies a panel's command (all but [`MaskCommand::SaveCutOut`], which the app handles).
    pub fn apply(&mut self, command: MaskCommand) {
        match command {
            MaskCommand::SetBrush(brush) => self.brush = brush,
            MaskCommand::SetBrushSize(px) => self.brush_px = px.clamp(1.0, 400.0),
            MaskCommand::SetKeepLargest(on) => {
                self.keep_largest = on;
                self.texture_dirty = true;
            }
            MaskCommand::SetShow(on) => self.show = on,
            MaskCommand::BeginStroke => {
                if let Some(mask) = self.mask.clone() {
                    self.push_undo(mask);
                    self.edited = true;
                }
            }
            MaskCommand::Paint { from, to } => {
                let value = if self.brush == Brush::Add { 255 } else { 0 };
                if let Some(mask) = &mut self.mask {
                    paint_segment(mask, from, to, self.brush_px * 0.5, value);
                    self.edited = true;
                    self.texture_dirty = true;
                }
            }
            MaskCommand::Undo => {
                if let Some(previous) = self.undo.pop() {
                    self.edited = Some(&previous) != self.auto.as_ref();
                    self.mask = Some(previous);
                    self.texture_dirty = true;
                }
            }
            MaskCommand::Reset => {
                if let (Some(mask), Some(auto)) = (self.mask.take(), self.auto.clone()) {
                    self.push_undo(mask);
                    self.mask = Some(auto);
                    self.edited = false;
                    self.keep_largest = false;
                    self.texture_dirty = true;
                }
            }
            MaskCommand::SaveCutOut => {}
        }
    }

    /// Shows `mask` (a job's stored mask, e.g. for a re-run) as the edited
    /// mask of `input`, now when that picture is loaded or else once it is.
    pub fn adopt(&mut self, input: &Path, mask: GrayImage) {
        self.adopted = Some((input.to_path_buf(), mask));
        self.take_adopted();
    }

    fn take_adopted(&mut self) {
        let Some((input, mask)) = self.adopted.take() else {
            return;
        };
        let loaded = self.key.as_ref().is_some_and(|k| k.input == input);
        match &self.picture {
            Some(picture) if loaded => {
                if picture.dimensions() == mask.dimensions() {
                    if let Some(old) = self.mask.replace(mask) {
                        self.push_undo(old);
                    }
                    self.edited = true;
                    self.keep_largest = false;
                    self.texture_dirty = true;
                } else {
                    tracing::warn!("a stored mask does not fit its picture; not shown");
                }
            }
            // Not loaded yet: keep it for when it is.
            _ => self.adopted = Some((input, mask)),
        }
    }

    fn push_undo(&mut self, mask: GrayImage) {
        if self.undo.len() == UNDO_DEPTH {
            self.undo.remove(0);
        }
        self.undo.push(mask);
    }

    /// The mask as the job would get it (the largest object only, when asked).
    pub fn effective(&self) -> Option<GrayImage> {
        let mask = self.mask.as_ref()?;
        Some(if self.keep_largest {
            largest_component(mask)
        } else {
            mask.clone()
        })
    }

    /// The mask to send with a job on `input`, when the user changed the automatic one.
    pub fn user_mask_for(&self, input: &Path) -> Option<GrayImage> {
        let same = self.key.as_ref().is_some_and(|k| k.input == input);
        if same && (self.edited || self.keep_largest) {
            self.effective()
        } else {
            None
        }
    }

    /// The picture with the mask as its alpha channel.
    pub fn cut_out(&self) -> Option<RgbaImage> {
        let (picture, mask) = (self.picture.as_ref()?, self.effective()?);
        Some(orfeas_ml::image_to_3d::with_mask_as_alpha(picture, &mask))
    }

    pub fn texture(&self) -> Option<&egui::TextureHandle> {
        self.texture.as_ref()
    }

    /// The picture's size in pixels, once loaded.
    pub fn picture_size(&self) -> Option<[u32; 2]> {
        self.picture.as_ref().map(|p| [p.width(), p.height()])
    }

    pub fn is_loading(&self) -> bool {
        self.loading
    }

    pub fn is_edited(&self) -> bool {
        self.edited
    }

    pub fn can_undo(&self) -> bool {
        !self.undo.is_empty()
    }

    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// Where the automatic mask came from (`auto` resolved).
    pub fn source(&self) -> Option<Background> {
        self.source
    }

    /// Share of the picture the mask keeps, 0..=1 (as of the last overlay refresh).
    pub fn foreground_share(&self) -> Option<f32> {
        self.share
    }
}

fn foreground_share(mask: &GrayImage) -> f32 {
    let kept = mask.pixels().filter(|p| p.0[0] >= 128).count();
    kept as f32 / (mask.width() as f32 * mask.height() as f32).max(1.0)
}

/// Writes `mask` as a grayscale PNG, atomically.
pub fn write_mask_png(path: &Path, mask: &GrayImage) -> Result<(), String> {
    write_png(
        path,
        mask.as_raw(),
        mask.width(),
        mask.height(),
        image::ExtendedColorType::L8,
    )
}

/// Writes `image` as an RGBA PNG, atomically.
pub fn write_rgba_png(path: &Path, image: &RgbaImage) -> Result<(), String> {
    write_png(
        path,
        image.as_raw(),
        image.width(),
        image.height(),
        image::ExtendedColorType::Rgba8,
    )
}

fn write_png(
    path: &Path,
    raw: &[u8],
    width: u32,
    height: u32,
    colour: image::ExtendedColorType,
) -> Result<(), String> {
    use image::ImageEncoder;
    orfeas_core::paths::write_atomic(path, |w| {
        image::codecs::png::PngEncoder::new(w)
            .write_image(raw, width, height, colour)
            .map_err(std::io::Error::other)
    })
    .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// The picture, scaled to the overlay's size, tinted where the mask removes it.
fn overlay(picture: &RgbaImage, mask: &GrayImage) -> egui::ColorImage {
    let (w, h) = picture.dimensions();
    let scale = (OVERLAY_MAX_SIDE_PX as f32 / w.max(h) as f32).min(1.0);
    let (dw, dh) = (
        ((w as f32 * scale).round() as u32).max(1),
        ((h as f32 * scale).round() as u32).max(1),
    );
    let mut pixels = Vec::with_capacity((dw * dh) as usize);
    for y in 0..dh {
        let sy = ((y as f32 + 0.5) / scale) as u32;
        for x in 0..dw {
            let sx = ((x as f32 + 0.5) / scale) as u32;
            let (sx, sy) = (sx.min(w - 1), sy.min(h - 1));
            let [r, g, b, a] = picture.get_pixel(sx, sy).0;
            // Transparent pixels show over a neutral grey, not black.
            let alpha = f32::from(a) / 255.0;
            let rgb = [r, g, b].map(|c| f32::from(c) * alpha + 128.0 * (1.0 - alpha));
            let keep = mask.get_pixel(sx, sy).0[0] >= 128;
            let out = if keep {
                rgb
            } else {
                [0, 1, 2].map(|i| rgb[i] * (1.0 - TINT_SHARE) + TINT[i] * TINT_SHARE)
            };
            pixels.push(egui::Color32::from_rgb(
                out[0] as u8,
                out[1] as u8,
                out[2] as u8,
            ));
        }
    }
    egui::ColorImage::new([dw as usize, dh as usize], pixels)
}

/// Paints a round brush of `radius` along `from`→`to` (picture pixels).
fn paint_segment(mask: &mut GrayImage, from: [f32; 2], to: [f32; 2], radius: f32, value: u8) {
    let (w, h) = (mask.width() as i64, mask.height() as i64);
    let r = radius.max(0.5);
    let x0 = ((from[0].min(to[0]) - r).floor() as i64).clamp(0, w);
    let x1 = ((from[0].max(to[0]) + r).ceil() as i64 + 1).clamp(0, w);
    let y0 = ((from[1].min(to[1]) - r).floor() as i64).clamp(0, h);
    let y1 = ((from[1].max(to[1]) + r).ceil() as i64 + 1).clamp(0, h);
    let (dx, dy) = (to[0] - from[0], to[1] - from[1]);
    let len_sq = dx * dx + dy * dy;
    for y in y0..y1 {
        for x in x0..x1 {
            let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
            let t = if len_sq > 0.0 {
                (((px - from[0]) * dx + (py - from[1]) * dy) / len_sq).clamp(0.0, 1.0)
            } else {
                0.0
            };
            let (cx, cy) = (from[0] + t * dx, from[1] + t * dy);
            if (px - cx).powi(2) + (py - cy).powi(2) <= r * r {
                mask.put_pixel(x as u32, y as u32, image::Luma([value]));
            }
        }
    }
}

/// The mask with only its largest 4-connected foreground region kept.
pub fn largest_component(mask: &GrayImage) -> GrayImage {
    let (w, h) = (mask.width() as usize, mask.height() as usize);
    let on: Vec<bool> = mask.pixels().map(|p| p.0[0] >= 128).collect();
    let mut label = vec![0u32; w * h];
    let (mut best, mut best_size, mut next) = (0u32, 0usize, 0u32);
    let mut stack = Vec::new();
    for start in 0..w * h {
        if !on[start] || label[start] != 0 {
            continue;
        }
        next += 1;
        label[start] = next;
        stack.push(start);
        let mut size = 0;
        while let Some(i) = stack.pop() {
            size += 1;
            let (x, y) = (i % w, i / w);
            let neighbours = [
                (x > 0).then(|| i - 1),
                (x + 1 < w).then(|| i + 1),
                (y > 0).then(|| i - w),
                (y + 1 < h).then(|| i + w),
            ];
            for j in neighbours.into_iter().flatten() {
                if on[j] && label[j] == 0 {
                    label[j] = next;
                    stack.push(j);
                }
            }
        }
        if size > best_size {
            (best, best_size) = (next, size);
        }
    }
    let data = label
        .iter()
        .map(|&l| if l != 0 && l == best { 255 } else { 0 })
        .collect();
    // Same size as the input by construction.
    GrayImage::from_raw(mask.width(), mask.height(), data).unwrap_or_else(|| mask.clone())
}

/// A file name for a job's mask: `<data>/masks/<picture stem>-<millis>.png`.
pub fn mask_path(data_dir: &Path, input: &Path) -> PathBuf {
    orfeas_core::runner::stamped_path(&data_dir.join("masks"), input, "picture", "png")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_largest_drops_the_smaller_blob() {
        let mask = GrayImage::from_fn(40, 20, |x, y| {
            let big = (2..20).contains(&x) && (2..18).contains(&y);
            let small = (30..34).contains(&x) && (5..9).contains(&y);
            image::Luma([if big || small { 255 } else { 0 }])
        });
        let kept = largest_component(&mask);
        assert_eq!(kept.get_pixel(10, 10).0[0], 255);
        assert_eq!(kept.get_pixel(31, 6).0[0], 0);
    }

    #[test]
    fn a_brush_segment_paints_a_capsule() {
        let mut mask = GrayImage::new(50, 50);
        paint_segment(&mut mask, [10.0, 25.0], [40.0, 25.0], 3.0, 255);
        assert_eq!(mask.get_pixel(25, 25).0[0], 255);
        assert_eq!(mask.get_pixel(25, 35).0[0], 0);
        assert_eq!(mask.get_pixel(5, 25).0[0], 0);
    }
}
