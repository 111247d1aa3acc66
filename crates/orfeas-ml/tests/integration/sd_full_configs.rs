//! The real loaders against the official checkpoints' layouts: each full-size
//! config (SD-Turbo, SD 1.5, SDXL-Turbo) builds its models asking for exactly
//! the tensor names and shapes that diffusers/transformers build from the same
//! config (`state_dict_keys.json`, written by the PyTorch code). No weights are
//! read or allocated: every tensor handed out is a broadcast zero.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::VarBuilder;
use candle_nn::var_builder::SimpleBackend;
use orfeas_ml::sd::clip::{ClipConfig, ClipTextModel};
use orfeas_ml::sd::unet::{UNet, UNetConfig};
use orfeas_ml::sd::vae::{Vae, VaeConfig};

fn full_configs(model: &str) -> PathBuf {
    crate::common::fixture_root()
        .join("sd-tiny/full-configs")
        .join(model)
}

/// Hands out the tensors the reference lists, at the reference's shape, and
/// writes down every name a loader asks for.
/// Shared with the test, which reads what was asked after the backend is gone.
struct Recorder {
    reference: BTreeMap<String, Vec<usize>>,
    asked: Arc<Mutex<BTreeSet<String>>>,
    wrong_shape: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    fn new(reference: BTreeMap<String, Vec<usize>>) -> Self {
        Self {
            reference,
            asked: Arc::default(),
            wrong_shape: Arc::default(),
        }
    }

    fn hand_out(shape: &[usize], dtype: DType, dev: &Device) -> Tensor {
        Tensor::zeros((), dtype, dev)
            .unwrap()
            .broadcast_as(shape)
            .unwrap()
    }
}

impl SimpleBackend for Recorder {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.asked.lock().unwrap().insert(name.to_owned());
        match self.reference.get(name) {
            Some(shape) if shape.as_slice() == s.dims() => Ok(Self::hand_out(shape, dtype, dev)),
            Some(shape) => {
                self.wrong_shape.lock().unwrap().push(format!(
                    "{name}: loader wants {:?}, checkpoint has {shape:?}",
                    s.dims()
                ));
                Ok(Self::hand_out(s.dims(), dtype, dev))
            }
            None => candle_core::bail!("the checkpoint has no tensor {name}"),
        }
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.asked.lock().unwrap().insert(name.to_owned());
        match self.reference.get(name) {
            Some(shape) => Ok(Self::hand_out(shape, dtype, dev)),
            None => candle_core::bail!("the checkpoint has no tensor {name}"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.reference.contains_key(name)
    }
}

fn reference(dir: &Path, component: &str) -> BTreeMap<String, Vec<usize>> {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("state_dict_keys.json")).unwrap())
            .unwrap();
    json[component]
        .as_array()
        .unwrap_or_else(|| panic!("state_dict_keys.json has no {component}"))
        .iter()
        .map(|entry| {
            let name = entry[0].as_str().unwrap().to_owned();
            let shape = entry[1]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            (name, shape)
        })
        // A buffer of transformers, not a weight.
        .filter(|(name, _)| !name.ends_with("position_ids"))
        .collect()
}

/// Builds one component through `build` and checks it asked for every tensor
/// of the checkpoint, at the right shape, and nothing else.
fn check(model: &str, component: &str, build: impl FnOnce(VarBuilder, &Path)) {
    let dir = full_configs(model);
    let reference = reference(&dir, component);
    loads_exactly(&format!("{model}/{component}"), reference, |vb| {
        build(vb, &dir)
    });
}

/// Runs `build` on a backend holding `reference` (name → shape) and checks
/// it asked for every tensor, at the right shape, and nothing else.
pub fn loads_exactly(
    label: &str,
    reference: BTreeMap<String, Vec<usize>>,
    build: impl FnOnce(VarBuilder),
) {
    let expected: BTreeSet<String> = reference.keys().cloned().collect();
    let recorder = Recorder::new(reference);
    let (asked, wrong) = (recorder.asked.clone(), recorder.wrong_shape.clone());
    let vb = VarBuilder::from_backend(Box::new(recorder), DType::F32, Device::Cpu);
    build(vb);
    let asked = asked.lock().unwrap().clone();
    let wrong = wrong.lock().unwrap().clone();
    assert!(wrong.is_empty(), "{label}: {wrong:#?}");
    let unread: Vec<_> = expected.difference(&asked).collect();
    assert!(
        unread.is_empty(),
        "{label}: the loader never reads {} checkpoint tensors, e.g. {:?}",
        unread.len(),
        &unread[..unread.len().min(5)]
    );
    assert_eq!(asked.len(), expected.len(), "{label}");
}

fn unet(vb: VarBuilder, dir: &Path) {
    let cfg = UNetConfig::from_file(&dir.join("unet/config.json")).unwrap();
    UNet::load(vb, &cfg).unwrap();
}

fn vae(vb: VarBuilder, dir: &Path) {
    let cfg = VaeConfig::from_file(&dir.join("vae/config.json")).unwrap();
    Vae::load(vb, &cfg).unwrap();
}

fn text_encoder(folder: &'static str) -> impl FnOnce(VarBuilder, &Path) {
    move |vb, dir| {
        let cfg = ClipConfig::from_file(&dir.join(folder).join("config.json")).unwrap();
        ClipTextModel::load(vb, &cfg).unwrap();
    }
}

#[test]
fn sd_turbo_loaders_read_exactly_the_checkpoint_tensors() {
    check("sd-turbo", "unet", unet);
    check("sd-turbo", "vae", vae);
    check("sd-turbo", "text_encoder", text_encoder("text_encoder"));
}

#[test]
fn sd15_loaders_read_exactly_the_checkpoint_tensors() {
    check("stable-diffusion-v1-5", "unet", unet);
    check("stable-diffusion-v1-5", "vae", vae);
    check(
        "stable-diffusion-v1-5",
        "text_encoder",
        text_encoder("text_encoder"),
    );
}

#[test]
fn sdxl_turbo_loaders_read_exactly_the_checkpoint_tensors() {
    check("sdxl-turbo", "unet", unet);
    check("sdxl-turbo", "vae", vae);
    check("sdxl-turbo", "text_encoder", text_encoder("text_encoder"));
    check(
        "sdxl-turbo",
        "text_encoder_2",
        text_encoder("text_encoder_2"),
    );
}

/// The SDXL second encoder must come with its projection, the first without
/// (CLIPTextModel in the SDXL layout has none).
#[test]
fn sdxl_turbo_second_encoder_has_its_projection() {
    let dir = full_configs("sdxl-turbo");
    for (folder, projected) in [("text_encoder", false), ("text_encoder_2", true)] {
        let reference = reference(&dir, folder);
        let vb =
            VarBuilder::from_backend(Box::new(Recorder::new(reference)), DType::F32, Device::Cpu);
        let cfg = ClipConfig::from_file(&dir.join(folder).join("config.json")).unwrap();
        let model = ClipTextModel::load(vb, &cfg).unwrap();
        assert_eq!(model.has_projection(), projected, "{folder}");
    }
}
