//! The CPU kernels of `orfeas_ml::kernels` beside candle's own ops on the
//! shapes that dominate SD-Turbo at 512² (VAE decoder, UNet), with achieved
//! GFLOP/s, and the machine's GEMM peak as the yardstick (a large square
//! `gemm` call, one thread and all threads).
//!
//! `cargo bench -p orfeas-ml --bench kernels` (set RAYON_NUM_THREADS to pin the
//! thread count). ORFEAS_BENCH_REPEATS (default 3): best of that many runs;
//! ORFEAS_BENCH_CANDLE=0 skips candle's side (to profile ours alone).

use std::time::Instant;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use orfeas_ml::kernels;

fn repeats() -> usize {
    std::env::var("ORFEAS_BENCH_REPEATS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
}

/// Best wall time of `f` over the repeats, in seconds.
fn best_secs(mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    let mut best = f64::MAX;
    for _ in 0..repeats() {
        let t = Instant::now();
        f()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

/// Times candle's op too, unless ORFEAS_BENCH_CANDLE=0 (then NaN).
fn candle_secs(f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    if std::env::var("ORFEAS_BENCH_CANDLE").as_deref() == Ok("0") {
        return Ok(f64::NAN);
    }
    best_secs(f)
}

fn gemm_gflops(n: usize, threads: usize) -> anyhow::Result<f64> {
    let a = vec![1.0f32; n * n];
    let b = vec![0.5f32; n * n];
    let mut c = vec![0.0f32; n * n];
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    let secs = best_secs(|| {
        // SAFETY: a, b and c each hold n × n floats, row-major with row stride n.
        #[allow(unsafe_code)]
        unsafe {
            gemm::gemm(
                n,
                n,
                n,
                c.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                1,
                n as isize,
                b.as_ptr(),
                1,
                n as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                par,
            );
        }
        Ok(())
    })?;
    Ok(2.0 * (n * n * n) as f64 / secs / 1e9)
}

fn random(shape: &[usize]) -> anyhow::Result<Tensor> {
    Ok(Tensor::randn(0f32, 1f32, shape, &Device::Cpu)?)
}

fn main() -> anyhow::Result<()> {
    let threads = rayon::current_num_threads();
    println!("threads {threads}, best of {}", repeats());
    println!(
        "gemm 2048³: {:.1} GFLOP/s on 1 thread, {:.1} GFLOP/s on {threads}",
        gemm_gflops(2048, 1)?,
        gemm_gflops(2048, threads)?
    );

    // (channels in, channels out, side, kernel): the VAE decoder's and the UNet's convs.
    let convs = [
        (128, 128, 512, 3, "vae 512² resnet conv"),
        (256, 256, 512, 3, "vae 512² upsampler conv"),
        (256, 256, 256, 3, "vae 256² resnet conv"),
        (512, 512, 128, 3, "vae 128² resnet conv"),
        (512, 512, 64, 3, "vae/unet 64² conv"),
        (320, 320, 64, 3, "unet 64² resnet conv"),
        (640, 640, 32, 3, "unet 32² resnet conv"),
        (1280, 1280, 16, 3, "unet 16² resnet conv"),
        (2560, 1280, 16, 3, "unet 16² up-block conv"),
        (1280, 1280, 8, 3, "unet 8² resnet conv"),
        (640, 1280, 16, 1, "unet 16² 1x1 shortcut"),
    ];
    for (cin, cout, side, k, what) in convs {
        let x = random(&[1, cin, side, side])?;
        let w = (random(&[cout, cin, k, k])? * 0.02)?;
        let b = random(&[cout])?;
        let pad = k / 2;
        let flops = 2.0 * (side * side * cout * cin * k * k) as f64;
        let ours = best_secs(|| {
            kernels::conv2d(&x, &w, Some(&b), None, 1, pad)?;
            Ok(())
        })?;
        // The same conv on each inner loop (`ConvPath::Auto` above picks one).
        let (xs, ws, bs) = (
            x.flatten_all()?.to_vec1::<f32>()?,
            w.flatten_all()?.to_vec1::<f32>()?,
            b.to_vec1::<f32>()?,
        );
        let shape = kernels::ConvShape {
            batch: 1,
            c_in: cin,
            h: side,
            w: side,
            c_out: cout,
            k_h: k,
            k_w: k,
            stride: 1,
            padding: pad,
        };
        let init = kernels::ConvInit {
            bias: Some(&bs),
            ..Default::default()
        };
        let via = |path| {
            best_secs(|| {
                kernels::conv2d_f32_via(&xs, &ws, init, Default::default(), shape, path)?;
                Ok(())
            })
        };
        let (general, packed) = (
            via(kernels::ConvPath::General)?,
            via(kernels::ConvPath::Packed)?,
        );
        let theirs = candle_secs(|| {
            x.conv2d(&w, pad, 1, 1, 1)?
                .broadcast_add(&b.reshape((1, cout, 1, 1))?)?;
            Ok(())
        })?;
        println!(
            "conv {what} ({cin}→{cout}, {side}², {k}×{k}): ours {:.0} ms ({:.1} GFLOP/s; general {:.1}, packed {:.1}) | candle {:.0} ms ({:.1} GFLOP/s) | ×{:.2}",
            ours * 1e3,
            flops / ours / 1e9,
            flops / general / 1e9,
            flops / packed / 1e9,
            theirs * 1e3,
            flops / theirs / 1e9,
            theirs / ours
        );
    }

    for (c, side) in [(128, 512), (256, 256), (512, 64)] {
        let x = random(&[1, c, side, side])?;
        let mut map = std::collections::HashMap::new();
        map.insert("weight".to_string(), random(&[c])?);
        map.insert("bias".to_string(), random(&[c])?);
        let vb = VarBuilder::from_tensors(map.clone(), DType::F32, &Device::Cpu);
        let ours_norm = kernels::GroupNorm::load(32, c, 1e-6, vb)?;
        let vb = VarBuilder::from_tensors(map, DType::F32, &Device::Cpu);
        let candle_norm = candle_nn::group_norm(32, c, 1e-6, vb)?;
        let ours = best_secs(|| {
            ours_norm.forward_silu(&x)?;
            Ok(())
        })?;
        let theirs = candle_secs(|| {
            candle_nn::ops::silu(&candle_norm.forward(&x)?)?;
            Ok(())
        })?;
        println!(
            "group norm + silu ({c}, {side}²): ours {:.0} ms | candle {:.0} ms | ×{:.2}",
            ours * 1e3,
            theirs * 1e3,
            theirs / ours
        );
    }

    // The UNet transformer's linear layers (candle's `Linear`, on the same GEMM):
    // tokens × in → out, as at the 64², 32² and 16² levels.
    for (tokens, d_in, d_out, what) in [
        (4096, 320, 320, "64² attention projection"),
        (4096, 320, 2560, "64² GEGLU projection"),
        (4096, 1280, 320, "64² feed-forward out"),
        (1024, 640, 5120, "32² GEGLU projection"),
        (256, 1280, 10240, "16² GEGLU projection"),
    ] {
        let x = random(&[1, tokens, d_in])?;
        let w = (random(&[d_out, d_in])? * 0.02)?;
        let b = random(&[d_out])?;
        let lin = candle_nn::Linear::new(w.clone(), Some(b.clone()));
        let mut map = std::collections::HashMap::new();
        map.insert("weight".to_string(), w);
        map.insert("bias".to_string(), b);
        let vb = VarBuilder::from_tensors(map, DType::F32, &Device::Cpu);
        let ours_lin = kernels::Linear::load(vb, d_in, d_out, true)?;
        let flops = 2.0 * (tokens * d_in * d_out) as f64;
        let ours = best_secs(|| {
            ours_lin.forward(&x)?;
            Ok(())
        })?;
        let theirs = candle_secs(|| {
            lin.forward(&x)?;
            Ok(())
        })?;
        println!(
            "linear {what} ({tokens}×{d_in} → {d_out}): ours {:.1} ms ({:.1} GFLOP/s) | candle {:.1} ms ({:.1} GFLOP/s)",
            ours * 1e3,
            flops / ours / 1e9,
            theirs * 1e3,
            flops / theirs / 1e9
        );
    }
    // GEGLU's gate (candle's exact-erf GELU and the product) and a LayerNorm at 64².
    let h = random(&[1, 4096, 2560])?;
    let ours = best_secs(|| {
        kernels::geglu(&h)?;
        Ok(())
    })?;
    let theirs = candle_secs(|| {
        let c = h.chunk(2, 2)?;
        (&c[0] * c[1].gelu_erf()?)?;
        Ok(())
    })?;
    println!(
        "geglu gate 4096×1280: ours {:.1} ms | candle {:.1} ms",
        ours * 1e3,
        theirs * 1e3
    );
    let x = random(&[1, 4096, 320])?;
    let ln = candle_nn::LayerNorm::new(random(&[320])?, random(&[320])?, 1e-5);
    let secs = best_secs(|| {
        ln.forward(&x)?;
        Ok(())
    })?;
    println!("layer norm 4096×320 (candle): {:.1} ms", secs * 1e3);

    // The UNet's self-attention at 64² latents (4096 tokens, 5 heads of 64) and
    // its cross-attention (77 context tokens).
    for (n_q, n_kv, heads, d) in [(4096, 4096, 5, 64), (4096, 77, 5, 64), (1024, 1024, 10, 64)] {
        let q = random(&[1, n_q, heads * d])?;
        let k = random(&[1, n_kv, heads * d])?;
        let v = random(&[1, n_kv, heads * d])?;
        let scale = 1.0 / (d as f64).sqrt();
        let flops = 4.0 * (n_q * n_kv * heads * d) as f64;
        let ours = best_secs(|| {
            kernels::attention(&q, &k, &v, heads, scale, kernels::SoftmaxExp::Fast)?;
            Ok(())
        })?;
        let theirs = candle_secs(|| {
            let split = |t: &Tensor, n: usize| -> candle_core::Result<Tensor> {
                t.reshape((1, n, heads, d))?.transpose(1, 2)?.contiguous()
            };
            let (qh, kh, vh) = (
                split(&(&q * scale)?, n_q)?,
                split(&k, n_kv)?,
                split(&v, n_kv)?,
            );
            let probs = candle_nn::ops::softmax_last_dim(&qh.matmul(&kh.t()?)?)?;
            probs
                .matmul(&vh)?
                .transpose(1, 2)?
                .reshape((1, n_q, heads * d))?;
            Ok(())
        })?;
        println!(
            "attention {n_q}×{n_kv} tokens, {heads}×{d}: ours {:.0} ms ({:.1} GFLOP/s) | candle {:.0} ms | ×{:.2}",
            ours * 1e3,
            flops / ours / 1e9,
            theirs * 1e3,
            theirs / ours
        );
    }
    Ok(())
}
