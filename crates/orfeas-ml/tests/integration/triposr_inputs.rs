//! TripoSR configs and bad input: the hub config.yaml with its OmegaConf
//! interpolation, configs that do not describe TripoSR, images and tensors
//! the model cannot take, and the registry entries. Every refusal is an error
//! that says what is wrong and what to do, never a panic.

use candle_core::{DType, Device, Tensor};
use orfeas_ml::SdError;
use orfeas_ml::models::{self, Architecture, SearchRoots};
use orfeas_ml::triposr::config::{DensityActivation, FeatureReduction, MlpActivation};
use orfeas_ml::triposr::{Config, TripoSr, ViTConfig, preprocess};

use super::triposr_parity::{fixture, tiny};
use crate::common::dev;

fn full_yaml() -> String {
    std::fs::read_to_string(fixture().join("full-size/config.yaml")).unwrap()
}

fn parse(yaml: &str) -> Result<Config, String> {
    Config::from_yaml_str(yaml, ViTConfig::dino_vitb16())
}

#[test]
fn hub_config_parses_with_its_interpolation_resolved() {
    let cfg = parse(&full_yaml()).unwrap();
    assert_eq!(cfg.cond_image_size, 512);
    assert_eq!(
        (cfg.tokenizer.plane_size, cfg.tokenizer.num_channels),
        (32, 1024)
    );
    // `in_channels: ${tokenizer.num_channels}`.
    assert_eq!(cfg.backbone.in_channels, 1024);
    assert_eq!(
        (
            cfg.backbone.num_attention_heads,
            cfg.backbone.attention_head_dim,
            cfg.backbone.num_layers
        ),
        (16, 64, 16)
    );
    assert_eq!(cfg.backbone.cross_attention_dim, 768);
    assert_eq!(cfg.backbone.norm_num_groups, 32, "Transformer1D's default");
    assert_eq!(
        (
            cfg.post_processor.in_channels,
            cfg.post_processor.out_channels
        ),
        (1024, 40)
    );
    assert_eq!(
        (
            cfg.decoder.in_channels,
            cfg.decoder.n_neurons,
            cfg.decoder.n_hidden_layers
        ),
        (120, 64, 9)
    );
    assert_eq!(cfg.decoder.activation, MlpActivation::Silu);
    assert_eq!(cfg.renderer.radius, 0.87);
    assert_eq!(cfg.renderer.feature_reduction, FeatureReduction::Concat);
    assert_eq!(cfg.renderer.density_activation, DensityActivation::Exp);
    assert_eq!(cfg.renderer.density_bias, -1.0);
    assert_eq!(cfg.renderer.num_samples_per_ray, 128);
    assert_eq!(cfg.num_image_tokens(), 1025, "1 CLS + 32x32 patches");
    assert_eq!(cfg.scene_plane_size(), 64);
    assert_eq!(
        cfg.image_tokenizer.pretrained_model_name_or_path,
        "facebook/dino-vitb16"
    );
}

#[test]
fn a_folder_naming_the_hub_vit_uses_the_built_in_config_or_an_installed_copy() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("config.yaml"), full_yaml()).unwrap();
    let cfg = Config::from_model_dir(tmp.path()).unwrap();
    assert_eq!(cfg.vit, ViTConfig::dino_vitb16());

    // An installed dino-vitb16 registry copy wins over the built-in one.
    let models_root = tmp.path().join("models");
    std::fs::create_dir_all(models_root.join("dino-vitb16")).unwrap();
    let mut custom =
        std::fs::read_to_string(fixture().join("full-size/dino-vitb16-config.json")).unwrap();
    custom = custom.replace("\"layer_norm_eps\": 1e-12", "\"layer_norm_eps\": 1e-06");
    std::fs::write(models_root.join("dino-vitb16/config.json"), custom).unwrap();
    let roots = SearchRoots {
        orfeas_models: Some(models_root),
        ..SearchRoots::default()
    };
    let cfg = Config::from_model_dir_with_roots(tmp.path(), &roots).unwrap();
    assert_eq!(cfg.vit.layer_norm_eps, 1e-6);
}

#[test]
fn configs_that_are_not_triposr_are_refused_with_the_offending_key() {
    let yaml = full_yaml();
    let cases = [
        (
            yaml.replace("tsr.models.network_utils.NeRFMLP", "my.Decoder"),
            "decoder_cls",
        ),
        (
            yaml.replace("in_channels: 120", "in_channels: 96"),
            "decoder.in_channels",
        ),
        (
            yaml.replace("cross_attention_dim: 768", "cross_attention_dim: 512"),
            "cross_attention_dim",
        ),
        (
            yaml.replace("${tokenizer.num_channels}", "${oc.env:CHANNELS}"),
            "resolver",
        ),
        (
            yaml.replace("${tokenizer.num_channels}", "${tokenizer.channels}"),
            "does not exist",
        ),
        (
            yaml.replace("activation: silu", "activation: swish"),
            "unexpected layout",
        ),
        (
            yaml.replace("radius: 0.87", "radius: -1.0"),
            "renderer.radius",
        ),
        ("cond_image_size: [".to_owned(), "not valid YAML"),
        (String::new(), "empty"),
    ];
    for (text, needle) in cases {
        let err = parse(&text).expect_err(needle);
        assert!(err.contains(needle), "expected '{needle}' in: {err}");
    }
}

#[test]
fn missing_config_or_weights_name_the_file_to_get() {
    let tmp = tempfile::tempdir().unwrap();
    let err = TripoSr::from_dir(tmp.path(), DType::F32, &Device::Cpu).unwrap_err();
    assert!(matches!(err, SdError::MissingPart { .. }), "{err:#}");
    assert!(format!("{err:#}").contains("config.yaml"), "{err:#}");

    std::fs::write(tmp.path().join("config.yaml"), full_yaml()).unwrap();
    let err = TripoSr::from_dir(tmp.path(), DType::F32, &Device::Cpu).unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains("model.ckpt") && text.contains("orfeas models download"),
        "{text}"
    );

    // Weights of another size: the mismatch names the file and the tensor.
    std::fs::copy(
        fixture().join("model.safetensors"),
        tmp.path().join("model.safetensors"),
    )
    .unwrap();
    let text = format!(
        "{:#}",
        TripoSr::from_dir(tmp.path(), DType::F32, &Device::Cpu).unwrap_err()
    );
    assert!(
        text.contains("model.safetensors") && text.contains("does not match config.yaml"),
        "{text}"
    );
}

#[test]
fn images_the_model_cannot_use_are_refused_with_what_to_do() {
    let clear = image::RgbaImage::new(64, 64);
    let err = preprocess::resize_foreground(&clear, 0.85).unwrap_err();
    assert!(format!("{err:#}").contains("fully transparent"), "{err:#}");
    let mut dot = image::RgbaImage::new(64, 64);
    dot.put_pixel(10, 10, image::Rgba([255, 0, 0, 255]));
    let err = preprocess::resize_foreground(&dot, 0.85).unwrap_err();
    assert!(format!("{err:#}").contains("larger object"), "{err:#}");
    let mut square = image::RgbaImage::new(64, 64);
    for (x, y, p) in square.enumerate_pixels_mut() {
        if (20..40).contains(&x) && (20..40).contains(&y) {
            *p = image::Rgba([200, 10, 10, 255]);
        }
    }
    let err = preprocess::resize_foreground(&square, 1e-4).unwrap_err();
    assert!(format!("{err:#}").contains("at most 8192"), "{err:#}");
    for ratio in [0.0, 1.5, f64::NAN] {
        let err = preprocess::resize_foreground(&dot, ratio).unwrap_err();
        assert!(
            format!("{err:#}").contains("foreground_ratio"),
            "{ratio}: {err:#}"
        );
    }
    let empty = image::RgbImage::new(0, 0);
    assert!(preprocess::resize_antialiased(&empty, 144).is_err());

    // An opaque image is used as it is (run.py's --no-remove-bg): centred grey input expected.
    let opaque = image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(
        50,
        40,
        image::Rgb([128, 128, 128]),
    ));
    let prepared = preprocess::prepare_image(&opaque, 0.85).unwrap();
    assert_eq!(prepared.dimensions(), (50, 40));
}

#[test]
fn tensors_of_the_wrong_shape_are_errors_not_panics() {
    let model = tiny();
    let device = dev();
    let wrong = Tensor::zeros((1, 3, 64, 64), DType::F32, &device).unwrap();
    let text = format!("{:#}", model.forward(&wrong).unwrap_err());
    assert!(
        text.contains("(B, 3, 144, 144)") && text.contains("preprocess"),
        "{text}"
    );

    let batch_of_two = Tensor::zeros((2, 3, 8, 16, 16), DType::F32, &device).unwrap();
    let text = format!("{:#}", model.density_grid(&batch_of_two, 8).unwrap_err());
    assert!(text.contains("one scene"), "{text}");
    let code = Tensor::zeros((3, 8, 16, 16), DType::F32, &device).unwrap();
    let text = format!("{:#}", model.density_grid(&code, 1).unwrap_err());
    assert!(text.contains("TripoSR uses 256"), "{text}");
    let text = format!("{:#}", model.density_grid(&code, 5000).unwrap_err());
    assert!(text.contains("outside 2..=1024"), "{text}");
    let camera = orfeas_ml::triposr::OrbitCamera::orbit(1, 0.0, 1.9, 40.0, 0, 32)[0];
    assert!(model.render_view(&code, &camera).is_err());
    // No positions: no colours, no error.
    assert!(model.query_colors(&code, &[]).unwrap().is_empty());
}

#[test]
fn registry_lists_triposr_and_its_vit_config() {
    let m = models::known("TripoSR").unwrap();
    assert_eq!(m.repo_id, "stabilityai/TripoSR");
    assert_eq!(m.architecture, Architecture::TripoSr);
    assert!(
        !m.architecture.generates_images(),
        "not a text-to-image model"
    );
    let files: Vec<&str> = m.files.iter().map(|f| f.path).collect();
    assert_eq!(files, ["config.yaml", "model.ckpt"]);
    // ~1.68 GB of f32 weights.
    assert!((1.6e9..1.75e9).contains(&(m.approx_size_bytes() as f64)));
    assert!(m.licence.starts_with("MIT") && !m.non_commercial);

    let vit = models::known("dino-vitb16").unwrap();
    assert_eq!(vit.repo_id, "facebook/dino-vitb16");
    assert_eq!(vit.architecture, Architecture::VitConfig);
    assert_eq!(
        vit.files.iter().map(|f| f.path).collect::<Vec<_>>(),
        ["config.json"]
    );

    // An installed copy is found like any other model.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("triposr");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.yaml"), full_yaml()).unwrap();
    let roots = SearchRoots {
        orfeas_models: Some(tmp.path().to_path_buf()),
        ..SearchRoots::default()
    };
    assert!(
        roots.find_installed(m).is_none(),
        "model.ckpt still missing"
    );
    std::fs::write(dir.join("model.ckpt"), b"PK").unwrap();
    assert_eq!(roots.find_installed(m), Some(dir));
}

#[test]
fn density_grid_reports_progress_per_chunk_and_can_be_cancelled() {
    let model = tiny();
    let code = Tensor::zeros((3, 8, 16, 16), DType::F32, &dev()).unwrap();
    let mut seen = Vec::new();
    let grid = model
        .density_grid_with_progress(&code, 10, 300, &mut |p| {
            seen.push((p.done_points, p.total_points));
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(grid.len(), 1000);
    assert_eq!(seen, [(300, 1000), (600, 1000), (900, 1000), (1000, 1000)]);

    let mut calls = 0;
    let err = model
        .density_grid_with_progress(&code, 10, 300, &mut |_| {
            calls += 1;
            std::ops::ControlFlow::Break(())
        })
        .unwrap_err();
    assert!(matches!(err, SdError::Cancelled), "{err:#}");
    assert_eq!(calls, 1, "stops after the first chunk");
}
