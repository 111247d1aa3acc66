//! BiRefNet weights and configs: the tensor names and shapes the loader asks
//! for at full size (BiRefNet_lite, BiRefNet) against the official key lists,
//! the tiny model against its checkpoint, the built-in configs against the
//! official values, and the registry entries.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::VarBuilder;
use orfeas_ml::birefnet::{BiRefNet, Config, SwinConfig, default_input_size};
use orfeas_ml::models::{self, Architecture};

use super::birefnet_parity::fixture;

/// Records every tensor the model asks for; hands back stride-0 zeros, so a
/// full-size model is built without allocating its weights.
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
        let previous = self
            .0
            .lock()
            .unwrap()
            .insert(name.to_owned(), s.dims().to_vec());
        assert!(previous.is_none(), "{name} asked for twice");
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }
    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("unchecked read of {name}")
    }
    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

/// Official tensors inference does not read: training-only heads and the
/// integer buffers (`relative_position_index` is a function of the window size).
fn unused_at_inference(name: &str) -> bool {
    name.starts_with("decoder.conv_ms_spvn_")
        || name.starts_with("decoder.gdt_convs_pred_")
        || name.ends_with(".relative_position_index")
        || name.ends_with(".num_batches_tracked")
}

/// name → shape of a `state_dict_keys_*.json` (`{name: [shape, dtype]}`).
fn official_keys(path: &Path) -> BTreeMap<String, (Vec<usize>, String)> {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    json.as_object()
        .unwrap()
        .iter()
        .map(|(name, v)| {
            let shape = v[0]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            (name.clone(), (shape, v[1].as_str().unwrap().to_owned()))
        })
        .collect()
}

fn requested_keys(cfg: &Config) -> BTreeMap<String, Vec<usize>> {
    let recorder = Recorder::default();
    let vb = VarBuilder::from_backend(Box::new(recorder.clone()), DType::F32, Device::Cpu);
    BiRefNet::load(vb, cfg).unwrap();
    recorder.0.lock().unwrap().clone()
}

fn released_config(name: &str) -> Config {
    let text =
        std::fs::read_to_string(fixture().join(format!("full-size/{name}.config.json"))).unwrap();
    Config::from_json_str(&text).unwrap()
}

fn check_full_size(name: &str) {
    let dir = fixture().join("full-size");
    let all = official_keys(&dir.join(format!("state_dict_keys_{name}.json")));
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join(format!("{name}.birefnet_config.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(all.len() as u64, meta["n_tensors"].as_u64().unwrap());

    let got = requested_keys(&released_config(name));
    let (unused, want): (BTreeMap<_, _>, BTreeMap<_, _>) =
        all.into_iter().partition(|(n, _)| unused_at_inference(n));
    let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{name}: not asked for: {missing:?}; unknown: {extra:?}"
    );
    for (key, (shape, dtype)) in &want {
        assert_eq!(&got[key], shape, "{name}: {key}");
        assert_eq!(dtype, "float32", "{name}: {key}");
    }
    // What is left unread is only the heads and buffers named above: 3 + 3
    // training heads × (weight, bias), one index per Swin block, and the BN counters.
    let blocks: u64 = meta["swin"]["depths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap())
        .sum();
    let indices = unused
        .keys()
        .filter(|k| k.ends_with("relative_position_index"))
        .count() as u64;
    assert_eq!(indices, blocks, "{name}");
    let heads = unused
        .iter()
        .filter(|(_, (_, dtype))| dtype == "float32")
        .count();
    assert_eq!(heads, 12, "{name}: unread float tensors {unused:?}");
    let read_params: usize = got.values().map(|s| s.iter().product::<usize>()).sum();
    let head_params: usize = unused
        .values()
        .filter(|(_, dtype)| dtype == "float32")
        .map(|(s, _)| s.iter().product::<usize>())
        .sum();
    assert_eq!(
        (read_params + head_params) as u64,
        meta["n_params"].as_u64().unwrap(),
        "{name}"
    );
}

#[test]
fn full_size_lite_asks_for_exactly_the_official_tensors() {
    check_full_size("BiRefNet_lite");
}

#[test]
fn full_size_birefnet_asks_for_exactly_the_official_tensors() {
    check_full_size("BiRefNet");
}

#[test]
fn tiny_model_asks_for_exactly_its_checkpoints_inference_tensors() {
    let cfg = Config::from_model_dir(&fixture()).unwrap();
    let stored =
        candle_core::safetensors::load(fixture().join("model.safetensors"), &Device::Cpu).unwrap();
    let want: BTreeMap<String, Vec<usize>> = stored
        .iter()
        .filter(|(n, _)| !unused_at_inference(n))
        .map(|(n, t)| (n.clone(), t.dims().to_vec()))
        .collect();
    assert_eq!(requested_keys(&cfg), want);
}

#[test]
fn released_configs_name_the_backbone_and_built_in_values_are_the_official_ones() {
    for (name, built_in) in [
        ("BiRefNet_lite", Config::lite()),
        ("BiRefNet", Config::large()),
    ] {
        let cfg = released_config(name);
        assert_eq!(cfg, built_in, "{name}");
        let text = std::fs::read_to_string(
            fixture().join(format!("full-size/{name}.birefnet_config.json")),
        )
        .unwrap();
        let official: serde_json::Value = serde_json::from_str(&text).unwrap();
        let s = &official["swin"];
        let list = |v: &serde_json::Value| -> Vec<usize> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect()
        };
        let want = SwinConfig {
            embed_dim: s["embed_dim"].as_u64().unwrap() as usize,
            depths: list(&s["depths"]),
            num_heads: list(&s["num_heads"]),
            window_size: s["window_size"].as_u64().unwrap() as usize,
            patch_size: s["patch_size"].as_u64().unwrap() as usize,
            mlp_ratio: s["mlp_ratio"].as_f64().unwrap(),
            layer_norm_eps: s["layer_norm_eps"].as_f64().unwrap(),
        };
        assert_eq!(cfg.swin, want, "{name}");
        let d = &official["decoder_hardcoded"];
        assert_eq!(
            [
                cfg.dec_inter_channels,
                cfg.aspp_planes,
                cfg.ipt_inter_channels,
                cfg.gdt_channels
            ],
            [
                d["dec_inter_channels"].as_u64().unwrap() as usize,
                d["aspp_planes"].as_u64().unwrap() as usize,
                d["ipt_inter_channels"].as_u64().unwrap() as usize,
                d["gdt_channels"].as_u64().unwrap() as usize,
            ]
        );
        let b = &official["birefnet_config"];
        assert_eq!(
            cfg.lateral_channels().to_vec(),
            list(&b["lateral_channels_in_collection"])
        );
        assert_eq!(cfg.cxt_channels().to_vec(), list(&b["cxt"]));
        let size = list(&b["size"]);
        assert_eq!(cfg.default_input_size_hw(), (size[0], size[1]), "{name}");
    }
}

#[test]
fn default_input_size_reads_the_folder_config_else_1024() {
    assert_eq!(default_input_size(&fixture()).unwrap(), (96, 128));
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture().join("full-size/BiRefNet_lite.config.json"),
        tmp.path().join("config.json"),
    )
    .unwrap();
    assert_eq!(default_input_size(tmp.path()).unwrap(), (1024, 1024));
}

#[test]
fn registry_knows_both_birefnets_with_their_sizes_and_licence() {
    for (name, repo, params) in [
        ("birefnet-lite", "ZhengPeng7/BiRefNet_lite", 44_333_848u64),
        ("birefnet", "ZhengPeng7/BiRefNet", 220_202_578),
    ] {
        let m = models::known(name).unwrap();
        assert_eq!(m.repo_id, repo);
        assert_eq!(m.architecture, Architecture::BiRefNet);
        assert!(!m.architecture.generates_images());
        assert!(m.licence.starts_with("MIT"), "{}", m.licence);
        assert!(!m.non_commercial);
        let paths: Vec<&str> = m.files.iter().map(|f| f.path).collect();
        assert_eq!(paths, ["config.json", "model.safetensors"]);
        // f32 weights: within 1 % of 4 bytes per official parameter.
        let want = (params * 4) as f64;
        let got = m.approx_size_bytes() as f64;
        assert!((got - want).abs() / want < 0.01, "{name}: {got} vs {want}");
    }
}
