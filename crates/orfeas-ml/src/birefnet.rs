//! BiRefNet (ZhengPeng7, MIT) on candle: a picture → a foreground (saliency)
//! mask at the picture's size. The stages, each usable alone:
//!
//! 1. [`preprocess`]: PIL-antialiased bilinear resize to the inference size,
//!    `ToTensor`, ImageNet normalisation (the HF model card's transforms).
//! 2. [`swin`]: the Swin-v1 backbone, run on the input and on its ×0.5 pyramid;
//!    [`BiRefNet::encode`] joins them (`cat`) and adds the context levels.
//! 3. [`decoder`]: the squeeze block and the decoder (`BasicDecBlk` with
//!    `ASPPDeformable`, whose deformable convolution is [`deform`]).
//! 4. Sigmoid, then back to the picture with the HF model card's rule
//!    (8-bit truncation, PIL bicubic resize): [`BiRefNet::mask`].
//!
//! Weights: `model.safetensors` with the official state-dict names
//! (`bb.*`, `squeeze_module.0.*`, `decoder.*`). The training-only heads
//! (`decoder.conv_ms_spvn_*`, `decoder.gdt_convs_pred_*`) and the integer
//! buffers (`relative_position_index`, which is a function of the window
//! size, and BatchNorm `num_batches_tracked`) are not read.

pub mod config;
pub mod decoder;
pub mod deform;
pub mod preprocess;
pub mod swin;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

pub use config::{Config, RELEASED_INPUT_SIZE_HW, SIZE_MULTIPLE, SwinConfig, check_input_size};
pub use decoder::Trace;

use crate::error::{Result, SdError};
use decoder::{BasicDecBlk, Decoder};
use swin::{SwinTransformer, interp};

/// The weights file of a BiRefNet folder.
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// The smallest picture side [`BiRefNet::mask`] accepts.
pub const MIN_PICTURE_SIDE: u32 = 8;

/// BiRefNet with its weights.
#[derive(Debug)]
pub struct BiRefNet {
    bb: SwinTransformer,
    squeeze: BasicDecBlk,
    decoder: Decoder,
    cfg: Config,
}

impl BiRefNet {
    /// Builds the model from `vb` holding the official tensor names.
    pub fn load(vb: VarBuilder, cfg: &Config) -> candle_core::Result<Self> {
        let c = cfg.lateral_channels();
        let cxt: usize = cfg.cxt_channels().iter().sum();
        Ok(Self {
            bb: SwinTransformer::load(vb.pp("bb"), &cfg.swin)?,
            squeeze: BasicDecBlk::load(vb.pp("squeeze_module.0"), c[0] + cxt, c[0], cfg)?,
            decoder: Decoder::load(vb.pp("decoder"), cfg)?,
            cfg: cfg.clone(),
        })
    }

    /// Loads a model folder: `config.json` (see [`Config::from_model_dir`]) and `model.safetensors`.
    pub fn from_dir(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let cfg = Config::from_model_dir(dir)?;
        let weights = dir.join(WEIGHTS_FILE);
        if !weights.is_file() {
            return Err(SdError::MissingPart {
                dir: dir.to_path_buf(),
                part: WEIGHTS_FILE.to_owned(),
            });
        }
        let vb = crate::sd::weights::load_weights(std::slice::from_ref(&weights), dtype, device)?;
        Self::load(vb, &cfg).map_err(|e| mismatch(&weights, e))
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn backbone(&self) -> &SwinTransformer {
        &self.bb
    }

    pub fn squeeze_module(&self) -> &BasicDecBlk {
        &self.squeeze
    }

    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    /// The model input `(1, 3, H, W)` for `image` at `size_hw` (multiples of 32), on `device`.
    pub fn preprocess(
        image: &image::DynamicImage,
        size_hw: (usize, usize),
        device: &Device,
    ) -> Result<Tensor> {
        check_input_size(size_hw).map_err(|r| SdError::invalid("size", r))?;
        check_picture(image)?;
        let resized = preprocess::resize_rgb(&image.to_rgb8(), size_hw);
        Ok(preprocess::normalize(&resized, device)?)
    }

    /// Encoder: `x (1, 3, H, W)` → `[x1, x2, x3, x4]` after the `cat` of the
    /// pyramid features and the context concatenation (x4 not yet squeezed).
    pub fn encode(&self, x: &Tensor, trace: &mut Trace) -> Result<[Tensor; 4]> {
        self.check_input(x)?;
        let (_, _, h, w) = x.dims4()?;
        let full = self.bb.forward(x)?;
        let pyramid = interp(x, h / 2, w / 2)?;
        trace.put(|| "enc.x_pyramid".into(), &pyramid);
        let pyr = self.bb.forward(&pyramid)?;
        let mut xs = Vec::with_capacity(4);
        for (f, p) in full.iter().zip(&pyr) {
            let (_, _, fh, fw) = f.dims4()?;
            xs.push(Tensor::cat(&[f, &interp(p, fh, fw)?], 1)?);
        }
        let (_, _, h4, w4) = xs[3].dims4()?;
        let mut cxt = Vec::with_capacity(4);
        for x in &xs[..3] {
            cxt.push(interp(x, h4, w4)?);
        }
        cxt.push(xs[3].clone());
        xs[3] = Tensor::cat(&cxt, 1)?;
        for (i, x) in xs.iter().enumerate() {
            trace.put(|| format!("enc.x{}", i + 1), x);
        }
        let [x1, x2, x3, x4]: [Tensor; 4] = xs
            .try_into()
            .map_err(|_| SdError::invalid("encoder", "backbone did not give 4 levels"))?;
        Ok([x1, x2, x3, x4])
    }

    /// `x (1, 3, H, W)` → logits `(1, 1, H, W)` (sigmoid not applied, as in the official model).
    pub fn forward_traced(&self, x: &Tensor, trace: &mut Trace) -> Result<Tensor> {
        let [x1, x2, x3, x4] = self.encode(x, trace)?;
        let x4 = self
            .squeeze
            .forward_traced(&x4, "squeeze_module.0", trace)?;
        trace.put(|| "squeeze_module".into(), &x4);
        Ok(self.decoder.forward_traced(x, &[x1, x2, x3, x4], trace)?)
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_traced(x, &mut Trace::off())
    }

    /// The saliency in [0, 1] at model resolution `(1, 1, H, W)`, f32.
    pub fn predict(&self, image: &image::DynamicImage, size_hw: (usize, usize)) -> Result<Tensor> {
        let device = self.bb_device();
        let x = Self::preprocess(image, size_hw, &device)?.to_dtype(self.dtype())?;
        let logits = self.forward(&x)?;
        Ok(candle_nn::ops::sigmoid(&logits.to_dtype(DType::F32)?)?)
    }

    /// The foreground mask of `image` at the picture's size (0 = background,
    /// 255 = foreground), the model run at `size_hw` (see [`default_input_size`]).
    /// Back to the picture with the HF model card's rule: 8-bit truncation then PIL bicubic.
    pub fn mask(
        &self,
        image: &image::DynamicImage,
        size_hw: (usize, usize),
    ) -> Result<image::GrayImage> {
        let mask = self.predict(image, size_hw)?;
        let small = preprocess::mask_to_u8(&mask)?;
        Ok(preprocess::resize_mask_u8(
            &small,
            (image.height() as usize, image.width() as usize),
        ))
    }

    fn bb_device(&self) -> Device {
        self.bb_weight().device().clone()
    }

    fn dtype(&self) -> DType {
        self.bb_weight().dtype()
    }

    fn bb_weight(&self) -> &Tensor {
        self.decoder.laterals[0].weight()
    }

    fn check_input(&self, x: &Tensor) -> Result<()> {
        let dims = x.dims();
        let ok = matches!(dims, [_, 3, h, w] if check_input_size((*h, *w)).is_ok());
        if !ok {
            return Err(SdError::invalid(
                "input",
                format!(
                    "model input has shape {dims:?}; it must be (B, 3, H, W) with H and W multiples of {SIZE_MULTIPLE}; make it with BiRefNet::preprocess"
                ),
            ));
        }
        Ok(())
    }
}

/// The inference size for the model in `dir`: its config's `input_size_hw`, else 1024×1024.
pub fn default_input_size(dir: &Path) -> Result<(usize, usize)> {
    Ok(Config::from_model_dir(dir)?.default_input_size_hw())
}

fn check_picture(image: &image::DynamicImage) -> Result<()> {
    let (w, h) = (image.width(), image.height());
    if w < MIN_PICTURE_SIDE || h < MIN_PICTURE_SIDE {
        return Err(SdError::invalid(
            "image",
            format!(
                "the picture is {w}x{h} pixels; a foreground mask needs at least {MIN_PICTURE_SIDE}x{MIN_PICTURE_SIDE}; use a larger picture"
            ),
        ));
    }
    Ok(())
}

fn mismatch(weights: &Path, e: candle_core::Error) -> SdError {
    SdError::CorruptWeights {
        path: PathBuf::from(weights),
        reason: format!(
            "does not match config.json ({e}); config.json and model.safetensors must come from the same BiRefNet"
        ),
    }
}
