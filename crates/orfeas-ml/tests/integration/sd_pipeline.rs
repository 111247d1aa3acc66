//! The one-call API end to end on the tiny model: PNGs from stored noise,
//! batch/seed behaviour, progress, cancellation, PNG metadata, tiled decode.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{DType, Device, Tensor};
use orfeas_ml::sd::pipeline::{self, Precision, Progress, SdModel};
use orfeas_ml::sd::schedulers::{SchedulerConfig, SchedulerKind};
use orfeas_ml::text_to_image::{self, TextToImageParams};

use crate::common::{dev, fixture_dir, get, golden, test_pref};

const PROMPT: &str = "a red ceramic teapot, studio lighting";

fn params(steps: usize, guidance: f64) -> TextToImageParams {
    TextToImageParams {
        prompt: PROMPT.into(),
        negative: String::new(),
        model_path: Some(fixture_dir()),
        steps,
        guidance,
        width: 96,
        height: 64,
        // Parity needs f32 on GPUs too.
        precision: Precision::F32,
        ..TextToImageParams::for_model("sd-turbo")
    }
}

/// Stores a golden run's `noise` as an init-latents file, as the CLI's --init-latents takes it.
fn noise_file(run: &str, dir: &std::path::Path) -> std::path::PathBuf {
    let g = golden(run);
    let path = dir.join(format!("{run}-noise.safetensors"));
    let map = std::collections::HashMap::from([("latents".to_owned(), get(&g, "noise").clone())]);
    candle_core::safetensors::save(&map, &path).unwrap();
    path
}

fn assert_png_matches(label: &str, img: &image::RgbImage, golden_png: &str) {
    crate::common::assert_png_close(label, img, &fixture_dir().join("golden").join(golden_png));
}

#[test]
fn euler_pngs_from_stored_noise_match_diffusers() {
    let tmp = tempfile::tempdir().unwrap();
    let never = AtomicBool::new(false);
    for (run, steps, guidance) in [("euler_2step_cfg", 2, 7.5), ("euler_1step_nocfg", 1, 0.0)] {
        let p = TextToImageParams {
            init_latents: Some(noise_file(run, tmp.path())),
            ..params(steps, guidance)
        };
        let images = text_to_image::run(&p, test_pref(), &mut |_| {}, &never).unwrap();
        assert_eq!(images.len(), 1);
        assert_png_matches(run, &images[0], &format!("{run}.png"));
    }
}

#[test]
fn ddim_png_from_stored_noise_matches_diffusers() {
    // The DDIM golden used its own scheduler config (leading spacing), so swap it in.
    let mut model = SdModel::load(&fixture_dir(), &dev(), DType::F32).unwrap();
    model.scheduler_config =
        SchedulerConfig::from_file(&fixture_dir().join("golden/scheduler_ddim_config.json"))
            .unwrap();
    let g = golden("ddim_2step_cfg");
    let req = crate::common::stored_noise_request(PROMPT, 2, 7.5, None, get(&g, "noise"));
    let images = pipeline::generate(&model, &req, &mut |_| {}, &AtomicBool::new(false)).unwrap();
    assert_png_matches("ddim_2step_cfg", &images[0], "ddim_2step_cfg.png");
}

#[test]
fn seeds_are_reproducible_and_batch_items_follow_seed_plus_index() {
    let never = AtomicBool::new(false);
    let one = |seed: u64, batch: usize| {
        let p = TextToImageParams {
            seed,
            batch,
            ..params(1, 0.0)
        };
        text_to_image::run(&p, test_pref(), &mut |_| {}, &never).unwrap()
    };
    let a = one(7, 1);
    let b = one(7, 1);
    assert_eq!(a[0], b[0], "same seed, same picture");
    let batch = one(7, 2);
    assert_eq!(batch.len(), 2);
    assert_eq!(batch[0], a[0], "batch item 0 uses the seed itself");
    let next = one(8, 1);
    // The noise is identical; batched convolutions round differently from single
    // ones, which the random tiny model amplifies to +-1 on some pixel values.
    let dev = candle_core::Device::Cpu;
    let batch_noise = orfeas_ml::sd::noise::initial_noise(7, 2, (4, 8, 12), &dev).unwrap();
    let alone = orfeas_ml::sd::noise::initial_noise(8, 1, (4, 8, 12), &dev).unwrap();
    let noise_diff = (batch_noise.get(1).unwrap() - alone.get(0).unwrap())
        .unwrap()
        .abs()
        .unwrap();
    assert_eq!(
        noise_diff.max_all().unwrap().to_scalar::<f32>().unwrap(),
        0.0
    );
    let (differ, max) = crate::common::pixel_diff(&batch[1], &next[0]);
    eprintln!("batch item 1 vs seed+1 alone: {differ} values differ, max {max}");
    assert!(max <= 1, "batch item 1 uses seed + 1");
    assert_ne!(batch[0], batch[1]);
}

#[test]
fn progress_reports_every_step_with_a_preview_and_cancel_stops_between_steps() {
    let mut events = Vec::new();
    let never = AtomicBool::new(false);
    let p = TextToImageParams {
        scheduler: Some(SchedulerKind::EulerAncestral),
        ..params(3, 2.0)
    };
    text_to_image::run(&p, test_pref(), &mut |e| events.push(e), &never).unwrap();
    let steps: Vec<(usize, usize, (u32, u32))> = events
        .iter()
        .filter_map(|e| match e {
            Progress::Step {
                step,
                total,
                preview,
            } => Some((*step, *total, preview.as_ref().unwrap().dimensions())),
            _ => None,
        })
        .collect();
    assert_eq!(
        steps,
        vec![(1, 3, (12, 8)), (2, 3, (12, 8)), (3, 3, (12, 8))]
    );
    assert!(matches!(events.last(), Some(Progress::Decoding)));

    let cancel = AtomicBool::new(false);
    let mut seen = 0;
    let res = text_to_image::run(
        &params(4, 0.0),
        test_pref(),
        &mut |e| {
            if matches!(e, Progress::Step { .. }) {
                seen += 1;
                cancel.store(true, Ordering::Relaxed);
            }
        },
        &cancel,
    );
    assert!(matches!(res, Err(orfeas_ml::SdError::Cancelled)), "{res:?}");
    assert_eq!(seen, 1, "no step runs after cancel");
}

#[test]
fn every_scheduler_produces_an_image() {
    let never = AtomicBool::new(false);
    let mut outputs = Vec::new();
    for kind in SchedulerKind::ALL {
        let p = TextToImageParams {
            scheduler: Some(kind),
            ..params(3, 3.0)
        };
        let img = text_to_image::run(&p, test_pref(), &mut |_| {}, &never).unwrap();
        assert_eq!(img[0].dimensions(), (96, 64));
        outputs.push(img[0].clone());
    }
    assert_ne!(
        outputs[0], outputs[1],
        "euler vs euler-a differ (ancestral noise)"
    );
}

#[test]
fn png_carries_the_parameters_in_text_chunks() {
    let tmp = tempfile::tempdir().unwrap();
    let p = TextToImageParams {
        prompt: "ein Würfel aus Glas, 立方体".into(),
        seed: 41,
        ..params(1, 0.0)
    };
    let img = image::RgbImage::from_pixel(96, 64, image::Rgb([10, 20, 30]));
    let out = tmp.path().join("out.png");
    text_to_image::write_png_with_params(&img, &p, 1, &out).unwrap();
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&out).unwrap()));
    let reader = decoder.read_info().unwrap();
    let info = reader.info();
    let mut texts: std::collections::HashMap<String, String> = info
        .uncompressed_latin1_text
        .iter()
        .map(|t| (t.keyword.clone(), t.text.clone()))
        .collect();
    for t in &info.utf8_text {
        texts.insert(t.keyword.clone(), t.get_text().unwrap());
    }
    assert_eq!(
        texts.get("prompt").map(String::as_str),
        Some("ein Würfel aus Glas, 立方体")
    );
    assert_eq!(
        texts.get("seed").map(String::as_str),
        Some("42"),
        "image 1 of the batch used seed + 1"
    );
    assert_eq!(texts.get("steps").map(String::as_str), Some("1"));
    assert_eq!(texts.get("size").map(String::as_str), Some("96x64"));
    assert!(texts.get("parameters").unwrap().contains("Seed: 42"));
    let back = image::open(&out).unwrap().to_rgb8();
    assert_eq!(back, img);
}

#[test]
fn tiled_decode_matches_full_decode_closely() {
    let vae = crate::sd_parity::vae();
    let g = golden("euler_2step_cfg");
    let latents = get(&g, "vae_decode_in");
    let full = vae.decode(latents).unwrap();
    // A tile as large as the latent is the plain decode.
    let same = vae.decode_tiled(latents, 16, 4).unwrap();
    assert_eq!(
        (same - &full)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap(),
        0.0
    );
    let tiled = vae.decode_tiled(latents, 8, 4).unwrap();
    assert_eq!(tiled.dims(), full.dims());
    let mean_diff = (tiled - &full)
        .unwrap()
        .abs()
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let mean_val = full
        .abs()
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    eprintln!("tiled decode: mean |diff| {mean_diff:.4} vs mean |value| {mean_val:.4}");
    assert!(
        mean_diff < 0.25 * mean_val,
        "tiles blend into a similar picture"
    );
}

#[test]
fn latent_preview_has_one_pixel_per_latent_cell() {
    let lat = Tensor::zeros((2, 4, 8, 12), DType::F32, &Device::Cpu).unwrap();
    let img = pipeline::latent_preview(&lat, pipeline::LatentSpace::Sd).unwrap();
    assert_eq!(img.dimensions(), (12, 8));
    // Zero latents map to mid grey.
    assert!(
        img.pixels()
            .all(|p| p.0.iter().all(|&c| (127..=128).contains(&c)))
    );
}

/// The typed request in the fixture's terms: the one a front end would build.
fn request(steps: u32) -> orfeas_core::request::TextToImageRequest {
    orfeas_core::request::TextToImageRequest {
        model_path: Some(fixture_dir()),
        steps: Some(steps),
        guidance: Some(0.0),
        width: Some(96),
        height: Some(64),
        precision: Precision::F32,
        device: "cpu".into(),
        ..orfeas_core::request::TextToImageRequest::new(PROMPT)
    }
}

#[test]
fn job_requests_round_trip_through_json_and_name_batch_outputs() {
    use orfeas_core::jobs::{JobKind, JobRequest, JobSpec};
    use orfeas_core::request::TextToImageJob;
    let job = TextToImageJob {
        request: orfeas_core::request::TextToImageRequest {
            batch: 3,
            scheduler: Some(SchedulerKind::DpmSolverPp2m),
            style: "anime".into(),
            ..request(4)
        },
        output: "/tmp/out/cat.png".into(),
    };
    let spec = JobSpec::from(job.clone());
    assert_eq!(spec.kind(), JobKind::TextToImage);
    let stored = spec.request.params_json();
    assert_eq!(stored["request"]["scheduler"], "dpm++2m");
    let back = JobRequest::from_params_json(JobKind::TextToImage, &stored).unwrap();
    assert_eq!(back, JobRequest::TextToImage(job.clone()));
    assert_eq!(
        job.output_for(2),
        std::path::PathBuf::from("/tmp/out/cat-2.png")
    );
    // A field the request does not know is refused, not dropped.
    let mut unknown = stored.clone();
    unknown["request"]["negative"] = "blurry".into();
    assert!(JobRequest::from_params_json(JobKind::TextToImage, &unknown).is_err());
}

#[test]
fn a_request_takes_the_chosen_models_defaults_for_what_it_leaves_open() {
    use orfeas_core::request::{Decoder, TextToImageRequest};
    let registry = |model: &str| {
        TextToImageParams::from_request(&TextToImageRequest {
            model: model.into(),
            ..TextToImageRequest::new("a cat")
        })
        .unwrap()
    };
    // The registry's recommended settings (SD-Turbo: 1 step without CFG;
    // SD 1.5: 25 steps at 7.5; SD 2.1: 768², its training size), not SD-Turbo's for all.
    let turbo = registry("sd-turbo");
    assert_eq!((turbo.steps, turbo.guidance, turbo.width), (1, 0.0, 512));
    let sd15 = registry("sd-1.5");
    assert_eq!((sd15.steps, sd15.guidance, sd15.width), (25, 7.5, 512));
    assert_eq!(registry("sd-2.1").width, 768);
    // What the request sets wins; the decoder choice and the style are kept.
    let p = TextToImageParams::from_request(&TextToImageRequest {
        model: "sd-1.5".into(),
        steps: Some(8),
        height: Some(768),
        negative_prompt: "blurry".into(),
        style: "anime".into(),
        decoder: Decoder::VaeTiled,
        ..TextToImageRequest::new("a cat")
    })
    .unwrap();
    assert_eq!((p.steps, p.guidance, p.width, p.height), (8, 7.5, 512, 768));
    assert_eq!(p.negative, "blurry");
    assert!(p.tiled_decode && !p.uses_tiny_decoder());
    assert_eq!(p.prompt, "a cat", "the prompt is kept as typed");
    assert_eq!(
        p.styled_prompt().unwrap(),
        "a cat, anime style, cel shading, clean line art"
    );
    // Limits are the request's, with the field named.
    let e = TextToImageParams::from_request(&TextToImageRequest {
        steps: Some(151),
        ..TextToImageRequest::new("a cat")
    })
    .unwrap_err();
    assert!(e.to_string().contains("steps"), "{e}");
}

/// A PNG made by the runner carries its request: reading it back gives the
/// same request, and running that gives the same picture, bit for bit.
#[test]
fn a_generated_png_recreates_itself_from_its_text_chunks() {
    use orfeas_core::jobs::{Engine, EngineConfig, JobSpec, JobState};
    use orfeas_core::request::{TextToImageJob, text_to_image_from_png};
    let tmp = tempfile::tempdir().unwrap();
    let engine = Engine::new(EngineConfig::default(), None).unwrap();
    orfeas_ml::register_runners(&engine, orfeas_ml::models::SearchRoots::default(), None);
    let first = TextToImageJob {
        request: orfeas_core::request::TextToImageRequest {
            negative_prompt: "blurry, dark".into(),
            style: "3d-model".into(),
            seed: 1234,
            scheduler: Some(SchedulerKind::EulerAncestral),
            ..request(2)
        },
        output: tmp.path().join("first.png"),
    };
    let run = |job: TextToImageJob| {
        let id = engine.submit(JobSpec::from(job.clone())).unwrap();
        let done = engine
            .wait(id, std::time::Duration::from_secs(300))
            .unwrap();
        assert_eq!(done.state, JobState::Succeeded, "{:?}", done.failure);
        image::open(&job.output).unwrap().to_rgb8()
    };
    let a = run(first.clone());
    let info = text_to_image_from_png(&first.output).unwrap();
    // The PNG names the model folder; the front end maps it back to the path.
    assert_eq!(
        info.model_name.as_deref(),
        fixture_dir().file_name().and_then(|n| n.to_str())
    );
    // A model chosen by path: the front end puts the path back (the PNG's
    // model name is the folder's, which no registry knows).
    assert!(orfeas_ml::models::known(&info.request.model).is_err());
    let mut again = info.request.clone();
    again.model = first.request.model.clone();
    again.model_path = Some(fixture_dir());
    again.precision = Precision::F32;
    again.device = "cpu".into();
    assert_eq!(again, first.request, "every field comes back");
    let b = run(TextToImageJob {
        request: again,
        output: tmp.path().join("again.png"),
    });
    assert!(a == b, "the re-created picture is the same, bit for bit");
}

#[test]
fn style_presets_add_their_words_and_unknown_styles_are_refused() {
    use text_to_image::StylePreset;
    let anime = StylePreset::by_key("Anime").unwrap();
    assert_eq!(
        anime.apply_prompt("a fox in snow"),
        "a fox in snow, anime style, cel shading, clean line art"
    );
    assert_eq!(anime.apply_negative(""), "photo, photograph, realistic");
    assert_eq!(
        anime.apply_negative("text"),
        "text, photo, photograph, realistic"
    );
    let none = StylePreset::by_key("none").unwrap();
    assert_eq!(none.apply_prompt("  a fox "), "a fox");
    // Every preset key is a `style` label value of the metrics contract.
    for s in &text_to_image::STYLE_PRESETS {
        assert!(
            orfeas_core::telemetry::metrics::STYLES.contains(&s.key),
            "{} is not a metrics style",
            s.key
        );
    }
    let err = StylePreset::by_key("watercolour").unwrap_err().to_string();
    assert!(
        err.contains("watercolour") && err.contains("pixel-art"),
        "{err}"
    );
}

/// The job runner as the GUI and the API use it: previews reach the sink once
/// per step, the PNG is written, the image gets a quality score and the style
/// lands in the summary the metrics read.
#[test]
fn runner_reports_step_previews_quality_and_style() {
    use orfeas_core::jobs::{Engine, EngineConfig, JobKind, JobState};
    let tmp = tempfile::tempdir().unwrap();
    let steps = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let seen = steps.clone();
    let runner = text_to_image::TextToImageRunner::with_previews(Arc::new(
        move |_id, step, total, img: &image::RgbImage| {
            assert_eq!(img.dimensions(), (96 / 8, 64 / 8), "a latent-sized preview");
            seen.lock().push((step, total));
        },
    ));
    let engine = Engine::new(EngineConfig::default(), None).unwrap();
    engine.register(JobKind::TextToImage, Arc::new(runner));
    let job = orfeas_core::request::TextToImageJob {
        request: orfeas_core::request::TextToImageRequest {
            style: "3d-model".into(),
            ..request(3)
        },
        output: tmp.path().join("teapot.png"),
    };
    let id = engine
        .submit(orfeas_core::jobs::JobSpec::from(job))
        .unwrap();
    let done = engine
        .wait(id, std::time::Duration::from_secs(300))
        .expect("the job finishes");
    assert_eq!(done.state, JobState::Succeeded, "{:?}", done.failure);
    assert_eq!(*steps.lock(), vec![(1, 3), (2, 3), (3, 3)]);
    let out = done.output.unwrap();
    assert_eq!(out.files, vec![tmp.path().join("teapot.png")]);
    assert!(out.files[0].is_file());
    let q = out.quality.expect("images get a quality score");
    let png = image::open(&out.files[0]).unwrap().to_rgb8();
    assert!(
        (q - orfeas_core::quality::score_image(&png).score).abs() < 1e-6,
        "the score is the written image's"
    );
    assert_eq!(out.summary["style"], "3d-model");
}

/// The tiny decoder replaces the VAE end to end: the image from stored noise
/// is TAESD's decode of the golden final latents (checked against diffusers
/// in sd_taesd), and the PNG records which decoder made it.
#[test]
fn tiny_decoder_replaces_the_vae_decode() {
    let taesd_dir = crate::common::fixture_root().join("taesd-tiny");
    let tmp = tempfile::tempdir().unwrap();
    let run = "euler_1step_nocfg";
    let p = TextToImageParams {
        init_latents: Some(noise_file(run, tmp.path())),
        tiny_decoder_dir: Some(taesd_dir.clone()),
        ..params(1, 0.0)
    };
    assert!(p.uses_tiny_decoder());
    let never = AtomicBool::new(false);
    let images = text_to_image::run(&p, test_pref(), &mut |_| {}, &never).unwrap();
    let tiny = orfeas_ml::sd::taesd::TinyDecoder::load_dir(&taesd_dir, &dev(), DType::F32).unwrap();
    let g = golden(run);
    let want =
        &pipeline::to_rgb_images(&tiny.decode(get(&g, "latents_final")).unwrap()).unwrap()[0];
    let (_, max) = crate::common::pixel_diff(&images[0], want);
    assert!(max <= 1, "max channel difference {max}");
    // ...and it is not the VAE's picture.
    let vae_png = image::open(fixture_dir().join(format!("golden/{run}.png")))
        .unwrap()
        .to_rgb8();
    let (differ, _) = crate::common::pixel_diff(&images[0], &vae_png);
    assert!(differ > 1000, "{differ}");
    let chunks = text_to_image::png_text_chunks(&p, 0);
    assert!(chunks.contains(&("decoder".to_owned(), "taesd".to_owned())));
}

#[test]
fn tiny_decoder_errors_say_what_to_do() {
    // Tiled decoding and the tiny decoder exclude each other.
    let both = TextToImageParams {
        tiled_decode: true,
        tiny_decoder: true,
        ..params(1, 0.0)
    };
    let e = both.validate().unwrap_err();
    assert!(e.to_string().contains("pick one"), "{e}");
    // A tiny decoder is not an image model.
    let wrong = TextToImageParams {
        model: "taesd".into(),
        model_path: None,
        ..params(1, 0.0)
    };
    let e = wrong.validate().unwrap_err();
    assert!(e.to_string().contains("not an image model"), "{e}");
    // A folder that is not a TAESD: named, nothing generated.
    let tmp = tempfile::tempdir().unwrap();
    let p = TextToImageParams {
        tiny_decoder_dir: Some(tmp.path().to_path_buf()),
        ..params(1, 0.0)
    };
    let e = text_to_image::run(&p, test_pref(), &mut |_| {}, &AtomicBool::new(false)).unwrap_err();
    assert!(e.to_string().contains("config.json"), "{e}");
    // The registry names the download command when TAESD is not installed.
    let roots = orfeas_ml::models::SearchRoots {
        orfeas_models: Some(tmp.path().to_path_buf()),
        data_models: None,
        hf_cache: None,
    };
    let e = roots.resolve("taesd").unwrap_err();
    assert!(
        e.to_string().contains("orfeas models download taesd"),
        "{e}"
    );
}

/// A request built by the API's conversion runs through the real runner, and
/// its negative prompt, seed and scheduler are in the PNG it writes.
#[test]
fn an_api_request_runs_through_the_real_runner_with_its_fields_in_the_png() {
    use orfeas_core::jobs::{Engine, EngineConfig, JobSpec, JobState};
    use orfeas_core::request::TextToImageJob;
    let tmp = tempfile::tempdir().unwrap();
    // The registry name resolves to the fixture, as an installed model would.
    let models = tmp.path().join("models");
    orfeas_ml::fixture::complete_model_dir(&fixture_dir(), &models.join("sd-turbo")).unwrap();
    let engine = Engine::new(EngineConfig::default(), None).unwrap();
    orfeas_ml::register_runners(
        &engine,
        orfeas_ml::models::SearchRoots {
            orfeas_models: Some(models),
            ..Default::default()
        },
        None,
    );
    let body = serde_json::json!({
        "prompt": PROMPT,
        "negative_prompt": "cracked, dusty",
        "model": "sd-turbo",
        "steps": 2,
        "guidance": 0.0,
        "width": 64,
        "height": 64,
        "seed": 31337,
        "scheduler": "euler-a",
    });
    let request =
        orfeas_core::http::validate::text_to_image(body.to_string().as_bytes(), || 0).unwrap();
    let out = tmp.path().join("api.png");
    let id = engine
        .submit(JobSpec::from(TextToImageJob {
            request,
            output: out.clone(),
        }))
        .unwrap();
    let done = engine
        .wait(id, std::time::Duration::from_secs(300))
        .unwrap();
    assert_eq!(done.state, JobState::Succeeded, "{:?}", done.failure);
    let chunks = orfeas_core::request::read_png_text(&out).unwrap();
    let get = |k: &str| {
        chunks
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(get("negative_prompt"), Some("cracked, dusty"));
    assert_eq!(get("seed"), Some("31337"));
    assert_eq!(get("scheduler"), Some("euler-a"));
    assert_eq!(get("model"), Some("sd-turbo"));
    // A model that is not installed is refused when submitted, with what to do.
    let missing = orfeas_core::request::TextToImageRequest {
        model: "sd-1.5".into(),
        ..orfeas_core::request::TextToImageRequest::new("a cat")
    };
    let e = engine
        .submit(JobSpec::from(TextToImageJob {
            request: missing,
            output: tmp.path().join("never.png"),
        }))
        .unwrap_err();
    assert!(e.to_string().contains("sd-1.5"), "{e}");
    assert!(!tmp.path().join("never.png").exists());
}
