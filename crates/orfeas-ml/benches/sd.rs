//! Full-size SD-Turbo, SD 1.5 and SDXL-Turbo architectures with zero or random weights:
//! one 512² step split into text encoder, UNet and VAE decode (full vs tiled).
//!
//! `cargo bench -p orfeas-ml --bench sd` (CPU; `--features cuda` for the GPU).
//! Environment: ORFEAS_BENCH_SIZE (default 512), ORFEAS_BENCH_MODELS
//! (comma list of sd-turbo, sd-1.5, sdxl-turbo; default the first two), ORFEAS_BENCH_WEIGHTS
//! (zeros|random; default zeros on CPU, random on GPU), ORFEAS_BENCH_DEVICE
//! (auto|cpu|cuda), ORFEAS_BENCH_REPEATS (default 1 on CPU, 5 on GPU),
//! ORFEAS_ML_FIXTURES (the sd-tiny fixture folder holding `full-configs/`),
//! ORFEAS_BENCH_SKIP_TILED (set: no tiled VAE decode).
//!
//! ORFEAS_BENCH_FOLDER=DIR instead runs the real text→image pipeline on a diffusers
//! folder (CPU, f32): `SdModel::load` as `orfeas text-to-image --model-path DIR` does,
//! then `pipeline::generate` twice (1 step, guidance 0, full VAE decode), split into
//! text encoder / UNet / VAE decode by its progress events; then the VAE decode alone
//! and TAESD (`DIR/taesd`, or ORFEAS_BENCH_TAESD) on the same latents; peak RSS and
//! the CPU share (process CPU time ÷ wall time × threads: under 100 % on a busy machine).
//! ORFEAS_BENCH_REFERENCE: the safetensors `scripts/bench/sd_diffusers_cpu.py run --save`
//! wrote; ours then starts from its noise, decodes its latents and prints the max
//! differences from diffusers' outputs. `scripts/bench/sd-cpu-vs-diffusers.sh` runs both.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use orfeas_ml::sd::clip::{ClipConfig, ClipTextModel};
use orfeas_ml::sd::pipeline::add_time_ids;
use orfeas_ml::sd::pipeline::{
    DecodeMode, DevicePref, GenerateRequest, Progress, SdModel, decode_latents, generate,
    select_device,
};
use orfeas_ml::sd::taesd::{TinyDecoder, TinyDecoderConfig};
use orfeas_ml::sd::unet::{AddedCond, UNet, UNetConfig};
use orfeas_ml::sd::vae::{Vae, VaeConfig};

#[path = "support/proc_status.rs"]
mod proc_status;
use proc_status::{minor_faults, peak_rss_mib};

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

/// CPU time of the whole process (all threads, user + system) so far, in ms;
/// 0 where /proc is absent. /proc counts in clock ticks, 100 per second on Linux.
fn process_cpu_ms() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the `(comm)`, which may hold spaces: state is field 3,
            // utime and stime fields 14 and 15.
            let rest = s.rsplit_once(')')?.1;
            let mut f = rest.split_whitespace().skip(11);
            let utime: f64 = f.next()?.parse().ok()?;
            let stime: f64 = f.next()?.parse().ok()?;
            Some((utime + stime) * 10.0)
        })
        .unwrap_or(0.0)
}

/// Process CPU time over wall time × threads since (`t`, `cpu_ms`).
fn cpu_share(t: Instant, cpu_ms: f64) -> f64 {
    let wall_ms = ms_between(t, Instant::now()) * candle_core::utils::get_num_threads() as f64;
    let share = (process_cpu_ms() - cpu_ms) / wall_ms.max(1.0);
    (share * 1e3).round() / 1e3
}

fn ms_between(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64() * 1e3
}

/// The prompt `scripts/bench/sd_diffusers_cpu.py` uses.
const FOLDER_PROMPT: &str = "a red ceramic mug on a wooden table, studio photo";

/// Max |a − b| over two tensors of the same shape, in f32.
fn max_abs_diff(a: &Tensor, b: &Tensor) -> anyhow::Result<f32> {
    let d = (a.to_dtype(DType::F32)? - b.to_dtype(DType::F32)?)?.abs()?;
    Ok(d.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

/// One `generate` call, timed by stage from its progress events.
fn timed_generate(
    model: &SdModel,
    req: &GenerateRequest,
) -> anyhow::Result<(serde_json::Map<String, serde_json::Value>, image::RgbImage)> {
    // Each progress event's time and the process's page faults so far.
    let mark = || (Instant::now(), minor_faults());
    let (mut started, mut stepped, mut decoding) = (None, None, None);
    let (t0, cpu0, faults0) = (Instant::now(), process_cpu_ms(), minor_faults());
    let images = generate(
        model,
        req,
        &mut |p| match p {
            Progress::Started { .. } => started = Some(mark()),
            Progress::Step { .. } => stepped = Some(mark()),
            Progress::Decoding => decoding = Some(mark()),
        },
        &AtomicBool::new(false),
    )?;
    let (end, faults_end) = mark();
    let (Some((started, f_started)), Some((stepped, f_stepped)), Some((decoding, f_decoding))) =
        (started, stepped, decoding)
    else {
        anyhow::bail!("generate reported no Started/Step/Decoding progress");
    };
    let mut stages = serde_json::Map::new();
    // Encoding the prompt is all that runs before `Started` (plus building the
    // scheduler and the noise, microseconds); decoding includes the RGB conversion.
    for (name, ms) in [
        ("text_encoder", ms_between(t0, started)),
        ("unet", ms_between(started, stepped)),
        ("vae_decode", ms_between(decoding, end)),
        ("e2e", ms_between(t0, end)),
    ] {
        stages.insert(name.into(), serde_json::json!((ms * 10.0).round() / 10.0));
    }
    stages.insert("cpu_share".into(), cpu_share(t0, cpu0).into());
    // Pages first touched in each stage (4 KiB each): the first call grows the
    // heap, a warm call should reuse it.
    for (name, faults) in [
        ("text_encoder_faults", f_started - faults0),
        ("unet_faults", f_stepped - f_started),
        ("vae_decode_faults", faults_end - f_decoding),
    ] {
        stages.insert(name.into(), faults.into());
    }
    let image = images
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("generate returned no image"))?;
    Ok((stages, image))
}

/// `ORFEAS_BENCH_FOLDER`: the real pipeline on a diffusers folder, printed in the
/// same format as `scripts/bench/sd_diffusers_cpu.py run`.
fn folder_bench(dir: &Path, size: usize) -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let reference: Option<HashMap<String, Tensor>> = std::env::var_os("ORFEAS_BENCH_REFERENCE")
        .map(|p| candle_core::safetensors::load(&p, &dev))
        .transpose()?;
    let refer = |name: &str| reference.as_ref().and_then(|r| r.get(name));
    let tiny_dir = std::env::var_os("ORFEAS_BENCH_TAESD")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.join("taesd"));
    let t = Instant::now();
    let model = SdModel::load(dir, &dev, DType::F32)?;
    let tiny = TinyDecoder::load_dir(&tiny_dir, &dev, DType::F32)?;
    let load_ms = ms_between(t, Instant::now());
    println!(
        "ours: candle, {} threads, {:?}, f32, {size}x{size}, 1 step, guidance 0",
        candle_core::utils::get_num_threads(),
        model.scheduler_config.default_kind()
    );
    println!("ours: load {load_ms:.0} ms");

    let req = GenerateRequest {
        prompt: FOLDER_PROMPT.into(),
        negative: String::new(),
        steps: 1,
        guidance: 0.0,
        seed: 0,
        width: size,
        height: size,
        batch: 1,
        scheduler: None,
        init_noise: refer("noise").cloned(),
        decode: DecodeMode::Full,
        init_image: None,
        tiny_decoder: None,
        previews: false,
    };
    let mut runs = Vec::new();
    let mut image = None;
    for label in ["first", "warm"] {
        let (mut stages, img) = timed_generate(&model, &req)?;
        let ms = |k: &str| {
            stages
                .get(k)
                .and_then(serde_json::Value::as_f64)
                .unwrap_or(0.0)
        };
        println!(
            "ours run {} ({label}): text_encoder {:.0} ms | unet {:.0} ms | vae_decode {:.0} ms | \
             end-to-end {:.0} ms | CPU share {:.0}% | page faults: text_encoder {:.0}, \
             unet {:.0}, vae_decode {:.0}",
            runs.len() + 1,
            ms("text_encoder"),
            ms("unet"),
            ms("vae_decode"),
            ms("e2e"),
            ms("cpu_share") * 100.0,
            ms("text_encoder_faults"),
            ms("unet_faults"),
            ms("vae_decode_faults"),
        );
        stages.insert("label".into(), label.into());
        runs.push(serde_json::Value::Object(stages));
        image = Some(img);
    }
    let rss_pipeline = peak_rss_mib();

    // The latents diffusers' pipeline decoded (UNet space), else seeded noise.
    let latents = match refer("unet_latents") {
        Some(l) => l.clone(),
        None => orfeas_ml::sd::noise::initial_noise(1, 1, (4, size / 8, size / 8), &dev)?,
    };
    let (t, cpu) = (Instant::now(), process_cpu_ms());
    let vae_out = decode_latents(&model.vae, &latents, DecodeMode::Full)?;
    let vae_ms = ms_between(t, Instant::now());
    let vae_share = cpu_share(t, cpu);
    println!(
        "ours vae_decode alone: {vae_ms:.0} ms | CPU share {:.0}%",
        vae_share * 100.0
    );
    let mut taesd_ms = Vec::new();
    let mut taesd_out = None;
    for _ in 0..2 {
        let t = Instant::now();
        taesd_out = Some(tiny.decode(&latents)?);
        taesd_ms.push(ms_between(t, Instant::now()));
    }
    println!(
        "ours taesd_decode: first {:.0} ms, warm {:.0} ms",
        taesd_ms[0], taesd_ms[1]
    );
    let rss = peak_rss_mib();
    println!(
        "ours peak RSS: {rss_pipeline:.0} MiB after the pipeline runs, {rss:.0} MiB at the end"
    );

    let mut diffs = serde_json::Map::new();
    if let Some(r) = refer("vae_out") {
        diffs.insert("vae_out".into(), max_abs_diff(&vae_out, r)?.into());
    }
    if let (Some(r), Some(ours)) = (refer("taesd_out"), taesd_out.as_ref()) {
        diffs.insert("taesd_out".into(), max_abs_diff(ours, r)?.into());
    }
    if let (Some(r), Some(img)) = (refer("image"), image.as_ref()) {
        let theirs = r.flatten_all()?.to_vec1::<u8>()?;
        let ours = img.as_raw();
        if theirs.len() == ours.len() {
            let d: Vec<u8> = ours
                .iter()
                .zip(&theirs)
                .map(|(a, b)| a.abs_diff(*b))
                .collect();
            let max = d.iter().copied().max().unwrap_or(0);
            let mean = d.iter().map(|&v| f64::from(v)).sum::<f64>() / d.len().max(1) as f64;
            diffs.insert("image_max_u8".into(), max.into());
            diffs.insert("image_mean_u8".into(), ((mean * 1e3).round() / 1e3).into());
        }
    }
    if !diffs.is_empty() {
        println!(
            "ours vs diffusers (same noise and latents): max |Δ| {}",
            serde_json::Value::Object(diffs.clone())
        );
    }
    println!(
        "{}",
        serde_json::json!({
            "impl": "ours", "size": size, "threads": candle_core::utils::get_num_threads(),
            "prompt": FOLDER_PROMPT, "load_ms": (load_ms * 10.0).round() / 10.0, "runs": runs,
            "vae_decode_alone_ms": (vae_ms * 10.0).round() / 10.0,
            "vae_decode_alone_cpu_share": vae_share,
            "taesd_first_ms": (taesd_ms[0] * 10.0).round() / 10.0,
            "taesd_warm_ms": (taesd_ms[1] * 10.0).round() / 10.0,
            "peak_rss_pipeline_mib": rss_pipeline.round(), "peak_rss_mib": rss.round(),
            "diff_from_diffusers": diffs,
        })
    );
    Ok(())
}

/// Large blocks on transparent huge pages (`orfeas_ml::memory`).
#[global_allocator]
static HEAP: orfeas_ml::memory::HugePageHeap = orfeas_ml::memory::HugePageHeap;

fn main() -> anyhow::Result<()> {
    orfeas_ml::memory::keep_freed_memory();
    orfeas_ml::memory::huge_pages_from_env();
    let size: usize = std::env::var("ORFEAS_BENCH_SIZE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(512);
    if let Some(dir) = std::env::var_os("ORFEAS_BENCH_FOLDER") {
        return folder_bench(Path::new(&dir), size);
    }
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
        let tiled_ms = if std::env::var_os("ORFEAS_BENCH_SKIP_TILED").is_some() {
            f64::NAN
        } else {
            time_ms(&dev, repeats, || {
                vae.decode_tiled(&latents, tile, tile / 4)?;
                Ok(())
            })?
        };
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
