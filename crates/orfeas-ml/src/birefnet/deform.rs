//! Modulated deformable convolution (DCNv2) with torchvision's
//! `deform_conv2d` semantics, and BiRefNet's `DeformableConv2d` module.
//!
//! For output pixel (y, x) and kernel tap (i, j), `t = i·k + j`, the sample
//! point is `(y − pad + i + dy, x − pad + j + dx)` with `dy = offset[2t]`,
//! `dx = offset[2t+1]`; the value is a bilinear sample of the *unpadded* input
//! where every corner outside the map counts as 0 (and a point at or beyond
//! −1 / the size is 0 outright). `out[o] = Σ_{c,t} w[o,c,i,j] · mask[t] · sample_c`.
//!
//! Runs on the CPU in f32 (the sampling is data-dependent gather work); other
//! devices and dtypes are copied over and back.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, VarBuilder};

/// Columns per matmul chunk (`C·k²` × positions), bounding the im2col buffer at ~64 MB.
const MAX_CHUNK_ELEMS: usize = 16 << 20;

/// `torchvision.ops.deform_conv2d(input, offset, weight, bias, stride=1,
/// padding, dilation=1, mask)` with one offset group and one weight group.
///
/// Shapes: `input (B, C, H, W)`, `offset (B, 2k², Ho, Wo)`, `mask (B, k², Ho, Wo)`,
/// `weight (O, C, k, k)`, `bias (O)`; output `(B, O, Ho, Wo)`,
/// `Ho = H + 2·padding − k + 1`.
pub fn deform_conv2d(
    input: &Tensor,
    offset: &Tensor,
    mask: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    padding: usize,
) -> Result<Tensor> {
    let (b, c, h, w) = input.dims4()?;
    let (o, wc, kh, kw) = weight.dims4()?;
    if wc != c || kh != kw {
        candle_core::bail!(
            "deform_conv2d: weight {:?} does not fit input {:?} (square kernels, one group)",
            weight.dims(),
            input.dims()
        );
    }
    let k = kh;
    let kk = k * k;
    let ho = (h + 2 * padding + 1)
        .checked_sub(k)
        .filter(|&v| v > 0)
        .ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "deform_conv2d: kernel {k} larger than the padded input {h}x{w}"
            ))
        })?;
    let wo = (w + 2 * padding + 1)
        .checked_sub(k)
        .filter(|&v| v > 0)
        .ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "deform_conv2d: kernel {k} larger than the padded input {h}x{w}"
            ))
        })?;
    if offset.dims() != [b, 2 * kk, ho, wo] || mask.dims() != [b, kk, ho, wo] {
        candle_core::bail!(
            "deform_conv2d: offset {:?} / mask {:?} must be ({b}, {}, {ho}, {wo}) / ({b}, {kk}, {ho}, {wo})",
            offset.dims(),
            mask.dims(),
            2 * kk
        );
    }
    let device = input.device().clone();
    let dtype = input.dtype();
    let cpu = |t: &Tensor| -> Result<Tensor> {
        t.to_device(&Device::Cpu)?
            .to_dtype(DType::F32)?
            .contiguous()
    };
    let x = cpu(input)?.flatten_all()?.to_vec1::<f32>()?;
    let off = cpu(offset)?.flatten_all()?.to_vec1::<f32>()?;
    let msk = cpu(mask)?.flatten_all()?.to_vec1::<f32>()?;
    let wmat = cpu(weight)?.reshape((o, c * kk))?;

    let positions = ho * wo;
    let rows = c * kk;
    let chunk = (MAX_CHUNK_ELEMS / rows.max(1)).clamp(1, positions);
    let mut outs = Vec::with_capacity(b);
    for bi in 0..b {
        let xb = &x[bi * c * h * w..(bi + 1) * c * h * w];
        let ob = &off[bi * 2 * kk * positions..(bi + 1) * 2 * kk * positions];
        let mb = &msk[bi * kk * positions..(bi + 1) * kk * positions];
        let mut parts = Vec::new();
        let mut start = 0;
        while start < positions {
            let n = chunk.min(positions - start);
            let cols = im2col(
                xb,
                ob,
                mb,
                Geometry {
                    c,
                    h,
                    w,
                    k,
                    padding,
                    wo,
                    positions,
                },
                start,
                n,
            );
            let cols = Tensor::from_vec(cols, (rows, n), &Device::Cpu)?;
            parts.push(wmat.matmul(&cols)?);
            start += n;
        }
        outs.push(Tensor::cat(&parts, 1)?.reshape((o, ho, wo))?);
    }
    let mut out = Tensor::stack(&outs, 0)?;
    if let Some(bias) = bias {
        out = out.broadcast_add(&cpu(bias)?.reshape((1, o, 1, 1))?)?;
    }
    out.to_dtype(dtype)?.to_device(&device)
}

#[derive(Clone, Copy)]
struct Geometry {
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    padding: usize,
    wo: usize,
    positions: usize,
}

/// Modulated samples for output positions `start..start+n`: `(C·k², n)` row-major,
/// row `c·k² + t`.
fn im2col(x: &[f32], off: &[f32], msk: &[f32], g: Geometry, start: usize, n: usize) -> Vec<f32> {
    let kk = g.k * g.k;
    let mut cols = vec![0f32; g.c * kk * n];
    for t in 0..kk {
        let (i, j) = (t / g.k, t % g.k);
        let dy_row = &off[2 * t * g.positions..(2 * t + 1) * g.positions];
        let dx_row = &off[(2 * t + 1) * g.positions..(2 * t + 2) * g.positions];
        let m_row = &msk[t * g.positions..(t + 1) * g.positions];
        for p in 0..n {
            let pos = start + p;
            let (y, xo) = (pos / g.wo, pos % g.wo);
            let py = y as f32 - g.padding as f32 + i as f32 + dy_row[pos];
            let px = xo as f32 - g.padding as f32 + j as f32 + dx_row[pos];
            let m = m_row[pos];
            if py <= -1.0 || py >= g.h as f32 || px <= -1.0 || px >= g.w as f32 {
                continue;
            }
            let y0 = py.floor();
            let x0 = px.floor();
            let (ly, lx) = (py - y0, px - x0);
            let (hy, hx) = (1.0 - ly, 1.0 - lx);
            let (y0, x0) = (y0 as isize, x0 as isize);
            let (y1, x1) = (y0 + 1, x0 + 1);
            let inside = |yy: isize, xx: isize| -> Option<usize> {
                (yy >= 0 && xx >= 0 && (yy as usize) < g.h && (xx as usize) < g.w)
                    .then(|| yy as usize * g.w + xx as usize)
            };
            let corners = [
                (inside(y0, x0), hy * hx),
                (inside(y0, x1), hy * lx),
                (inside(y1, x0), ly * hx),
                (inside(y1, x1), ly * lx),
            ];
            for ch in 0..g.c {
                let plane = &x[ch * g.h * g.w..(ch + 1) * g.h * g.w];
                let mut v = 0f32;
                for (idx, wgt) in corners {
                    if let Some(idx) = idx {
                        v += wgt * plane[idx];
                    }
                }
                cols[(ch * kk + t) * n + p] = m * v;
            }
        }
    }
    cols
}

/// BiRefNet's `DeformableConv2d`: offsets and modulator from plain convs on the
/// input, then [`deform_conv2d`] with `regular_conv.weight` (no bias).
#[derive(Debug, Clone)]
pub struct DeformableConv2d {
    offset_conv: Conv2d,
    modulator_conv: Conv2d,
    weight: Tensor,
    padding: usize,
}

/// A deformable conv's intermediates (for parity checks).
#[derive(Debug, Clone)]
pub struct DeformParts {
    pub offset: Tensor,
    pub modulator_logits: Tensor,
    pub output: Tensor,
}

impl DeformableConv2d {
    pub fn load(vb: VarBuilder, cin: usize, cout: usize, k: usize) -> Result<Self> {
        let conv = Conv2dConfig {
            padding: k / 2,
            ..Default::default()
        };
        Ok(Self {
            offset_conv: candle_nn::conv2d(cin, 2 * k * k, k, conv, vb.pp("offset_conv"))?,
            modulator_conv: candle_nn::conv2d(cin, k * k, k, conv, vb.pp("modulator_conv"))?,
            weight: vb.get((cout, cin, k, k), "regular_conv.weight")?,
            padding: k / 2,
        })
    }

    pub fn forward_parts(&self, x: &Tensor) -> Result<DeformParts> {
        let offset = self.offset_conv.forward(x)?;
        let modulator_logits = self.modulator_conv.forward(x)?;
        let mask = (candle_nn::ops::sigmoid(&modulator_logits)? * 2.0)?;
        let output = deform_conv2d(x, &offset, &mask, &self.weight, None, self.padding)?;
        Ok(DeformParts {
            offset,
            modulator_logits,
            output,
        })
    }
}

impl Module for DeformableConv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.forward_parts(x)?.output)
    }
}
