//! SD 1.x single-file checkpoints (original LDM layout): the tiny fixture as one
//! file (made from sd-tiny and checked bitwise against diffusers'
//! `from_single_file`), the real SD 1.5 layout's names and shapes, and the
//! refusals of other families.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use candle_core::{DType, Device, Tensor};
use orfeas_ml::sd::clip::ClipTextModel;
use orfeas_ml::sd::pipeline::{self, SdModel};
use orfeas_ml::sd::schedulers;
use orfeas_ml::sd::single_file::{
    self, CheckpointFamily, OpenClip, SingleFileConfigs, Target, UnetLayout,
};
use orfeas_ml::sd::unet::UNet;
use orfeas_ml::sd::vae::Vae;

use crate::common::{assert_close, dev, fixture_dir, get, golden, scalar};
use crate::sd_full_configs::loads_exactly;

fn fixture() -> PathBuf {
    crate::common::fixture_root().join("sd-tiny-single")
}

/// The fixture as the one file a user has, written once per test process.
fn checkpoint() -> PathBuf {
    static FILE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        let file = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("sd-tiny-single.safetensors");
        orfeas_ml::fixture::complete_single_file(&fixture(), &file).unwrap();
        file
    })
    .clone()
}

fn model() -> SdModel {
    SdModel::load_single_file(&checkpoint(), Some(&fixture_dir()), &dev(), DType::F32).unwrap()
}

#[test]
fn the_single_file_unet_and_text_encoder_match_the_golden() {
    let m = model();
    let g = golden("unet");
    let out = m
        .unet
        .forward(
            get(&g, "sample"),
            scalar(&g, "timestep"),
            get(&g, "encoder_hidden_states"),
            None,
        )
        .unwrap();
    assert_close("single-file unet", &out, get(&g, "unet_out"), 1e-5);
    let te = golden("text_encoder");
    let ids = get(&te, "input_ids_cond").to_dtype(DType::U32).unwrap();
    let emb = m.text_encoder.forward(&ids).unwrap();
    assert_close(
        "single-file text encoder",
        &emb,
        get(&te, "text_embeddings_cond"),
        1e-5,
    );
}

#[test]
fn the_single_file_makes_diffusers_picture_from_stored_noise() {
    let m = model();
    let g = golden("euler_1step_nocfg");
    let req = crate::common::stored_noise_request(
        "a red ceramic teapot, studio lighting",
        1,
        0.0,
        None,
        get(&g, "noise"),
    );
    let images = pipeline::generate(&m, &req, &mut |_| {}, &AtomicBool::new(false)).unwrap();
    crate::common::assert_png_close(
        "single-file euler_1step_nocfg",
        &images[0],
        &fixture_dir().join("golden/euler_1step_nocfg.png"),
    );
}

/// Every tensor of a real single file of `family` (names and shapes in
/// `keys_file`) maps to a diffusers name, and the built-in configs build each
/// part asking for exactly those tensors. Returns the names it skipped.
fn check_real_layout(keys_file: &str, family: CheckpointFamily) -> Vec<String> {
    let keys: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(keys_file_path(keys_file)).unwrap()).unwrap();
    let entries = keys
        .as_array()
        .or_else(|| keys["keys"].as_array())
        .or_else(|| keys["tensors"].as_array())
        .expect("a list of [name, shape]");
    let cfg = SingleFileConfigs::load(family, None).unwrap();
    let layout = UnetLayout::of(&cfg.unet);
    let mut parts: [BTreeMap<String, Vec<usize>>; 4] = Default::default();
    let mut skipped = Vec::new();
    for entry in entries {
        let name = entry[0].as_str().unwrap();
        let mut shape: Vec<usize> = entry[1]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        match single_file::target(name, &layout, cfg.vae.block_out_channels.len()).unwrap() {
            Target::Unet(n) => {
                parts[0].insert(n, shape);
            }
            Target::Vae(n) => {
                if n.contains("mid_block.attentions.0.to_") && n.ends_with(".weight") {
                    shape.truncate(2); // 1×1 conv → linear
                }
                parts[1].insert(n, shape);
            }
            Target::TextEncoder(n) => {
                parts[2].insert(n, shape);
            }
            Target::TextEncoder2(OpenClip::Rename(n)) => {
                parts[3].insert(n, shape);
            }
            Target::TextEncoder2(OpenClip::Projection) => {
                shape.reverse();
                parts[3].insert("text_projection.weight".into(), shape);
            }
            Target::TextEncoder2(OpenClip::InProj { layer, bias }) => {
                shape[0] /= 3;
                let param = if bias { "bias" } else { "weight" };
                for part in ["q_proj", "k_proj", "v_proj"] {
                    parts[3].insert(
                        format!("text_model.encoder.layers.{layer}.self_attn.{part}.{param}"),
                        shape.clone(),
                    );
                }
            }
            Target::Skip => skipped.push(name.to_owned()),
        }
    }
    let [unet, vae, text, text2] = parts;
    loads_exactly(&format!("{keys_file} unet"), unet, |vb| {
        UNet::load(vb, &cfg.unet).unwrap();
    });
    loads_exactly(&format!("{keys_file} vae"), vae, |vb| {
        Vae::load(vb, &cfg.vae).unwrap();
    });
    loads_exactly(&format!("{keys_file} text encoder"), text, |vb| {
        ClipTextModel::load(vb, &cfg.text_encoder).unwrap();
    });
    match &cfg.second {
        Some((te2, _)) => loads_exactly(&format!("{keys_file} text encoder 2"), text2, |vb| {
            let model = ClipTextModel::load(vb, te2).unwrap();
            assert!(model.has_projection());
        }),
        None => assert!(text2.is_empty()),
    }
    // The built-in first tokenizer pads with the end token (and SDXL's second with "!").
    let ids = cfg.tokenizer.encode("a red ceramic teapot").unwrap();
    assert_eq!((ids.len(), ids.last()), (77, Some(&49407)));
    if let Some((_, tok2)) = &cfg.second {
        assert_eq!(
            tok2.encode("a red ceramic teapot").unwrap().last(),
            Some(&0)
        );
    }
    skipped
}

fn keys_file_path(name: &str) -> PathBuf {
    crate::common::fixture_root().join(name)
}

#[test]
fn real_sd15_layout_maps_onto_every_loader_tensor() {
    let skipped = check_real_layout("sd-tiny-single/ldm_keys_sd15.json", CheckpointFamily::Sd1);
    assert_eq!(
        skipped,
        ["cond_stage_model.transformer.text_model.embeddings.position_ids"]
    );
}

fn write_file(path: &std::path::Path, names: &[&str]) {
    let map: std::collections::HashMap<String, Tensor> = names
        .iter()
        .map(|n| {
            (
                (*n).to_owned(),
                Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap(),
            )
        })
        .collect();
    candle_core::safetensors::save(&map, path).unwrap();
}

#[test]
fn other_families_and_other_files_are_refused_with_the_way_forward() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        (
            "sd2.safetensors",
            vec![
                "model.diffusion_model.out.2.weight",
                "first_stage_model.decoder.conv_out.weight",
                "cond_stage_model.model.ln_final.weight",
            ],
            "SD 2.x",
        ),
        (
            "lora.safetensors",
            vec!["lora_unet_down_blocks_0_attentions_0_proj_in.alpha"],
            "not a Stable Diffusion checkpoint",
        ),
    ];
    for (file, names, says) in cases {
        let path = tmp.path().join(file);
        write_file(&path, &names);
        let e = SdModel::load(&path, &Device::Cpu, DType::F32).unwrap_err();
        assert!(e.to_string().contains(says), "{file}: {e}");
    }
    // Pickled checkpoints are not loaded.
    let ckpt = tmp.path().join("model.ckpt");
    std::fs::write(&ckpt, b"PK\x03\x04 not really").unwrap();
    let e = SdModel::check_dir(&ckpt).unwrap_err();
    assert!(e.to_string().contains(".safetensors"), "{e}");
    // A truncated checkpoint is reported as damaged, by name.
    let path = tmp.path().join("cut.safetensors");
    let bytes = std::fs::read(checkpoint()).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let e = SdModel::load(&path, &Device::Cpu, DType::F32).unwrap_err();
    assert!(e.to_string().contains("cut.safetensors"), "{e}");
}

/// The tiny SDXL model as one Stability-layout file (made from sdxl-tiny and
/// checked bitwise against diffusers' `from_single_file`), written once.
fn xl_checkpoint() -> PathBuf {
    static FILE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        let file = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("sdxl-tiny-single.safetensors");
        orfeas_ml::fixture::complete_single_file(
            &crate::common::fixture_root().join("sdxl-tiny-single"),
            &file,
        )
        .unwrap();
        file
    })
    .clone()
}

#[test]
fn an_sdxl_single_file_matches_the_sdxl_goldens() {
    use crate::common::{xl_fixture_dir, xl_golden};
    let m = SdModel::load_single_file(
        &xl_checkpoint(),
        Some(&xl_fixture_dir()),
        &dev(),
        DType::F32,
    )
    .unwrap();
    assert!(m.is_xl());
    assert!(m.force_zeros_for_empty_prompt);
    // The family is read from the header alone (the GUI picks taesdxl by it).
    assert!(SdModel::dir_is_xl(&xl_checkpoint()).unwrap());
    assert!(!SdModel::dir_is_xl(&checkpoint()).unwrap());
    let te = xl_golden("text_encoders");
    let cond = pipeline::encode_prompt(
        &m,
        "a red ceramic teapot, studio lighting",
        "blurry, low quality",
        true,
    )
    .unwrap();
    let want = candle_core::Tensor::cat(
        &[
            get(&te, "negative_prompt_embeds"),
            get(&te, "prompt_embeds"),
        ],
        0,
    )
    .unwrap();
    assert_close("xl single-file context", &cond.context, &want, 1e-5);
    let want_pooled = candle_core::Tensor::cat(
        &[
            get(&te, "negative_pooled_prompt_embeds"),
            get(&te, "pooled_prompt_embeds"),
        ],
        0,
    )
    .unwrap();
    assert_close(
        "xl single-file pooled (OpenCLIP projection)",
        cond.pooled.as_ref().unwrap(),
        &want_pooled,
        1e-5,
    );
    // The whole SDXL-Turbo way from diffusers' stored noise.
    let g = xl_golden("euler_a_1step_nocfg");
    let req = crate::common::stored_noise_request(
        "a red ceramic teapot, studio lighting",
        1,
        0.0,
        Some(schedulers::SchedulerKind::EulerAncestral),
        get(&g, "noise"),
    );
    let images = pipeline::generate(&m, &req, &mut |_| {}, &AtomicBool::new(false)).unwrap();
    crate::common::assert_png_close(
        "xl single-file euler_a_1step_nocfg",
        &images[0],
        &xl_fixture_dir().join("golden/euler_a_1step_nocfg.png"),
    );
}

#[test]
fn real_sdxl_layout_maps_onto_every_loader_tensor() {
    let skipped = check_real_layout(
        "sdxl-tiny-single/ldm_keys_sdxl.json",
        CheckpointFamily::Sdxl,
    );
    assert!(
        skipped
            .iter()
            .all(|n| n.ends_with("position_ids") || n.ends_with("logit_scale")),
        "{skipped:?}"
    );
}
