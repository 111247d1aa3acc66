//! Image→image against diffusers' `StableDiffusionImg2ImgPipeline` on the tiny
//! model (goldens in `sd-tiny/golden/img2img/`): the start step from the
//! strength, the image tensor, the VAE sample, the noising of the clean
//! latents, the shortened denoising loop and the final picture; then the
//! one-call API with a picture file.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use candle_core::{DType, Tensor};
use orfeas_ml::sd::pipeline::{self, Conditioning, DenoiseOptions, SdModel};
use orfeas_ml::sd::schedulers::{self, SchedulerConfig, SchedulerKind};
use orfeas_ml::text_to_image::{self, TextToImageParams};

use crate::common::{assert_close, dev, fixture_dir, get, golden, scalar, test_pref};

const PROMPT: &str = "a red ceramic teapot, studio lighting";

/// One diffusers img2img run and how it was made.
struct Run {
    name: &'static str,
    kind: SchedulerKind,
    steps: usize,
    strength: f64,
    guidance: f64,
    negative: &'static str,
}

const SD_RUNS: [Run; 3] = [
    Run {
        name: "euler_s05_4step_cfg",
        kind: SchedulerKind::Euler,
        steps: 4,
        strength: 0.5,
        guidance: 7.5,
        negative: "",
    },
    Run {
        name: "euler_s075_4step_nocfg",
        kind: SchedulerKind::Euler,
        steps: 4,
        strength: 0.75,
        guidance: 0.0,
        negative: "",
    },
    Run {
        name: "ddim_s05_4step_cfg",
        kind: SchedulerKind::Ddim,
        steps: 4,
        strength: 0.5,
        guidance: 7.5,
        negative: "",
    },
];

const XL_RUNS: [Run; 2] = [
    Run {
        name: "euler_a_s05_2step_nocfg",
        kind: SchedulerKind::EulerAncestral,
        steps: 2,
        strength: 0.5,
        guidance: 0.0,
        negative: "",
    },
    Run {
        name: "euler_s05_4step_cfg",
        kind: SchedulerKind::Euler,
        steps: 4,
        strength: 0.5,
        guidance: 5.0,
        negative: "blurry, low quality",
    },
];

/// Checks every stage of `run` against its golden in `model_path/golden/img2img/`:
/// the start step and the timesteps that run, the image tensor, the VAE
/// sample, the noising, (SDXL) the size ids, the shortened loop and its
/// progress, and the decoded PNG.
fn check_run(
    m: &SdModel,
    g: &HashMap<String, Tensor>,
    sched_cfg: &SchedulerConfig,
    run: &Run,
    png: &Path,
) {
    let name = run.name;
    assert_eq!(scalar(g, "strength"), run.strength, "{name}");
    let mut sched = schedulers::build(run.kind, sched_cfg, run.steps, 0).unwrap();
    let start = schedulers::img2img_start(run.steps, run.strength).unwrap();
    assert_eq!(start as f64, scalar(g, "t_start"), "{name} t_start");
    let want: Vec<f32> = get(g, "timesteps").to_vec1().unwrap();
    let got: Vec<f32> = sched.timesteps()[start..]
        .iter()
        .map(|&t| t as f32)
        .collect();
    assert_eq!(got, want, "{name} timesteps");
    if m.is_xl() {
        let ids = pipeline::add_time_ids(64, 96, &dev()).unwrap();
        let golden_ids = get(g, "add_time_ids").narrow(0, 0, 1).unwrap();
        assert_close(&format!("{name} add_time_ids"), &ids, &golden_ids, 0.0);
    }

    let input = image::open(fixture_dir().join("golden/vae_encode_input.png"))
        .unwrap()
        .to_rgb8();
    let pixels = pipeline::image_to_tensor(&input, &dev()).unwrap();
    assert_close(&format!("{name} image"), &pixels, get(g, "image"), 1e-6);
    let clean = pipeline::encode_image(&m.vae, &pixels, get(g, "encode_eps")).unwrap();
    assert_close(
        &format!("{name} init_latents"),
        &clean,
        get(g, "init_latents"),
        // The encoder's f32 sums (≈1e-5 like the plain encode golden) scaled by the sample noise.
        3e-5,
    );
    let noisy = sched
        .add_noise(get(g, "init_latents"), get(g, "noise"), start)
        .unwrap();
    assert_close(
        &format!("{name} noisy_latents"),
        &noisy,
        get(g, "noisy_latents"),
        1e-6,
    );

    let cfg = pipeline::uses_cfg(run.guidance);
    let cond: Conditioning = pipeline::encode_prompt(m, PROMPT, run.negative, cfg).unwrap();
    let opts = DenoiseOptions {
        guidance: run.guidance,
        previews: false,
        image_size: (64, 96),
        preview_space: m.latent_space(),
        first_step: start,
    };
    let mut steps_seen = Vec::new();
    let out = pipeline::denoise(
        &m.unet,
        sched.as_mut(),
        get(g, "noisy_latents").clone(),
        &cond,
        opts,
        &mut |p| {
            if let pipeline::Progress::Step { step, total, .. } = p {
                steps_seen.push((step, total));
            }
        },
        &AtomicBool::new(false),
    )
    .unwrap();
    let kept = want.len();
    assert_eq!(
        steps_seen,
        (1..=kept).map(|s| (s, kept)).collect::<Vec<_>>(),
        "{name}: progress counts the steps that run"
    );
    assert_close(
        &format!("{name} latents_final"),
        &out,
        get(g, "latents_final"),
        1e-4,
    );
    let decoded =
        pipeline::decode_latents(&m.vae, get(g, "latents_final"), pipeline::DecodeMode::Full)
            .unwrap();
    crate::common::assert_png_close(
        &format!("img2img {name}"),
        &pipeline::to_rgb_images(&decoded).unwrap()[0],
        png,
    );
}

#[test]
fn img2img_stages_match_diffusers() {
    let m = SdModel::load(&fixture_dir(), &dev(), DType::F32).unwrap();
    // The DDIM golden used its own scheduler config (leading spacing).
    let ddim = SchedulerConfig::from_file(&fixture_dir().join("golden/scheduler_ddim_config.json"))
        .unwrap();
    for run in &SD_RUNS {
        let cfg = match run.kind {
            SchedulerKind::Ddim => &ddim,
            _ => &m.scheduler_config,
        };
        let g = golden(&format!("img2img/{}", run.name));
        let png = fixture_dir().join(format!("golden/img2img/{}.png", run.name));
        check_run(&m, &g, cfg, run, &png);
    }
}

/// SDXL image to image against diffusers' `StableDiffusionXLImg2ImgPipeline`
/// on the tiny SDXL model (goldens in `sdxl-tiny/golden/img2img/`): the same
/// stages through both text encoders, the size conditioning and SDXL's VAE.
#[test]
fn sdxl_img2img_stages_match_diffusers() {
    use crate::common::{xl_fixture_dir, xl_golden};
    let m = SdModel::load(&xl_fixture_dir(), &dev(), DType::F32).unwrap();
    for run in &XL_RUNS {
        let g = xl_golden(&format!("img2img/{}", run.name));
        let png = xl_fixture_dir().join(format!("golden/img2img/{}.png", run.name));
        check_run(&m, &g, &m.scheduler_config, run, &png);
    }
}

#[test]
fn img2img_through_the_one_call_api() {
    let tmp = tempfile::tempdir().unwrap();
    // A picture of another size and aspect: cropped around the centre and resized.
    let src = tmp.path().join("start.png");
    image::RgbaImage::from_fn(300, 120, |x, _| {
        image::Rgba([(x % 256) as u8, 80, 200, if x < 20 { 0 } else { 255 }])
    })
    .save(&src)
    .unwrap();
    let params = |strength: f64| TextToImageParams {
        prompt: PROMPT.into(),
        model_path: Some(fixture_dir()),
        steps: 4,
        guidance: 0.0,
        width: 96,
        height: 64,
        init_image: Some(src.clone()),
        strength,
        precision: pipeline::Precision::F32,
        ..TextToImageParams::for_model("sd-turbo")
    };
    let never = AtomicBool::new(false);
    for (strength, kept) in [(0.5, 2), (1.0, 4)] {
        let mut total = None;
        let images = text_to_image::run(
            &params(strength),
            test_pref(),
            &mut |p| {
                if let pipeline::Progress::Started { total: t } = p {
                    total = Some(t);
                }
            },
            &never,
        )
        .unwrap();
        assert_eq!(images[0].dimensions(), (96, 64));
        assert_eq!(total, Some(kept), "strength {strength}");
    }
    // The same seed and picture give the same image.
    let a = text_to_image::run(&params(0.5), test_pref(), &mut |_| {}, &never).unwrap();
    let b = text_to_image::run(&params(0.5), test_pref(), &mut |_| {}, &never).unwrap();
    assert_eq!(a[0], b[0]);
    let chunks = text_to_image::png_text_chunks(&params(0.5), 0);
    assert!(chunks.contains(&("strength".to_owned(), "0.5".to_owned())));
    assert!(chunks.contains(&("init_image".to_owned(), "start.png".to_owned())));

    // Bad strengths and a missing picture: refused before any model is read.
    for bad in [0.0, 1.5, f64::NAN, 0.2] {
        let e = params(bad).validate().unwrap_err();
        assert!(e.to_string().contains("strength"), "{bad}: {e}");
    }
    let missing = TextToImageParams {
        init_image: Some(tmp.path().join("nope.png")),
        ..params(0.5)
    };
    let e = text_to_image::run(&missing, test_pref(), &mut |_| {}, &never).unwrap_err();
    assert!(e.to_string().contains("nope.png"), "{e}");
}

#[test]
fn the_start_picture_is_cropped_to_the_output_aspect_over_white() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("wide.png");
    // Left third transparent, middle green, right third blue; 300x100.
    image::RgbaImage::from_fn(300, 100, |x, _| match x {
        0..100 => image::Rgba([0, 0, 0, 0]),
        100..200 => image::Rgba([0, 255, 0, 255]),
        _ => image::Rgba([0, 0, 255, 255]),
    })
    .save(&src)
    .unwrap();
    // A square output keeps the centre 100x100: all green.
    let square = text_to_image::load_init_image(&src, 64, 64).unwrap();
    assert_eq!(square.dimensions(), (64, 64));
    assert!(square.pixels().all(|p| p.0 == [0, 255, 0]), "centre crop");
    // The whole strip at its own aspect: white where it was transparent.
    let strip = text_to_image::load_init_image(&src, 96, 32).unwrap();
    assert_eq!(strip.get_pixel(2, 16).0, [255, 255, 255]);
    assert_eq!(strip.get_pixel(93, 16).0, [0, 0, 255]);
}
