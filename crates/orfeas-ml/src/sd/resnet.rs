//! The resnet block, the resamplers and the VAE's blocks, with diffusers' tensor names,
//! on the fused CPU kernels of [`crate::kernels`]: `silu(norm(x))` is one pass,
//! the time embedding joins conv1's bias and the skip joins conv2's output, so a
//! block is two GEMMs and two norm passes instead of about thirty tensor ops.
//! On other devices the same blocks run candle's ops.

use candle_core::{D, Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};
use candle_transformers::models::stable_diffusion::attention::{
    AttentionBlock, AttentionBlockConfig,
};

use crate::kernels::{Conv2d, GroupNorm};

/// Mirrors diffusers' `ResnetBlock2D` arguments.
#[derive(Debug, Clone, Copy)]
pub struct ResnetConfig {
    pub out_channels: usize,
    /// `temb_channels`: the time embedding's width, `None` in the VAE.
    pub temb_channels: Option<usize>,
    pub groups: usize,
    pub eps: f64,
}

/// `ResnetBlock2D`: `norm1`, `conv1`, `time_emb_proj`, `norm2`, `conv2`, `conv_shortcut`.
#[derive(Debug)]
pub struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Option<Linear>,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
}

impl ResnetBlock2D {
    pub fn load(vb: VarBuilder, c_in: usize, cfg: ResnetConfig) -> Result<Self> {
        let c_out = cfg.out_channels;
        let conv_shortcut = if c_in != c_out {
            Some(Conv2d::load(
                vb.pp("conv_shortcut"),
                c_in,
                c_out,
                1,
                1,
                0,
                true,
            )?)
        } else {
            None
        };
        let time_emb_proj = match cfg.temb_channels {
            Some(t) => Some(candle_nn::linear(t, c_out, vb.pp("time_emb_proj"))?),
            None => None,
        };
        Ok(Self {
            norm1: GroupNorm::load(cfg.groups, c_in, cfg.eps, vb.pp("norm1"))?,
            conv1: Conv2d::load(vb.pp("conv1"), c_in, c_out, 3, 1, 1, true)?,
            time_emb_proj,
            norm2: GroupNorm::load(cfg.groups, c_out, cfg.eps, vb.pp("norm2"))?,
            conv2: Conv2d::load(vb.pp("conv2"), c_out, c_out, 3, 1, 1, true)?,
            conv_shortcut,
        })
    }

    /// `shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x))) + proj(silu(temb)))))`.
    ///
    /// Each conv applies its norm and SiLU as it reads its input (on the CPU fast
    /// path), so neither normalised map is ever written: at the VAE's 512² level
    /// that is 128-256 MB per norm neither written nor faulted in. conv2 adds into
    /// the shortcut's output (or the skip's copy), not into a fresh map.
    pub fn forward(&self, xs: &Tensor, temb: Option<&Tensor>) -> Result<Tensor> {
        let shift = match (temb, &self.time_emb_proj) {
            (Some(t), Some(proj)) => Some(proj.forward(&candle_nn::ops::silu(t)?)?),
            _ => None,
        };
        let h = self
            .conv1
            .forward_norm_silu(xs, &self.norm1, shift.as_ref(), None)?;
        self.conv2
            .forward_norm_silu_onto(&h, &self.norm2, xs, self.conv_shortcut.as_ref())
    }
}

/// Nearest 2× upsampling then a 3×3 conv (`upsamplers.0.conv`).
#[derive(Debug)]
pub struct Upsample2D(Conv2d);

impl Upsample2D {
    pub fn load(vb: VarBuilder, ch: usize) -> Result<Self> {
        Ok(Self(Conv2d::load(vb.pp("conv"), ch, ch, 3, 1, 1, true)?))
    }

    /// Upsamples to `size` (the skip's, so odd latent sizes line up); exactly
    /// 2× takes the fast kernel.
    pub fn forward(&self, xs: &Tensor, size: Option<(usize, usize)>) -> Result<Tensor> {
        let (_, _, h, w) = xs.dims4()?;
        match size {
            Some((sh, sw)) if (sh, sw) != (2 * h, 2 * w) => {
                self.0.forward(&xs.upsample_nearest2d(sh, sw)?)
            }
            _ => self.0.forward_upsampled(xs),
        }
    }
}

/// A stride-2 3×3 conv (`downsamplers.0.conv`); padding 0 means diffusers'
/// asymmetric pad of one zero row and column at the bottom and right.
#[derive(Debug)]
pub struct Downsample2D {
    conv: Conv2d,
    padding: usize,
}

impl Downsample2D {
    pub fn load(vb: VarBuilder, ch: usize, padding: usize) -> Result<Self> {
        Ok(Self {
            conv: Conv2d::load(vb.pp("conv"), ch, ch, 3, 2, padding, true)?,
            padding,
        })
    }
}

impl Module for Downsample2D {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if self.padding == 0 {
            let xs = xs
                .pad_with_zeros(D::Minus1, 0, 1)?
                .pad_with_zeros(D::Minus2, 0, 1)?;
            self.conv.forward(&xs)
        } else {
            self.conv.forward(xs)
        }
    }
}

/// What closes a VAE block: nothing, a downsampler (the encoder's
/// `DownEncoderBlock2D`) or an upsampler (the decoder's `UpDecoderBlock2D`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resample {
    None,
    Down,
    Up,
}

#[derive(Debug)]
enum Resampler {
    Down(Downsample2D),
    Up(Upsample2D),
}

/// A VAE encoder or decoder block: resnets, then its resampler.
#[derive(Debug)]
pub struct VaeBlock {
    resnets: Vec<ResnetBlock2D>,
    resampler: Option<Resampler>,
}

impl VaeBlock {
    pub fn load(
        vb: VarBuilder,
        c_in: usize,
        c_out: usize,
        layers: usize,
        groups: usize,
        resample: Resample,
    ) -> Result<Self> {
        let cfg = ResnetConfig {
            out_channels: c_out,
            temb_channels: None,
            groups,
            eps: 1e-6,
        };
        let resnets = (0..layers)
            .map(|i| {
                let cin = if i == 0 { c_in } else { c_out };
                ResnetBlock2D::load(vb.pp("resnets").pp(i), cin, cfg)
            })
            .collect::<Result<Vec<_>>>()?;
        let resampler = match resample {
            Resample::None => None,
            Resample::Down => Some(Resampler::Down(Downsample2D::load(
                vb.pp("downsamplers").pp(0),
                c_out,
                0,
            )?)),
            Resample::Up => Some(Resampler::Up(Upsample2D::load(
                vb.pp("upsamplers").pp(0),
                c_out,
            )?)),
        };
        Ok(Self { resnets, resampler })
    }
}

impl VaeBlock {
    /// The block on `xs`, taken by value: a caller that passes its only handle
    /// lets the input go as soon as the first resnet has run (at the VAE's last
    /// level the input is a 256 MB map).
    pub fn forward_owned(&self, xs: Tensor) -> Result<Tensor> {
        let mut xs = xs;
        for r in &self.resnets {
            xs = r.forward(&xs, None)?;
        }
        match &self.resampler {
            Some(Resampler::Down(d)) => d.forward(&xs),
            Some(Resampler::Up(u)) => u.forward(&xs, None),
            None => Ok(xs),
        }
    }
}

impl Module for VaeBlock {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.forward_owned(xs.clone())
    }
}

/// The VAE's `UNetMidBlock2D`: resnet, single-head self-attention, resnet.
#[derive(Debug)]
pub struct VaeMidBlock {
    first: ResnetBlock2D,
    attention: AttentionBlock,
    second: ResnetBlock2D,
}

impl VaeMidBlock {
    pub fn load(vb: VarBuilder, ch: usize, groups: usize) -> Result<Self> {
        let cfg = ResnetConfig {
            out_channels: ch,
            temb_channels: None,
            groups,
            eps: 1e-6,
        };
        let attn = AttentionBlockConfig {
            num_head_channels: None,
            num_groups: groups,
            rescale_output_factor: 1.0,
            eps: 1e-6,
        };
        Ok(Self {
            first: ResnetBlock2D::load(vb.pp("resnets").pp(0), ch, cfg)?,
            attention: AttentionBlock::new(vb.pp("attentions").pp(0), ch, attn)?,
            second: ResnetBlock2D::load(vb.pp("resnets").pp(1), ch, cfg)?,
        })
    }
}

impl Module for VaeMidBlock {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let xs = self.first.forward(xs, None)?;
        let xs = self.attention.forward(&xs)?;
        self.second.forward(&xs, None)
    }
}
