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
use candle_nn::VarBuilder;
use rayon::prelude::*;

/// Elements of one im2col chunk (positions × `k²·C`): 16 MB, under glibc's
/// largest mmap threshold, so the chunk buffers are reused from the heap instead
/// of being mapped and page-faulted in afresh each time (at 64 MB the lite
/// model's 1024² run spent nearly twice the kernel time).
const MAX_CHUNK_ELEMS: usize = 4 << 20;

/// Output positions per parallel im2col task (rayon's scheduling overhead stays
/// small next to the gather work of this many positions).
const POSITIONS_PER_TASK: usize = 64;

/// `torchvision.ops.deform_conv2d(input, offset, weight, bias, stride=1,
/// padding, dilation=1, mask)` with one offset group and one weight group.
///
/// Shapes: `input (B, C, H, W)`, `offset (B, 2k², Ho, Wo)`, `mask (B, k², Ho, Wo)`,
/// `weight (O, C, k, k)`, `bias (O)`; output `(B, O, Ho, Wo)`,
/// `Ho = H + 2·padding − k + 1`.
///
/// The im2col runs position-major on a channels-last copy of the input, so each
/// bilinear corner is one contiguous run of `C` values (vectorised), and in
/// parallel across output positions; the matmul is candle's (multi-threaded).
pub fn deform_conv2d(
    input: &Tensor,
    offset: &Tensor,
    mask: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    padding: usize,
) -> Result<Tensor> {
    deform_conv2d_chunked(input, offset, mask, weight, bias, padding, MAX_CHUNK_ELEMS)
}

/// [`deform_conv2d`] with im2col chunks of at most `chunk_elems` elements
/// (at least one position each); tests make it small to cross chunk edges.
fn deform_conv2d_chunked(
    input: &Tensor,
    offset: &Tensor,
    mask: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    padding: usize,
    chunk_elems: usize,
) -> Result<Tensor> {
    let g = Geometry::of("deform_conv2d", input, weight, padding)?;
    let (b, kk) = (input.dim(0)?, g.k * g.k);
    let (ho, wo) = (g.positions / g.wo, g.wo);
    if offset.dims() != [b, 2 * kk, ho, wo] || mask.dims() != [b, kk, ho, wo] {
        candle_core::bail!(
            "deform_conv2d: offset {:?} / mask {:?} must be ({b}, {}, {ho}, {wo}) / ({b}, {kk}, {ho}, {wo})",
            offset.dims(),
            mask.dims(),
            2 * kk
        );
    }
    let off = cpu_f32(offset)?.flatten_all()?.to_vec1::<f32>()?;
    let msk = cpu_f32(mask)?.flatten_all()?.to_vec1::<f32>()?;
    let per_offsets = 2 * kk * g.positions;
    let per_mask = kk * g.positions;
    im2col_matmul(
        input,
        weight,
        bias,
        g,
        chunk_elems,
        |bi, x_hwc, pos, row| {
            let sample = Sample {
                x_hwc,
                off: &off[bi * per_offsets..(bi + 1) * per_offsets],
                msk: &msk[bi * per_mask..(bi + 1) * per_mask],
            };
            deform_row(sample, g, pos, row);
        },
    )
}

fn cpu_f32(t: &Tensor) -> Result<Tensor> {
    t.to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .contiguous()
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

impl Geometry {
    /// Checks `input (B, C, H, W)` against `weight (O, C, k, k)`.
    fn of(op: &str, input: &Tensor, weight: &Tensor, padding: usize) -> Result<Self> {
        let (_, c, h, w) = input.dims4()?;
        let (_, wc, kh, kw) = weight.dims4()?;
        if wc != c || kh != kw {
            candle_core::bail!(
                "{op}: weight {:?} does not fit input {:?} (square kernels, one group)",
                weight.dims(),
                input.dims()
            );
        }
        let k = kh;
        let out_side = |side: usize| {
            (side + 2 * padding + 1)
                .checked_sub(k)
                .filter(|&v| v > 0)
                .ok_or_else(|| {
                    candle_core::Error::Msg(format!(
                        "{op}: kernel {k} larger than the padded input {h}x{w}"
                    ))
                })
        };
        let (ho, wo) = (out_side(h)?, out_side(w)?);
        Ok(Self {
            c,
            h,
            w,
            k,
            padding,
            wo,
            positions: ho * wo,
        })
    }
}

/// `out[b, o, pos] = Σ_j W[o, j] · cols[pos, j]` (+ bias), where `fill(b,
/// x_hwc, pos, row)` writes row `pos` of the columns (`k²·C` values, column
/// `t·C + c` for tap `t` and channel `c`) from batch item `b`'s channels-last
/// input; rows arrive zeroed. Rows are filled in parallel, chunk by chunk, and
/// each chunk's `(O, n)` product is copied into place.
fn im2col_matmul(
    input: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    g: Geometry,
    chunk_elems: usize,
    fill: impl Fn(usize, &[f32], usize, &mut [f32]) + Sync,
) -> Result<Tensor> {
    let (b, c, h, w) = input.dims4()?;
    let o = weight.dim(0)?;
    let (ho, wo) = (g.positions / g.wo, g.wo);
    let row_len = g.k * g.k * c;
    let device = input.device().clone();
    let dtype = input.dtype();
    let x_hwc = cpu_f32(&cpu_f32(input)?.permute((0, 2, 3, 1))?)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    // Columns in (tap, channel) order, as the rows are filled.
    let wmat = cpu_f32(&cpu_f32(weight)?.permute((0, 2, 3, 1))?)?.reshape((o, row_len))?;
    let chunk = (chunk_elems / row_len.max(1)).clamp(1, g.positions);
    let mut out = vec![0f32; b * o * g.positions];
    for (bi, out_b) in out.chunks_exact_mut(o * g.positions).enumerate() {
        let xb = &x_hwc[bi * c * h * w..(bi + 1) * c * h * w];
        let mut start = 0;
        while start < g.positions {
            let n = chunk.min(g.positions - start);
            let mut cols = vec![0f32; n * row_len];
            cols.par_chunks_mut(row_len * POSITIONS_PER_TASK)
                .enumerate()
                .for_each(|(task, rows)| {
                    let first = start + task * POSITIONS_PER_TASK;
                    for (p, row) in rows.chunks_exact_mut(row_len).enumerate() {
                        fill(bi, xb, first + p, row);
                    }
                });
            let cols = Tensor::from_vec(cols, (n, row_len), &Device::Cpu)?;
            let part = wmat.matmul(&cols.t()?)?.flatten_all()?.to_vec1::<f32>()?;
            for (dst, src) in out_b
                .chunks_exact_mut(g.positions)
                .zip(part.chunks_exact(n))
            {
                dst[start..start + n].copy_from_slice(src);
            }
            start += n;
        }
    }
    let mut out = Tensor::from_vec(out, (b, o, ho, wo), &Device::Cpu)?;
    if let Some(bias) = bias {
        out = out.broadcast_add(&cpu_f32(bias)?.reshape((1, o, 1, 1))?)?;
    }
    out.to_dtype(dtype)?.to_device(&device)
}

/// One batch item for the deformable im2col: its offsets `(2k², Ho·Wo)` and
/// modulation `(k², Ho·Wo)` beside the channels-last input `(H, W, C)`.
#[derive(Clone, Copy)]
struct Sample<'a> {
    x_hwc: &'a [f32],
    off: &'a [f32],
    msk: &'a [f32],
}

/// One output position's `k²·C` modulated bilinear samples (zeros outside the map).
fn deform_row(s: Sample<'_>, g: Geometry, pos: usize, row: &mut [f32]) {
    let (y, xo) = (pos / g.wo, pos % g.wo);
    for (t, dst) in row.chunks_exact_mut(g.c).enumerate() {
        let (i, j) = (t / g.k, t % g.k);
        let py = y as f32 - g.padding as f32 + i as f32 + s.off[2 * t * g.positions + pos];
        let px = xo as f32 - g.padding as f32 + j as f32 + s.off[(2 * t + 1) * g.positions + pos];
        if py <= -1.0 || py >= g.h as f32 || px <= -1.0 || px >= g.w as f32 {
            continue;
        }
        let y0 = py.floor();
        let x0 = px.floor();
        let (ly, lx) = (py - y0, px - x0);
        let (hy, hx) = (1.0 - ly, 1.0 - lx);
        let (y0, x0) = (y0 as isize, x0 as isize);
        let inside = |yy: isize, xx: isize| -> Option<usize> {
            (yy >= 0 && xx >= 0 && (yy as usize) < g.h && (xx as usize) < g.w)
                .then(|| (yy as usize * g.w + xx as usize) * g.c)
        };
        let corners = [
            (inside(y0, x0), hy * hx),
            (inside(y0, x0 + 1), hy * lx),
            (inside(y0 + 1, x0), ly * hx),
            (inside(y0 + 1, x0 + 1), ly * lx),
        ];
        // Corners summed first, then × mask, as torchvision does.
        let mut any = false;
        for (idx, wgt) in corners {
            let Some(idx) = idx else { continue };
            let src = &s.x_hwc[idx..idx + g.c];
            if any {
                dst.iter_mut().zip(src).for_each(|(d, &v)| *d += wgt * v);
            } else {
                dst.iter_mut().zip(src).for_each(|(d, &v)| *d = wgt * v);
                any = true;
            }
        }
        let m = s.msk[t * g.positions + pos];
        dst.iter_mut().for_each(|d| *d *= m);
    }
}

/// A stride-1 `nn.Conv2d` with padding `k / 2` (weight `(O, C, k, k)`, optional
/// bias) on [`crate::kernels::conv2d`] (the shared CPU conv; candle's on GPUs).
#[derive(Debug, Clone)]
pub struct SameConv {
    weight: Tensor,
    bias: Option<Tensor>,
    padding: usize,
}

impl SameConv {
    pub fn load(vb: VarBuilder, cin: usize, cout: usize, k: usize, bias: bool) -> Result<Self> {
        Ok(Self {
            weight: vb.get((cout, cin, k, k), "weight")?,
            bias: bias.then(|| vb.get(cout, "bias")).transpose()?,
            padding: k / 2,
        })
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
}

impl Module for SameConv {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        crate::kernels::conv2d(x, &self.weight, self.bias.as_ref(), None, 1, self.padding)
    }
}

/// BiRefNet's `DeformableConv2d`: offsets and modulator from plain convs on the
/// input, then [`deform_conv2d`] with `regular_conv.weight` (no bias).
#[derive(Debug, Clone)]
pub struct DeformableConv2d {
    /// `offset_conv` and `modulator_conv` stacked along the output channels:
    /// one im2col of the input serves both.
    offset_and_modulator: SameConv,
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
        let offset = SameConv::load(vb.pp("offset_conv"), cin, 2 * k * k, k, true)?;
        let modulator = SameConv::load(vb.pp("modulator_conv"), cin, k * k, k, true)?;
        let stack = |a: Option<&Tensor>, b: Option<&Tensor>| match (a, b) {
            (Some(a), Some(b)) => Tensor::cat(&[a, b], 0).map(Some),
            _ => Ok(None),
        };
        Ok(Self {
            offset_and_modulator: SameConv {
                weight: Tensor::cat(&[&offset.weight, &modulator.weight], 0)?,
                bias: stack(offset.bias.as_ref(), modulator.bias.as_ref())?,
                padding: k / 2,
            },
            weight: vb.get((cout, cin, k, k), "regular_conv.weight")?,
            padding: k / 2,
        })
    }

    pub fn forward_parts(&self, x: &Tensor) -> Result<DeformParts> {
        let kk = self.weight.dim(2)? * self.weight.dim(3)?;
        let both = self.offset_and_modulator.forward(x)?;
        let offset = both.narrow(1, 0, 2 * kk)?.contiguous()?;
        let modulator_logits = both.narrow(1, 2 * kk, kk)?.contiguous()?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    struct Case {
        dims: (usize, usize, usize, usize),
        out_channels: usize,
        k: usize,
        padding: usize,
    }

    /// torchvision's formula written out per output value, in f64: the
    /// straightforward version the fast path must agree with. Returns the
    /// outputs and, per output, Σ|terms| (the scale of the f32 rounding).
    fn direct(
        case: &Case,
        [x, off, msk, wt]: [&[f32]; 4],
        (ho, wo): (usize, usize),
    ) -> (Vec<f64>, Vec<f64>) {
        let (b, c, h, w) = case.dims;
        let (o, k, pad) = (case.out_channels, case.k, case.padding as f64);
        let kk = k * k;
        let at = |bi: usize, ch: usize, yy: i64, xx: i64| -> f64 {
            if yy < 0 || xx < 0 || yy >= h as i64 || xx >= w as i64 {
                return 0.0;
            }
            f64::from(x[((bi * c + ch) * h + yy as usize) * w + xx as usize])
        };
        let map = |bi: usize, planes: usize, plane: usize, y: usize, xo: usize| {
            ((bi * planes + plane) * ho + y) * wo + xo
        };
        let n = b * o * ho * wo;
        let (mut out, mut scale) = (vec![0f64; n], vec![0f64; n]);
        for bi in 0..b {
            for oc in 0..o {
                for y in 0..ho {
                    for xo in 0..wo {
                        let idx = map(bi, o, oc, y, xo);
                        for ch in 0..c {
                            for t in 0..kk {
                                let (i, j) = (t / k, t % k);
                                let dy = f64::from(off[map(bi, 2 * kk, 2 * t, y, xo)]);
                                let dx = f64::from(off[map(bi, 2 * kk, 2 * t + 1, y, xo)]);
                                let m = f64::from(msk[map(bi, kk, t, y, xo)]);
                                let py = y as f64 - pad + i as f64 + dy;
                                let px = xo as f64 - pad + j as f64 + dx;
                                let outside =
                                    py <= -1.0 || py >= h as f64 || px <= -1.0 || px >= w as f64;
                                let v = if outside {
                                    0.0
                                } else {
                                    let (y0, x0) = (py.floor(), px.floor());
                                    let (ly, lx) = (py - y0, px - x0);
                                    let (y0, x0) = (y0 as i64, x0 as i64);
                                    (1.0 - ly) * (1.0 - lx) * at(bi, ch, y0, x0)
                                        + (1.0 - ly) * lx * at(bi, ch, y0, x0 + 1)
                                        + ly * (1.0 - lx) * at(bi, ch, y0 + 1, x0)
                                        + ly * lx * at(bi, ch, y0 + 1, x0 + 1)
                                };
                                let term = f64::from(wt[(oc * c + ch) * kk + t]) * m * v;
                                out[idx] += term;
                                scale[idx] += term.abs();
                            }
                        }
                    }
                }
            }
        }
        (out, scale)
    }

    /// Random input, weights and modulation; offsets of up to ±3.5 px, an
    /// eighth of them whole numbers (samples exactly on pixels and borders).
    fn check(case: &Case, seed: u64, chunk_elems: usize) {
        let (b, c, h, w) = case.dims;
        let (o, k) = (case.out_channels, case.k);
        let (ho, wo) = (h + 2 * case.padding + 1 - k, w + 2 * case.padding + 1 - k);
        let kk = k * k;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut draw = |n: usize, lo: f32, hi: f32| -> Vec<f32> {
            (0..n).map(|_| rng.random_range(lo..hi)).collect()
        };
        let x = draw(b * c * h * w, -1.0, 1.0);
        let wt = draw(o * c * kk, -0.5, 0.5);
        let msk = draw(b * kk * ho * wo, 0.0, 2.0);
        let off: Vec<f32> = draw(b * 2 * kk * ho * wo, -3.5, 3.5)
            .into_iter()
            .enumerate()
            .map(|(i, v)| if i % 8 == 3 { v.round() } else { v })
            .collect();
        let bias = draw(o, -0.1, 0.1);
        let dev = Device::Cpu;
        let t = |v: &[f32], shape: &[usize]| Tensor::from_slice(v, shape, &dev).unwrap();
        let got = deform_conv2d_chunked(
            &t(&x, &[b, c, h, w]),
            &t(&off, &[b, 2 * kk, ho, wo]),
            &t(&msk, &[b, kk, ho, wo]),
            &t(&wt, &[o, c, k, k]),
            Some(&t(&bias, &[o])),
            case.padding,
            chunk_elems,
        )
        .unwrap();
        assert_eq!(got.dims(), [b, o, ho, wo]);
        let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (want, scale) = direct(case, [&x, &off, &msk, &wt], (ho, wo));
        for (i, ((g, w), s)) in got.iter().zip(&want).zip(&scale).enumerate() {
            let w = w + f64::from(bias[(i / (ho * wo)) % o]);
            let tol = 1e-5 * (1.0 + s);
            assert!(
                (f64::from(*g) - w).abs() <= tol,
                "k={k} dims {:?}: output {i} is {g}, the direct formula gives {w} (tol {tol:.1e})",
                case.dims
            );
        }
    }

    #[test]
    fn fast_deform_conv2d_matches_the_direct_formula_on_odd_shapes() {
        let cases = [
            Case {
                dims: (1, 5, 7, 11),
                out_channels: 3,
                k: 1,
                padding: 0,
            },
            Case {
                dims: (2, 3, 9, 6),
                out_channels: 4,
                k: 3,
                padding: 1,
            },
            Case {
                dims: (1, 7, 5, 13),
                out_channels: 2,
                k: 3,
                padding: 0,
            },
            Case {
                dims: (1, 4, 11, 9),
                out_channels: 5,
                k: 7,
                padding: 3,
            },
            Case {
                dims: (2, 2, 3, 4),
                out_channels: 3,
                k: 5,
                padding: 2,
            },
        ];
        for (seed, case) in cases.iter().enumerate() {
            // One big chunk, and chunks of a few positions (edges inside the map).
            check(case, seed as u64, MAX_CHUNK_ELEMS);
            check(case, seed as u64, case.k * case.k * case.dims.1 * 5);
        }
    }

    #[test]
    fn fast_deform_conv2d_spans_many_parallel_tasks() {
        // 40×37 = 1480 positions: 23 tasks of 64 positions and a partial one, in 3 chunks.
        let case = Case {
            dims: (1, 6, 40, 37),
            out_channels: 4,
            k: 3,
            padding: 1,
        };
        check(&case, 99, 9 * 6 * 600);
    }
}
