//! SDXL parity with the diffusers goldens of the tiny SDXL model (fixture
//! `sdxl-tiny`): both tokenizers, both text encoders (penultimate states,
//! pooled projection), the zero unconditional embedding, the size ids, the UNet
//! with added conditioning, each scheduler run and the final PNGs.

use std::sync::atomic::AtomicBool;

use candle_core::{DType, Tensor};
use orfeas_ml::sd::pipeline::{self, Conditioning, DenoiseOptions, LatentSpace, SdModel};
use orfeas_ml::sd::schedulers::{self, SchedulerKind};
use orfeas_ml::sd::unet::AddedCond;
use orfeas_ml::text_to_image::{self, TextToImageParams};

use crate::common::{
    assert_close, dev, get, max_abs, scalar, test_pref, xl_fixture_dir, xl_golden,
};

const PROMPT: &str = "a red ceramic teapot, studio lighting";
const NEGATIVE: &str = "blurry, low quality";
const TOL_TEXT: f32 = 1e-5;
const TOL_UNET: f32 = 1e-5;
const TOL_LATENTS: f32 = 1e-4;
const TOL_VAE: f32 = 1e-5;

fn model() -> SdModel {
    SdModel::load(&xl_fixture_dir(), &dev(), DType::F32).unwrap()
}

fn ids(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::I64)
        .unwrap()
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|v| v as u32)
        .collect()
}

#[test]
fn the_folder_is_recognised_as_sdxl() {
    assert!(SdModel::dir_is_xl(&xl_fixture_dir()).unwrap());
    assert!(!SdModel::dir_is_xl(&crate::common::fixture_dir()).unwrap());
    let m = model();
    assert!(m.is_xl());
    assert!(m.force_zeros_for_empty_prompt);
}

#[test]
fn both_tokenizers_match_diffusers_and_pad_differently() {
    let g = xl_golden("text_encoders");
    let m = model();
    let second = m.second.as_ref().unwrap();
    let first_ids = m.tokenizer.encode(PROMPT).unwrap();
    let second_ids = second.tokenizer.encode(PROMPT).unwrap();
    assert_eq!(first_ids, ids(get(&g, "prompt_ids_1")));
    assert_eq!(second_ids, ids(get(&g, "prompt_ids_2")));
    // CLIP-L pads with the end token, OpenCLIP-bigG with "!" (id 0).
    assert_eq!(first_ids.last(), Some(&49407));
    assert_eq!(second_ids.last(), Some(&0));
}

#[test]
fn text_encoders_match_golden_hidden_states_and_pooled_output() {
    let g = xl_golden("text_encoders");
    let m = model();
    let second = m.second.as_ref().unwrap();
    let as_ids = |key: &str| get(&g, key).to_dtype(DType::U32).unwrap();
    let a = m.text_encoder.encode(&as_ids("prompt_ids_1")).unwrap();
    let b = second.text_encoder.encode(&as_ids("prompt_ids_2")).unwrap();
    assert_close(
        "te1 penultimate",
        &a.penultimate,
        get(&g, "prompt_te1_penultimate"),
        TOL_TEXT,
    );
    assert_close(
        "te1 last hidden",
        &a.last_hidden,
        get(&g, "prompt_te1_last_hidden"),
        TOL_TEXT,
    );
    assert_close(
        "te2 penultimate",
        &b.penultimate,
        get(&g, "prompt_te2_penultimate"),
        TOL_TEXT,
    );
    assert_close(
        "te2 last hidden",
        &b.last_hidden,
        get(&g, "prompt_te2_last_hidden"),
        TOL_TEXT,
    );
    assert!(a.pooled.is_none(), "the first encoder has no projection");
    assert_close(
        "te2 pooled",
        b.pooled.as_ref().unwrap(),
        get(&g, "pooled_prompt_embeds"),
        TOL_TEXT,
    );
}

#[test]
fn encode_prompt_matches_the_pipeline_with_a_negative_prompt() {
    let g = xl_golden("text_encoders");
    let m = model();
    let cond = pipeline::encode_prompt(&m, PROMPT, NEGATIVE, true).unwrap();
    let want_ctx = Tensor::cat(
        &[get(&g, "negative_prompt_embeds"), get(&g, "prompt_embeds")],
        0,
    )
    .unwrap();
    let want_pooled = Tensor::cat(
        &[
            get(&g, "negative_pooled_prompt_embeds"),
            get(&g, "pooled_prompt_embeds"),
        ],
        0,
    )
    .unwrap();
    assert_close("context [neg, pos]", &cond.context, &want_ctx, TOL_TEXT);
    assert_close(
        "pooled [neg, pos]",
        cond.pooled.as_ref().unwrap(),
        &want_pooled,
        TOL_TEXT,
    );
    // Without CFG only the prompt's half.
    let plain = pipeline::encode_prompt(&m, PROMPT, NEGATIVE, false).unwrap();
    assert_eq!(plain.context.dims(), &[1, 77, 40]);
    assert_close(
        "context (no CFG)",
        &plain.context,
        get(&g, "prompt_embeds"),
        TOL_TEXT,
    );
}

#[test]
fn an_empty_negative_prompt_gives_zero_unconditional_embeddings() {
    let g = xl_golden("text_encoders");
    let m = model();
    let cond = pipeline::encode_prompt(&m, PROMPT, "  ", true).unwrap();
    let uncond = cond.context.narrow(0, 0, 1).unwrap();
    let uncond_pooled = cond.pooled.as_ref().unwrap().narrow(0, 0, 1).unwrap();
    let golden_zero = get(&g, "negative_zero_prompt_embeds");
    assert_eq!(uncond.dims(), golden_zero.dims());
    assert_eq!(max_abs(golden_zero), 0.0, "diffusers' uncond is zeros");
    assert_eq!(max_abs(&uncond), 0.0);
    assert_eq!(max_abs(&uncond_pooled), 0.0);
    // A model that does not ask for zeros encodes the empty text instead.
    let mut m = m;
    m.force_zeros_for_empty_prompt = false;
    let cond = pipeline::encode_prompt(&m, PROMPT, "", true).unwrap();
    assert!(max_abs(&cond.context.narrow(0, 0, 1).unwrap()) > 0.0);
}

#[test]
fn add_time_ids_match_the_pipeline() {
    let g = xl_golden("text_encoders");
    let got = pipeline::add_time_ids(64, 96, &dev()).unwrap();
    assert_close("add_time_ids", &got, get(&g, "add_time_ids"), 0.0);
}

#[test]
fn unet_with_added_conditioning_matches_golden() {
    let g = xl_golden("unet");
    let m = model();
    let added = AddedCond {
        text_embeds: get(&g, "text_embeds"),
        time_ids: get(&g, "time_ids"),
    };
    for t in [999u32, 499] {
        let out = m
            .unet
            .forward(
                get(&g, "sample"),
                f64::from(t),
                get(&g, "encoder_hidden_states"),
                Some(&added),
            )
            .unwrap();
        assert_close(
            &format!("xl unet t={t}"),
            &out,
            get(&g, &format!("out_t{t}")),
            TOL_UNET,
        );
    }
    // Without the added conditioning this UNet refuses rather than guessing.
    assert!(
        m.unet
            .forward(
                get(&g, "sample"),
                999.0,
                get(&g, "encoder_hidden_states"),
                None
            )
            .is_err()
    );
}

/// (run, scheduler, steps, guidance, negative prompt)
const RUNS: [(&str, SchedulerKind, f64, &str); 3] = [
    ("euler_2step_cfg", SchedulerKind::Euler, 5.0, NEGATIVE),
    (
        "euler_a_1step_nocfg",
        SchedulerKind::EulerAncestral,
        0.0,
        "",
    ),
    ("euler_2step_zero_uncond", SchedulerKind::Euler, 5.0, ""),
];

#[test]
fn denoising_runs_match_golden_latents_and_decode() {
    let m = model();
    let never = AtomicBool::new(false);
    for (run, kind, guidance, negative) in RUNS {
        let g = xl_golden(run);
        assert_eq!(scalar(&g, "guidance_scale"), guidance, "{run}");
        let steps = get(&g, "timesteps").dims1().unwrap();
        let mut sched = schedulers::build(kind, &m.scheduler_config, steps, 7).unwrap();
        let want_ts: Vec<f32> = get(&g, "timesteps").to_vec1().unwrap();
        let got_ts: Vec<f32> = sched.timesteps().iter().map(|&t| t as f32).collect();
        assert_eq!(got_ts, want_ts, "{run} timesteps");
        let latents = (get(&g, "noise") * sched.init_noise_sigma()).unwrap();
        assert_close(
            &format!("{run} latents_init"),
            &latents,
            get(&g, "latents_init"),
            1e-6,
        );
        let cond: Conditioning =
            pipeline::encode_prompt(&m, PROMPT, negative, pipeline::uses_cfg(guidance)).unwrap();
        let opts = DenoiseOptions {
            guidance,
            previews: true,
            image_size: (64, 96),
            preview_space: LatentSpace::Sdxl,
            first_step: 0,
        };
        let mut previews = 0;
        let out = pipeline::denoise(
            &m.unet,
            sched.as_mut(),
            latents,
            &cond,
            opts,
            &mut |p| {
                if let pipeline::Progress::Step {
                    preview: Some(img), ..
                } = p
                {
                    assert_eq!(img.dimensions(), (12, 8));
                    previews += 1;
                }
            },
            &never,
        )
        .unwrap();
        assert_eq!(previews, steps, "{run}: one preview per step");
        assert_close(
            &format!("{run} latents_final"),
            &out,
            get(&g, "latents_final"),
            TOL_LATENTS,
        );
        let decoded =
            pipeline::decode_latents(&m.vae, get(&g, "latents_final"), pipeline::DecodeMode::Full)
                .unwrap();
        assert_close(
            &format!("{run} vae_decode_out"),
            &decoded,
            get(&g, "vae_decode_out"),
            TOL_VAE,
        );
    }
}

#[test]
fn pngs_from_stored_noise_match_diffusers() {
    let tmp = tempfile::tempdir().unwrap();
    let never = AtomicBool::new(false);
    for (run, kind, guidance, negative) in RUNS {
        let g = xl_golden(run);
        let noise = tmp.path().join(format!("{run}.safetensors"));
        candle_core::safetensors::save(
            &std::collections::HashMap::from([("latents".to_owned(), get(&g, "noise").clone())]),
            &noise,
        )
        .unwrap();
        let params = TextToImageParams {
            prompt: PROMPT.into(),
            negative: negative.into(),
            model_path: Some(xl_fixture_dir()),
            steps: get(&g, "timesteps").dims1().unwrap(),
            guidance,
            width: 96,
            height: 64,
            scheduler: Some(kind),
            init_latents: Some(noise),
            precision: pipeline::Precision::F32,
            ..TextToImageParams::for_model("sdxl-turbo")
        };
        let images = text_to_image::run(&params, test_pref(), &mut |_| {}, &never).unwrap();
        crate::common::assert_png_close(
            &format!("xl {run}.png"),
            &images[0],
            &xl_fixture_dir().join("golden").join(format!("{run}.png")),
        );
    }
}

#[test]
fn sdxl_turbo_is_accepted_by_the_registry_defaults() {
    let p = TextToImageParams {
        prompt: PROMPT.into(),
        ..TextToImageParams::for_model("sdxl-turbo")
    };
    p.validate().unwrap();
    assert_eq!((p.steps, p.guidance, p.width), (1, 0.0, 512));
}
