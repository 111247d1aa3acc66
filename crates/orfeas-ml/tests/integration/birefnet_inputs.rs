//! BiRefNet bad input: damaged checkpoints, a config that does not fit the
//! weights, sizes that are not multiples of 32, pictures too small, folders
//! missing a part. Each is an error that says what to do, never a panic.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use orfeas_ml::SdError;
use orfeas_ml::birefnet::{BiRefNet, Config};

use super::birefnet_parity::{fixture, tiny};

fn err_text(e: &SdError) -> String {
    let text = format!("{e:#}");
    eprintln!("error shown: {text}");
    text
}

/// A copy of the tiny model folder with `weights` as its model.safetensors.
fn folder_with(weights: &[u8], config: Option<&str>) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("model.safetensors"), weights).unwrap();
    let cfg = match config {
        Some(text) => text.to_owned(),
        None => std::fs::read_to_string(fixture().join("config.json")).unwrap(),
    };
    std::fs::write(tmp.path().join("config.json"), cfg).unwrap();
    tmp
}

fn load(dir: &Path) -> Result<BiRefNet, SdError> {
    BiRefNet::from_dir(dir, DType::F32, &Device::Cpu)
}

fn picture(w: u32, h: u32) -> image::DynamicImage {
    image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(
        w,
        h,
        image::Rgb([90, 140, 200]),
    ))
}

#[test]
fn truncated_checkpoint_is_reported_as_corrupt() {
    let bytes = std::fs::read(fixture().join("model.safetensors")).unwrap();
    let dir = folder_with(&bytes[..bytes.len() / 2], None);
    let e = load(dir.path()).unwrap_err();
    assert!(matches!(e, SdError::CorruptWeights { .. }), "{e:?}");
    let text = err_text(&e);
    assert!(text.contains("model.safetensors"), "{text}");
    assert!(text.contains("download"), "{text}");
}

#[test]
fn garbage_checkpoint_is_reported_as_corrupt() {
    let dir = folder_with(b"this is not a safetensors file at all", None);
    let e = load(dir.path()).unwrap_err();
    assert!(matches!(e, SdError::CorruptWeights { .. }), "{e:?}");
    assert!(err_text(&e).contains("corrupt"));
}

#[test]
fn config_whose_dims_do_not_match_the_weights_is_refused() {
    let bytes = std::fs::read(fixture().join("model.safetensors")).unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("config.json")).unwrap())
            .unwrap();
    cfg["swin"]["embed_dim"] = 12.into();
    let dir = folder_with(&bytes, Some(&cfg.to_string()));
    let e = load(dir.path()).unwrap_err();
    assert!(matches!(e, SdError::CorruptWeights { .. }), "{e:?}");
    let text = err_text(&e);
    assert!(text.contains("does not match config.json"), "{text}");

    // The decoder widths too (the tiny_* literals of the fixture).
    cfg["swin"]["embed_dim"] = 6.into();
    cfg["decoder_hardcoded"]["aspp_planes"] = 256.into();
    let dir = folder_with(&bytes, Some(&cfg.to_string()));
    let text = err_text(&load(dir.path()).unwrap_err());
    assert!(text.contains("does not match config.json"), "{text}");
}

#[test]
fn config_of_an_unsupported_variant_or_unknown_model_says_so() {
    let e = Config::from_json_str(r#"{"_name_or_path": "someone/other-model"}"#).unwrap_err();
    assert!(e.contains("ZhengPeng7/BiRefNet"), "{e}");
    let e =
        Config::from_json_str(r#"{"_name_or_path": "x", "birefnet_config": {"bb": "pvt_v2_b2"}}"#)
            .unwrap_err();
    assert!(
        e.contains("pvt_v2_b2") && e.contains("not supported"),
        "{e}"
    );
    let e = Config::from_json_str(
        r#"{"_name_or_path": "ZhengPeng7/BiRefNet", "birefnet_config": {"dec_att": "ASPP"}}"#,
    )
    .unwrap_err();
    assert!(e.contains("dec_att"), "{e}");
    let e = Config::from_json_str(
        r#"{"_name_or_path": "ZhengPeng7/BiRefNet", "input_size_hw": [1000, 1024]}"#,
    )
    .unwrap_err();
    assert!(e.contains("multiple of 32"), "{e}");
}

#[test]
fn size_not_a_multiple_of_32_is_refused_with_a_suggestion() {
    let e = tiny().mask(&picture(64, 48), (100, 128)).unwrap_err();
    assert!(
        matches!(e, SdError::InvalidParams { field: "size", .. }),
        "{e:?}"
    );
    let text = err_text(&e);
    assert!(
        text.contains("100x128") && text.contains("128x128"),
        "{text}"
    );
    assert!(tiny().mask(&picture(64, 48), (0, 0)).is_err());

    // A raw tensor of the wrong size is refused before the backbone sees it.
    let x = Tensor::zeros((1, 3, 96, 120), DType::F32, &Device::Cpu).unwrap();
    let text = err_text(&tiny().forward(&x).unwrap_err());
    assert!(text.contains("BiRefNet::preprocess"), "{text}");
}

#[test]
fn one_pixel_picture_is_refused() {
    let e = tiny().mask(&picture(1, 1), (96, 128)).unwrap_err();
    assert!(
        matches!(e, SdError::InvalidParams { field: "image", .. }),
        "{e:?}"
    );
    let text = err_text(&e);
    assert!(
        text.contains("1x1") && text.contains("larger picture"),
        "{text}"
    );
}

#[test]
fn any_picture_size_gets_a_mask_of_its_own_size() {
    // Odd, tall and wide pictures: the mask always matches the picture.
    for (w, h) in [(37, 91), (300, 17), (128, 96)] {
        let m = tiny().mask(&picture(w, h), (96, 128)).unwrap();
        assert_eq!(m.dimensions(), (w, h));
    }
}

#[test]
fn folder_without_weights_or_config_names_the_missing_part() {
    let tmp = tempfile::tempdir().unwrap();
    let text = err_text(&load(tmp.path()).unwrap_err());
    assert!(text.contains("config.json"), "{text}");
    std::fs::copy(
        fixture().join("config.json"),
        tmp.path().join("config.json"),
    )
    .unwrap();
    let e = load(tmp.path()).unwrap_err();
    assert!(matches!(e, SdError::MissingPart { .. }), "{e:?}");
    assert!(err_text(&e).contains("model.safetensors"));
}
