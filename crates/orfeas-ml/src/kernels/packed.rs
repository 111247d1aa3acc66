//! 3×3 convolutions (stride 1, padding 1) on our own AVX-512 micro-kernel, for
//! the large feature maps that carry most of a VAE decode's and a UNet's FLOPs.
//!
//! The `gemm` crate behind [`super::conv2d_f32`]'s general path packs both
//! operands on every call: the weight (`c_out × k`, up to 9.4 MB for the VAE's
//! 512-channel convs) once per im2col tile of a few hundred pixels, and the tile's
//! columns after we have just written them. Here the weight is packed once per
//! call into blocks of [`MR`] output channels (`[block][k][MR]`), there is no
//! im2col: an `MR × NR` micro-tile (24 of the 32 zmm registers) reads its nine
//! taps straight from padded copies of the input rows under it ([`conv3x3`] says
//! why copies), optionally through an [`InputMap`].
//!
//! Only compiled in on x86_64 and only taken when the CPU has AVX-512F
//! ([`available`]); everywhere else the general path runs.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::{ConvShape, InputMap, OutPtr};

/// Output channels per micro-tile.
const MR: usize = 12;
/// Output pixels per micro-tile (two 16-lane vectors): one row's segment.
const NR: usize = 32;
/// Input channels per block: a tile reads 3 rows of `NR + 2` floats of each
/// (13 KB, in L1 while every weight block passes over it), the block's weights
/// for one group of `MR` output channels are `CB · 9 · MR` floats (13.5 KB).
const CB: usize = 32;
/// Output pixels one task aims at (whole rows).
const TASK_PIXELS: usize = 2048;

/// Whether the packed kernel computes this convolution: 3×3, stride 1,
/// padding 1, an output width that is a multiple of [`NR`].
pub(super) fn fits(s: &ConvShape) -> bool {
    s.k_h == 3 && s.k_w == 3 && s.stride == 1 && s.padding == 1 && s.w > 0 && s.w.is_multiple_of(NR)
}

/// Whether this CPU runs the packed kernel (AVX-512F).
pub(super) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The weight (`c_out` rows of `k`) in blocks of [`MR`] rows, each block `k`
/// groups of `MR` (one per im2col row), rows past `c_out` zero.
fn pack_weight(w: &[f32], c_out: usize, k: usize) -> Vec<f32> {
    // SAFETY: every block's k groups get all MR rows written, a weight row or zeros.
    #[allow(unsafe_code)]
    unsafe {
        super::written_by(c_out.div_ceil(MR) * k * MR, |packed| {
            packed
                .par_chunks_mut(k * MR)
                .enumerate()
                .for_each(|(block, dst)| {
                    for r in 0..MR {
                        let co = block * MR + r;
                        let groups = dst.chunks_exact_mut(MR);
                        if co < c_out {
                            let src = &w[co * k..(co + 1) * k];
                            for (d, &v) in groups.zip(src) {
                                d[r].write(v);
                            }
                        } else {
                            groups.for_each(|d| {
                                d[r].write(0.0);
                            });
                        }
                    }
                })
        })
    }
}

/// `out += conv(x, weight)` for a 3×3, stride 1, padding 1 convolution whose
/// output width is a multiple of [`NR`] ([`fits`]), `out` already holding the
/// starting values when `read_dst` (else overwritten). Other shapes are checked
/// by the caller; the CPU must have AVX-512F ([`available`]).
///
/// A task owns a few whole output rows, and works through them one block of
/// [`CB`] input channels at a time:
/// - It copies the input rows under its output rows (one more above and below),
///   of each of the block's channels and read through `map`, into a scratch of
///   rows `w + 2` floats long with the zero padding in place (zero rows above or
///   below the map): each input row is mapped once per task, not once for each
///   of the three output rows that read it. The planes themselves are a
///   power-of-two apart (1 MB at 512²), so the same pixels of every channel share
///   one cache set, and reading them there sent most reloads to L3.
/// - It accumulates its rows for every output channel in a block of its own
///   (rows `rows · w` floats apart) and writes them to `out` once at the end, for
///   the same reason.
pub(super) fn conv3x3(
    x: &[f32],
    weight: &[f32],
    out: &mut [MaybeUninit<f32>],
    read_dst: bool,
    map: InputMap<'_>,
    s: ConvShape,
) {
    let (h, w) = (s.h, s.w);
    let (k, plane) = (s.k_len(), h * w);
    let a = pack_weight(weight, s.c_out, k);
    let blocks = s.c_out.div_ceil(MR);
    let threads = rayon::current_num_threads().max(1);
    // About TASK_PIXELS per task, but every thread gets several.
    let rows = (TASK_PIXELS / w)
        .max(1)
        .min((s.batch * h / (4 * threads)).max(1));
    let tasks_per_item = h.div_ceil(rows);
    let (sh, sw) = map.stored_hw(h, w);
    let in_len = s.c_in * sh * sw;
    let stride = w + 2;
    let dst = OutPtr(out.as_mut_ptr().cast());
    (0..s.batch * tasks_per_item).into_par_iter().for_each_init(
        || (Vec::new(), Vec::new()),
        |(acc, window): &mut (Vec<f32>, Vec<f32>), task| {
            let (bi, ti) = (task / tasks_per_item, task % tasks_per_item);
            let oy0 = ti * rows;
            let n_rows = rows.min(h - oy0);
            let width = n_rows * w;
            let xb = &x[bi * in_len..(bi + 1) * in_len];
            // SAFETY (where used below): `dst` points at `out`, alive until every
            // task ends; this task reads and writes only rows [oy0, oy0 + n_rows) of
            // item `bi`'s channels, which belong to no other task.
            let out_row = |co: usize| {
                dst.get()
                    .wrapping_add((bi * s.c_out + co) * plane + oy0 * w)
            };
            acc.resize(blocks * MR * width, 0.0);
            if read_dst {
                for (co, row) in acc.chunks_exact_mut(width).take(s.c_out).enumerate() {
                    #[allow(unsafe_code)]
                    unsafe {
                        std::ptr::copy_nonoverlapping(out_row(co), row.as_mut_ptr(), width);
                    }
                }
            }
            // Per channel: input rows oy0 − 1 ..= oy0 + n_rows.
            let channel_stride = (n_rows + 2) * stride;
            window.resize(CB * channel_stride, 0.0);
            for ci0 in (0..s.c_in).step_by(CB) {
                let ci_n = CB.min(s.c_in - ci0);
                let load = read_dst || ci0 > 0;
                let a_ci = |block: usize| {
                    &a[(block * k + ci0 * 9) * MR..(block * k + (ci0 + ci_n) * 9) * MR]
                };
                fill_window(xb, s, map, (bi * s.c_in + ci0, ci_n), (oy0, n_rows), window);
                for r in 0..n_rows {
                    for ox0 in (0..w).step_by(NR) {
                        for block in 0..blocks {
                            let c = &mut acc[block * MR * width + r * w + ox0..]
                                [..(MR - 1) * width + NR];
                            let start = r * stride + ox0;
                            let taps = &window
                                [start..start + (ci_n - 1) * channel_stride + 2 * stride + NR + 2];
                            // SAFETY: `a_ci` holds ci_n·9·MR floats, `taps` ci_n channels
                            // `channel_stride` apart of 3 rows `stride` apart of at least
                            // NR + 2 floats, `c` MR rows of NR floats `width` apart; the
                            // CPU has AVX-512F (the caller's precondition).
                            #[allow(unsafe_code)]
                            unsafe {
                                micro_kernel(
                                    ci_n,
                                    a_ci(block).as_ptr(),
                                    taps.as_ptr(),
                                    (stride, channel_stride),
                                    c.as_mut_ptr(),
                                    width,
                                    load,
                                );
                            }
                        }
                    }
                }
            }
            for (co, row) in acc.chunks_exact(width).take(s.c_out).enumerate() {
                #[allow(unsafe_code)]
                unsafe {
                    std::ptr::copy_nonoverlapping(row.as_ptr(), out_row(co), width);
                }
            }
        },
    );
}

/// Copies input rows `oy0 − 1 ..= oy0 + n_rows` of `ci_n` input channels, read
/// through `map`, into `window` (rows of `w + 2`: channel-major, then row), with
/// a zero at each end and zero rows outside the map. `xb` is the batch item's
/// stored input and `first` the first channel's plane index in the batch
/// (item · c_in + channel, which picks its affine map).
fn fill_window(
    xb: &[f32],
    s: ConvShape,
    map: InputMap<'_>,
    (first, ci_n): (usize, usize),
    (oy0, n_rows): (usize, usize),
    window: &mut [f32],
) {
    let (h, w) = (s.h, s.w);
    let (sh, sw) = map.stored_hw(h, w);
    let ci0 = first % s.c_in;
    let per_channel = n_rows + 2;
    let rows = window.chunks_exact_mut(w + 2).take(ci_n * per_channel);
    for (i, dst) in rows.enumerate() {
        let (ci, dy) = (ci0 + i / per_channel, i % per_channel);
        match (oy0 + dy).checked_sub(1).filter(|&iy| iy < h) {
            Some(iy) => {
                let sy = if map.upsample { iy / 2 } else { iy };
                dst[0] = 0.0;
                map.row(
                    first + i / per_channel,
                    &xb[(ci * sh + sy) * sw..][..sw],
                    &mut dst[1..=w],
                );
                dst[w + 1] = 0.0;
            }
            None => dst.fill(0.0),
        }
    }
}

#[allow(unsafe_code)]
#[cfg(not(target_arch = "x86_64"))]
unsafe fn micro_kernel(
    _: usize,
    _: *const f32,
    _: *const f32,
    _: (usize, usize),
    _: *mut f32,
    _: usize,
    _: bool,
) {
    unreachable!("the packed convolution runs only where `available()` (x86_64 with AVX-512F)");
}

/// `c[MR × NR] = (load ? c : 0) + a ⊛ taps`: `taps` holds, for each of
/// `channels` input channels (`channel_stride` apart), its padded input rows
/// `oy − 1, oy, oy + 1` (`stride` apart), each from the column left of the
/// tile's first pixel; `a` per channel, row and horizontal tap a group of `MR`
/// weights; `c` has `MR` rows `ldc` apart. 24 accumulators, two vector loads and
/// twelve broadcasts per 24 FMAs.
///
/// # Safety
/// The CPU has AVX-512F; `a` holds `channels · 9 · MR` floats, `taps` those
/// rows of at least `NR + 2` floats; `c` has `MR` rows of at least `NR` floats,
/// `ldc` apart, that nothing else touches.
#[allow(unsafe_code)]
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn micro_kernel(
    channels: usize,
    a: *const f32,
    taps: *const f32,
    (stride, channel_stride): (usize, usize),
    c: *mut f32,
    ldc: usize,
    load: bool,
) {
    use std::arch::x86_64::{
        __m512, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_set1_ps, _mm512_setzero_ps,
        _mm512_storeu_ps,
    };
    const V: usize = NR / 16;
    // SAFETY: the function's contract bounds every pointer below.
    unsafe {
        let mut acc: [[__m512; V]; MR] = [[_mm512_setzero_ps(); V]; MR];
        if load {
            for (r, row) in acc.iter_mut().enumerate() {
                for (v, lane) in row.iter_mut().enumerate() {
                    *lane = _mm512_loadu_ps(c.add(r * ldc + v * 16));
                }
            }
        }
        let mut a = a;
        for ci in 0..channels {
            for ky in 0..3 {
                let src = taps.add(ci * channel_stride + ky * stride);
                for kx in 0..3 {
                    let mut bv = [_mm512_setzero_ps(); V];
                    for (v, lane) in bv.iter_mut().enumerate() {
                        *lane = _mm512_loadu_ps(src.add(kx + v * 16));
                    }
                    for (r, row) in acc.iter_mut().enumerate() {
                        let ar = _mm512_set1_ps(*a.add(r));
                        for (lane, &bv) in row.iter_mut().zip(&bv) {
                            *lane = _mm512_fmadd_ps(ar, bv, *lane);
                        }
                    }
                    a = a.add(MR);
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            for (v, lane) in row.iter().enumerate() {
                _mm512_storeu_ps(c.add(r * ldc + v * 16), *lane);
            }
        }
    }
}
