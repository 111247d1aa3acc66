//! BiRefNet's squeeze block and decoder (`models/birefnet.py`,
//! `modules/decoder_blocks.py`, `modules/aspp.py`, `modules/lateral_blocks.py`)
//! for the released configuration: `BasicDecBlk` with `ASPPDeformable`
//! attention, split image-patch inputs (`SimpleConvs`), lateral 1×1 convs and
//! gradient attention after decoder blocks 4, 3, 2. BatchNorm in eval mode.

use candle_core::{Module, ModuleT, Result, Tensor};
use candle_nn::{BatchNorm, BatchNormConfig, VarBuilder};

use super::config::Config;
use super::deform::{DeformParts, DeformableConv2d, SameConv};
use super::swin::interp;

/// Named intermediate tensors, recorded only when asked for (parity checks).
#[derive(Debug, Default)]
pub struct Trace(Option<Vec<(String, Tensor)>>);

impl Trace {
    /// A trace that records.
    pub fn recording() -> Self {
        Self(Some(Vec::new()))
    }

    /// A trace that drops everything (inference).
    pub fn off() -> Self {
        Self(None)
    }

    pub fn put(&mut self, name: impl FnOnce() -> String, t: &Tensor) {
        if let Some(v) = &mut self.0 {
            v.push((name(), t.clone()));
        }
    }

    /// The recorded `(name, tensor)` pairs, in order.
    pub fn into_entries(self) -> Vec<(String, Tensor)> {
        self.0.unwrap_or_default()
    }
}

fn conv(vb: VarBuilder, cin: usize, cout: usize, k: usize, bias: bool) -> Result<SameConv> {
    SameConv::load(vb, cin, cout, k, bias)
}

fn bn(vb: VarBuilder, c: usize, cfg: &Config) -> Result<BatchNorm> {
    let bcfg = BatchNormConfig {
        eps: cfg.batchnorm_eps,
        ..Default::default()
    };
    candle_nn::batch_norm(c, bcfg, vb)
}

fn bn_eval(bn: &BatchNorm, x: &Tensor) -> Result<Tensor> {
    bn.forward_t(x, false)
}

/// `DeformableConv2d → BN → ReLU` (`_ASPPModuleDeformable`).
#[derive(Debug, Clone)]
pub struct AsppBranch {
    pub atrous_conv: DeformableConv2d,
    bn: BatchNorm,
}

impl AsppBranch {
    fn load(vb: VarBuilder, cin: usize, planes: usize, k: usize, cfg: &Config) -> Result<Self> {
        Ok(Self {
            atrous_conv: DeformableConv2d::load(vb.pp("atrous_conv"), cin, planes, k)?,
            bn: bn(vb.pp("bn"), planes, cfg)?,
        })
    }

    fn forward(&self, x: &Tensor, name: &str, trace: &mut Trace) -> Result<Tensor> {
        let DeformParts {
            offset,
            modulator_logits,
            output,
        } = self.atrous_conv.forward_parts(x)?;
        trace.put(|| format!("{name}.offset"), &offset);
        trace.put(|| format!("{name}.modulator_logits"), &modulator_logits);
        trace.put(|| format!("{name}.deform_out"), &output);
        bn_eval(&self.bn, &output)?.relu()
    }
}

/// `ASPPDeformable`: deformable branches k = 1 (`aspp1`), 1, 3, 7 and a global
/// average pool, concatenated → 1×1 conv → BN → ReLU.
#[derive(Debug, Clone)]
pub struct AsppDeformable {
    pub aspp1: AsppBranch,
    pub aspp_deforms: Vec<AsppBranch>,
    gap_conv: SameConv,
    gap_bn: BatchNorm,
    conv1: SameConv,
    bn1: BatchNorm,
}

impl AsppDeformable {
    pub fn load(vb: VarBuilder, channels: usize, cfg: &Config) -> Result<Self> {
        let p = cfg.aspp_planes;
        let aspp_deforms = [1, 3, 7]
            .iter()
            .enumerate()
            .map(|(i, &k)| {
                AsppBranch::load(vb.pp(format!("aspp_deforms.{i}")), channels, p, k, cfg)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            aspp1: AsppBranch::load(vb.pp("aspp1"), channels, p, 1, cfg)?,
            aspp_deforms,
            gap_conv: conv(vb.pp("global_avg_pool.1"), channels, p, 1, false)?,
            gap_bn: bn(vb.pp("global_avg_pool.2"), p, cfg)?,
            conv1: conv(vb.pp("conv1"), 5 * p, channels, 1, false)?,
            bn1: bn(vb.pp("bn1"), channels, cfg)?,
        })
    }

    /// `AdaptiveAvgPool(1) → Conv1×1 → BN → ReLU`: `(B, P, 1, 1)`.
    pub fn global_avg_pool(&self, x: &Tensor) -> Result<Tensor> {
        let pooled = x.mean_keepdim(3)?.mean_keepdim(2)?;
        bn_eval(&self.gap_bn, &self.gap_conv.forward(&pooled)?)?.relu()
    }

    pub fn forward_traced(&self, x: &Tensor, name: &str, trace: &mut Trace) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let mut branches = vec![self.aspp1.forward(x, &format!("{name}.aspp1"), trace)?];
        for (i, b) in self.aspp_deforms.iter().enumerate() {
            branches.push(b.forward(x, &format!("{name}.aspp_deforms.{i}"), trace)?);
        }
        let gap = self.global_avg_pool(x)?;
        trace.put(|| format!("{name}.global_avg_pool"), &gap);
        // interp of a 1×1 map with align_corners=True is a broadcast.
        let (b, p, _, _) = gap.dims4()?;
        branches.push(gap.broadcast_as((b, p, h, w))?.contiguous()?);
        let cat = Tensor::cat(&branches, 1)?;
        let out = bn_eval(&self.bn1, &self.conv1.forward(&cat)?)?.relu()?;
        trace.put(|| name.to_owned(), &out);
        Ok(out)
    }
}

/// `conv_in 3×3 → BN → ReLU → ASPPDeformable → conv_out 3×3 → BN` (no final ReLU).
#[derive(Debug, Clone)]
pub struct BasicDecBlk {
    conv_in: SameConv,
    bn_in: BatchNorm,
    pub dec_att: AsppDeformable,
    conv_out: SameConv,
    bn_out: BatchNorm,
}

impl BasicDecBlk {
    pub fn load(vb: VarBuilder, cin: usize, cout: usize, cfg: &Config) -> Result<Self> {
        let inter = cfg.dec_inter_channels;
        Ok(Self {
            conv_in: conv(vb.pp("conv_in"), cin, inter, 3, true)?,
            bn_in: bn(vb.pp("bn_in"), inter, cfg)?,
            dec_att: AsppDeformable::load(vb.pp("dec_att"), inter, cfg)?,
            conv_out: conv(vb.pp("conv_out"), inter, cout, 3, true)?,
            bn_out: bn(vb.pp("bn_out"), cout, cfg)?,
        })
    }

    /// The raw `conv_in` output (before its BN).
    pub fn conv_in(&self, x: &Tensor) -> Result<Tensor> {
        self.conv_in.forward(x)
    }

    pub fn forward_traced(&self, x: &Tensor, name: &str, trace: &mut Trace) -> Result<Tensor> {
        let c = self.conv_in(x)?;
        trace.put(|| format!("{name}.conv_in"), &c);
        let a = bn_eval(&self.bn_in, &c)?.relu()?;
        let a = self
            .dec_att
            .forward_traced(&a, &format!("{name}.dec_att"), trace)?;
        let out = bn_eval(&self.bn_out, &self.conv_out.forward(&a)?)?;
        trace.put(|| name.to_owned(), &out);
        Ok(out)
    }
}

impl Module for BasicDecBlk {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_traced(x, "", &mut Trace::off())
    }
}

/// `SimpleConvs`: Conv3×3 → Conv3×3, nothing between.
#[derive(Debug, Clone)]
pub struct SimpleConvs {
    conv1: SameConv,
    conv_out: SameConv,
}

impl SimpleConvs {
    fn load(vb: VarBuilder, cin: usize, cout: usize, inter: usize) -> Result<Self> {
        Ok(Self {
            conv1: conv(vb.pp("conv1"), cin, inter, 3, true)?,
            conv_out: conv(vb.pp("conv_out"), inter, cout, 3, true)?,
        })
    }
}

impl Module for SimpleConvs {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.conv_out.forward(&self.conv1.forward(x)?)
    }
}

/// `Conv3×3(→16) → BN → ReLU` (`gdt_convs_k`).
#[derive(Debug, Clone)]
struct GdtConvs {
    conv: SameConv,
    bn: BatchNorm,
}

impl GdtConvs {
    fn load(vb: VarBuilder, cin: usize, cfg: &Config) -> Result<Self> {
        Ok(Self {
            conv: conv(vb.pp("0"), cin, cfg.gdt_channels, 3, true)?,
            bn: bn(vb.pp("1"), cfg.gdt_channels, cfg)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        bn_eval(&self.bn, &self.conv.forward(x)?)?.relu()
    }
}

/// `image2patches`: `(B, C, g·h, g·w) → (B, C·g·g, h, w)`, channel `c·g² + hg·g + wg`.
pub fn image_to_patches(x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (b, c, xh, xw) = x.dims4()?;
    if xh % h != 0 || xw % w != 0 || xh / h != xw / w {
        candle_core::bail!("image_to_patches: {xh}x{xw} is not a square grid of {h}x{w} patches");
    }
    let g = xh / h;
    x.reshape((b, c, g, h, g, w))?
        .permute((0, 1, 2, 4, 3, 5))?
        .reshape((b, c * g * g, h, w))
}

/// The decoder (`decoder.*`).
#[derive(Debug, Clone)]
pub struct Decoder {
    /// `ipt_blk5..ipt_blk1` at index 0..4.
    pub ipt_blks: Vec<SimpleConvs>,
    /// `decoder_block4..decoder_block1` at index 0..4.
    pub blocks: Vec<BasicDecBlk>,
    /// `lateral_block4..lateral_block2` at index 0..3.
    pub laterals: Vec<SameConv>,
    gdt: Vec<GdtConvs>,
    gdt_attn: Vec<SameConv>,
    conv_out1: SameConv,
}

impl Decoder {
    pub fn load(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        let c = cfg.lateral_channels();
        let ic = cfg.ipt_inter_channels;
        // (name, in = 3·g², out) for ipt_blk5..1 (grids 32, 16, 8, 4, 1).
        let ipt = [
            (5, 3 << 10, c[0] / 8),
            (4, 3 << 8, c[0] / 8),
            (3, 3 << 6, c[1] / 8),
            (2, 3 << 4, c[2] / 8),
            (1, 3, c[3] / 8),
        ];
        let ipt_blks = ipt
            .iter()
            .map(|&(k, cin, cout)| SimpleConvs::load(vb.pp(format!("ipt_blk{k}")), cin, cout, ic))
            .collect::<Result<Vec<_>>>()?;
        let blocks = [
            (4, c[0] + c[0] / 8, c[1]),
            (3, c[1] + c[0] / 8, c[2]),
            (2, c[2] + c[1] / 8, c[3]),
            (1, c[3] + c[2] / 8, c[3] / 2),
        ]
        .iter()
        .map(|&(k, cin, cout)| {
            BasicDecBlk::load(vb.pp(format!("decoder_block{k}")), cin, cout, cfg)
        })
        .collect::<Result<Vec<_>>>()?;
        let laterals = [(4, c[1]), (3, c[2]), (2, c[3])]
            .iter()
            .map(|&(k, ch)| conv(vb.pp(format!("lateral_block{k}.conv")), ch, ch, 1, true))
            .collect::<Result<Vec<_>>>()?;
        let gdt = [(4, c[1]), (3, c[2]), (2, c[3])]
            .iter()
            .map(|&(k, ch)| GdtConvs::load(vb.pp(format!("gdt_convs_{k}")), ch, cfg))
            .collect::<Result<Vec<_>>>()?;
        let gdt_attn = [4, 3, 2]
            .iter()
            .map(|k| {
                conv(
                    vb.pp(format!("gdt_convs_attn_{k}.0")),
                    cfg.gdt_channels,
                    1,
                    1,
                    true,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            ipt_blks,
            blocks,
            laterals,
            gdt,
            gdt_attn,
            conv_out1: conv(vb.pp("conv_out1.0"), c[3] / 2 + c[3] / 8, 1, 1, true)?,
        })
    }

    /// Model input `x (1, 3, H, W)` and encoder outputs `[x1, x2, x3, x4]`
    /// (x4 squeezed) → logits `(1, 1, H, W)`.
    pub fn forward_traced(
        &self,
        x: &Tensor,
        feats: &[Tensor; 4],
        trace: &mut Trace,
    ) -> Result<Tensor> {
        let [x1, x2, x3, x4] = feats;
        let (_, _, h, w) = x.dims4()?;
        let patches =
            |blk: &SimpleConvs, name: &str, level: &Tensor, trace: &mut Trace| -> Result<Tensor> {
                let (_, _, lh, lw) = level.dims4()?;
                let out = blk.forward(&image_to_patches(x, lh, lw)?)?;
                trace.put(|| format!("decoder.{name}"), &out);
                Ok(out)
            };
        let gdt = |i: usize, p: &Tensor, trace: &mut Trace| -> Result<Tensor> {
            let k = 4 - i;
            let g = self.gdt[i].forward(p)?;
            trace.put(|| format!("decoder.gdt_convs_{k}"), &g);
            let a = self.gdt_attn[i].forward(&g)?;
            trace.put(|| format!("decoder.gdt_convs_attn_{k}"), &a);
            p.broadcast_mul(&candle_nn::ops::sigmoid(&a)?)
        };
        let lateral = |i: usize, xl: &Tensor, trace: &mut Trace| -> Result<Tensor> {
            let out = self.laterals[i].forward(xl)?;
            trace.put(|| format!("decoder.lateral_block{}", 4 - i), &out);
            Ok(out)
        };
        let block = |i: usize, input: &Tensor, trace: &mut Trace| -> Result<Tensor> {
            let name = format!("decoder.decoder_block{}", 4 - i);
            trace.put(|| format!("{name}.input"), input);
            self.blocks[i].forward_traced(input, &name, trace)
        };

        let ipt5 = patches(&self.ipt_blks[0], "ipt_blk5", x4, trace)?;
        let p4 = block(0, &Tensor::cat(&[x4, &ipt5], 1)?, trace)?;
        let p4 = gdt(0, &p4, trace)?;

        let (_, _, h3, w3) = x3.dims4()?;
        let p3 = (interp(&p4, h3, w3)? + lateral(0, x3, trace)?)?;
        let ipt4 = patches(&self.ipt_blks[1], "ipt_blk4", x3, trace)?;
        let p3 = block(1, &Tensor::cat(&[&p3, &ipt4], 1)?, trace)?;
        let p3 = gdt(1, &p3, trace)?;

        let (_, _, h2, w2) = x2.dims4()?;
        let p2 = (interp(&p3, h2, w2)? + lateral(1, x2, trace)?)?;
        let ipt3 = patches(&self.ipt_blks[2], "ipt_blk3", x2, trace)?;
        let p2 = block(2, &Tensor::cat(&[&p2, &ipt3], 1)?, trace)?;
        let p2 = gdt(2, &p2, trace)?;

        let (_, _, h1, w1) = x1.dims4()?;
        let p1 = (interp(&p2, h1, w1)? + lateral(2, x1, trace)?)?;
        let ipt2 = patches(&self.ipt_blks[3], "ipt_blk2", x1, trace)?;
        let p1 = block(3, &Tensor::cat(&[&p1, &ipt2], 1)?, trace)?;
        let p1 = interp(&p1, h, w)?;

        let ipt1 = self.ipt_blks[4].forward(x)?;
        trace.put(|| "decoder.ipt_blk1".to_owned(), &ipt1);
        let logits = self.conv_out1.forward(&Tensor::cat(&[&p1, &ipt1], 1)?)?;
        trace.put(|| "logits".to_owned(), &logits);
        Ok(logits)
    }
}
