//! TripoSR (VAST-AI-Research / Stability AI) on candle: one image → scene
//! code (three feature planes) → density grid for marching cubes, vertex
//! colours, renders. The stages, each usable alone:
//!
//! 1. [`preprocess`]: centre the foreground, grey composite, antialiased resize, ImageNet normalisation.
//! 2. [`image_tokenizer`]: DINO ViT → image tokens (CLS included).
//! 3. [`transformer`]: learnt triplane tokens refined by the `Transformer1D`
//!    backbone (cross-attending to the image tokens), then ConvTranspose2d → scene codes.
//! 4. [`field`]: triplane sampling + NeRF MLP → density and colour anywhere in the
//!    `[-R, R]³` box; the density grid, vertex colours, one-view render.
//!
//! Weights: `model.safetensors` or the official `model.ckpt` (read by [`ckpt`]
//! without running its pickle), official tensor names either way.

pub mod ckpt;
pub mod config;
pub mod field;
pub mod image_tokenizer;
pub mod preprocess;
pub mod transformer;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

pub use config::{Config, ViTConfig};
pub use field::{DEFAULT_CHUNK_POINTS, FieldSamples, OrbitCamera, RadianceField, Triplane};

use crate::error::{Result, SdError};
use image_tokenizer::DinoImageTokenizer;
use transformer::{Transformer1d, TriplaneTokenizer, TriplaneUpsampler};

/// The weight files a TripoSR folder may hold, in the order they are preferred.
pub const WEIGHT_FILES: [&str; 2] = ["model.safetensors", "model.ckpt"];

/// TripoSR with its weights, ready to turn images into scene codes.
#[derive(Debug)]
pub struct TripoSr {
    image_tokenizer: DinoImageTokenizer,
    tokenizer: TriplaneTokenizer,
    backbone: Transformer1d,
    post_processor: TriplaneUpsampler,
    decoder: field::NerfMlp,
    cfg: Config,
}

impl TripoSr {
    /// Builds the model from `vb` holding the official tensor names
    /// (`image_tokenizer.model.*`, `tokenizer.*`, `backbone.*`, `post_processor.*`, `decoder.*`).
    pub fn load(vb: VarBuilder, cfg: &Config) -> candle_core::Result<Self> {
        cfg.validate()
            .map_err(|e| candle_core::Error::Msg(format!("invalid TripoSR config: {e}")))?;
        Ok(Self {
            image_tokenizer: DinoImageTokenizer::load(vb.pp("image_tokenizer.model"), &cfg.vit)?,
            tokenizer: TriplaneTokenizer::load(vb.pp("tokenizer"), &cfg.tokenizer)?,
            backbone: Transformer1d::load(vb.pp("backbone"), &cfg.backbone)?,
            post_processor: TriplaneUpsampler::load(vb.pp("post_processor"), &cfg.post_processor)?,
            decoder: field::NerfMlp::load(vb.pp("decoder"), &cfg.decoder)?,
            cfg: cfg.clone(),
        })
    }

    /// Loads a model folder: `config.yaml` (+ ViT config, see
    /// [`Config::from_model_dir`]) and the first of [`WEIGHT_FILES`] present.
    pub fn from_dir(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let cfg = Config::from_model_dir(dir)?;
        let weights = weights_file(dir)?;
        let vb = load_weights(&weights, dtype, device)?;
        Self::load(vb, &cfg).map_err(|e| SdError::CorruptWeights {
            path: weights.clone(),
            reason: format!("does not match config.yaml: {e}"),
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn image_tokenizer(&self) -> &DinoImageTokenizer {
        &self.image_tokenizer
    }

    pub fn tokenizer(&self) -> &TriplaneTokenizer {
        &self.tokenizer
    }

    pub fn backbone(&self) -> &Transformer1d {
        &self.backbone
    }

    pub fn post_processor(&self) -> &TriplaneUpsampler {
        &self.post_processor
    }

    pub fn decoder(&self) -> &field::NerfMlp {
        &self.decoder
    }

    /// The decoder with the renderer settings: queries, density grids, renders.
    pub fn field(&self) -> RadianceField<'_> {
        RadianceField {
            decoder: &self.decoder,
            renderer: &self.cfg.renderer,
        }
    }

    /// `(1, 3, S, S)` pixel values for `image` ([`preprocess::pixel_values`] at
    /// this model's `cond_image_size`), on `device`.
    pub fn preprocess(
        &self,
        image: &image::DynamicImage,
        foreground_ratio: f64,
        device: &Device,
    ) -> Result<Tensor> {
        preprocess::pixel_values(image, self.cfg.cond_image_size, foreground_ratio, device)
    }

    /// Pixel values `(B, 3, S, S)` → image tokens `(B, 1 + N, hidden)`.
    pub fn image_tokens(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let (_, c, h, w) = pixel_values.dims4()?;
        let s = self.cfg.cond_image_size;
        if c != 3 || h != s || w != s {
            return Err(SdError::invalid(
                "pixel_values",
                format!(
                    "shape {:?} is not (B, 3, {s}, {s}); make it with TripoSr::preprocess",
                    pixel_values.dims()
                ),
            ));
        }
        Ok(self.image_tokenizer.forward(pixel_values)?)
    }

    /// Image tokens `(B, N, hidden)` → refined triplane tokens `(B, C, 3·P²)`.
    pub fn triplane_tokens(&self, image_tokens: &Tensor) -> Result<Tensor> {
        let tokens = self.tokenizer.forward(image_tokens.dim(0)?)?;
        Ok(self.backbone.forward(&tokens, image_tokens)?)
    }

    /// Triplane tokens `(B, C, 3·P²)` → scene codes `(B, 3, Co, 2P, 2P)`.
    pub fn scene_codes(&self, triplane_tokens: &Tensor) -> Result<Tensor> {
        let planes = self.tokenizer.detokenize(triplane_tokens)?;
        Ok(self.post_processor.forward(&planes)?)
    }

    /// Pixel values `(B, 3, S, S)` → scene codes `(B, 3, Co, 2P, 2P)`.
    pub fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let image_tokens = self.image_tokens(pixel_values)?;
        self.scene_codes(&self.triplane_tokens(&image_tokens)?)
    }

    /// Density (`density_act`) at the `resolution³` grid points of [`field::grid_point`],
    /// `[i][j][k]` C order, x slowest; computed [`DEFAULT_CHUNK_POINTS`] at a time.
    pub fn density_grid(&self, scene_code: &Tensor, resolution: usize) -> Result<Vec<f32>> {
        self.density_grid_chunked(scene_code, resolution, DEFAULT_CHUNK_POINTS)
    }

    /// [`Self::density_grid`] with `chunk_points` points in flight at a time
    /// (memory grows linearly with it; results do not change).
    pub fn density_grid_chunked(
        &self,
        scene_code: &Tensor,
        resolution: usize,
        chunk_points: usize,
    ) -> Result<Vec<f32>> {
        let triplane = Triplane::new(scene_code)?;
        Ok(self
            .field()
            .density_grid(&triplane, resolution, chunk_points)?)
    }

    /// [`Self::density_grid_chunked`] reporting after every chunk; `progress`
    /// returning `Break` stops it with [`SdError::Cancelled`].
    pub fn density_grid_with_progress(
        &self,
        scene_code: &Tensor,
        resolution: usize,
        chunk_points: usize,
        progress: &mut dyn FnMut(field::GridProgress) -> std::ops::ControlFlow<()>,
    ) -> Result<Vec<f32>> {
        let triplane = Triplane::new(scene_code)?;
        self.field()
            .density_grid_with_progress(&triplane, resolution, chunk_points, progress)?
            .ok_or(SdError::Cancelled)
    }

    /// RGB in [0, 1] at world `positions` (mesh vertex colours).
    pub fn query_colors(
        &self,
        scene_code: &Tensor,
        positions: &[[f32; 3]],
    ) -> Result<Vec<[f32; 3]>> {
        let triplane = Triplane::new(scene_code)?;
        Ok(self
            .field()
            .query_chunked(&triplane, positions, DEFAULT_CHUNK_POINTS)?
            .color)
    }

    /// Renders one view of a scene code: RGB per pixel, row-major (see [`RadianceField::render`]).
    pub fn render_view(&self, scene_code: &Tensor, camera: &OrbitCamera) -> Result<Vec<[f32; 3]>> {
        let pixels = camera.width.saturating_mul(camera.height);
        if pixels == 0 || pixels > field::MAX_RENDER_PIXELS {
            return Err(SdError::invalid(
                "camera",
                format!(
                    "a {}x{} view is outside 1 to {} pixels; TripoSR renders 256x256",
                    camera.width,
                    camera.height,
                    field::MAX_RENDER_PIXELS
                ),
            ));
        }
        let triplane = Triplane::new(scene_code)?;
        Ok(self
            .field()
            .render(&triplane, camera, DEFAULT_CHUNK_POINTS)?)
    }
}

/// The weights file of a TripoSR folder: `model.safetensors`, else `model.ckpt`.
pub fn weights_file(dir: &Path) -> Result<PathBuf> {
    WEIGHT_FILES
        .iter()
        .map(|name| dir.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| SdError::MissingPart {
            dir: dir.to_path_buf(),
            part: "model.ckpt (or model.safetensors)".to_owned(),
        })
}

/// Reads a weights file into a `VarBuilder` in `dtype` on `device`:
/// `.safetensors`, or a PyTorch checkpoint (`.ckpt`, `.pt`, `.pth`) read by [`ckpt`].
pub fn load_weights(path: &Path, dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
    let is_safetensors = path.extension().is_some_and(|e| e == "safetensors");
    if is_safetensors {
        return crate::sd::weights::load_weights(&[path.to_path_buf()], dtype, device);
    }
    let mut tensors = ckpt::read_state_dict(path)?;
    for t in tensors.values_mut() {
        let converted = if t.dtype().is_float() {
            t.to_dtype(dtype)?
        } else {
            t.clone()
        };
        *t = converted.to_device(device)?;
    }
    Ok(VarBuilder::from_tensors(tensors, dtype, device))
}
