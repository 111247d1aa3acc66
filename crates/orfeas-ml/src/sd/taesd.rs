//! The tiny latent decoder (diffusers' `AutoencoderTiny`, "TAESD"): about 1.2 M
//! parameters instead of the VAE decoder's 49 M, so decoding costs a fraction of
//! the time and memory, at some loss of fine detail. It reads the UNet's latents
//! as they are (its `scaling_factor` is 1). `madebyollin/taesd` fits SD 1.x/2.x,
//! `madebyollin/taesdxl` SDXL.

use std::path::Path;

use candle_core::{Module, Result as CResult, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;

use crate::error::{Result, SdError};
use crate::kernels::{self, Conv2d};

fn d_latent() -> usize {
    4
}
fn d_out() -> usize {
    3
}
fn d_factor() -> usize {
    2
}
fn d_relu() -> String {
    "relu".into()
}
fn d_nearest() -> String {
    "nearest".into()
}
fn d_scale() -> f64 {
    1.0
}

/// Mirrors the decoder fields of an `AutoencoderTiny` `config.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct TinyDecoderConfig {
    pub decoder_block_out_channels: Vec<usize>,
    pub num_decoder_blocks: Vec<usize>,
    #[serde(default = "d_latent")]
    pub latent_channels: usize,
    #[serde(default = "d_out")]
    pub out_channels: usize,
    #[serde(default = "d_factor")]
    pub upsampling_scaling_factor: usize,
    #[serde(default = "d_relu")]
    pub act_fn: String,
    #[serde(default = "d_nearest")]
    pub upsample_fn: String,
    #[serde(default = "d_scale")]
    pub scaling_factor: f64,
}

impl TinyDecoderConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        crate::sd::read_config(path)
    }

    /// Pixels per latent cell.
    pub fn upscale(&self) -> usize {
        self.upsampling_scaling_factor
            .pow(self.decoder_block_out_channels.len().saturating_sub(1) as u32)
    }
}

/// Three 3×3 convs with ReLUs between, a residual (1×1 conv where the
/// channels change) and a ReLU after the sum.
#[derive(Debug)]
struct Block {
    convs: [Conv2d; 3],
    skip: Option<Conv2d>,
}

impl Block {
    fn load(vb: VarBuilder, cin: usize, cout: usize) -> CResult<Self> {
        let conv = vb.pp("conv");
        let skip = if cin == cout {
            None
        } else {
            Some(Conv2d::load(vb.pp("skip"), cin, cout, 1, 1, 0, false)?)
        };
        Ok(Self {
            convs: [
                Conv2d::load(conv.pp(0), cin, cout, 3, 1, 1, true)?,
                Conv2d::load(conv.pp(2), cout, cout, 3, 1, 1, true)?,
                Conv2d::load(conv.pp(4), cout, cout, 3, 1, 1, true)?,
            ],
            skip,
        })
    }

    /// `relu(c(relu(b(relu(a(x))))) + skip(x))`, each ReLU fused into its conv.
    fn forward(&self, xs: &Tensor) -> CResult<Tensor> {
        let [a, b, c] = &self.convs;
        let h = a.forward_relu(xs, None)?;
        let h = b.forward_relu(&h, None)?;
        let skip = match &self.skip {
            Some(s) => s.forward(xs)?,
            None => xs.clone(),
        };
        c.forward_relu(&h, Some(&skip))
    }
}

/// One entry of the decoder's layer list, in diffusers' order.
#[derive(Debug)]
enum Layer {
    Conv(Conv2d),
    Relu,
    Block(Block),
    Upsample(usize),
}

/// The decoder half of an `AutoencoderTiny` checkpoint.
#[derive(Debug)]
pub struct TinyDecoder {
    layers: Vec<Layer>,
    pub config: TinyDecoderConfig,
}

impl TinyDecoder {
    /// Builds the decoder from `vb` (the checkpoint root; reads `decoder.layers.N…`).
    pub fn load(vb: VarBuilder, cfg: &TinyDecoderConfig) -> Result<Self> {
        let n = cfg.decoder_block_out_channels.len();
        if n == 0 || cfg.num_decoder_blocks.len() != n {
            return Err(SdError::invalid(
                "taesd.num_decoder_blocks",
                "needs one entry per decoder_block_out_channels entry".to_owned(),
            ));
        }
        if cfg.act_fn != "relu" || cfg.upsample_fn != "nearest" {
            return Err(SdError::invalid(
                "taesd.act_fn",
                format!(
                    "only relu with nearest upsampling is supported, not {} / {}",
                    cfg.act_fn, cfg.upsample_fn
                ),
            ));
        }
        let vb = vb.pp("decoder.layers");
        let mut layers = Vec::new();
        let mut ch = cfg.decoder_block_out_channels[0];
        layers.push(Layer::Conv(Conv2d::load(
            vb.pp(0),
            cfg.latent_channels,
            ch,
            3,
            1,
            1,
            true,
        )?));
        layers.push(Layer::Relu);
        for (i, (&width, &blocks)) in cfg
            .decoder_block_out_channels
            .iter()
            .zip(&cfg.num_decoder_blocks)
            .enumerate()
        {
            for _ in 0..blocks {
                layers.push(Layer::Block(Block::load(vb.pp(layers.len()), ch, width)?));
                ch = width;
            }
            let last = i + 1 == n;
            if !last {
                layers.push(Layer::Upsample(cfg.upsampling_scaling_factor));
            }
            // Only the final conv (to RGB) has a bias.
            let conv = if last {
                Conv2d::load(vb.pp(layers.len()), ch, cfg.out_channels, 3, 1, 1, true)?
            } else {
                Conv2d::load(vb.pp(layers.len()), ch, ch, 3, 1, 1, false)?
            };
            layers.push(Layer::Conv(conv));
        }
        Ok(Self {
            layers,
            config: cfg.clone(),
        })
    }

    /// Loads `config.json` and the weights of an `AutoencoderTiny` folder.
    pub fn load_dir(
        dir: &Path,
        device: &candle_core::Device,
        dtype: candle_core::DType,
    ) -> Result<Self> {
        let cfg = TinyDecoderConfig::from_file(&dir.join("config.json"))?;
        let files = super::weights::weight_files(
            dir,
            &[
                "diffusion_pytorch_model.safetensors",
                "diffusion_pytorch_model.fp16.safetensors",
            ],
        )?;
        let vb = super::weights::load_weights(&files, dtype, device)?;
        Self::load(vb, &cfg).map_err(super::weights::weights_err(&files))
    }

    /// UNet latents (B, 4, h, w) → image (B, 3, h·8, w·8) in about [-1, 1].
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        Ok(self.decode_inner(latents)?)
    }

    fn decode_inner(&self, latents: &Tensor) -> CResult<Tensor> {
        let latents = (latents / self.config.scaling_factor)?;
        // Soft clamp of the latents to (-3, 3).
        let mut xs = ((latents / 3.0)?.tanh()? * 3.0)?;
        let mut layers = self.layers.iter().peekable();
        while let Some(layer) = layers.next() {
            xs = match layer {
                Layer::Conv(c) => c.forward(&xs)?,
                Layer::Relu => xs.relu()?,
                Layer::Block(b) => b.forward(&xs)?,
                // The conv after a 2× upsampling reads it on the fly.
                Layer::Upsample(2) => match layers.next_if(|l| matches!(l, Layer::Conv(_))) {
                    Some(Layer::Conv(c)) => c.forward_upsampled(&xs)?,
                    _ => kernels::upsample_nearest2x(&xs)?,
                },
                Layer::Upsample(f) => {
                    let (_, _, h, w) = xs.dims4()?;
                    xs.upsample_nearest2d(h * f, w * f)?
                }
            };
        }
        // TAESD outputs [0, 1]; the pipelines expect [-1, 1].
        (xs * 2.0)? - 1.0
    }
}
