//! The CPU kernels against candle's own ops on random inputs of odd shapes:
//! channel counts that are no multiple of 8, 1×1 / 3×3 / 7×7 kernels, stride 2,
//! padding, batch 2, per-channel and per-item bias, residuals, and the shapes
//! that take each of the conv's two parallel plans.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use orfeas_ml::kernels::{self, ConvInit, ConvShape, InputMap, SoftmaxExp};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::common::max_abs;

fn random(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = StdRng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    max_abs(&(a - b).unwrap())
}

/// candle's conv (+ bias + residual), the reference.
fn reference_conv(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    residual: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Tensor {
    let mut y = x.conv2d(w, padding, stride, 1, 1).unwrap();
    if let Some(b) = bias {
        let (batch, c_out) = (y.dim(0).unwrap(), y.dim(1).unwrap());
        let b = if b.rank() == 1 {
            b.reshape((1, c_out, 1, 1)).unwrap()
        } else {
            b.reshape((batch, c_out, 1, 1)).unwrap()
        };
        y = y.broadcast_add(&b).unwrap();
    }
    if let Some(r) = residual {
        y = (y + r).unwrap();
    }
    y
}

#[derive(Clone, Copy)]
struct Case {
    batch: usize,
    c_in: usize,
    h: usize,
    w: usize,
    c_out: usize,
    k: usize,
    stride: usize,
    padding: usize,
}

fn check_conv(c: Case, seed: u64) {
    let x = random(&[c.batch, c.c_in, c.h, c.w], seed);
    let w = random(&[c.c_out, c.c_in, c.k, c.k], seed + 1);
    let bias = random(&[c.c_out], seed + 2);
    let item_bias = random(&[c.batch, c.c_out], seed + 3);
    let plain = kernels::conv2d(&x, &w, None, None, c.stride, c.padding).unwrap();
    let want = reference_conv(&x, &w, None, None, c.stride, c.padding);
    // Sums of c_in·k² products of values in [-1, 1]: f32 rounding grows with the length.
    let tol = 1e-5 * (c.c_in * c.k * c.k) as f32;
    let d = max_abs_diff(&plain, &want);
    assert!(d < tol, "plain conv, {:?}: max |Δ| {d}", want.dims());
    let residual = random(want.dims(), seed + 4);
    for bias in [&bias, &item_bias] {
        let got =
            kernels::conv2d(&x, &w, Some(bias), Some(&residual), c.stride, c.padding).unwrap();
        let want = reference_conv(&x, &w, Some(bias), Some(&residual), c.stride, c.padding);
        let d = max_abs_diff(&got, &want);
        assert!(
            d < tol,
            "conv with bias {:?} and residual: max |Δ| {d}",
            bias.dims()
        );
    }
}

#[test]
fn conv2d_matches_candle_on_odd_shapes() {
    let cases = [
        // 3×3 padded, batch 2, channels no multiple of 8, width ≠ height.
        Case {
            batch: 2,
            c_in: 5,
            h: 13,
            w: 11,
            c_out: 7,
            k: 3,
            stride: 1,
            padding: 1,
        },
        // 1×1 pointwise (the GEMM reads the input plane directly).
        Case {
            batch: 2,
            c_in: 3,
            h: 9,
            w: 10,
            c_out: 13,
            k: 1,
            stride: 1,
            padding: 0,
        },
        // 1×1 with stride 2 (not pointwise: goes through the columns).
        Case {
            batch: 1,
            c_in: 6,
            h: 9,
            w: 9,
            c_out: 5,
            k: 1,
            stride: 2,
            padding: 0,
        },
        // 7×7 padded by 3.
        Case {
            batch: 2,
            c_in: 6,
            h: 16,
            w: 15,
            c_out: 9,
            k: 7,
            stride: 1,
            padding: 3,
        },
        // Stride 2, padded (the UNet's downsampler) and unpadded.
        Case {
            batch: 1,
            c_in: 10,
            h: 17,
            w: 17,
            c_out: 11,
            k: 3,
            stride: 2,
            padding: 1,
        },
        Case {
            batch: 2,
            c_in: 4,
            h: 9,
            w: 8,
            c_out: 3,
            k: 3,
            stride: 2,
            padding: 0,
        },
        // Many tiles in parallel, tiles that cross output rows.
        Case {
            batch: 1,
            c_in: 64,
            h: 45,
            w: 39,
            c_out: 33,
            k: 3,
            stride: 1,
            padding: 1,
        },
        // A small map with many channels: few tiles, the GEMM splits its rows.
        Case {
            batch: 1,
            c_in: 300,
            h: 5,
            w: 4,
            c_out: 70,
            k: 3,
            stride: 1,
            padding: 1,
        },
        // Kernel as large as the padded input: one output pixel.
        Case {
            batch: 1,
            c_in: 2,
            h: 3,
            w: 3,
            c_out: 4,
            k: 5,
            stride: 1,
            padding: 1,
        },
    ];
    for (i, c) in cases.into_iter().enumerate() {
        check_conv(c, 100 * i as u64);
    }
}

/// A 3×3, stride 1, padding 1 convolution's shape.
fn same_3x3(batch: usize, c_in: usize, h: usize, w: usize, c_out: usize) -> ConvShape {
    ConvShape {
        batch,
        c_in,
        h,
        w,
        c_out,
        k_h: 3,
        k_w: 3,
        stride: 1,
        padding: 1,
    }
}

/// Both inner loops of `conv2d_f32_via` on the 3×3 / stride 1 / padding 1 shapes
/// the packed micro-kernel takes (output width a multiple of 32): input channels
/// over one channel block and not a multiple of it, output channels that leave a
/// partial block of 12, one-row and one-column-of-tiles maps, batch 2 with a
/// per-item bias, a residual and ReLU; and a width of 33, which it must leave to
/// the general path. (On a CPU without AVX-512F both calls run the general path.)
#[test]
fn conv2d_paths_match_candle_on_3x3_shapes() {
    use kernels::ConvPath;
    // (batch, c_in, h, w, c_out)
    let shapes = [
        (2, 37, 7, 32, 13),
        (1, 5, 33, 64, 25),
        (1, 70, 3, 96, 12),
        (2, 3, 1, 32, 1),
        (1, 33, 4, 33, 14),
    ];
    for (i, (batch, c_in, h, w, c_out)) in shapes.into_iter().enumerate() {
        let seed = 1000 + 10 * i as u64;
        let x = random(&[batch, c_in, h, w], seed);
        let wt = random(&[c_out, c_in, 3, 3], seed + 1);
        let bias = random(&[batch, c_out], seed + 2);
        let residual = random(&[batch, c_out, h, w], seed + 3);
        let want = reference_conv(&x, &wt, Some(&bias), Some(&residual), 1, 1);
        let want_relu = want.relu().unwrap();
        let want_plain = reference_conv(&x, &wt, None, None, 1, 1);
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (xs, ws, bs, rs) = (flat(&x), flat(&wt), flat(&bias), flat(&residual));
        let s = same_3x3(batch, c_in, h, w, c_out);
        let tol = 1e-5 * (c_in * 9) as f32;
        for path in [ConvPath::General, ConvPath::Packed, ConvPath::Auto] {
            for (relu, init_bias, want) in [
                (false, true, &want),
                (true, true, &want_relu),
                (false, false, &want_plain),
            ] {
                let init = ConvInit {
                    bias: init_bias.then_some(&bs[..]),
                    residual: init_bias.then_some(&rs[..]),
                    relu,
                };
                let got =
                    kernels::conv2d_f32_via(&xs, &ws, init, InputMap::default(), s, path).unwrap();
                let got = Tensor::from_vec(got, want.dims(), &Device::Cpu).unwrap();
                let d = max_abs_diff(&got, want);
                assert!(
                    d < tol,
                    "{path:?}, {s:?}, relu {relu}, bias {init_bias}: max |Δ| {d}"
                );
            }
        }
    }
}

/// A convolution reading its input through a group norm + SiLU or a nearest 2×
/// upsampling (`InputMap`), on both inner loops and through `Conv2d`'s tensor
/// methods, against candle's norm / upsample followed by candle's conv. Shapes:
/// batch 2 with different statistics per item, channels over one block and not
/// a multiple of 8, a 64×64 map (the size `ConvPath::Auto` takes the packed
/// kernel at) and a 7×9 one it cannot. A map of the wrong length and an odd
/// upsampled size are refused.
#[test]
fn conv2d_reads_through_a_norm_or_an_upsampling_like_candle() {
    use kernels::ConvPath;
    let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for (i, (batch, c_in, h, w, c_out)) in [(2, 36, 64, 64, 13), (1, 8, 7, 9, 5)]
        .into_iter()
        .enumerate()
    {
        let seed = 2000 + 10 * i as u64;
        // Item 1 shifted and scaled: its group statistics differ from item 0's.
        let x = random(&[batch, c_in, h, w], seed);
        let scale = Tensor::from_vec(
            vec![1.0f32, 3.0][..batch].to_vec(),
            (batch, 1, 1, 1),
            &Device::Cpu,
        )
        .unwrap();
        let x = (x.broadcast_mul(&scale).unwrap() + 0.5).unwrap();
        let wt = random(&[c_out, c_in, 3, 3], seed + 1);
        let bias = random(&[c_out], seed + 2);
        let residual = random(&[batch, c_out, h, w], seed + 3);
        let norm = group_norm_layer(4, c_in, seed + 4);
        let mut map = std::collections::HashMap::new();
        map.insert("weight".to_string(), wt.clone());
        map.insert("bias".to_string(), bias.clone());
        let vb = VarBuilder::from_tensors(map, DType::F32, &Device::Cpu);
        let conv = kernels::Conv2d::load(vb, c_in, c_out, 3, 1, 1, true).unwrap();
        let tol = 1e-5 * (c_in * 9) as f32;

        // Norm + SiLU: candle's group norm (the same weights), SiLU, conv.
        let mut nmap = std::collections::HashMap::new();
        nmap.insert("weight".to_string(), random(&[c_in], seed + 4));
        nmap.insert("bias".to_string(), random(&[c_in], seed + 5));
        let candle_norm = candle_nn::group_norm(
            4,
            c_in,
            1e-6,
            VarBuilder::from_tensors(nmap, DType::F32, &Device::Cpu),
        )
        .unwrap();
        let normed = candle_nn::ops::silu(&candle_norm.forward(&x).unwrap()).unwrap();
        let want = reference_conv(&normed, &wt, Some(&bias), Some(&residual), 1, 1);
        let got = conv
            .forward_norm_silu(&x, &norm, None, Some(&residual))
            .unwrap();
        let d = max_abs_diff(&got, &want);
        assert!(
            d < tol,
            "Conv2d::forward_norm_silu, {:?}: max |Δ| {d}",
            x.dims()
        );
        let (xs, ws, bs, rs) = (flat(&x), flat(&wt), flat(&bias), flat(&residual));
        let affine = norm
            .affine(&x)
            .unwrap()
            .expect("an f32 CPU input takes the fast path");
        let s = same_3x3(batch, c_in, h, w, c_out);
        let init = ConvInit {
            bias: Some(&bs),
            residual: Some(&rs),
            relu: false,
        };
        let norm_map = InputMap::norm_silu(&affine);
        for path in [ConvPath::General, ConvPath::Packed] {
            let got = kernels::conv2d_f32_via(&xs, &ws, init, norm_map, s, path).unwrap();
            let got = Tensor::from_vec(got, want.dims(), &Device::Cpu).unwrap();
            let d = max_abs_diff(&got, &want);
            assert!(d < tol, "norm map, {path:?}, {s:?}: max |Δ| {d}");
        }
        let short = InputMap {
            affine: Some(&affine[1..]),
            ..norm_map
        };
        let err = kernels::conv2d_f32_via(&xs, &ws, init, short, s, ConvPath::Auto).unwrap_err();
        assert!(err.to_string().contains("input maps"), "{err}");

        // Upsampling: x is the stored half-size map of a conv over h × w.
        if h % 2 == 1 {
            let up = InputMap {
                upsample: true,
                ..Default::default()
            };
            let err = kernels::conv2d_f32_via(&xs, &ws, ConvInit::default(), up, s, ConvPath::Auto)
                .unwrap_err();
            assert!(err.to_string().contains("even size"), "{err}");
            continue;
        }
        let half = random(&[batch, c_in, h / 2, w / 2], seed + 6);
        let want = reference_conv(
            &half.upsample_nearest2d(h, w).unwrap(),
            &wt,
            Some(&bias),
            None,
            1,
            1,
        );
        let got = conv.forward_upsampled(&half).unwrap();
        let d = max_abs_diff(&got, &want);
        assert!(d < tol, "Conv2d::forward_upsampled: max |Δ| {d}");
        let up_map = InputMap {
            upsample: true,
            ..Default::default()
        };
        let init = ConvInit {
            bias: Some(&bs),
            ..Default::default()
        };
        for path in [ConvPath::General, ConvPath::Packed] {
            let got = kernels::conv2d_f32_via(&flat(&half), &ws, init, up_map, s, path).unwrap();
            let got = Tensor::from_vec(got, want.dims(), &Device::Cpu).unwrap();
            let d = max_abs_diff(&got, &want);
            assert!(d < tol, "upsample map, {path:?}: max |Δ| {d}");
        }
    }
}

fn conv_layer(c_in: usize, c_out: usize, k: usize, seed: u64) -> (kernels::Conv2d, Tensor, Tensor) {
    let (w, b) = (
        random(&[c_out, c_in, k, k], seed),
        random(&[c_out], seed + 1),
    );
    let mut map = std::collections::HashMap::new();
    map.insert("weight".to_string(), w.clone());
    map.insert("bias".to_string(), b.clone());
    let vb = VarBuilder::from_tensors(map, DType::F32, &Device::Cpu);
    let conv = kernels::Conv2d::load(vb, c_in, c_out, k, 1, k / 2, true).unwrap();
    (conv, w, b)
}

/// A resnet tail, `shortcut(skip) + conv(silu(norm(x))) + bias`, with a 1×1
/// shortcut and with the identity, against candle's ops: batch 2, channels not
/// a multiple of 8, a map the packed kernel takes (64×64) and one it does not;
/// and a skip that does not fit is refused.
#[test]
fn conv_onto_a_shortcut_matches_candle() {
    for (i, (batch, c_skip, c_out, h, w)) in
        [(2, 20, 13, 64, 64), (1, 13, 13, 64, 64), (2, 6, 9, 5, 7)]
            .into_iter()
            .enumerate()
    {
        let seed = 3000 + 10 * i as u64;
        let x = random(&[batch, c_out, h, w], seed);
        let skip = random(&[batch, c_skip, h, w], seed + 1);
        let norm = group_norm_layer(c_out.min(13), c_out, seed + 2);
        let mut nmap = std::collections::HashMap::new();
        nmap.insert("weight".to_string(), random(&[c_out], seed + 2));
        nmap.insert("bias".to_string(), random(&[c_out], seed + 3));
        let vb = VarBuilder::from_tensors(nmap, DType::F32, &Device::Cpu);
        let candle_norm = candle_nn::group_norm(c_out.min(13), c_out, 1e-6, vb).unwrap();
        let (conv, wt, bias) = conv_layer(c_out, c_out, 3, seed + 4);
        let shortcut = (c_skip != c_out).then(|| conv_layer(c_skip, c_out, 1, seed + 6));
        let start = match &shortcut {
            Some((_, sw, sb)) => reference_conv(&skip, sw, Some(sb), None, 1, 0),
            None => skip.clone(),
        };
        let normed = candle_nn::ops::silu(&candle_norm.forward(&x).unwrap()).unwrap();
        let want = reference_conv(&normed, &wt, Some(&bias), Some(&start), 1, 1);
        let got = conv
            .forward_norm_silu_onto(&x, &norm, &skip, shortcut.as_ref().map(|s| &s.0))
            .unwrap();
        let d = max_abs_diff(&got, &want);
        let tol = 1e-5 * (c_out * 9 + c_skip) as f32;
        assert!(
            d < tol,
            "{:?} onto skip {:?}: max |Δ| {d}",
            x.dims(),
            skip.dims()
        );
    }
    let (conv, _, _) = conv_layer(4, 4, 3, 1);
    let norm = group_norm_layer(2, 4, 2);
    let x = random(&[1, 4, 6, 6], 3);
    let err = conv
        .forward_norm_silu_onto(&x, &norm, &random(&[1, 4, 5, 6], 4), None)
        .unwrap_err();
    assert!(err.to_string().contains("does not fit"), "{err}");
}

#[test]
fn conv2d_off_the_fast_path_is_candles_op() {
    // f64 is not a fast-path dtype: the same function must still be right.
    let x = random(&[1, 3, 6, 7], 7).to_dtype(DType::F64).unwrap();
    let w = random(&[4, 3, 3, 3], 8).to_dtype(DType::F64).unwrap();
    let b = random(&[4], 9).to_dtype(DType::F64).unwrap();
    let got = kernels::conv2d(&x, &w, Some(&b), None, 1, 1).unwrap();
    let want = reference_conv(&x, &w, Some(&b), None, 1, 1);
    assert!(max_abs_diff(&got, &want) < 1e-12);
}

#[test]
fn conv2d_rejects_shapes_that_do_not_fit() {
    let s = ConvShape {
        batch: 1,
        c_in: 2,
        h: 3,
        w: 3,
        c_out: 2,
        k_h: 3,
        k_w: 3,
        stride: 1,
        padding: 0,
    };
    // Wrong input length.
    let err = kernels::conv2d_f32(&[0.0; 17], &[0.0; 36], ConvInit::default(), s).unwrap_err();
    assert!(err.to_string().contains("do not match"), "{err}");
    // Kernel larger than the padded input.
    let big = ConvShape {
        k_h: 5,
        k_w: 5,
        ..s
    };
    let err = kernels::conv2d_f32(&[0.0; 18], &[0.0; 100], ConvInit::default(), big).unwrap_err();
    assert!(err.to_string().contains("does not fit"), "{err}");
    // A bias of the wrong length, a residual of the wrong length.
    let bias = [0.0; 3];
    let init = ConvInit {
        bias: Some(&bias),
        ..Default::default()
    };
    assert!(kernels::conv2d_f32(&[0.0; 18], &[0.0; 36], init, s).is_err());
    let residual = [0.0; 5];
    let init = ConvInit {
        residual: Some(&residual),
        ..Default::default()
    };
    assert!(kernels::conv2d_f32(&[0.0; 18], &[0.0; 36], init, s).is_err());
    // Through the tensor API: a weight whose input channels differ.
    let x = random(&[1, 3, 5, 5], 1);
    let w = random(&[2, 4, 3, 3], 2);
    assert!(kernels::conv2d(&x, &w, None, None, 1, 1).is_err());
}

fn group_norm_layer(groups: usize, channels: usize, seed: u64) -> kernels::GroupNorm {
    let mut map = std::collections::HashMap::new();
    map.insert("weight".to_string(), random(&[channels], seed));
    map.insert("bias".to_string(), random(&[channels], seed + 1));
    let vb = VarBuilder::from_tensors(map, DType::F32, &Device::Cpu);
    kernels::GroupNorm::load(groups, channels, 1e-6, vb).unwrap()
}

#[test]
fn group_norm_and_fused_silu_match_candle() {
    for (i, (shape, groups)) in [
        (vec![2, 12, 5, 7], 4),
        (vec![1, 64, 33, 31], 32),
        (vec![2, 6, 1, 1], 3),
        (vec![1, 10, 9], 5),
    ]
    .into_iter()
    .enumerate()
    {
        let c = shape[1];
        let layer = group_norm_layer(groups, c, 10 * i as u64);
        // An offset and a scale away from 0/1, so the statistics matter.
        let x = ((random(&shape, 10 * i as u64 + 5) * 3.0).unwrap() + 0.7).unwrap();
        let mut map = std::collections::HashMap::new();
        map.insert("weight".to_string(), random(&[c], 10 * i as u64));
        map.insert("bias".to_string(), random(&[c], 10 * i as u64 + 1));
        let vb = VarBuilder::from_tensors(map, DType::F32, &Device::Cpu);
        let reference = candle_nn::group_norm(groups, c, 1e-6, vb).unwrap();
        let want = reference.forward(&x).unwrap();
        let got = layer.forward(&x).unwrap();
        let d = max_abs_diff(&got, &want);
        assert!(d < 2e-5, "group norm {shape:?}: max |Δ| {d}");
        let want = candle_nn::ops::silu(&want).unwrap();
        let got = layer.forward_silu(&x).unwrap();
        let d = max_abs_diff(&got, &want);
        assert!(d < 2e-5, "group norm + silu {shape:?}: max |Δ| {d}");
    }
}

#[test]
fn group_norm_rejects_channels_that_do_not_split() {
    // 10 channels in 4 groups; 31 elements for 10 channels × 3; a 9-long gamma.
    assert!(
        kernels::group_norm_f32(&[0.0; 30], 10, 3, 4, &[1.0; 10], &[0.0; 10], 1e-6, false).is_err()
    );
    assert!(
        kernels::group_norm_f32(&[0.0; 31], 10, 3, 5, &[1.0; 10], &[0.0; 10], 1e-6, false).is_err()
    );
    assert!(
        kernels::group_norm_f32(&[0.0; 30], 10, 3, 5, &[1.0; 9], &[0.0; 10], 1e-6, false).is_err()
    );
    assert!(
        kernels::group_norm_f32(&[0.0; 30], 10, 3, 5, &[1.0; 10], &[0.0; 10], 1e-6, false).is_ok()
    );
}

#[test]
fn upsample_matches_candle() {
    let x = random(&[2, 3, 5, 7], 3);
    let got = kernels::upsample_nearest2x(&x).unwrap();
    let want = x.upsample_nearest2d(10, 14).unwrap();
    assert_eq!(max_abs_diff(&got, &want), 0.0);
}

#[test]
fn exp_approx_is_close_to_exp() {
    let mut worst = 0f32;
    let mut x = -80.0f32;
    while x < 80.0 {
        let (got, want) = (kernels::exp_approx(x), x.exp());
        worst = worst.max(((got - want) / want).abs());
        x += 0.0137;
    }
    assert!(worst < 5e-7, "relative error {worst}");
    // Saturates instead of overflowing.
    assert!(kernels::exp_approx(1000.0).is_finite());
    assert!(kernels::exp_approx(-1000.0) >= 0.0);
}

/// softmax(q·kᵀ·scale)·v per head, with candle's ops (the reference).
fn reference_attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, scale: f64) -> Tensor {
    let split = |t: &Tensor| {
        let (b, n, w) = t.dims3().unwrap();
        t.reshape((b, n, heads, w / heads))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
    };
    let (qh, kh, vh) = (split(q), split(k), split(v));
    let scores = (qh.matmul(&kh.t().unwrap()).unwrap() * scale).unwrap();
    let probs = candle_nn::ops::softmax_last_dim(&scores).unwrap();
    let (b, n, w) = q.dims3().unwrap();
    probs
        .matmul(&vh)
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .reshape((b, n, w))
        .unwrap()
}

#[test]
fn attention_matches_candle_on_odd_shapes() {
    // (batch, n_q, n_kv, heads, head_dim): self-attention, cross-attention with
    // 77 context tokens, several query blocks per head, one head of odd width.
    for (i, (b, n_q, n_kv, heads, d)) in [
        (2, 37, 37, 3, 5),
        (1, 64, 77, 5, 8),
        (1, 700, 650, 2, 16),
        (2, 9, 1, 1, 7),
    ]
    .into_iter()
    .enumerate()
    {
        let seed = 1000 + 10 * i as u64;
        // Spread-out scores, so the softmax is far from uniform.
        let q = (random(&[b, n_q, heads * d], seed) * 4.0).unwrap();
        let k = random(&[b, n_kv, heads * d], seed + 1);
        let v = random(&[b, n_kv, heads * d], seed + 2);
        let scale = 1.0 / (d as f64).sqrt();
        let want = reference_attention(&q, &k, &v, heads, scale);
        for exp in [SoftmaxExp::Fast, SoftmaxExp::Libm] {
            let got = kernels::attention(&q, &k, &v, heads, scale, exp)
                .unwrap()
                .unwrap();
            let d = max_abs_diff(&got, &want);
            assert!(
                d < 2e-5,
                "attention {:?} ({exp:?}): max |Δ| {d}",
                want.dims()
            );
        }
    }
    // Off the fast path the caller keeps its own attention.
    let q = random(&[1, 4, 6], 1).to_dtype(DType::F64).unwrap();
    assert!(
        kernels::attention(&q, &q, &q, 2, 1.0, SoftmaxExp::Fast)
            .unwrap()
            .is_none()
    );
    // A width that does not split into the heads.
    let q = random(&[1, 4, 6], 1);
    assert!(kernels::attention(&q, &q, &q, 4, 1.0, SoftmaxExp::Fast).is_err());
}

/// Our `Linear` and candle's over the same weight (`w (d_out, d_in)`) and,
/// when `with_bias`, the same bias.
fn linear_pair(w: &Tensor, bias: &Tensor, with_bias: bool) -> (kernels::Linear, candle_nn::Linear) {
    let (d_out, d_in) = w.dims2().unwrap();
    let mut map = std::collections::HashMap::new();
    map.insert("weight".to_string(), w.clone());
    if with_bias {
        map.insert("bias".to_string(), bias.clone());
    }
    let vb = VarBuilder::from_tensors(map, DType::F32, &Device::Cpu);
    let ours = kernels::Linear::load(vb, d_in, d_out, with_bias).unwrap();
    let reference = candle_nn::Linear::new(w.clone(), with_bias.then(|| bias.clone()));
    (ours, reference)
}

#[test]
fn linear_matches_candle_on_odd_shapes() {
    // (leading dims, d_in, d_out): many row blocks, few rows with many outputs
    // (column tiles), widths that are no multiple of 16, a 2-D input.
    for (i, (lead, d_in, d_out)) in [
        (vec![1, 1100], 37, 45),
        (vec![2, 77], 64, 300),
        (vec![1, 5], 129, 1000),
        (vec![3], 8, 3),
    ]
    .into_iter()
    .enumerate()
    {
        let seed = 2000 + 10 * i as u64;
        let mut shape = lead.clone();
        shape.push(d_in);
        let x = random(&shape, seed);
        let w = random(&[d_out, d_in], seed + 1);
        let b = random(&[d_out], seed + 2);
        for bias in [true, false] {
            let (ours, reference) = linear_pair(&w, &b, bias);
            let got = ours.forward(&x).unwrap();
            let want = reference.forward(&x).unwrap();
            let d = max_abs_diff(&got, &want);
            assert!(
                d < 1e-5 * d_in as f32,
                "linear {shape:?} → {d_out} (bias {bias}): max |Δ| {d}"
            );
        }
    }
    assert!(kernels::linear_f32(&[0.0; 10], 2, 5, &[0.0; 14], 3, None, None).is_err());
    assert!(kernels::linear_f32(&[0.0; 10], 2, 5, &[0.0; 15], 3, Some(&[0.0; 2]), None).is_err());
}

#[test]
fn linear_with_a_residual_and_from_and_to_channel_major_maps_matches_candle() {
    // (batch, d_in, d_out, h, w): odd channel counts, widths in and out that
    // differ, more pixels than one row block (512), one pixel, batch 2.
    for (i, (b, d_in, d_out, h, w)) in [
        (2usize, 13usize, 21usize, 23usize, 25usize),
        (1, 40, 40, 1, 1),
        (1, 7, 5, 31, 17),
        (2, 24, 17, 3, 5),
    ]
    .into_iter()
    .enumerate()
    {
        let seed = 2500 + 10 * i as u64;
        let wt = random(&[d_out, d_in], seed);
        let bias = random(&[d_out], seed + 1);
        for with_bias in [true, false] {
            let (ours, reference) = linear_pair(&wt, &bias, with_bias);
            let tol = 1e-5 * d_in as f32;
            let what = format!("b {b}, {d_in}→{d_out}, {h}×{w}, bias {with_bias}");

            // Tokens plus a residual of the output's shape.
            let tokens = random(&[b, h * w, d_in], seed + 2);
            let residual = random(&[b, h * w, d_out], seed + 3);
            let got = ours.forward_residual(&tokens, &residual).unwrap();
            let want = (reference.forward(&tokens).unwrap() + &residual).unwrap();
            let d = max_abs_diff(&got, &want);
            assert!(d < tol, "forward_residual {what}: max |Δ| {d}");

            // A channel-major map read as tokens.
            let map_in = random(&[b, d_in, h, w], seed + 4);
            let as_tokens = map_in
                .permute((0, 2, 3, 1))
                .unwrap()
                .reshape((b, h * w, d_in))
                .unwrap();
            let got = ours.forward_from_nchw(&map_in).unwrap();
            let want = reference.forward(&as_tokens).unwrap();
            let d = max_abs_diff(&got, &want);
            assert!(d < tol, "forward_from_nchw {what}: max |Δ| {d}");

            // Tokens written into a channel-major map plus its residual.
            let skip = random(&[b, d_out, h, w], seed + 5);
            let got = ours.forward_to_nchw(&tokens, &skip).unwrap();
            let want = (reference
                .forward(&tokens)
                .unwrap()
                .reshape((b, h, w, d_out))
                .unwrap()
                .permute((0, 3, 1, 2))
                .unwrap()
                + &skip)
                .unwrap();
            let d = max_abs_diff(&got, &want);
            assert!(d < tol, "forward_to_nchw {what}: max |Δ| {d}");
        }
    }
    // A residual of the wrong shape falls back to candle, which refuses it.
    let vb = VarBuilder::from_tensors(
        [("weight".to_string(), random(&[4, 3], 1))]
            .into_iter()
            .collect(),
        DType::F32,
        &Device::Cpu,
    );
    let ours = kernels::Linear::load(vb, 3, 4, false).unwrap();
    assert!(
        ours.forward_residual(&random(&[2, 3], 2), &random(&[2, 5], 3))
            .is_err()
    );
    // A strided layout that does not fit its slice is refused, not read out of bounds.
    let mut out = vec![0f32; 6];
    let bad = kernels::linear_into_f32(
        &[0.0; 6],
        kernels::MatLayout { rs: 1, cs: 4 },
        3,
        2,
        &[0.0; 4],
        2,
        &mut out,
        kernels::MatLayout::rows(2),
        false,
    );
    assert!(bad.is_err());
}

#[test]
fn geglu_matches_candles_exact_gelu() {
    let h = (random(&[2, 7, 2 * 45], 3000) * 4.0).unwrap();
    let got = kernels::geglu(&h).unwrap().unwrap();
    let c = h.chunk(2, 2).unwrap();
    let want = (&c[0] * c[1].gelu_erf().unwrap()).unwrap();
    let d = max_abs_diff(&got, &want);
    assert!(d < 2e-6, "geglu: max |Δ| {d}");
    // erf itself, against libm-quality values over the range that matters.
    let mut worst = 0f32;
    let mut x = -6.0f32;
    while x < 6.0 {
        let want = erf_reference(x as f64) as f32;
        worst = worst.max((kernels::erf_approx(x) - want).abs());
        x += 0.001;
    }
    assert!(worst < 5e-7, "erf: max |Δ| {worst}");
    assert!(kernels::geglu(&random(&[2, 5], 1)).is_err());
}

#[test]
fn gelu_matches_candles_exact_gelu_on_odd_lengths() {
    // Lengths around the parallel chunk (2^14) and the SIMD width, values over ±8.
    for (n, seed) in [
        (1usize, 1u64),
        (15, 2),
        (17, 3),
        (77 * 4096 + 5, 4),
        ((1 << 14) + 3, 5),
    ] {
        let x = (random(&[n], seed) * 4.0).unwrap();
        let got = kernels::gelu_erf(&x).unwrap().unwrap();
        let want = x.gelu_erf().unwrap();
        let d = max_abs_diff(&got, &want);
        assert!(d < 2e-6, "gelu over {n} values: max |Δ| {d}");
    }
    let x = random(&[3, 5, 7], 6);
    assert_eq!(kernels::gelu_erf(&x).unwrap().unwrap().dims(), &[3, 5, 7]);
    // Off the fast path (f64) it declines, and the caller falls back to candle.
    assert!(
        kernels::gelu_erf(&x.to_dtype(candle_core::DType::F64).unwrap())
            .unwrap()
            .is_none()
    );
}

/// erf by its Taylor series (|x| < 3) or the continued fraction of erfc, in f64.
fn erf_reference(x: f64) -> f64 {
    let a = x.abs();
    let v = if a < 3.0 {
        let (mut term, mut sum, mut n) = (a, a, 0.0);
        while term.abs() > 1e-17 {
            n += 1.0;
            term *= -a * a / n;
            sum += term / (2.0 * n + 1.0);
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        // erfc(a) = e^{-a²}/√π · 1/(a + 1/2/(a + 1/(a + 3/2/(a + …)))).
        let mut f = a;
        for k in (1..60).rev() {
            f = a + (k as f64 / 2.0) / f;
        }
        1.0 - (-a * a).exp() / (std::f64::consts::PI.sqrt() * f)
    };
    v.copysign(x)
}
