//! Bad input: each a clear error, and nothing written.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use orfeas_ml::SdError;
use orfeas_ml::sd::pipeline::DevicePref;
use orfeas_ml::text_to_image::{self, TextToImageParams};

use crate::common::fixture_dir;

fn base() -> TextToImageParams {
    TextToImageParams {
        prompt: "a teapot".into(),
        model_path: Some(fixture_dir()),
        steps: 1,
        guidance: 0.0,
        width: 96,
        height: 64,
        ..TextToImageParams::default()
    }
}

fn run_err(p: &TextToImageParams) -> SdError {
    match text_to_image::run(p, DevicePref::Cpu, &mut |_| {}, &AtomicBool::new(false)) {
        Ok(_) => panic!("expected an error for {p:?}"),
        Err(e) => e,
    }
}

fn field_of(e: &SdError) -> &'static str {
    match e {
        SdError::InvalidParams { field, .. } => field,
        other => panic!("expected InvalidParams, got {other:?}"),
    }
}

#[test]
fn empty_prompt_is_rejected_with_a_hint() {
    let e = run_err(&TextToImageParams {
        prompt: "  \n".into(),
        ..base()
    });
    assert_eq!(field_of(&e), "prompt");
    assert!(e.to_string().contains("describe"), "{e}");
}

#[test]
fn absurd_sizes_steps_guidance_and_batch_are_rejected() {
    let cases: Vec<(TextToImageParams, &str)> = vec![
        (
            TextToImageParams {
                width: 100,
                ..base()
            },
            "width",
        ),
        (
            TextToImageParams {
                height: 0,
                ..base()
            },
            "height",
        ),
        (
            TextToImageParams {
                width: 100_000,
                ..base()
            },
            "width",
        ),
        (TextToImageParams { steps: 0, ..base() }, "steps"),
        (
            TextToImageParams {
                steps: 10_000,
                ..base()
            },
            "steps",
        ),
        (
            TextToImageParams {
                guidance: f64::NAN,
                ..base()
            },
            "guidance",
        ),
        (
            TextToImageParams {
                guidance: -1.0,
                ..base()
            },
            "guidance",
        ),
        (TextToImageParams { batch: 0, ..base() }, "batch"),
        (
            TextToImageParams {
                batch: 1000,
                ..base()
            },
            "batch",
        ),
    ];
    for (p, field) in cases {
        let e = run_err(&p);
        assert_eq!(field_of(&e), field, "{e}");
        assert!(
            e.to_string().contains("must be"),
            "message says the rule: {e}"
        );
    }
}

#[test]
fn unknown_model_lists_the_known_ones() {
    let e = run_err(&TextToImageParams {
        model: "sd-99".into(),
        model_path: None,
        ..base()
    });
    assert!(matches!(e, SdError::UnknownModel { .. }), "{e:?}");
    assert!(e.to_string().contains("sd-turbo"), "{e}");
}

#[test]
fn missing_model_names_the_download_command() {
    let roots = orfeas_ml::models::SearchRoots {
        orfeas_models: Some(tempfile::tempdir().unwrap().path().to_path_buf()),
        data_models: None,
        hf_cache: None,
    };
    let e = roots.resolve("sd-turbo").unwrap_err();
    assert!(
        e.to_string().contains("orfeas models download sd-turbo"),
        "{e}"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), &dest).unwrap();
        }
    }
}

fn model_copy() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for part in [
        "model_index.json",
        "scheduler",
        "text_encoder",
        "tokenizer",
        "unet",
        "vae",
    ] {
        let from = fixture_dir().join(part);
        if from.is_dir() {
            copy_dir(&from, &tmp.path().join(part));
        } else {
            std::fs::copy(&from, tmp.path().join(part)).unwrap();
        }
    }
    tmp
}

#[test]
fn truncated_weights_are_reported_as_corrupt() {
    let tmp = model_copy();
    let shard = tmp
        .path()
        .join("unet/diffusion_pytorch_model-00002-of-00003.safetensors");
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..bytes.len() / 2]).unwrap();
    let e = run_err(&TextToImageParams {
        model_path: Some(tmp.path().to_path_buf()),
        ..base()
    });
    assert!(matches!(e, SdError::CorruptWeights { .. }), "{e:?}");
    assert!(e.to_string().contains("truncated"), "{e}");
}

#[test]
fn garbage_weights_are_reported_as_corrupt() {
    let tmp = model_copy();
    let shard = tmp
        .path()
        .join("vae/diffusion_pytorch_model-00001-of-00002.safetensors");
    std::fs::write(&shard, b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!").unwrap();
    let e = run_err(&TextToImageParams {
        model_path: Some(tmp.path().to_path_buf()),
        ..base()
    });
    assert!(matches!(e, SdError::CorruptWeights { .. }), "{e:?}");
}

#[test]
fn a_folder_missing_a_part_names_the_part() {
    for part in [
        "vae",
        "unet/diffusion_pytorch_model-00003-of-00003.safetensors",
        "tokenizer",
        "text_encoder/config.json",
    ] {
        let tmp = model_copy();
        let p = tmp.path().join(part);
        if p.is_dir() {
            std::fs::remove_dir_all(&p).unwrap();
        } else {
            std::fs::remove_file(&p).unwrap();
        }
        let e = run_err(&TextToImageParams {
            model_path: Some(tmp.path().to_path_buf()),
            ..base()
        });
        assert!(matches!(e, SdError::MissingPart { .. }), "{part}: {e:?}");
        let first = part.split('/').next().unwrap();
        assert!(e.to_string().contains(first), "{part}: {e}");
    }
}

#[test]
fn init_latents_of_the_wrong_shape_are_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("bad.safetensors");
    let t = candle_core::Tensor::zeros(
        (1, 4, 9, 9),
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    candle_core::safetensors::save(
        &std::collections::HashMap::from([("latents".to_owned(), t)]),
        &path,
    )
    .unwrap();
    let e = run_err(&TextToImageParams {
        init_latents: Some(path),
        ..base()
    });
    assert_eq!(field_of(&e), "init_latents");
}

#[test]
fn png_to_a_missing_folder_fails_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let img = image::RgbImage::new(8, 8);
    let out = tmp.path().join("no/such/dir/out.png");
    let e = text_to_image::write_png_with_params(&img, &base(), 0, &out).unwrap_err();
    assert!(e.to_string().contains("does not exist"), "{e}");
    assert!(!out.exists());
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "no temp file left behind"
    );
}
