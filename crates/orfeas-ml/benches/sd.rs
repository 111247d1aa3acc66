//! Full-size SD-Turbo, SD 1.5 and SDXL-Turbo architectures with zero or random weights:
//! one 512² step split into text encoder, UNet and VAE decode (full vs tiled).
//!
//! `cargo bench -p orfeas-ml --bench sd` (CPU; `--features cuda` for the GPU).
//! Environment: ORFEAS_BENCH_SIZE (default 512), ORFEAS_BENCH_MODELS
//! (comma list of sd-turbo, sd-1.5, sdxl-turbo; default the first two), ORFEAS_BENCH_WEIGHTS
//! (zeros|random; default zeros on CPU, random on GPU), ORFEAS_BENCH_DEVICE
//! (auto|cpu|cuda), ORFEAS_BENCH_REPEATS (default 1 on CPU, 5 on GPU),
//! ORFEAS_ML_FIXTURES (the sd-tiny fixture folder holding `full-configs/`).

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use orfeas_ml::sd::clip::{ClipConfig, ClipTextModel};
use orfeas_ml::sd::pipeline::add_time_ids;
use orfeas_ml::sd::pipeline::{DevicePref, select_device};
use orfeas_ml::sd::taesd::{TinyDecoder, TinyDecoderConfig};
use orfeas_ml::sd::unet::{AddedCond, UNet, UNetConfig};
use orfeas_ml::sd::vae::{Vae, VaeConfig};

/// The full-size configs beside the tiny fixture (`ORFEAS_ML_FIXTURES` overrides
/// the fixture folder, for a binary run away from its source tree).
fn sd_fixture() -> PathBuf {
    std::env::var_os("ORFEAS_ML_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd-tiny"))
}

fn configs(name: &str) -> PathBuf {
    sd_fixture().join("full-configs").join(name)
}

/// The full-size TAESD config (same architecture for taesd and taesdxl).
fn taesd_config() -> PathBuf {
    sd_fixture()
        .parent()
        .map(|root| root.join("taesd-tiny/full_config.json"))
        .unwrap_or_default()
}

fn sync(dev: &Device) {
    let _ = dev.synchronize();
}

/// Median wall time of `repeats` runs of `f`, in milliseconds (after one warm-up on GPU).
fn time_ms(
    dev: &Device,
    repeats: usize,
    mut f: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    if !dev.is_cpu() {
        f()?;
        sync(dev);
    }
    let mut v = Vec::new();
    for _ in 0..repeats {
        let t = Instant::now();
        f()?;
        sync(dev);
        v.push(t.elapsed().as_secs_f64() * 1e3);
    }
    v.sort_by(f64::total_cmp);
    Ok(v[v.len() / 2])
}

fn main() -> anyhow::Result<()> {
    let size: usize = std::env::var("ORFEAS_BENCH_SIZE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(512);
    let pref: DevicePref = std::env::var("ORFEAS_BENCH_DEVICE")
        .unwrap_or_else(|_| "auto".into())
        .parse()?;
    let (dev, dtype) = select_device(pref)?;
    let random = match std::env::var("ORFEAS_BENCH_WEIGHTS").as_deref() {
        Ok("random") => true,
        Ok("zeros") => false,
        _ => !dev.is_cpu(),
    };
    let repeats: usize = std::env::var("ORFEAS_BENCH_REPEATS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if dev.is_cpu() { 1 } else { 5 });
    let models = std::env::var("ORFEAS_BENCH_MODELS").unwrap_or_else(|_| "sd-turbo,sd-1.5".into());
    println!(
        "device {dev:?} dtype {dtype:?} weights {} size {size}x{size} repeats {repeats} threads {}",
        if random { "random" } else { "zeros" },
        candle_core::utils::get_num_threads()
    );
    for name in models.split(',') {
        let (folder, cfg_batch) = match name.trim() {
            "sd-turbo" => ("sd-turbo", 1),
            "sd-1.5" => ("stable-diffusion-v1-5", 2),
            "sdxl-turbo" => ("sdxl-turbo", 1),
            other => anyhow::bail!("unknown bench model {other}"),
        };
        let dir = configs(folder);
        // One VarMap per component: the UNet and the VAE share tensor names.
        let maps = [
            VarMap::new(),
            VarMap::new(),
            VarMap::new(),
            VarMap::new(),
            VarMap::new(),
        ];
        let vb = |i: usize| -> VarBuilder<'_> {
            if random {
                VarBuilder::from_varmap(&maps[i], dtype, &dev)
            } else {
                VarBuilder::zeros(dtype, &dev)
            }
        };
        let t = Instant::now();
        let clip = ClipTextModel::load(
            vb(0),
            &ClipConfig::from_file(&dir.join("text_encoder/config.json"))?,
        )?;
        let unet_cfg = UNetConfig::from_file(&dir.join("unet/config.json"))?;
        // SDXL: the second encoder (with projection) and its pooled output.
        let clip2 = if unet_cfg.is_xl() {
            Some(ClipTextModel::load(
                vb(3),
                &ClipConfig::from_file(&dir.join("text_encoder_2/config.json"))?,
            )?)
        } else {
            None
        };
        let unet = UNet::load(vb(1), &unet_cfg)?;
        let vae = Vae::load(vb(2), &VaeConfig::from_file(&dir.join("vae/config.json"))?)?;
        let tiny = TinyDecoder::load(vb(4), &TinyDecoderConfig::from_file(&taesd_config())?)?;
        sync(&dev);
        println!("{name}: built in {:.1} s", t.elapsed().as_secs_f64());

        let ids = Tensor::zeros((cfg_batch, 77), DType::U32, &dev)?;
        // SD: last hidden state. SDXL: both penultimate states side by side, plus pooled.
        let encode = || -> anyhow::Result<(Tensor, Option<Tensor>)> {
            match &clip2 {
                None => Ok((clip.forward(&ids)?, None)),
                Some(clip2) => {
                    let a = clip.encode(&ids)?;
                    let b = clip2.encode(&ids)?;
                    let ctx = Tensor::cat(&[&a.penultimate, &b.penultimate], 2)?;
                    Ok((ctx, b.pooled))
                }
            }
        };
        let te_ms = time_ms(&dev, repeats, || {
            encode()?;
            Ok(())
        })?;
        println!("{name}: text_encoder {te_ms:.0} ms");
        let (ctx, pooled) = encode()?;
        let time_ids = add_time_ids(size, size, &dev)?.repeat((cfg_batch, 1))?;
        let added = pooled.as_ref().map(|text_embeds| AddedCond {
            text_embeds,
            time_ids: &time_ids,
        });
        let lat = size / 8;
        let sample = Tensor::randn(0f32, 1f32, (cfg_batch, 4, lat, lat), &dev)?.to_dtype(dtype)?;
        let unet_ms = time_ms(&dev, repeats, || {
            unet.forward(&sample, 999.0, &ctx, added.as_ref())?;
            Ok(())
        })?;
        println!("{name}: unet {unet_ms:.0} ms");
        let latents = sample.narrow(0, 0, 1)?;
        let vae_ms = time_ms(&dev, repeats, || {
            vae.decode(&latents)?;
            Ok(())
        })?;
        println!("{name}: vae_decode {vae_ms:.0} ms");
        let tile = (lat / 2).max(16);
        let tiled_ms = time_ms(&dev, repeats, || {
            vae.decode_tiled(&latents, tile, tile / 4)?;
            Ok(())
        })?;
        println!("{name}: vae_decode_tiled {tiled_ms:.0} ms");
        let tiny_ms = time_ms(&dev, repeats, || {
            tiny.decode(&latents)?;
            Ok(())
        })?;
        println!("{name}: taesd_decode {tiny_ms:.0} ms");
        let e2e_ms = time_ms(&dev, repeats, || {
            let (c, pooled) = encode()?;
            let added = pooled.as_ref().map(|text_embeds| AddedCond {
                text_embeds,
                time_ids: &time_ids,
            });
            let eps = unet.forward(&sample, 999.0, &c, added.as_ref())?;
            let x = (&sample - eps)?.narrow(0, 0, 1)?;
            vae.decode(&(x / vae.config.scaling_factor)?)?;
            Ok(())
        })?;
        println!(
            "{name} {size}x{size} 1 step (batch {cfg_batch}): text_encoder {te_ms:.0} ms | unet {unet_ms:.0} ms | \
             vae_decode {vae_ms:.0} ms | vae_decode_tiled(tile {tile}) {tiled_ms:.0} ms | taesd_decode {tiny_ms:.0} ms | \
             sum {:.0} ms | end-to-end {e2e_ms:.0} ms",
            te_ms + unet_ms + vae_ms
        );
    }
    Ok(())
}
