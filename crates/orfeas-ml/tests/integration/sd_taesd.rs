//! The tiny latent decoder (TAESD) against diffusers' `AutoencoderTiny`: the
//! random-weight fixture's decodes, and the full-size checkpoint's tensor names.

use std::path::PathBuf;

use candle_core::DType;
use orfeas_ml::sd::pipeline;
use orfeas_ml::sd::taesd::{TinyDecoder, TinyDecoderConfig};

use crate::common::{assert_close, dev, get};

fn fixture() -> PathBuf {
    crate::common::fixture_root().join("taesd-tiny")
}

fn golden() -> std::collections::HashMap<String, candle_core::Tensor> {
    candle_core::safetensors::load(fixture().join("golden.safetensors"), &dev()).unwrap()
}

#[test]
fn tiny_decoder_matches_diffusers() {
    let g = golden();
    let decoder = TinyDecoder::load_dir(&fixture(), &dev(), DType::F32).unwrap();
    assert_eq!(decoder.config.upscale(), 8);
    for (input, output) in [("latents", "decode_out"), ("latents_big", "decode_out_big")] {
        let out = decoder.decode(get(&g, input)).unwrap();
        assert_close(&format!("taesd {output}"), &out, get(&g, output), 1e-4);
    }
}

#[test]
fn tiny_decoder_png_matches_diffusers() {
    let g = golden();
    let decoder = TinyDecoder::load_dir(&fixture(), &dev(), DType::F32).unwrap();
    let out = decoder.decode(get(&g, "latents")).unwrap();
    let img = &pipeline::to_rgb_images(&out).unwrap()[0];
    crate::common::assert_png_close("taesd decode", img, &fixture().join("decode.png"));
}

/// The real checkpoints (madebyollin/taesd, taesdxl): the decoder reads every
/// `decoder.*` tensor of the full-size layout at its shape, and nothing else.
#[test]
fn full_size_decoder_reads_exactly_the_checkpoint_decoder_tensors() {
    let cfg = TinyDecoderConfig::from_file(&fixture().join("full_config.json")).unwrap();
    let keys: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture().join("full_state_dict_keys.json")).unwrap(),
    )
    .unwrap();
    let mut reference = std::collections::BTreeMap::new();
    for entry in keys["keys"].as_array().unwrap() {
        let name = entry[0].as_str().unwrap();
        if !name.starts_with("decoder.") {
            continue;
        }
        let shape: Vec<usize> = entry[1]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        reference.insert(name.to_owned(), shape);
    }
    let params: usize = reference
        .values()
        .map(|s| s.iter().product::<usize>())
        .sum();
    assert_eq!(params as u64, keys["decoder_param_count"].as_u64().unwrap());
    crate::sd_full_configs::loads_exactly("taesd decoder", reference, |vb| {
        let decoder = TinyDecoder::load(vb, &cfg).unwrap();
        assert_eq!(decoder.config.upscale(), 8);
    });
}
