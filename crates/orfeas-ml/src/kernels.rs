//! CPU kernels for the ops that dominate the SD family, TAESD, TripoSR and
//! BiRefNet on the CPU: convolution, group norm (+ SiLU), attention, linear
//! layers, GEGLU's gate, nearest 2× upsampling.
//!
//! Why not candle's own CPU ops (0.11): its conv2d transposes the whole input
//! to channels-last on one thread, writes each im2col column with a stride of
//! the tile width, multiplies tile by tile and scatters the result back to
//! NCHW one element at a time; its group norm is eight tensor passes, each a
//! fresh allocation, and SiLU three more. Here:
//!
//! - **3×3 convs** (stride 1, padding 1, on AVX-512 CPUs, maps of 64² and more) run
//!   on our own micro-kernel (`kernels/packed.rs`): the weight packed once per call, the taps
//!   read from a padded copy of the input rows, which can be read through a group
//!   norm + SiLU or a nearest 2× upsampling on the way ([`InputMap`]), so those maps
//!   are never written out.
//! - **conv2d** otherwise is an im2col-by-tiles GEMM straight into the NCHW output: the
//!   columns of one tile are filled from NCHW rows (contiguous copies for
//!   stride 1), the product is written in place (the output's row stride is the
//!   plane size), bias, a per-batch bias (the UNet's time embedding) and a
//!   residual are the GEMM's starting value, so `conv(x) + b + temb + skip` is
//!   one pass. 1×1 convs skip the columns: the input plane is the GEMM operand.
//!   The GEMM is the `gemm` crate's (candle's own), built with its AVX-512
//!   kernels (`x86-v4`; chosen at run time, AVX2/FMA or SSE otherwise).
//! - **group norm** is one statistics pass and one normalise pass per group,
//!   in parallel over (batch, group), with SiLU fused into the second pass.
//! - **attention** is flash-style (per-head query blocks, no score matrix),
//!   **linear** layers are row × column GEMM tiles, **GEGLU** one fused pass.
//! - **upsample** copies each row twice, in parallel over planes.
//!
//! Every kernel works on contiguous f32 slices and is wrapped by a tensor
//! function that takes the fast path for f32 on the CPU and hands any other
//! device or dtype to candle's op (so CUDA and Metal are untouched). Tests in
//! `tests/integration/kernels.rs` check each against candle's op on random odd
//! shapes.

use candle_core::{DType, Module, Result, Storage, Tensor};
use candle_nn::VarBuilder;
use std::mem::MaybeUninit;

use rayon::prelude::*;

mod packed;

/// Floats in one tile's im2col columns (2 MB): a tile's columns stay in L2
/// while the GEMM packs them, and the buffer is reused from the heap.
const COL_BUDGET: usize = 1 << 19;

/// Fewest output pixels in a tile (below this the GEMM's packing dominates).
const MIN_TILE: usize = 64;

/// Defines `fn $name(args) -> ret` that runs `$body` (an `#[inline(always)]`
/// function of the same arguments) compiled for AVX-512F when the CPU has it,
/// else for AVX2 + FMA, else as built (SSE2), so the body's loops vectorise as
/// wide as the machine allows. Results do not depend on the tier: the bodies
/// are plain arithmetic and Rust never fuses `a·b + c` on its own.
macro_rules! widest_simd {
    ($(#[$meta:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? => $body:ident) => {
        $(#[$meta])*
        fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[allow(unsafe_code)]
                #[target_feature(enable = "avx512f")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                #[allow(unsafe_code)]
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has AVX-512F (checked just above).
                    #[allow(unsafe_code)]
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU has AVX2 and FMA (checked just above).
                    #[allow(unsafe_code)]
                    return unsafe { avx2($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}

/// Shape of one 2-D convolution: input `(batch, c_in, h, w)`, weight
/// `(c_out, c_in, k_h, k_w)`, square stride and zero padding, no dilation or groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvShape {
    pub batch: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub k_h: usize,
    pub k_w: usize,
    pub stride: usize,
    pub padding: usize,
}

impl ConvShape {
    /// The shape of convolving `x (batch, c_in, h, w)` (read `upsampled` 2× when
    /// asked) with `weight (c_out, c_in, k_h, k_w)`; errors when the weight's input
    /// channels differ from `x`'s.
    fn of(
        x: &Tensor,
        weight: &Tensor,
        (stride, padding): (usize, usize),
        upsampled: bool,
    ) -> Result<Self> {
        let (batch, c_in, h, w) = x.dims4()?;
        let (c_out, wc, k_h, k_w) = weight.dims4()?;
        if wc != c_in {
            candle_core::bail!(
                "conv2d: weight {:?} does not fit input {:?}",
                weight.dims(),
                x.dims()
            );
        }
        let up = if upsampled { 2 } else { 1 };
        Ok(Self {
            batch,
            c_in,
            h: up * h,
            w: up * w,
            c_out,
            k_h,
            k_w,
            stride,
            padding,
        })
    }

    /// Output height and width, or `None` when the kernel does not fit the
    /// padded input (or the stride is 0).
    pub fn out_hw(&self) -> Option<(usize, usize)> {
        if self.stride == 0 {
            return None;
        }
        let side = |n: usize, k: usize| {
            (n + 2 * self.padding)
                .checked_sub(k)
                .map(|v| v / self.stride + 1)
        };
        Some((side(self.h, self.k_h)?, side(self.w, self.k_w)?))
    }

    /// [`Self::out_hw`], or an error that says the kernel does not fit.
    fn checked_out_hw(&self) -> Result<(usize, usize)> {
        match self.out_hw() {
            Some(hw) => Ok(hw),
            None => candle_core::bail!(
                "conv2d: kernel {}x{} does not fit input {}x{} padded by {} (stride {})",
                self.k_h,
                self.k_w,
                self.h,
                self.w,
                self.padding,
                self.stride
            ),
        }
    }

    fn k_len(&self) -> usize {
        self.c_in * self.k_h * self.k_w
    }

    fn pointwise(&self) -> bool {
        self.k_h == 1 && self.k_w == 1 && self.stride == 1 && self.padding == 0
    }
}

/// What the convolution output starts from before the product is added, and
/// what follows it.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConvInit<'a> {
    /// Per output channel (`c_out`) or per batch item and channel (`batch · c_out`).
    pub bias: Option<&'a [f32]>,
    /// Added to the output element for element (`batch · c_out · out_h · out_w`).
    pub residual: Option<&'a [f32]>,
    /// `max(0, ·)` on the sum (TAESD's blocks).
    pub relu: bool,
}

/// How a convolution reads its input (as stored, by default): through one
/// affine map per batch item and input channel (a group norm's, see
/// [`group_norm_affine_f32`]) and SiLU, and/or upsampled nearest 2×. The packed
/// kernel applies it as it copies input rows, so the mapped input never exists
/// as a whole (at the VAE's 512² level that is 128-256 MB neither written nor
/// faulted in); the general path writes the mapped input out first.
#[derive(Debug, Clone, Copy, Default)]
pub struct InputMap<'a> {
    /// `(a, b)` per batch item and input channel: the channel reads as `a·x + b`.
    pub affine: Option<&'a [(f32, f32)]>,
    /// SiLU after the affine map.
    pub silu: bool,
    /// The stored input has half the convolution's height and width (the
    /// [`ConvShape`]'s `h` and `w`, which must be even) and reads upsampled 2×.
    pub upsample: bool,
}

impl<'a> InputMap<'a> {
    /// A group norm's affine map (see [`group_norm_affine_f32`]), then SiLU.
    pub fn norm_silu(affine: &'a [(f32, f32)]) -> Self {
        Self {
            affine: Some(affine),
            silu: true,
            upsample: false,
        }
    }

    fn is_identity(&self) -> bool {
        self.affine.is_none() && !self.silu && !self.upsample
    }

    /// Height and width of the stored input of a convolution over `h × w`.
    fn stored_hw(&self, h: usize, w: usize) -> (usize, usize) {
        if self.upsample {
            (h / 2, w / 2)
        } else {
            (h, w)
        }
    }

    /// Writes one mapped input row into `dst` (the convolution's width) from the
    /// stored row `src` of input plane `index` (batch item · `c_in` + channel).
    fn row(&self, index: usize, src: &[f32], dst: &mut [f32]) {
        let ab = self.affine.map(|c| c[index]);
        let map = |src: &[f32], dst: &mut [f32]| match (ab, self.silu) {
            (None, false) => dst.copy_from_slice(src),
            (ab, silu) => {
                let (a, b) = ab.unwrap_or((1.0, 0.0));
                // SAFETY: affine_silu writes only initialised values.
                #[allow(unsafe_code)]
                affine_silu(src, unsafe { as_uninit(dst) }, a, b, silu);
            }
        };
        if !self.upsample {
            map(src, dst);
            return;
        }
        // Mapped into the upper half, then spread from the left: pair j is written
        // only after value j (at half + j ≥ 2j + 1 for j < half) has been read.
        let half = src.len();
        map(src, &mut dst[half..2 * half]);
        for j in 0..half {
            let v = dst[half + j];
            dst[2 * j] = v;
            dst[2 * j + 1] = v;
        }
    }

    /// The mapped input as a whole (`batch · c_in` planes of `h × w`), for the
    /// general path.
    fn apply(&self, x: &[f32], s: &ConvShape) -> Vec<f32> {
        let (sh, sw) = self.stored_hw(s.h, s.w);
        let mut out = vec![0f32; s.batch * s.c_in * s.h * s.w];
        out.par_chunks_mut(s.h * s.w)
            .enumerate()
            .for_each(|(index, plane)| {
                let stored = &x[index * sh * sw..(index + 1) * sh * sw];
                for (y, row) in plane.chunks_exact_mut(s.w).enumerate() {
                    let sy = if self.upsample { y / 2 } else { y };
                    self.row(index, &stored[sy * sw..(sy + 1) * sw], row);
                }
            });
        out
    }
}

/// A raw output pointer shared by the tile tasks: each task writes only its own
/// columns `[p0, p0 + t)` of every output row, so writes never overlap.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: see the type's comment; the pointer outlives every task (scoped by rayon).
#[allow(unsafe_code)]
unsafe impl Send for OutPtr {}
#[allow(unsafe_code)]
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// A method, not a field read, so closures capture the whole (Sync) wrapper.
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// `n` floats, every one written by `fill`, which gets them uninitialised: not
/// zeroed first. calloc zeroes a heap chunk glibc hands out again with one
/// single-threaded memset (and with [`crate::memory::keep_freed_memory`] every
/// chunk of a warm run is such a one): for a VAE conv's 128-256 MB output that was
/// 5-8 % of the conv's time, with the other thread idle.
///
/// # Safety
/// `fill` must write every element of the slice it is given.
#[allow(unsafe_code)]
unsafe fn written_by(n: usize, fill: impl FnOnce(&mut [MaybeUninit<f32>])) -> Vec<f32> {
    let mut v = Vec::with_capacity(n);
    fill(&mut v.spare_capacity_mut()[..n]);
    // SAFETY: `fill` wrote all `n` elements (the caller's contract).
    unsafe { v.set_len(n) };
    v
}

/// Initialised floats viewed as possibly-uninitialised ones, for the kernels that
/// write both kinds of output.
///
/// # Safety
/// Only initialised values may be written through the view.
#[allow(unsafe_code)]
unsafe fn as_uninit(xs: &mut [f32]) -> &mut [MaybeUninit<f32>] {
    // SAFETY: MaybeUninit<f32> has f32's layout; the caller writes only
    // initialised values, so `xs` stays initialised.
    unsafe { &mut *(xs as *mut [f32] as *mut [MaybeUninit<f32>]) }
}

/// Writes a GEMM's starting values into `out`, planes of `plane` floats (NCHW,
/// one plane per batch item and channel): plane `i` gets `bias[i % bias.len()]`
/// (per channel, or per item and channel) plus, with `residual` (`out`'s shape),
/// that plane of it. Written, never read first: reading a fresh calloc'd page maps
/// the shared zero page, and the write after it is a copy-on-write fault with a TLB
/// shootdown on every core (a fifth of a 512² VAE conv's time went there). Returns
/// whether anything was written (the GEMM then adds to `out`).
fn start_planes(
    out: &mut [MaybeUninit<f32>],
    plane: usize,
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
) -> bool {
    if bias.is_none() && residual.is_none() {
        return false;
    }
    out.par_chunks_mut(plane.max(1))
        .enumerate()
        .for_each(|(i, o)| {
            let v = bias.map_or(0.0, |b| b[i % b.len()]);
            match residual {
                Some(r) => {
                    let src = &r[i * plane..(i + 1) * plane];
                    o.iter_mut().zip(src).for_each(|(o, &x)| {
                        o.write(x + v);
                    });
                }
                None => o.fill(MaybeUninit::new(v)),
            }
        });
    true
}

/// A fresh copy of `residual` (NCHW planes of `plane` floats) plus `bias` per
/// plane, as [`start_planes`] writes it: the starting values a GEMM adds into.
fn residual_plus_bias(residual: &[f32], plane: usize, bias: Option<&[f32]>) -> Vec<f32> {
    if plane == 0 {
        return residual.to_vec();
    }
    // SAFETY: with a residual as long as the output, start_planes writes every
    // element (or panics on a partial plane before the Vec is handed out).
    #[allow(unsafe_code)]
    unsafe {
        written_by(residual.len(), |out| {
            start_planes(out, plane, bias, Some(residual));
        })
    }
}

/// Writes a GEMM's starting values into a row-major `out` of rows of `width`:
/// each row gets `bias (width)` plus, with `residual` (`out`'s shape), that row of
/// it. Written, never read first (see [`start_planes`]). Returns whether anything
/// was written.
fn start_rows(
    out: &mut [MaybeUninit<f32>],
    width: usize,
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
) -> bool {
    if bias.is_none() && residual.is_none() {
        return false;
    }
    out.par_chunks_mut(width.max(1))
        .enumerate()
        .for_each(|(i, row)| {
            let res = residual.map(|r| &r[i * width..(i + 1) * width]);
            match (bias, res) {
                (Some(b), Some(r)) => {
                    row.iter_mut()
                        .zip(b.iter().zip(r))
                        .for_each(|(o, (&b, &x))| {
                            o.write(x + b);
                        })
                }
                (Some(b), None) => {
                    row.write_copy_of_slice(b);
                }
                (None, Some(r)) => {
                    row.write_copy_of_slice(r);
                }
                (None, None) => {}
            }
        });
    true
}

/// Which inner loop a convolution runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvPath {
    /// The packed micro-kernel where it fits (3×3, stride 1, padding 1, output
    /// width a multiple of 32) over at least [`PACKED_MIN_PIXELS`] output pixels
    /// when the CPU has AVX-512F, else general.
    Auto,
    /// im2col tiles through the `gemm` crate (any CPU, any shape).
    General,
    /// The packed AVX-512 micro-kernel whatever the size, where it fits; general
    /// where it does not or the CPU lacks AVX-512F.
    Packed,
}

/// Fewest output pixels per item for which [`ConvPath::Auto`] takes the packed
/// kernel: on smaller maps each task's rows are few beside the weight it streams,
/// and the `gemm` crate's row split wins (640→640 at 32²: 243 against 228 GFLOP/s
/// on 2 threads; 320→320 at 64²: 252 against 285).
pub const PACKED_MIN_PIXELS: usize = 4096;

/// `out = init + conv(x, weight)` on contiguous f32 slices (NCHW), see [`ConvShape`].
///
/// Errors when a slice length does not match the shape.
pub fn conv2d_f32(x: &[f32], weight: &[f32], init: ConvInit<'_>, s: ConvShape) -> Result<Vec<f32>> {
    conv2d_f32_via(x, weight, init, InputMap::default(), s, ConvPath::Auto)
}

/// `out = init + conv(map(x), weight)` on the given [`ConvPath`] (the tests run
/// each on the same shapes); `x` is stored as `map` says ([`InputMap::upsample`]).
///
/// Errors when a slice length does not match the shape.
pub fn conv2d_f32_via(
    x: &[f32],
    weight: &[f32],
    init: ConvInit<'_>,
    map: InputMap<'_>,
    s: ConvShape,
    path: ConvPath,
) -> Result<Vec<f32>> {
    let out_len = check_conv(x, weight, init, map, s)?;
    // SAFETY: `conv_into` writes every element of `out` (see its comment).
    #[allow(unsafe_code)]
    let mut out =
        unsafe { written_by(out_len, |out| conv_into(x, weight, init, map, s, path, out)) };
    if init.relu {
        relu_in_place(&mut out);
    }
    Ok(out)
}

/// `out += conv(map(x), weight)` into an output that already holds its starting
/// values (`batch · c_out · out_h · out_w` floats), e.g. a shortcut's: no fresh
/// map, no pass writing the starting values.
///
/// Errors when a slice length does not match the shape.
pub fn conv2d_f32_add(
    x: &[f32],
    weight: &[f32],
    map: InputMap<'_>,
    s: ConvShape,
    out: &mut [f32],
) -> Result<()> {
    let out_len = check_conv(x, weight, ConvInit::default(), map, s)?;
    if out.len() != out_len {
        candle_core::bail!("conv2d: output has {} elements, not {out_len}", out.len());
    }
    // SAFETY: the product writes only initialised values.
    #[allow(unsafe_code)]
    let out = unsafe { as_uninit(out) };
    conv_product(x, weight, map, s, ConvPath::Auto, out, true);
    Ok(())
}

/// Checks the slices of a convolution against its shape; returns the output's length.
fn check_conv(
    x: &[f32],
    weight: &[f32],
    init: ConvInit<'_>,
    map: InputMap<'_>,
    s: ConvShape,
) -> Result<usize> {
    let (oh, ow) = s.checked_out_hw()?;
    let (p, k) = (oh * ow, s.k_len());
    let (sh, sw) = map.stored_hw(s.h, s.w);
    if map.upsample && (!s.h.is_multiple_of(2) || !s.w.is_multiple_of(2)) {
        candle_core::bail!(
            "conv2d: an upsampled input needs an even size, not {}x{}",
            s.h,
            s.w
        );
    }
    if x.len() != s.batch * s.c_in * sh * sw || weight.len() != s.c_out * k {
        candle_core::bail!(
            "conv2d: input {} / weight {} elements do not match {s:?}{}",
            x.len(),
            weight.len(),
            if map.upsample {
                " upsampled from half the size"
            } else {
                ""
            }
        );
    }
    if let Some(a) = map.affine
        && a.len() != s.batch * s.c_in
    {
        candle_core::bail!(
            "conv2d: {} input maps for {} items of {} channels",
            a.len(),
            s.batch,
            s.c_in
        );
    }
    let out_len = s.batch * s.c_out * p;
    if let Some(r) = init.residual
        && r.len() != out_len
    {
        candle_core::bail!(
            "conv2d: residual has {} elements, the output {out_len}",
            r.len()
        );
    }
    if let Some(b) = init.bias
        && b.len() != s.c_out
        && b.len() != s.batch * s.c_out
    {
        candle_core::bail!(
            "conv2d: bias has {} elements, expected {} or {}",
            b.len(),
            s.c_out,
            s.batch * s.c_out
        );
    }
    Ok(out_len)
}

/// The body of [`conv2d_f32_via`] (shapes checked) into an uninitialised `out`,
/// every element of which it writes: the starting values when there are any, and
/// the product over them (or over nothing, the GEMM then not reading `out`), or
/// zeros when the product is empty.
fn conv_into(
    x: &[f32],
    weight: &[f32],
    init: ConvInit<'_>,
    map: InputMap<'_>,
    s: ConvShape,
    path: ConvPath,
    out: &mut [MaybeUninit<f32>],
) {
    let Some((oh, ow)) = s.out_hw() else {
        unreachable!("conv2d_f32_via checked the shape");
    };
    let read_dst = start_planes(out, oh * ow, init.bias, init.residual);
    conv_product(x, weight, map, s, path, out, read_dst);
}

/// `out (+)= conv(map(x), weight)`, shapes checked: with `read_dst` `out` holds
/// the starting values, without it every element is written and none read.
fn conv_product(
    x: &[f32],
    weight: &[f32],
    map: InputMap<'_>,
    s: ConvShape,
    path: ConvPath,
    out: &mut [MaybeUninit<f32>],
    read_dst: bool,
) {
    let Some((oh, ow)) = s.out_hw() else {
        unreachable!("the caller checked the shape");
    };
    let (p, k) = (oh * ow, s.k_len());
    if out.is_empty() || k == 0 {
        if !read_dst {
            out.fill(MaybeUninit::new(0.0));
        }
        return;
    }

    let packed = packed::available()
        && packed::fits(&s)
        && match path {
            ConvPath::Auto => p >= PACKED_MIN_PIXELS,
            ConvPath::General => false,
            ConvPath::Packed => true,
        };
    if packed {
        packed::conv3x3(x, weight, out, read_dst, map, s);
        return;
    }
    let mapped;
    let x = if map.is_identity() {
        x
    } else {
        mapped = map.apply(x, &s);
        &mapped[..]
    };

    let threads = rayon::current_num_threads().max(1);
    let tile = if s.pointwise() {
        // No columns to hold: tiles only split the work.
        p.div_ceil(4 * threads).max(MIN_TILE * 4).min(p)
    } else {
        (COL_BUDGET / k).max(MIN_TILE).min(p)
    };
    let tiles_per_item = p.div_ceil(tile);
    let tasks = s.batch * tiles_per_item;
    let dst = OutPtr(out.as_mut_ptr().cast());
    let run = |task: usize, col: &mut Vec<f32>, par: gemm::Parallelism| {
        let (bi, ti) = (task / tiles_per_item, task % tiles_per_item);
        let p0 = ti * tile;
        let t = tile.min(p - p0);
        let xb = &x[bi * s.c_in * s.h * s.w..(bi + 1) * s.c_in * s.h * s.w];
        let (rhs, rhs_rs) = if s.pointwise() {
            (&xb[p0..], p)
        } else {
            col.resize(k * t, 0.0);
            fill_columns(xb, s, ow, p0, t, col);
            (&col[..], t)
        };
        // SAFETY: `dst` points at `out`, which lives until every task ends; this
        // task writes rows [0, c_out) × columns [p0, p0 + t) of batch item `bi`'s
        // (c_out, p) block, disjoint from every other task. `weight` holds
        // c_out × k floats (checked above), `rhs` k rows of stride `rhs_rs` with at
        // least `t` valid columns each (the columns, or the input plane from p0).
        #[allow(unsafe_code)]
        unsafe {
            gemm::gemm(
                s.c_out,
                t,
                k,
                dst.get().add(bi * s.c_out * p + p0),
                1,
                p as isize,
                read_dst,
                weight.as_ptr(),
                1,
                k as isize,
                rhs.as_ptr(),
                1,
                rhs_rs as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                par,
            );
        }
    };
    if tasks >= 2 * threads || threads == 1 {
        (0..tasks)
            .into_par_iter()
            .for_each_init(Vec::new, |col, task| {
                run(task, col, gemm::Parallelism::None);
            });
    } else {
        // Few, wide tiles (small feature maps, many channels): the GEMM splits its rows.
        let mut col = Vec::new();
        for task in 0..tasks {
            run(task, &mut col, gemm::Parallelism::Rayon(threads));
        }
    }
}

fn relu_in_place(out: &mut [f32]) {
    out.par_chunks_mut(1 << 14)
        .for_each(|c| c.iter_mut().for_each(|v| *v = v.max(0.0)));
}

/// Writes the im2col columns of output pixels `[p0, p0 + t)` into `col`
/// (`k_len` rows of `t`, row `(ci·k_h + ky)·k_w + kx`, the weight's column order).
fn fill_columns(xb: &[f32], s: ConvShape, ow: usize, p0: usize, t: usize, col: &mut [f32]) {
    let plane_len = s.h * s.w;
    for ci in 0..s.c_in {
        let plane = &xb[ci * plane_len..(ci + 1) * plane_len];
        for ky in 0..s.k_h {
            for kx in 0..s.k_w {
                let r = (ci * s.k_h + ky) * s.k_w + kx;
                fill_row(plane, s, ow, p0, ky, kx, &mut col[r * t..(r + 1) * t]);
            }
        }
    }
}

/// Writes one im2col row: the input value under kernel tap `(ky, kx)` of `plane`
/// (one input channel) for output pixels `[p0, p0 + row.len())`, zero in the padding.
fn fill_row(
    plane: &[f32],
    s: ConvShape,
    ow: usize,
    p0: usize,
    ky: usize,
    kx: usize,
    row: &mut [f32],
) {
    let pad = s.padding as isize;
    let t = row.len();
    let mut off = 0;
    while off < t {
        let pix = p0 + off;
        let (oy, ox0) = (pix / ow, pix % ow);
        let n = (ow - ox0).min(t - off);
        let seg = &mut row[off..off + n];
        off += n;
        let iy = (oy * s.stride + ky) as isize - pad;
        if iy < 0 || iy >= s.h as isize {
            seg.fill(0.0);
            continue;
        }
        let src = &plane[iy as usize * s.w..(iy as usize + 1) * s.w];
        let ix0 = (ox0 * s.stride + kx) as isize - pad;
        if s.stride == 1 {
            let n_i = n as isize;
            let lo = (-ix0).clamp(0, n_i);
            let hi = (s.w as isize - ix0).clamp(lo, n_i);
            let (lo, hi) = (lo as usize, hi as usize);
            seg[..lo].fill(0.0);
            seg[hi..].fill(0.0);
            if lo < hi {
                let a = (ix0 + lo as isize) as usize;
                seg[lo..hi].copy_from_slice(&src[a..a + (hi - lo)]);
            }
        } else {
            for (j, v) in seg.iter_mut().enumerate() {
                let ix = ix0 + (j * s.stride) as isize;
                *v = if ix >= 0 && ix < s.w as isize {
                    src[ix as usize]
                } else {
                    0.0
                };
            }
        }
    }
}

/// Group normalisation of `x` (NCHW: `batch · channels · plane` floats, `plane`
/// the spatial size) with per-channel `gamma`/`beta`, then SiLU when `silu` (the
/// resnet blocks' `silu(norm(x))`). Statistics in one pass per (batch, group)
/// ([`mean_and_variance`]), then one normalising pass.
#[allow(clippy::too_many_arguments)]
pub fn group_norm_f32(
    x: &[f32],
    channels: usize,
    plane: usize,
    groups: usize,
    gamma: &[f32],
    beta: &[f32],
    eps: f64,
    silu: bool,
) -> Result<Vec<f32>> {
    let coefficients = group_norm_affine_f32(x, channels, plane, groups, gamma, beta, eps)?;
    // SAFETY: the planes cover `out` (x.len() is whole planes: group_norm_affine_f32
    // checked it), and affine_silu writes every element of each.
    #[allow(unsafe_code)]
    let out = unsafe {
        written_by(x.len(), |out| {
            out.par_chunks_mut(plane)
                .zip(x.par_chunks(plane))
                .zip(coefficients.par_iter())
                .for_each(|((o, xs), &(a, b))| affine_silu(xs, o, a, b, silu));
        })
    };
    Ok(out)
}

/// [`group_norm_f32`] as one affine map per batch item and channel, `(a, b)`:
/// the norm of that channel's plane is `a·x + b` (what a convolution can apply
/// as it reads its input, see [`InputMap`]).
///
/// Errors when the channels do not split into the groups, `gamma`/`beta` are
/// not one per channel, or `x` is not whole items of `channels × plane`.
pub fn group_norm_affine_f32(
    x: &[f32],
    channels: usize,
    plane: usize,
    groups: usize,
    gamma: &[f32],
    beta: &[f32],
    eps: f64,
) -> Result<Vec<(f32, f32)>> {
    if groups == 0
        || !channels.is_multiple_of(groups)
        || gamma.len() != channels
        || beta.len() != channels
    {
        candle_core::bail!(
            "group_norm: {channels} channels, {groups} groups, gamma {} / beta {}",
            gamma.len(),
            beta.len()
        );
    }
    if channels == 0 || plane == 0 || !x.len().is_multiple_of(channels * plane) {
        candle_core::bail!(
            "group_norm: {} elements are not whole items of {channels} channels × {plane}",
            x.len()
        );
    }
    // One statistics pass per (item, group), in parallel: a = γ/σ, b = β − μ·γ/σ.
    let cpg = channels / groups;
    let coefficients = x
        .par_chunks(cpg * plane)
        .enumerate()
        .flat_map_iter(|(i, xs)| {
            let g = i % groups;
            let (mean, var) = mean_and_variance(xs);
            let inv = 1.0 / (var + eps).sqrt();
            (g * cpg..(g + 1) * cpg).map(move |ch| {
                let a = gamma[ch] as f64 * inv;
                (a as f32, (beta[ch] as f64 - mean * a) as f32)
            })
        })
        .collect();
    Ok(coefficients)
}

widest_simd! {
    /// Mean and (biased) variance of `xs` in one vectorised pass: sums of
    /// `x − shift` and its square (shifted by the first value, so a large mean
    /// does not cancel the variance away) in 16 f32 lanes per 1024-value block,
    /// gathered in f64.
    fn mean_and_variance(xs: &[f32]) -> (f64, f64) => mean_and_variance_body
}

#[inline(always)]
fn mean_and_variance_body(xs: &[f32]) -> (f64, f64) {
    let Some(&shift) = xs.first() else {
        return (0.0, 0.0);
    };
    let (mut sum, mut squares) = (0f64, 0f64);
    for block in xs.chunks(1024) {
        let (mut s, mut q) = ([0f32; 16], [0f32; 16]);
        let lanes = block.chunks_exact(16);
        let rest = lanes.remainder();
        for c in lanes {
            for i in 0..16 {
                let d = c[i] - shift;
                s[i] += d;
                q[i] += d * d;
            }
        }
        for &v in rest {
            let d = v - shift;
            s[0] += d;
            q[0] += d * d;
        }
        sum += s.iter().map(|&v| v as f64).sum::<f64>();
        squares += q.iter().map(|&v| v as f64).sum::<f64>();
    }
    let n = xs.len() as f64;
    let centred_mean = sum / n;
    let var = (squares / n - centred_mean * centred_mean).max(0.0);
    (shift as f64 + centred_mean, var)
}

widest_simd! {
    /// `dst = a·src + b`, then SiLU when asked.
    fn affine_silu(src: &[f32], dst: &mut [MaybeUninit<f32>], a: f32, b: f32, silu: bool)
        => affine_silu_body
}

#[inline(always)]
fn affine_silu_body(src: &[f32], dst: &mut [MaybeUninit<f32>], a: f32, b: f32, silu: bool) {
    if silu {
        for (d, &s) in dst.iter_mut().zip(src) {
            let y = a * s + b;
            d.write(y / (1.0 + exp_approx(-y)));
        }
    } else {
        for (d, &s) in dst.iter_mut().zip(src) {
            d.write(a * s + b);
        }
    }
}

/// `e^x` in branch-free arithmetic the compiler can vectorise: `2^(x·log2 e)`
/// split into the nearest integer power (built in the exponent bits) and the
/// degree-7 Taylor polynomial of `e^f` for the rest, `|f| ≤ 1/2` (relative
/// error a few 1e-8). Inputs are clamped to [-87, 88], so the result saturates
/// instead of overflowing or going subnormal.
#[inline(always)]
pub fn exp_approx(x: f32) -> f32 {
    // ln 2 in two parts (Cody–Waite): n·LN2_HI is exact in f32 for |n| ≤ 128,
    // so the reduced argument keeps its precision for large |x|.
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // 1.5·2^23: adding it leaves a small integer in the low mantissa bits, so
    // rounding and the integer exponent need no float→int conversion (whose
    // saturating `as` does not vectorise).
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let f = (x - n * LN2_HI) - n * LN2_LO; // |f| ≤ ln 2 / 2 (plus rounding)
    let p = 1.0 / 5040.0;
    let p = p * f + 1.0 / 720.0;
    let p = p * f + 1.0 / 120.0;
    let p = p * f + 1.0 / 24.0;
    let p = p * f + 1.0 / 6.0;
    let p = p * f + 0.5;
    let p = p * f + 1.0;
    let p = p * f + 1.0;
    // n + 127 in [1, 254]: the biased exponent of 2^n.
    let biased = (n + (127.0 + ROUND)).to_bits() & 0xff;
    p * f32::from_bits(biased << 23)
}

/// Nearest-neighbour 2× upsampling of NCHW planes (`planes · h · w` floats; a
/// partial plane at the end is left out).
pub fn upsample_nearest2x_f32(x: &[f32], h: usize, w: usize) -> Vec<f32> {
    let plane = h * w;
    if plane == 0 {
        return vec![0f32; x.len() * 4];
    }
    // Whole planes only (a partial one at the end, a caller's shape error, is left out).
    let x = &x[..x.len() / plane * plane];
    // SAFETY: each output plane's rows are written in pairs, left and right copies
    // of every input value, and the output is whole planes.
    #[allow(unsafe_code)]
    unsafe {
        written_by(x.len() * 4, |out| {
            out.par_chunks_mut(plane * 4)
                .zip(x.par_chunks(plane))
                .for_each(|(o, xs)| {
                    for (y, src) in xs.chunks_exact(w).enumerate() {
                        let (top, bottom) =
                            o[2 * y * 2 * w..(2 * y + 2) * 2 * w].split_at_mut(2 * w);
                        for (pair, &v) in top.chunks_exact_mut(2).zip(src) {
                            pair[0].write(v);
                            pair[1].write(v);
                        }
                        bottom.copy_from_slice(top);
                    }
                });
        })
    }
}

/// Floats of one attention task's score block (4 MB; 256 query rows over 4096
/// keys): the second GEMM packs V once per block, so larger blocks pack it less
/// often. 4096-token SD attention 115-124 ms at 1 MB, 110-113 at 4 MB, no better at 8.
const SCORE_BUDGET: usize = 1 << 20;

/// Scaled dot-product attention on token-major f32 slices: `q (batch, n_q,
/// heads·d)`, `k`, `v (batch, n_kv, heads·d)` → `(batch, n_q, heads·d)`, heads
/// side by side as the projections write them (no transposes).
///
/// Flash-style on the CPU: each task takes a block of query rows of one head,
/// computes their scores against every key (one GEMM reading the strided
/// head columns directly, writing the block column-major so the softmax runs
/// across query rows in SIMD lanes), takes the row softmax in place and multiplies by V
/// (a second GEMM writing straight into the output's head columns), then scales
/// the rows by their normaliser. The full `n_q × n_kv` score matrix is never
/// materialised (at 4096 tokens and 5 heads it would be 335 MB).
#[allow(clippy::too_many_arguments)]
pub fn attention_f32(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    batch: usize,
    n_q: usize,
    n_kv: usize,
    heads: usize,
    head_dim: usize,
    scale: f32,
    exp: SoftmaxExp,
) -> Result<Vec<f32>> {
    let width = heads * head_dim;
    if q.len() != batch * n_q * width || k.len() != batch * n_kv * width || v.len() != k.len() {
        candle_core::bail!(
            "attention: q {} / k {} / v {} elements do not match batch {batch}, {n_q}/{n_kv} tokens, {heads}×{head_dim}",
            q.len(),
            k.len(),
            v.len()
        );
    }
    let mut out = vec![0f32; q.len()];
    if out.is_empty() || n_kv == 0 {
        return Ok(out);
    }
    let rows = (SCORE_BUDGET / n_kv).clamp(16, 512).min(n_q);
    let blocks = n_q.div_ceil(rows);
    let tasks = batch * heads * blocks;
    let dst = OutPtr(out.as_mut_ptr());
    (0..tasks)
        .into_par_iter()
        .for_each_init(Vec::new, |buf: &mut Vec<f32>, task| {
            let (bh, blk) = (task / blocks, task % blocks);
            let (bi, h) = (bh / heads, bh % heads);
            let r0 = blk * rows;
            let nr = rows.min(n_q - r0);
            // Scores column-major (query row fastest): the softmax then runs across
            // rows in SIMD lanes, and P is a column-major GEMM operand.
            buf.resize(nr * n_kv + 2 * nr, 0.0);
            let (scores, stats) = buf.split_at_mut(nr * n_kv);
            let (max, sum) = stats.split_at_mut(nr);
            let q_at = (bi * n_q + r0) * width + h * head_dim;
            let kv_at = bi * n_kv * width + h * head_dim;
            // SAFETY: q rows r0..r0+nr of head h are `nr` rows of stride `width` with
            // `head_dim` columns from `q_at`, inside `q` (lengths checked above); K and V
            // likewise from `kv_at` for `n_kv` rows. `scores` holds nr × n_kv.
            #[allow(unsafe_code)]
            unsafe {
                gemm::gemm(
                    nr,
                    n_kv,
                    head_dim,
                    scores.as_mut_ptr(),
                    nr as isize,
                    1,
                    false,
                    q.as_ptr().add(q_at),
                    1,
                    width as isize,
                    k.as_ptr().add(kv_at),
                    width as isize,
                    1,
                    0.0,
                    scale,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            softmax_columns(scores, nr, max, sum, exp);
            // SAFETY: this task alone writes output rows r0..r0+nr, columns
            // h·d..(h+1)·d (tasks differ in batch item, head or row block); `out`
            // outlives the parallel loop. V as K above; P is `scores` (nr × n_kv,
            // column-major).
            #[allow(unsafe_code)]
            unsafe {
                let o = dst.get().add(q_at);
                gemm::gemm(
                    nr,
                    head_dim,
                    n_kv,
                    o,
                    1,
                    width as isize,
                    false,
                    scores.as_ptr(),
                    nr as isize,
                    1,
                    v.as_ptr().add(kv_at),
                    1,
                    width as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
                for (r, &total) in sum.iter().enumerate() {
                    let inv = 1.0 / total;
                    let row = std::slice::from_raw_parts_mut(o.add(r * width), head_dim);
                    row.iter_mut().for_each(|x| *x *= inv);
                }
            }
        });
    Ok(out)
}

/// Row softmax numerators of a column-major `rows × cols` score block (`scores[j·rows
/// + i]`): each row's maximum into `max`, `exp(s − max)` in place, each row's sum into
/// `sum` (summed in column order). Every step runs across rows, in SIMD lanes.
fn softmax_columns(
    scores: &mut [f32],
    rows: usize,
    max: &mut [f32],
    sum: &mut [f32],
    exp: SoftmaxExp,
) {
    max.fill(f32::NEG_INFINITY);
    sum.fill(0.0);
    if rows == 0 {
        return;
    }
    column_max(scores, max);
    match exp {
        SoftmaxExp::Fast => exp_columns(scores, max, sum),
        SoftmaxExp::Libm => exp_columns_with(scores, max, sum, f32::exp),
    }
}

widest_simd! {
    fn column_max(scores: &[f32], max: &mut [f32]) => column_max_body
}

#[inline(always)]
fn column_max_body(scores: &[f32], max: &mut [f32]) {
    for col in scores.chunks_exact(max.len()) {
        for (m, &v) in max.iter_mut().zip(col) {
            // Not f32::max: its NaN rule keeps the loop from vectorising.
            *m = if v > *m { v } else { *m };
        }
    }
}

widest_simd! {
    fn exp_columns(scores: &mut [f32], max: &[f32], sum: &mut [f32]) => exp_columns_body
}

#[inline(always)]
fn exp_columns_body(scores: &mut [f32], max: &[f32], sum: &mut [f32]) {
    exp_columns_with(scores, max, sum, exp_approx);
}

/// `exp(s − max)` in place over a column-major block, each row's sum into `sum`.
#[inline(always)]
fn exp_columns_with(scores: &mut [f32], max: &[f32], sum: &mut [f32], exp: impl Fn(f32) -> f32) {
    for col in scores.chunks_exact_mut(max.len()) {
        for ((v, &m), s) in col.iter_mut().zip(max).zip(sum.iter_mut()) {
            *v = exp(*v - m);
            *s += *v;
        }
    }
}

/// Which exponential the attention softmax takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SoftmaxExp {
    /// [`exp_approx`], vectorised: the SD UNet (its softmax was a tenth of a
    /// 512² step with libm's scalar `expf`).
    Fast,
    /// The C library's `expf`: TripoSR, whose marching-cubes parity test moves
    /// a vertex with the approximation's extra ulp (its densities sit on the
    /// iso-level).
    Libm,
}

/// [`attention_f32`] on tensors: `q (batch, n_q, heads·d)`, `k`/`v (batch, n_kv,
/// heads·d)`; `None` off the fast path (the caller runs its own attention).
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f64,
    exp: SoftmaxExp,
) -> Result<Option<Tensor>> {
    if !(fast_path(q) && fast_path(k) && fast_path(v)) {
        return Ok(None);
    }
    let (b, n_q, width) = q.dims3()?;
    let n_kv = k.dim(1)?;
    if heads == 0 || !width.is_multiple_of(heads) {
        candle_core::bail!("attention: width {width} does not split into {heads} heads");
    }
    let out = with_f32(q, |qs| {
        with_f32(k, |ks| {
            with_f32(v, |vs| {
                attention_f32(
                    qs,
                    ks,
                    vs,
                    b,
                    n_q,
                    n_kv,
                    heads,
                    width / heads,
                    scale as f32,
                    exp,
                )
            })
        })
    })?;
    Tensor::from_vec(out, (b, n_q, width), q.device()).map(Some)
}

/// Rows of one linear-layer task at most (the tasks' weight packing grows
/// with the number of row blocks, the GEMM's efficiency falls below ~64 rows).
const LINEAR_ROW_BLOCK: usize = 512;

/// At most this many rows, a row-major linear output is computed in column-major
/// tiles (the `gemm` crate packs the weight above 2 × 64 rows anyway).
const SMALL_ROWS: usize = 128;

/// Where element (row, column) of a matrix operand lives in its slice:
/// `row · rs + column · cs`. Row-major `(rows, cols)` is `{ rs: cols, cs: 1 }`;
/// a channel-major NCHW item read as (pixel, channel) is `{ rs: 1, cs: h·w }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatLayout {
    pub rs: usize,
    pub cs: usize,
}

impl MatLayout {
    /// Row-major with `cols` columns.
    pub fn rows(cols: usize) -> Self {
        Self { rs: cols, cs: 1 }
    }

    /// Whether a `rows × cols` matrix in this layout fits in `len` elements.
    fn fits(self, rows: usize, cols: usize, len: usize) -> bool {
        rows == 0
            || cols == 0
            || (rows - 1)
                .checked_mul(self.rs)
                .zip((cols - 1).checked_mul(self.cs))
                .and_then(|(a, b)| a.checked_add(b))
                .is_some_and(|last| last < len)
    }
}

/// `out (+)= x·wᵀ`: `x (rows, d_in)` and `out (rows, d_out)` in any
/// [`MatLayout`], `w (d_out, d_in)` row-major as a `Linear` stores it. With
/// `read_out`, `out` holds the starting values (bias, residual) and the product
/// is added to them; without, it is overwritten.
///
/// Tiled over rows and output columns into at least four tasks per thread,
/// each a single-threaded GEMM: the `gemm` crate's own threading gained
/// nothing over one thread on these shapes (4096×320 → 2560: 155 GFLOP/s on
/// one thread, 153 on two), while independent tiles use both cores. A task
/// packs only its column slice of the weight, so the weight is packed once per
/// row block.
#[allow(clippy::too_many_arguments)]
pub fn linear_into_f32(
    x: &[f32],
    x_at: MatLayout,
    rows: usize,
    d_in: usize,
    w: &[f32],
    d_out: usize,
    out: &mut [f32],
    out_at: MatLayout,
    read_out: bool,
) -> Result<()> {
    if !x_at.fits(rows, d_in, x.len())
        || w.len() != d_out * d_in
        || !out_at.fits(rows, d_out, out.len())
    {
        candle_core::bail!(
            "linear: x {} / w {} / out {} elements do not hold {rows}×{d_in} → {d_out} \
             ({x_at:?} → {out_at:?})",
            x.len(),
            w.len(),
            out.len()
        );
    }
    // SAFETY: the product writes only initialised values.
    #[allow(unsafe_code)]
    let out = unsafe { as_uninit(out) };
    linear_into(x, x_at, rows, d_in, w, d_out, out, out_at, read_out);
    Ok(())
}

/// The body of [`linear_into_f32`] (shapes checked) into a possibly
/// uninitialised `out`: without `read_out` it writes every element of the
/// `rows × d_out` block `out_at` lays out, reading none.
#[allow(clippy::too_many_arguments)]
fn linear_into(
    x: &[f32],
    x_at: MatLayout,
    rows: usize,
    d_in: usize,
    w: &[f32],
    d_out: usize,
    out: &mut [MaybeUninit<f32>],
    out_at: MatLayout,
    read_out: bool,
) {
    if rows == 0 || d_out == 0 {
        return;
    }
    let threads = rayon::current_num_threads().max(1);
    let row_blocks = rows.div_ceil(LINEAR_ROW_BLOCK);
    let row_block = rows.div_ceil(row_blocks);
    let col_blocks = (4 * threads)
        .div_ceil(row_blocks)
        .clamp(1, d_out.div_ceil(16));
    let col_block = d_out.div_ceil(col_blocks).div_ceil(16) * 16;
    let col_blocks = d_out.div_ceil(col_block);
    let dst = OutPtr(out.as_mut_ptr().cast());
    // Few rows with a row-major output: the GEMM would transpose the problem and
    // repack its weight slice for every call (45 % of CLIP's 77-token time); into a
    // column-major tile it reads the weight rows as they are, and the tile is added
    // to the output afterwards.
    let via_tile = out_at.rs != 1 && rows <= SMALL_ROWS;
    (0..row_blocks * col_blocks).into_par_iter().for_each_init(
        Vec::new,
        |tile: &mut Vec<f32>, task| {
            let (rb, cb) = (task / col_blocks, task % col_blocks);
            let (r0, c0) = (rb * row_block, cb * col_block);
            let (m, n) = (row_block.min(rows - r0), col_block.min(d_out - c0));
            let at = r0 * out_at.rs + c0 * out_at.cs;
            let (gemm_dst, dst_cs, dst_rs, read) = if via_tile {
                tile.resize(m * n, 0.0);
                (tile.as_mut_ptr(), m, 1, false)
            } else {
                // SAFETY: `at` is inside `out` (`fits` above).
                #[allow(unsafe_code)]
                let p = unsafe { dst.get().add(at) };
                (p, out_at.cs, out_at.rs, read_out)
            };
            // SAFETY: this task alone writes rows r0..r0+m, columns c0..c0+n of
            // `out` (alive for the whole loop), or its own m × n tile; every element
            // of x, w and out the GEMM touches is inside its slice (`fits` and the
            // length check above); w's rows c0.. are read as wᵀ (row stride 1,
            // column stride d_in).
            #[allow(unsafe_code)]
            unsafe {
                gemm::gemm(
                    m,
                    n,
                    d_in,
                    gemm_dst,
                    dst_cs as isize,
                    dst_rs as isize,
                    read,
                    x.as_ptr().add(r0 * x_at.rs),
                    x_at.cs as isize,
                    x_at.rs as isize,
                    w.as_ptr().add(c0 * d_in),
                    d_in as isize,
                    1,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
                if via_tile {
                    // Output rows in order (the tile is small enough to stay in cache).
                    for r in 0..m {
                        let row = dst.get().add(at + r * out_at.rs);
                        for c in 0..n {
                            let v = tile[r + c * m];
                            let o = row.add(c * out_at.cs);
                            *o = if read_out { *o + v } else { v };
                        }
                    }
                }
            }
        },
    );
}

/// `y = x·wᵀ + bias + residual` on contiguous row-major f32 slices: `x (rows,
/// d_in)`, `w (d_out, d_in)`, `bias (d_out)`, `residual` and `y (rows, d_out)`.
/// See [`linear_into_f32`]; bias and residual are the GEMM's starting value.
#[allow(clippy::too_many_arguments)]
pub fn linear_f32(
    x: &[f32],
    rows: usize,
    d_in: usize,
    w: &[f32],
    d_out: usize,
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
) -> Result<Vec<f32>> {
    if x.len() != rows * d_in
        || bias.is_some_and(|b| b.len() != d_out)
        || residual.is_some_and(|r| r.len() != rows * d_out)
    {
        candle_core::bail!(
            "linear: x {} / bias {:?} / residual {:?} elements do not match {rows}×{d_in} → {d_out}",
            x.len(),
            bias.map(<[f32]>::len),
            residual.map(<[f32]>::len)
        );
    }
    if w.len() != d_out * d_in {
        candle_core::bail!("linear: w has {} elements, not {d_out}×{d_in}", w.len());
    }
    // SAFETY: the starting values or, without them, the product write every
    // element (shapes checked above).
    #[allow(unsafe_code)]
    let out = unsafe {
        written_by(rows * d_out, |out| {
            let read_out = start_rows(out, d_out, bias, residual);
            let (x_at, out_at) = (MatLayout::rows(d_in), MatLayout::rows(d_out));
            linear_into(x, x_at, rows, d_in, w, d_out, out, out_at, read_out);
        })
    };
    Ok(out)
}

/// A linear layer with the usual tensor names (`weight (out, in)`, `bias`):
/// [`linear_f32`] for f32 on the CPU, candle's `Linear` elsewhere.
#[derive(Debug, Clone)]
pub struct Linear {
    inner: candle_nn::Linear,
    d_in: usize,
    d_out: usize,
}

impl Linear {
    pub fn load(vb: VarBuilder, d_in: usize, d_out: usize, bias: bool) -> Result<Self> {
        let inner = if bias {
            candle_nn::linear(d_in, d_out, vb)?
        } else {
            candle_nn::linear_no_bias(d_in, d_out, vb)?
        };
        Ok(Self { inner, d_in, d_out })
    }

    /// Whether our kernels take this layer's weights (f32 on the CPU).
    fn fast_weights(&self) -> bool {
        fast_path(self.inner.weight()) && self.inner.bias().is_none_or(fast_path)
    }

    /// Whether our kernels take `x` (last dimension `d_in`) and this layer's weights.
    fn fast(&self, x: &Tensor) -> bool {
        fast_path(x) && self.fast_weights() && x.dims().last() == Some(&self.d_in)
    }

    /// `forward(x) + residual` with the residual (the output's shape) as the
    /// GEMM's starting value: the transformer blocks' skip, one pass fewer.
    pub fn forward_residual(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        self.forward_start(x, Some(residual))
    }

    /// `forward(x)`, plus `residual` when given, on our kernel when `x`, the
    /// weights and the residual (the output's shape) are f32 on the CPU.
    fn forward_start(&self, x: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
        let mut dims = x.dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = self.d_out;
        }
        let residual_fits = residual.is_none_or(|r| fast_path(r) && r.dims() == dims.as_slice());
        if !self.fast(x) || !residual_fits {
            let y = self.inner.forward(x)?;
            return match residual {
                Some(r) => y + r,
                None => Ok(y),
            };
        }
        let rows = x.elem_count() / self.d_in;
        let (w, b) = (self.inner.weight(), self.inner.bias());
        let out = with_f32(x, |xs| {
            with_f32(w, |ws| {
                with_opt_f32(b, |bs| {
                    with_opt_f32(residual, |rs| {
                        linear_f32(xs, rows, self.d_in, ws, self.d_out, bs, rs)
                    })
                })
            })
        })?;
        Tensor::from_vec(out, dims, x.device())
    }

    /// `x (b, d_in, h, w)` read as tokens `(b, h·w, d_in)` → `(b, h·w, d_out)`,
    /// straight from the channel-major layout (no transposed copy).
    pub fn forward_from_nchw(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let tokens = |x: &Tensor| x.permute((0, 2, 3, 1))?.reshape((b, h * w, c));
        if !fast_path(x) || c != self.d_in || !self.fast_weights() {
            return self.inner.forward(&tokens(x)?);
        }
        let (wt, bias) = (self.inner.weight(), self.inner.bias());
        let (plane, d_out) = (h * w, self.d_out);
        let out = with_f32(x, |xs| {
            with_f32(wt, |ws| {
                with_opt_f32(bias, |bs| {
                    if ws.len() != d_out * c || bs.is_some_and(|b| b.len() != d_out) {
                        candle_core::bail!("linear: weights do not hold {c} → {d_out}");
                    }
                    // SAFETY: per item, the bias rows or, without a bias, the product
                    // write every element (x is b items of c × plane, checked above).
                    #[allow(unsafe_code)]
                    let out = unsafe {
                        written_by(b * plane * d_out, |out| {
                            let read_out = start_rows(out, d_out, bs, None);
                            let items = xs.chunks_exact((c * plane).max(1));
                            for (item, o) in items.zip(out.chunks_exact_mut((plane * d_out).max(1)))
                            {
                                let (x_at, out_at) =
                                    (MatLayout { rs: 1, cs: plane }, MatLayout::rows(d_out));
                                linear_into(item, x_at, plane, c, ws, d_out, o, out_at, read_out);
                            }
                        })
                    };
                    Ok(out)
                })
            })
        })?;
        Tensor::from_vec(out, (b, plane, d_out), x.device())
    }

    /// Tokens `(b, h·w, d_in)` → `(b, d_out, h, w)` plus `residual (b, d_out, h,
    /// w)`, written straight into the channel-major layout with the residual
    /// and bias as the starting value (no transposed copy, no separate add).
    pub fn forward_to_nchw(&self, tokens: &Tensor, residual: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = residual.dims4()?;
        let fallback = || {
            self.inner
                .forward(tokens)?
                .reshape((b, h, w, c))?
                .permute((0, 3, 1, 2))?
                .contiguous()?
                + residual
        };
        if !self.fast(tokens)
            || !fast_path(residual)
            || c != self.d_out
            || tokens.dims() != [b, h * w, self.d_in]
        {
            return fallback();
        }
        let (wt, bias) = (self.inner.weight(), self.inner.bias());
        let plane = h * w;
        let mut out = with_f32(residual, |rs| {
            with_opt_f32(bias, |bs| {
                if bs.is_some_and(|b| b.len() != c) || rs.len() != b * c * plane {
                    candle_core::bail!("linear: bias or residual does not fit {c} channels");
                }
                Ok(residual_plus_bias(rs, plane, bs))
            })
        })?;
        with_f32(tokens, |ts| {
            with_f32(wt, |ws| {
                for (item, o) in ts
                    .chunks_exact((plane * self.d_in).max(1))
                    .zip(out.chunks_exact_mut((c * plane).max(1)))
                {
                    linear_into_f32(
                        item,
                        MatLayout::rows(self.d_in),
                        plane,
                        self.d_in,
                        ws,
                        c,
                        o,
                        MatLayout { rs: 1, cs: plane },
                        true,
                    )?;
                }
                Ok(())
            })
        })?;
        Tensor::from_vec(out, (b, c, h, w), residual.device())
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_start(x, None)
    }
}

/// GEGLU's gate: `h (rows, 2·inner)` → `h[:, :inner] · gelu(h[:, inner:])`
/// with the exact (erf) GELU, in parallel over rows and vectorised
/// ([`erf_approx`]).
pub fn geglu_f32(h: &[f32], inner: usize) -> Result<Vec<f32>> {
    if inner == 0 || !h.len().is_multiple_of(2 * inner) {
        candle_core::bail!("geglu: {} elements are not rows of 2 × {inner}", h.len());
    }
    let mut out = vec![0f32; h.len() / 2];
    out.par_chunks_mut(inner)
        .zip(h.par_chunks(2 * inner))
        .for_each(|(o, row)| {
            let (x, gate) = row.split_at(inner);
            geglu_row(x, gate, o);
        });
    Ok(out)
}

widest_simd! {
    fn geglu_row(x: &[f32], gate: &[f32], out: &mut [f32]) => geglu_row_body
}

#[inline(always)]
fn geglu_row_body(x: &[f32], gate: &[f32], out: &mut [f32]) {
    for ((o, &x), &g) in out.iter_mut().zip(x).zip(gate) {
        *o = x * gelu_exact(g);
    }
}

/// The exact GELU `g · Φ(g)` with [`erf_approx`], branch-free so loops over it vectorise.
#[inline(always)]
fn gelu_exact(g: f32) -> f32 {
    g * 0.5 * (1.0 + erf_approx(g * std::f32::consts::FRAC_1_SQRT_2))
}

/// The exact (erf) GELU `x · Φ(x)` on a contiguous f32 slice, in parallel
/// chunks and vectorised ([`erf_approx`]): candle's `gelu_erf` is a scalar
/// libm-style erf per element (the CLIP text encoder's MLPs).
pub fn gelu_erf_f32(x: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(1 << 14)
        .zip(x.par_chunks(1 << 14))
        .for_each(|(o, x)| gelu_row(x, o));
    out
}

widest_simd! {
    fn gelu_row(x: &[f32], out: &mut [f32]) => gelu_row_body
}

#[inline(always)]
fn gelu_row_body(x: &[f32], out: &mut [f32]) {
    for (o, &x) in out.iter_mut().zip(x) {
        *o = gelu_exact(x);
    }
}

/// [`gelu_erf_f32`] on a tensor of any shape; `None` off the fast path.
pub fn gelu_erf(x: &Tensor) -> Result<Option<Tensor>> {
    if !fast_path(x) {
        return Ok(None);
    }
    let out = with_f32(x, |xs| Ok(gelu_erf_f32(xs)))?;
    Tensor::from_vec(out, x.dims(), x.device()).map(Some)
}

/// `erf(x)` by Abramowitz & Stegun 7.1.26 (absolute error 1.5e-7, under 5e-7 in f32) with
/// [`exp_approx`]: branch-free, so it vectorises.
#[inline(always)]
pub fn erf_approx(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_8 + t * (-1.453_152 + t * 1.061_405_4))));
    (1.0 - poly * exp_approx(-a * a)).copysign(x)
}

/// [`geglu_f32`] on a tensor `(…, 2·inner)`; `None` off the fast path.
pub fn geglu(h: &Tensor) -> Result<Option<Tensor>> {
    if !fast_path(h) || h.rank() == 0 {
        return Ok(None);
    }
    let width = h.dim(h.rank() - 1)?;
    if !width.is_multiple_of(2) {
        candle_core::bail!("geglu: last dimension {width} is odd");
    }
    let out = with_f32(h, |hs| geglu_f32(hs, width / 2))?;
    let mut dims = h.dims().to_vec();
    if let Some(last) = dims.last_mut() {
        *last = width / 2;
    }
    Tensor::from_vec(out, dims, h.device()).map(Some)
}

/// True when the fast kernels apply: f32 on the CPU.
fn fast_path(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// Runs `f` on `t`'s contiguous f32 data (`t` must be an f32 CPU tensor).
fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("kernels: expected a CPU tensor");
    };
    let data = cpu.as_slice::<f32>()?;
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("kernels: tensor is not contiguous after contiguous()");
    };
    f(&data[start..end])
}

/// [`with_f32`] for an optional tensor: `f(None)` when there is none.
fn with_opt_f32<R>(t: Option<&Tensor>, f: impl FnOnce(Option<&[f32]>) -> Result<R>) -> Result<R> {
    match t {
        Some(t) => with_f32(t, |data| f(Some(data))),
        None => f(None),
    }
}

/// `conv2d(x, weight) + bias (+ residual)`, NCHW, any device: the fast kernel for
/// f32 on the CPU, candle's op elsewhere. `bias` is `(c_out)` or, per batch
/// item, `(batch, c_out)`; `residual` has the output's shape.
pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    residual: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    conv2d_act(x, weight, bias, residual, stride, padding, false)
}

/// [`conv2d`], then ReLU when `relu`.
pub fn conv2d_act(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    residual: Option<&Tensor>,
    stride: usize,
    padding: usize,
    relu: bool,
) -> Result<Tensor> {
    conv2d_mapped(
        x,
        weight,
        bias,
        residual,
        (stride, padding),
        relu,
        InputMap::default(),
    )
}

/// [`conv2d_act`] of `map(x)`. A map other than the identity needs every tensor
/// on the fast path (f32 on the CPU).
fn conv2d_mapped(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    residual: Option<&Tensor>,
    (stride, padding): (usize, usize),
    relu: bool,
    map: InputMap<'_>,
) -> Result<Tensor> {
    let s = ConvShape::of(x, weight, (stride, padding), map.upsample)?;
    let (batch, c_out) = (s.batch, s.c_out);
    let all_fast = fast_path(x)
        && fast_path(weight)
        && bias.is_none_or(fast_path)
        && residual.is_none_or(fast_path);
    if !all_fast {
        if !map.is_identity() {
            candle_core::bail!("conv2d: an input map needs f32 CPU tensors");
        }
        let mut y = x.conv2d(weight, padding, stride, 1, 1)?;
        if let Some(b) = bias {
            let b = match b.rank() {
                1 => b.reshape((1, c_out, 1, 1))?,
                _ => b.reshape((batch, c_out, 1, 1))?,
            };
            y = y.broadcast_add(&b)?;
        }
        if let Some(r) = residual {
            y = (y + r)?;
        }
        return if relu { y.relu() } else { Ok(y) };
    }
    let (oh, ow) = s.checked_out_hw()?;
    let out = with_f32(x, |xs| {
        with_f32(weight, |ws| {
            with_opt_f32(bias, |bias| {
                with_opt_f32(residual, |residual| {
                    conv2d_f32_via(
                        xs,
                        ws,
                        ConvInit {
                            bias,
                            residual,
                            relu,
                        },
                        map,
                        s,
                        ConvPath::Auto,
                    )
                })
            })
        })
    })?;
    Tensor::from_vec(out, (batch, c_out, oh, ow), x.device())
}

/// Nearest 2× upsampling of an NCHW tensor (candle's op off the fast path).
pub fn upsample_nearest2x(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    if !fast_path(x) {
        return x.upsample_nearest2d(2 * h, 2 * w);
    }
    let out = with_f32(x, |xs| Ok(upsample_nearest2x_f32(xs, h, w)))?;
    Tensor::from_vec(out, (b, c, 2 * h, 2 * w), x.device())
}

/// A conv layer with diffusers' tensor names (`weight`, `bias`).
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: usize,
    padding: usize,
}

impl Conv2d {
    /// Loads `weight (c_out, c_in, k, k)` and, when `bias`, `bias (c_out)` from `vb`.
    pub fn load(
        vb: VarBuilder,
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        padding: usize,
        bias: bool,
    ) -> Result<Self> {
        let weight = vb.get((c_out, c_in, k, k), "weight")?;
        let bias = if bias {
            Some(vb.get(c_out, "bias")?)
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            stride,
            padding,
        })
    }

    /// `conv(x) + bias + extra_bias + residual`: `extra_bias` is `(batch, c_out)`
    /// (a per-item shift such as a time embedding), `residual` the output's shape.
    pub fn forward_with(
        &self,
        x: &Tensor,
        extra_bias: Option<&Tensor>,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        self.forward_mapped(x, extra_bias, residual, false, InputMap::default())
    }

    /// `relu(conv(x) + bias + residual)`.
    pub fn forward_relu(&self, x: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
        self.forward_mapped(x, None, residual, true, InputMap::default())
    }

    /// `conv(silu(norm(x))) + bias + extra_bias + residual` ([`Self::forward_with`]
    /// of [`GroupNorm::forward_silu`]); on the fast path the norm and SiLU are
    /// applied as the convolution reads its input.
    pub fn forward_norm_silu(
        &self,
        x: &Tensor,
        norm: &GroupNorm,
        extra_bias: Option<&Tensor>,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        match norm.affine(x)? {
            Some(affine) => {
                self.forward_mapped(x, extra_bias, residual, false, InputMap::norm_silu(&affine))
            }
            None => self.forward_with(&norm.forward_silu(x)?, extra_bias, residual),
        }
    }

    /// A resnet block's tail, `shortcut(skip) + conv(silu(norm(x))) + bias`, with
    /// `shortcut` a 1×1 conv or (`None`) the identity. On the fast path the
    /// shortcut's output (its bias and this conv's summed into it), or the skip's
    /// copy plus this bias, is the very buffer this conv adds into: one map fewer
    /// alive at once and no pass writing the starting values.
    pub fn forward_norm_silu_onto(
        &self,
        x: &Tensor,
        norm: &GroupNorm,
        skip: &Tensor,
        shortcut: Option<&Conv2d>,
    ) -> Result<Tensor> {
        let fast = |c: &Conv2d| fast_path(&c.weight) && c.bias.as_ref().is_none_or(fast_path);
        let affine = match norm.affine(x)? {
            Some(a) if fast(self) && shortcut.is_none_or(fast) && fast_path(skip) => a,
            _ => {
                let skip = match shortcut {
                    Some(c) => c.forward(skip)?,
                    None => skip.clone(),
                };
                return self.forward_norm_silu(x, norm, None, Some(&skip));
            }
        };
        let s = ConvShape::of(x, &self.weight, (self.stride, self.padding), false)?;
        let (batch, c_out) = (s.batch, s.c_out);
        let (oh, ow) = s.checked_out_hw()?;
        let bias = match (shortcut.and_then(|c| c.bias.as_ref()), &self.bias) {
            (Some(a), Some(b)) => Some((a + b)?),
            (a, b) => a.or(b.as_ref()).cloned(),
        };
        let out_len = batch * c_out * oh * ow;
        let mut buffer = with_f32(skip, |sk| {
            with_opt_f32(bias.as_ref(), |bs| match shortcut {
                Some(c) => {
                    let shape = ConvShape::of(skip, &c.weight, (c.stride, c.padding), false)?;
                    let init = ConvInit {
                        bias: bs,
                        ..Default::default()
                    };
                    let start = with_f32(&c.weight, |cw| conv2d_f32(sk, cw, init, shape))?;
                    if start.len() != out_len {
                        candle_core::bail!(
                            "resnet: shortcut output {} elements, the conv's {out_len}",
                            start.len()
                        );
                    }
                    Ok(start)
                }
                None => {
                    if sk.len() != out_len || bs.is_some_and(|b| b.len() != c_out) {
                        candle_core::bail!(
                            "resnet: skip {:?} does not fit the output ({batch}, {c_out}, {oh}, {ow})",
                            skip.dims()
                        );
                    }
                    Ok(residual_plus_bias(sk, oh * ow, bs))
                }
            })
        })?;
        let map = InputMap::norm_silu(&affine);
        with_f32(x, |xs| {
            with_f32(&self.weight, |ws| {
                conv2d_f32_add(xs, ws, map, s, &mut buffer)
            })
        })?;
        Tensor::from_vec(buffer, (batch, c_out, oh, ow), x.device())
    }

    /// `conv(upsample_nearest2x(x)) + bias`; on the fast path the upsampling is
    /// read on the fly.
    pub fn forward_upsampled(&self, x: &Tensor) -> Result<Tensor> {
        if !fast_path(x) {
            return self.forward(&upsample_nearest2x(x)?);
        }
        let map = InputMap {
            upsample: true,
            ..Default::default()
        };
        self.forward_mapped(x, None, None, false, map)
    }

    fn forward_mapped(
        &self,
        x: &Tensor,
        extra_bias: Option<&Tensor>,
        residual: Option<&Tensor>,
        relu: bool,
        map: InputMap<'_>,
    ) -> Result<Tensor> {
        // One row for the whole batch is a per-channel shift.
        let extra = match extra_bias {
            Some(e) if e.rank() == 2 && e.dim(0)? == 1 => Some(e.squeeze(0)?),
            Some(e) => Some(e.clone()),
            None => None,
        };
        let bias = match (&self.bias, extra) {
            (Some(b), Some(e)) => Some(e.broadcast_add(b)?),
            (Some(b), None) => Some(b.clone()),
            (None, e) => e,
        };
        conv2d_mapped(
            x,
            &self.weight,
            bias.as_ref(),
            residual,
            (self.stride, self.padding),
            relu,
            map,
        )
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(x, None, None)
    }
}

/// Group norm with diffusers' tensor names (`weight`, `bias`); `forward_silu`
/// fuses the SiLU that follows it in the resnet blocks.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    inner: candle_nn::GroupNorm,
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    channels: usize,
    eps: f64,
}

impl GroupNorm {
    pub fn load(groups: usize, channels: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get(channels, "weight")?;
        let bias = vb.get(channels, "bias")?;
        let inner = candle_nn::GroupNorm::new(weight.clone(), bias.clone(), channels, groups, eps)?;
        Ok(Self {
            inner,
            weight,
            bias,
            groups,
            channels,
            eps,
        })
    }

    /// `silu(group_norm(x))`.
    pub fn forward_silu(&self, x: &Tensor) -> Result<Tensor> {
        self.run(x, true)
    }

    /// The norm as one `(a, b)` per batch item and channel
    /// ([`group_norm_affine_f32`]), or `None` off the fast path.
    pub fn affine(&self, x: &Tensor) -> Result<Option<Vec<(f32, f32)>>> {
        if !self.fuses(x)? {
            return Ok(None);
        }
        let plane = x.dims()[2..].iter().product::<usize>();
        with_f32(x, |xs| {
            with_f32(&self.weight, |g| {
                with_f32(&self.bias, |b| {
                    group_norm_affine_f32(xs, self.channels, plane, self.groups, g, b, self.eps)
                })
            })
        })
        .map(Some)
    }

    /// Whether `x` takes the fast kernels (else candle's ops run).
    fn fuses(&self, x: &Tensor) -> Result<bool> {
        Ok(fast_path(x)
            && fast_path(&self.weight)
            && fast_path(&self.bias)
            && x.rank() >= 2
            && x.dim(1)? == self.channels)
    }

    fn run(&self, x: &Tensor, silu: bool) -> Result<Tensor> {
        if !self.fuses(x)? {
            let y = self.inner.forward(x)?;
            return if silu {
                candle_nn::ops::silu(&y)
            } else {
                Ok(y)
            };
        }
        let plane = x.dims()[2..].iter().product::<usize>();
        let out = with_f32(x, |xs| {
            with_f32(&self.weight, |g| {
                with_f32(&self.bias, |b| {
                    group_norm_f32(xs, self.channels, plane, self.groups, g, b, self.eps, silu)
                })
            })
        })?;
        Tensor::from_vec(out, x.shape(), x.device())
    }
}

impl Module for GroupNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.run(x, false)
    }
}
