//! The VAE decoder's up blocks with our CPU convolution: the same layers and
//! tensor names as candle-transformers' `UpDecoderBlock2D` / `ResnetBlock2D`
//! (diffusers' `UpDecoderBlock2D`), but the 3×3 convolutions go through
//! [`crate::birefnet::deform::SameConv`] (channels-last parallel im2col + one
//! matmul per chunk), which on the CPU in f32 avoids candle 0.11's strided
//! column writes. Other devices and dtypes take candle's convolution.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2d, GroupNorm, VarBuilder};

use crate::birefnet::deform::SameConv;

/// `ResnetBlock2D` without a time embedding (the VAE's).
#[derive(Debug)]
struct Resnet {
    norm1: GroupNorm,
    conv1: SameConv,
    norm2: GroupNorm,
    conv2: SameConv,
    shortcut: Option<Conv2d>,
}

impl Resnet {
    fn new(vb: VarBuilder, cin: usize, cout: usize, groups: usize, eps: f64) -> Result<Self> {
        let shortcut = if cin == cout {
            None
        } else {
            Some(candle_nn::conv2d(
                cin,
                cout,
                1,
                Default::default(),
                vb.pp("conv_shortcut"),
            )?)
        };
        Ok(Self {
            norm1: candle_nn::group_norm(groups, cin, eps, vb.pp("norm1"))?,
            conv1: SameConv::load(vb.pp("conv1"), cin, cout, 3, true)?,
            norm2: candle_nn::group_norm(groups, cout, eps, vb.pp("norm2"))?,
            conv2: SameConv::load(vb.pp("conv2"), cout, cout, 3, true)?,
            shortcut,
        })
    }
}

impl Module for Resnet {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let h = self
            .conv1
            .forward(&candle_nn::ops::silu(&self.norm1.forward(xs)?)?)?;
        let h = self
            .conv2
            .forward(&candle_nn::ops::silu(&self.norm2.forward(&h)?)?)?;
        match &self.shortcut {
            Some(s) => s.forward(xs)? + h,
            None => xs + h,
        }
    }
}

/// diffusers' `UpDecoderBlock2D`: `layers` resnets, then (unless last) a 2×
/// nearest upsample and a 3×3 conv.
#[derive(Debug)]
pub struct UpBlock {
    resnets: Vec<Resnet>,
    upsample: Option<SameConv>,
}

impl UpBlock {
    pub fn new(
        vb: VarBuilder,
        cin: usize,
        cout: usize,
        layers: usize,
        groups: usize,
        upsample: bool,
    ) -> Result<Self> {
        let resnets = (0..layers)
            .map(|j| {
                let c = if j == 0 { cin } else { cout };
                Resnet::new(vb.pp("resnets").pp(j), c, cout, groups, 1e-6)
            })
            .collect::<Result<_>>()?;
        let upsample = upsample
            .then(|| SameConv::load(vb.pp("upsamplers.0.conv"), cout, cout, 3, true))
            .transpose()?;
        Ok(Self { resnets, upsample })
    }
}

impl Module for UpBlock {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let mut xs = xs.clone();
        for r in &self.resnets {
            xs = r.forward(&xs)?;
        }
        match &self.upsample {
            Some(conv) => {
                let (_, _, h, w) = xs.dims4()?;
                conv.forward(&xs.upsample_nearest2d(2 * h, 2 * w)?)
            }
            None => Ok(xs),
        }
    }
}

/// A 3×3, padding-1 convolution with bias by the same kernel.
pub fn conv3(vb: VarBuilder, cin: usize, cout: usize) -> Result<SameConv> {
    SameConv::load(vb, cin, cout, 3, true)
}
