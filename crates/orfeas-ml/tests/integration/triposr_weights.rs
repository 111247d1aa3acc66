//! TripoSR weights: the restricted `.ckpt` reader (known tensors, the tiny
//! model as a checkpoint, malicious pickles refused), and the tensor names the
//! loader asks for at tiny and full size against the official key lists.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::VarBuilder;
use orfeas_ml::SdError;
use orfeas_ml::triposr::{Config, TripoSr, ViTConfig, ckpt};

use super::triposr_parity::{fixture, golden};
use crate::common::{assert_close, dev, get};

fn err_text(e: &SdError) -> String {
    let text = format!("{e:#}");
    eprintln!("error shown: {text}");
    text
}

#[test]
fn known_checkpoint_tensors_come_back_with_their_values_views_and_dtypes() {
    let t = ckpt::read_state_dict(&fixture().join("known.ckpt")).unwrap();
    let mut names: Vec<&str> = t.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "bf16_vec",
            "f16_vec",
            "f32_matrix",
            "f32_offset_view",
            "f32_transposed",
            "i64_vec",
            "param",
            "scalar"
        ]
    );
    let f32s = |name: &str| -> Vec<f32> { t[name].flatten_all().unwrap().to_vec1().unwrap() };
    assert_eq!(t["f32_matrix"].dims(), [2, 3]);
    assert_eq!(f32s("f32_matrix"), [-1.0, -0.5, 0.0, 0.5, 1.0, 1.5]);
    // size (3, 2), stride (1, 3) over [0, 0.25, …, 1.25]: the transpose.
    assert_eq!(t["f32_transposed"].dims(), [3, 2]);
    assert_eq!(f32s("f32_transposed"), [0.0, 0.75, 0.25, 1.0, 0.5, 1.25]);
    assert_eq!(f32s("f32_offset_view"), [0.5, 0.75]);
    assert_eq!(t["f16_vec"].dtype(), DType::F16);
    let halves: Vec<f32> = t["f16_vec"]
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(halves, [1.5, -2.0, 0.25, 65504.0]);
    assert_eq!(t["bf16_vec"].dtype(), DType::BF16);
    let bf: Vec<f32> = t["bf16_vec"]
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(bf, [1.0, -3.5, 0.125]);
    assert_eq!(t["i64_vec"].to_vec1::<i64>().unwrap(), [-1, 7, 1 << 40]);
    assert_eq!(t["scalar"].dims(), [] as [usize; 0]);
    assert_eq!(t["scalar"].to_scalar::<f32>().unwrap(), 3.25);
    assert_eq!(f32s("param"), [4.0, 5.0]);
}

#[test]
fn tiny_model_from_model_ckpt_equals_the_safetensors_one() {
    let from_ckpt = ckpt::read_state_dict(&fixture().join("model.ckpt")).unwrap();
    let from_st =
        candle_core::safetensors::load(fixture().join("model.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(from_ckpt.len(), 97);
    for (name, want) in &from_st {
        let got = from_ckpt
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing from model.ckpt"));
        assert_eq!(got.dims(), want.dims(), "{name}");
        let (g, w): (Vec<f32>, Vec<f32>) = (
            got.flatten_all().unwrap().to_vec1().unwrap(),
            want.flatten_all().unwrap().to_vec1().unwrap(),
        );
        assert!(g == w, "{name}: values differ");
    }

    // A folder with only model.ckpt loads through TripoSr::from_dir and gives the golden scene codes.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture().join("config.yaml"),
        tmp.path().join("config.yaml"),
    )
    .unwrap();
    std::fs::create_dir(tmp.path().join("dino-vit-tiny")).unwrap();
    std::fs::copy(
        fixture().join("dino-vit-tiny/config.json"),
        tmp.path().join("dino-vit-tiny/config.json"),
    )
    .unwrap();
    std::fs::copy(fixture().join("model.ckpt"), tmp.path().join("model.ckpt")).unwrap();
    let model = TripoSr::from_dir(tmp.path(), DType::F32, &dev()).unwrap();
    let pixels = get(&golden("preprocess"), "pixel_values").clone();
    let codes = model.forward(&pixels).unwrap();
    assert_close(
        "scene_codes (model.ckpt)",
        &codes,
        get(&golden("scene_codes"), "scene_codes"),
        1e-5,
    );
}

const MARKER: &str = "/tmp/orfeas-triposr-pickle-was-executed";

#[test]
fn a_pickle_calling_os_system_is_refused_by_name_and_never_run() {
    let _ = std::fs::remove_file(MARKER);
    let err = ckpt::read_state_dict(&fixture().join("malicious.ckpt")).unwrap_err();
    let text = err_text(&err);
    assert!(text.contains("`os.system`"), "{text}");
    assert!(text.contains("refused"), "{text}");
    assert!(
        text.contains("malicious.ckpt"),
        "the error names the file: {text}"
    );
    assert!(!Path::new(MARKER).exists(), "the pickle's command ran");
}

#[test]
fn builtins_exec_behind_a_valid_tensor_is_refused_too() {
    let err = ckpt::read_state_dict(&fixture().join("malicious_exec.ckpt")).unwrap_err();
    let text = err_text(&err);
    assert!(text.contains("`builtins.exec`"), "{text}");
    assert!(!Path::new(MARKER).exists(), "the pickle's code ran");
}

#[test]
fn hostile_structures_are_refused_before_they_exhaust_stack_or_memory() {
    let text = err_text(&ckpt::read_state_dict(&fixture().join("nested.ckpt")).unwrap_err());
    assert!(text.contains("nests objects more than"), "{text}");
    let text = err_text(&ckpt::read_state_dict(&fixture().join("laughs.ckpt")).unwrap_err());
    assert!(text.contains("far more objects"), "{text}");
}

#[test]
fn truncated_and_non_zip_checkpoints_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture().join("model.ckpt")).unwrap();
    let cut = tmp.path().join("cut.ckpt");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let text = err_text(&ckpt::read_state_dict(&cut).unwrap_err());
    assert!(
        text.contains("cut.ckpt") && text.contains("download"),
        "{text}"
    );

    let legacy = tmp.path().join("legacy.pt");
    std::fs::write(&legacy, b"\x80\x02\x8a\x0alegacy torch format").unwrap();
    let text = err_text(&ckpt::read_state_dict(&legacy).unwrap_err());
    assert!(
        text.contains("not a zip-format PyTorch checkpoint"),
        "{text}"
    );

    let missing = tmp.path().join("absent.ckpt");
    let text = err_text(&ckpt::read_state_dict(&missing).unwrap_err());
    assert!(text.contains("absent.ckpt"), "{text}");
}

/// Records every tensor the model asks for; hands back stride-0 zeros, so a
/// full-size model is built without allocating its 1.7 GB.
#[derive(Default, Clone)]
struct Recorder(Arc<Mutex<BTreeMap<String, Vec<usize>>>>);

impl candle_nn::var_builder::SimpleBackend for Recorder {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.0
            .lock()
            .unwrap()
            .insert(name.to_owned(), s.dims().to_vec());
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }
    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("unchecked read of {name}")
    }
    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

/// name → shape of an official key list, the unused ViT pooler left out.
fn official_keys(path: &Path) -> BTreeMap<String, Vec<usize>> {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let keys = json["keys"].as_array().unwrap();
    assert_eq!(keys.len() as u64, json["num_tensors"].as_u64().unwrap());
    keys.iter()
        .map(|k| {
            let name = k["name"].as_str().unwrap().to_owned();
            let shape = k["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            (name, shape)
        })
        .filter(|(name, _)| !name.starts_with("image_tokenizer.model.pooler."))
        .collect()
}

fn requested_keys(cfg: &Config) -> BTreeMap<String, Vec<usize>> {
    let recorder = Recorder::default();
    let vb = VarBuilder::from_backend(Box::new(recorder.clone()), DType::F32, Device::Cpu);
    TripoSr::load(vb, cfg).unwrap();
    recorder.0.lock().unwrap().clone()
}

#[test]
fn full_size_model_asks_for_exactly_the_official_checkpoint_keys() {
    let dir = fixture().join("full-size");
    let cfg = Config::from_files(
        &dir.join("config.yaml"),
        &dir.join("dino-vitb16-config.json"),
    )
    .unwrap();
    let want = official_keys(&dir.join("state_dict_keys.json"));
    assert_eq!(want.len(), 549 - 2, "549 tensors less the pooler's two");
    let got = requested_keys(&cfg);
    let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "not asked for: {missing:?}; unknown: {extra:?}"
    );
    for (name, shape) in &want {
        assert_eq!(&got[name], shape, "{name}");
    }
    let params: usize = got.values().map(|s| s.iter().product::<usize>()).sum();
    // 419,275,628 in the checkpoint, of which the pooler holds 768·768 + 768.
    assert_eq!(params, 419_275_628 - 768 * 768 - 768);
}

#[test]
fn tiny_model_asks_for_exactly_its_key_list() {
    let cfg = Config::from_model_dir(&fixture()).unwrap();
    let want = official_keys(&fixture().join("state_dict_keys.json"));
    assert_eq!(requested_keys(&cfg), want);
}

#[test]
fn built_in_dino_vitb16_config_equals_the_hub_file() {
    let text =
        std::fs::read_to_string(fixture().join("full-size/dino-vitb16-config.json")).unwrap();
    assert_eq!(
        ViTConfig::from_json_str(&text).unwrap(),
        ViTConfig::dino_vitb16()
    );
}
