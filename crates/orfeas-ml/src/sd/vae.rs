//! `AutoencoderKL`: encoder (with the latent distribution exposed) and decoder.
//!
//! Built from our blocks in [`super::resnet`] (diffusers' tensor names) on the
//! fused CPU kernels; only the mid block's attention is candle-transformers'.
//! The encoder and the distribution's mean/std are exposed for img2img and the
//! parity tests.

use std::path::Path;

use candle_core::{Module, Result as CResult, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;

use super::resnet::{Resample, VaeBlock, VaeMidBlock};
use crate::error::{Result, SdError};
use crate::kernels;

fn d_three() -> usize {
    3
}
fn d_four() -> usize {
    4
}
fn d_groups() -> usize {
    32
}
fn d_true() -> bool {
    true
}
fn d_scale() -> f64 {
    0.18215
}

/// Mirrors `vae/config.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct VaeConfig {
    #[serde(default = "d_three")]
    pub in_channels: usize,
    #[serde(default = "d_three")]
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    #[serde(default = "d_four")]
    pub latent_channels: usize,
    #[serde(default = "d_groups")]
    pub norm_num_groups: usize,
    #[serde(default = "d_scale")]
    pub scaling_factor: f64,
    #[serde(default = "d_true")]
    pub use_quant_conv: bool,
    #[serde(default = "d_true")]
    pub use_post_quant_conv: bool,
    #[serde(default)]
    pub shift_factor: Option<f64>,
    /// The VAE overflows in f16 and must decode in f32 (SDXL's). Only the SDXL
    /// pipeline reads it, as in diffusers; absent means false here.
    #[serde(default)]
    pub force_upcast: bool,
}

impl VaeConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        crate::sd::read_config(path)
    }

    /// Pixels per latent cell (8 for every SD VAE).
    pub fn downscale(&self) -> usize {
        1 << self.block_out_channels.len().saturating_sub(1)
    }
}

/// The VAE's 3×3 convs, on the fast CPU kernels.
fn conv3_fast(cin: usize, cout: usize, vb: VarBuilder) -> CResult<kernels::Conv2d> {
    kernels::Conv2d::load(vb, cin, cout, 3, 1, 1, true)
}

#[derive(Debug)]
struct Encoder {
    conv_in: kernels::Conv2d,
    blocks: Vec<VaeBlock>,
    mid: VaeMidBlock,
    norm_out: kernels::GroupNorm,
    conv_out: kernels::Conv2d,
}

#[derive(Debug)]
struct Decoder {
    conv_in: kernels::Conv2d,
    mid: VaeMidBlock,
    blocks: Vec<VaeBlock>,
    norm_out: kernels::GroupNorm,
    conv_out: kernels::Conv2d,
}

/// The latent distribution `encode` returns (diffusers' `DiagonalGaussianDistribution`).
#[derive(Debug, Clone)]
pub struct LatentDist {
    /// `quant_conv(encoder(x))`: mean then unclamped log-variance along channels.
    pub moments: Tensor,
    pub mean: Tensor,
    /// Clamped to [-30, 20] like diffusers.
    pub logvar: Tensor,
    pub std: Tensor,
}

impl LatentDist {
    /// `mean + std * eps` for a given standard-normal `eps`.
    pub fn sample_with(&self, eps: &Tensor) -> Result<Tensor> {
        Ok((&self.mean + (&self.std * eps)?)?)
    }
}

/// The VAE.
#[derive(Debug)]
pub struct Vae {
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Option<kernels::Conv2d>,
    post_quant_conv: Option<kernels::Conv2d>,
    pub config: VaeConfig,
}

impl Vae {
    pub fn load(vb: VarBuilder, cfg: &VaeConfig) -> Result<Self> {
        let ch = &cfg.block_out_channels;
        let (Some(&first), Some(&last)) = (ch.first(), ch.last()) else {
            return Err(SdError::invalid("vae.block_out_channels", "is empty"));
        };
        let g = cfg.norm_num_groups;
        let lc = cfg.latent_channels;
        let enc = vb.pp("encoder");
        let mut blocks = Vec::new();
        let mut cin = first;
        for (i, &cout) in ch.iter().enumerate() {
            let last = i + 1 == ch.len();
            blocks.push(VaeBlock::load(
                enc.pp("down_blocks").pp(i),
                cin,
                cout,
                cfg.layers_per_block,
                g,
                if last { Resample::None } else { Resample::Down },
            )?);
            cin = cout;
        }
        let encoder = Encoder {
            conv_in: conv3_fast(cfg.in_channels, first, enc.pp("conv_in"))?,
            blocks,
            mid: VaeMidBlock::load(enc.pp("mid_block"), last, g)?,
            norm_out: kernels::GroupNorm::load(g, last, 1e-6, enc.pp("conv_norm_out"))?,
            conv_out: conv3_fast(last, 2 * lc, enc.pp("conv_out"))?,
        };
        let dec = vb.pp("decoder");
        let mut blocks = Vec::new();
        let rev: Vec<usize> = ch.iter().rev().copied().collect();
        let mut cin = last;
        for (i, &cout) in rev.iter().enumerate() {
            let last = i + 1 == rev.len();
            blocks.push(VaeBlock::load(
                dec.pp("up_blocks").pp(i),
                cin,
                cout,
                cfg.layers_per_block + 1,
                g,
                if last { Resample::None } else { Resample::Up },
            )?);
            cin = cout;
        }
        let decoder = Decoder {
            conv_in: conv3_fast(lc, last, dec.pp("conv_in"))?,
            mid: VaeMidBlock::load(dec.pp("mid_block"), last, g)?,
            blocks,
            norm_out: kernels::GroupNorm::load(g, first, 1e-6, dec.pp("conv_norm_out"))?,
            conv_out: conv3_fast(first, cfg.out_channels, dec.pp("conv_out"))?,
        };
        let quant_conv = if cfg.use_quant_conv {
            Some(kernels::Conv2d::load(
                vb.pp("quant_conv"),
                2 * lc,
                2 * lc,
                1,
                1,
                0,
                true,
            )?)
        } else {
            None
        };
        let post_quant_conv = if cfg.use_post_quant_conv {
            Some(kernels::Conv2d::load(
                vb.pp("post_quant_conv"),
                lc,
                lc,
                1,
                1,
                0,
                true,
            )?)
        } else {
            None
        };
        Ok(Self {
            encoder,
            decoder,
            quant_conv,
            post_quant_conv,
            config: cfg.clone(),
        })
    }

    /// The raw encoder output (2 × latent channels), before `quant_conv`.
    pub fn encoder_forward(&self, image: &Tensor) -> Result<Tensor> {
        let e = &self.encoder;
        let mut xs = e.conv_in.forward(image)?;
        for b in &e.blocks {
            xs = b.forward_owned(xs)?;
        }
        let xs = e.mid.forward(&xs)?;
        Ok(e.conv_out.forward_norm_silu(&xs, &e.norm_out, None, None)?)
    }

    /// Encodes an image in [-1, 1], NCHW, into its latent distribution (unscaled).
    pub fn encode(&self, image: &Tensor) -> Result<LatentDist> {
        let h = self.encoder_forward(image)?;
        let moments = match &self.quant_conv {
            Some(q) => q.forward(&h)?,
            None => h,
        };
        let lc = self.config.latent_channels;
        let mean = moments.narrow(1, 0, lc)?;
        let logvar = moments.narrow(1, lc, lc)?.clamp(-30f32, 20f32)?;
        let std = (&logvar * 0.5)?.exp()?;
        Ok(LatentDist {
            moments,
            mean,
            logvar,
            std,
        })
    }

    /// Decodes unscaled latents (already divided by `scaling_factor`) into an image in about [-1, 1].
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let xs = match &self.post_quant_conv {
            Some(p) => p.forward(latents)?,
            None => latents.clone(),
        };
        let d = &self.decoder;
        let mut xs = d.mid.forward(&d.conv_in.forward(&xs)?)?;
        for b in &d.blocks {
            xs = b.forward_owned(xs)?;
        }
        Ok(d.conv_out.forward_norm_silu(&xs, &d.norm_out, None, None)?)
    }

    /// Decodes in overlapping latent tiles blended linearly across the overlap,
    /// so peak memory follows the tile size rather than the image size.
    /// The mid-block attention then only sees a tile, so results differ slightly
    /// from `decode` (as diffusers' tiled decode does).
    pub fn decode_tiled(
        &self,
        latents: &Tensor,
        tile_latent: usize,
        overlap_latent: usize,
    ) -> Result<Tensor> {
        let (b, _c, h, w) = latents.dims4()?;
        if tile_latent == 0 || overlap_latent >= tile_latent {
            return Err(SdError::invalid(
                "vae tile",
                "tile must be larger than the overlap",
            ));
        }
        if h <= tile_latent && w <= tile_latent {
            return self.decode(latents);
        }
        let f = self.config.downscale();
        let stride = tile_latent - overlap_latent;
        let starts = |len: usize| -> Vec<usize> {
            if len <= tile_latent {
                return vec![0];
            }
            let mut v: Vec<usize> = (0..)
                .map(|i| i * stride)
                .take_while(|&s| s + tile_latent < len)
                .collect();
            v.push(len - tile_latent);
            v
        };
        let (ys, xs) = (starts(h), starts(w));
        let dev = latents.device();
        let out_c = self.config.out_channels;
        let (ph, pw) = (h * f, w * f);
        let mut acc = vec![0f32; b * out_c * ph * pw];
        let mut weight = vec![0f32; ph * pw];
        let ramp = (overlap_latent * f).max(1) as f32;
        for &y0 in &ys {
            for &x0 in &xs {
                let th = tile_latent.min(h);
                let tw = tile_latent.min(w);
                let tile = latents.narrow(2, y0, th)?.narrow(3, x0, tw)?;
                let out = self.decode(&tile)?.to_dtype(candle_core::DType::F32)?;
                let out = out.flatten_all()?.to_vec1::<f32>()?;
                let (oh, ow) = (th * f, tw * f);
                // Weights ramp up from tile edges that border another tile.
                let wy = |y: usize| {
                    let top = if y0 > 0 {
                        ((y as f32 + 0.5) / ramp).min(1.0)
                    } else {
                        1.0
                    };
                    let bot = if y0 + th < h {
                        (((oh - y) as f32 - 0.5) / ramp).min(1.0)
                    } else {
                        1.0
                    };
                    top.min(bot)
                };
                let wx = |x: usize| {
                    let l = if x0 > 0 {
                        ((x as f32 + 0.5) / ramp).min(1.0)
                    } else {
                        1.0
                    };
                    let r = if x0 + tw < w {
                        (((ow - x) as f32 - 0.5) / ramp).min(1.0)
                    } else {
                        1.0
                    };
                    l.min(r)
                };
                for y in 0..oh {
                    let wyv = wy(y);
                    for x in 0..ow {
                        let wv = wyv * wx(x);
                        let (gy, gx) = (y0 * f + y, x0 * f + x);
                        weight[gy * pw + gx] += wv;
                        for bc in 0..b * out_c {
                            acc[(bc * ph + gy) * pw + gx] += wv * out[(bc * oh + y) * ow + x];
                        }
                    }
                }
            }
        }
        for bc in 0..b * out_c {
            for i in 0..ph * pw {
                let wv = weight[i];
                if wv > 0.0 {
                    acc[bc * ph * pw + i] /= wv;
                }
            }
        }
        Ok(Tensor::from_vec(acc, (b, out_c, ph, pw), dev)?.to_dtype(latents.dtype())?)
    }
}
