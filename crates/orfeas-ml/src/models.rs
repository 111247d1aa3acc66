//! The model registry: known models, where installed copies are found, and
//! `list` / `verify` / `download`. Nothing is downloaded unless `download` is called.
//!
//! Search order for a model NAME (first complete folder wins):
//! 1. `$ORFEAS_MODELS/NAME/` (or an HF-cache layout inside `$ORFEAS_MODELS`),
//! 2. `<data dir>/models/NAME/`,
//! 3. the Hugging Face cache: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
//!    `~/.cache/huggingface/hub`, as `models--ORG--REPO/snapshots/<rev>/`
//!    (the revision in `refs/main` first), so one copy serves every tool.

pub mod download;

use std::io::Read;
use std::path::{Path, PathBuf};

pub use download::{DownloadProgress, download, fetch_file};

use crate::error::{Result, SdError};

/// Model family; decides which pipeline can run it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// SD 1.x / 2.x layout (one CLIP text encoder).
    Sd,
    /// SDXL (two text encoders, added conditioning).
    Sdxl,
    /// A tiny latent decoder (TAESD): used instead of a model's VAE, not on its own.
    TinyDecoder,
    /// TripoSR: one image to a 3D scene code (mesh via marching cubes).
    TripoSr,
    /// BiRefNet: a picture to its foreground mask (background removal before image→3D).
    BiRefNet,
    /// Only the `config.json` of a ViT image encoder (TripoSR's tokenizer; its
    /// weights are inside the TripoSR checkpoint).
    VitConfig,
}

impl Architecture {
    /// Whether a model of this family generates images on its own.
    pub fn generates_images(self) -> bool {
        matches!(self, Self::Sd | Self::Sdxl)
    }
}

/// A file of a known model, relative to the model folder.
#[derive(Debug, Clone, Copy)]
pub struct ModelFile {
    pub path: &'static str,
    /// Approximate size (parameters × 2 bytes for the fp16 weights), for display
    /// and free-space checks; the download checks the server's exact size.
    pub approx_size_bytes: u64,
}

/// A model ORFEAS knows how to fetch and run.
#[derive(Debug, Clone, Copy)]
pub struct KnownModel {
    pub name: &'static str,
    pub repo_id: &'static str,
    pub architecture: Architecture,
    pub files: &'static [ModelFile],
    pub licence: &'static str,
    /// True where the licence forbids commercial use; the UI must say so.
    pub non_commercial: bool,
    pub default_steps: usize,
    pub default_guidance: f64,
    pub default_size: usize,
}

const fn f(path: &'static str, approx_size_bytes: u64) -> ModelFile {
    ModelFile {
        path,
        approx_size_bytes,
    }
}

const SD_COMMON: [ModelFile; 8] = [
    f("model_index.json", 600),
    f("scheduler/scheduler_config.json", 600),
    f("text_encoder/config.json", 700),
    f("tokenizer/merges.txt", 524_619),
    f("tokenizer/special_tokens_map.json", 500),
    f("tokenizer/tokenizer_config.json", 800),
    f("tokenizer/vocab.json", 1_059_962),
    f("unet/config.json", 1_800),
];

const SD_TURBO_FILES: [ModelFile; 12] = [
    SD_COMMON[0],
    SD_COMMON[1],
    SD_COMMON[2],
    SD_COMMON[3],
    SD_COMMON[4],
    SD_COMMON[5],
    SD_COMMON[6],
    SD_COMMON[7],
    f("vae/config.json", 600),
    f("text_encoder/model.fp16.safetensors", 680_800_000),
    f(
        "unet/diffusion_pytorch_model.fp16.safetensors",
        1_731_900_000,
    ),
    f("vae/diffusion_pytorch_model.fp16.safetensors", 167_400_000),
];

const SD15_FILES: [ModelFile; 12] = [
    SD_COMMON[0],
    SD_COMMON[1],
    SD_COMMON[2],
    SD_COMMON[3],
    SD_COMMON[4],
    SD_COMMON[5],
    SD_COMMON[6],
    SD_COMMON[7],
    f("vae/config.json", 600),
    f("text_encoder/model.fp16.safetensors", 246_200_000),
    f(
        "unet/diffusion_pytorch_model.fp16.safetensors",
        1_719_100_000,
    ),
    f("vae/diffusion_pytorch_model.fp16.safetensors", 167_400_000),
];

const SDXL_TURBO_FILES: [ModelFile; 17] = [
    SD_COMMON[0],
    SD_COMMON[1],
    SD_COMMON[2],
    SD_COMMON[3],
    SD_COMMON[4],
    SD_COMMON[5],
    SD_COMMON[6],
    SD_COMMON[7],
    f("vae/config.json", 600),
    f("text_encoder_2/config.json", 700),
    f("tokenizer_2/merges.txt", 524_619),
    f("tokenizer_2/tokenizer_config.json", 800),
    f("tokenizer_2/vocab.json", 1_059_962),
    f("text_encoder/model.fp16.safetensors", 246_100_000),
    f("text_encoder_2/model.fp16.safetensors", 1_389_400_000),
    f(
        "unet/diffusion_pytorch_model.fp16.safetensors",
        5_135_100_000,
    ),
    f("vae/diffusion_pytorch_model.fp16.safetensors", 167_300_000),
];

const TAESD_FILES: [ModelFile; 2] = [
    f("config.json", 600),
    f("diffusion_pytorch_model.safetensors", 9_800_000),
];

const TRIPOSR_FILES: [ModelFile; 2] = [
    f("config.yaml", 1_100),
    // The official checkpoint: 419.3 M parameters in f32, as a torch.save zip.
    f("model.ckpt", 1_677_200_000),
];

// BiRefNet checkpoints are f32 safetensors: float parameters × 4 bytes (the
// integer buffers add under 1 MB). `config.json` names the model; the
// architecture values are built in (`birefnet::Config::lite` / `large`).
const BIREFNET_LITE_FILES: [ModelFile; 2] =
    [f("config.json", 250), f("model.safetensors", 177_400_000)];

const BIREFNET_FILES: [ModelFile; 2] = [f("config.json", 250), f("model.safetensors", 880_900_000)];

const DINO_VITB16_FILES: [ModelFile; 1] = [f("config.json", 500)];

/// Every model the registry knows, in the order the UI lists them.
pub const KNOWN_MODELS: &[KnownModel] = &[
    KnownModel {
        name: "sd-turbo",
        repo_id: "stabilityai/sd-turbo",
        architecture: Architecture::Sd,
        files: &SD_TURBO_FILES,
        licence: "Stability AI Non-Commercial Research Community License: NON-COMMERCIAL use only \
                  (commercial use needs a Stability AI membership)",
        non_commercial: true,
        default_steps: 1,
        default_guidance: 0.0,
        default_size: 512,
    },
    KnownModel {
        name: "sd-1.5",
        repo_id: "stable-diffusion-v1-5/stable-diffusion-v1-5",
        architecture: Architecture::Sd,
        files: &SD15_FILES,
        licence: "CreativeML OpenRAIL-M (commercial use allowed within its use restrictions)",
        non_commercial: false,
        default_steps: 25,
        default_guidance: 7.5,
        default_size: 512,
    },
    KnownModel {
        name: "sd-2.1",
        repo_id: "stabilityai/stable-diffusion-2-1",
        architecture: Architecture::Sd,
        files: &SD_TURBO_FILES,
        licence: "CreativeML OpenRAIL++-M (commercial use allowed within its use restrictions)",
        non_commercial: false,
        default_steps: 25,
        default_guidance: 7.5,
        default_size: 768,
    },
    KnownModel {
        name: "sdxl-turbo",
        repo_id: "stabilityai/sdxl-turbo",
        architecture: Architecture::Sdxl,
        files: &SDXL_TURBO_FILES,
        licence: "Stability AI Non-Commercial Research Community License: NON-COMMERCIAL use only",
        non_commercial: true,
        default_steps: 1,
        default_guidance: 0.0,
        default_size: 512,
    },
    KnownModel {
        name: "taesd",
        repo_id: "madebyollin/taesd",
        architecture: Architecture::TinyDecoder,
        files: &TAESD_FILES,
        licence: "MIT (tiny decoder for SD 1.x / 2.x latents)",
        non_commercial: false,
        default_steps: 0,
        default_guidance: 0.0,
        default_size: 0,
    },
    KnownModel {
        name: "taesdxl",
        repo_id: "madebyollin/taesdxl",
        architecture: Architecture::TinyDecoder,
        files: &TAESD_FILES,
        licence: "MIT (tiny decoder for SDXL latents)",
        non_commercial: false,
        default_steps: 0,
        default_guidance: 0.0,
        default_size: 0,
    },
    KnownModel {
        name: "triposr",
        repo_id: "stabilityai/TripoSR",
        architecture: Architecture::TripoSr,
        files: &TRIPOSR_FILES,
        licence: "MIT (image to 3D; commercial use allowed)",
        non_commercial: false,
        default_steps: 0,
        default_guidance: 0.0,
        // The image side the model sees (cond_image_size).
        default_size: 512,
    },
    KnownModel {
        name: "birefnet-lite",
        repo_id: "ZhengPeng7/BiRefNet_lite",
        architecture: Architecture::BiRefNet,
        files: &BIREFNET_LITE_FILES,
        licence: "MIT (BiRefNet_lite, Swin-T backbone; trained on DIS5K/HRSOD and other sets with their own terms)",
        non_commercial: false,
        default_steps: 0,
        default_guidance: 0.0,
        // The released inference size (1024×1024).
        default_size: 1024,
    },
    KnownModel {
        name: "birefnet",
        repo_id: "ZhengPeng7/BiRefNet",
        architecture: Architecture::BiRefNet,
        files: &BIREFNET_FILES,
        licence: "MIT (BiRefNet, Swin-L backbone; trained on DIS5K/HRSOD and other sets with their own terms)",
        non_commercial: false,
        default_steps: 0,
        default_guidance: 0.0,
        default_size: 1024,
    },
    KnownModel {
        name: "dino-vitb16",
        repo_id: "facebook/dino-vitb16",
        architecture: Architecture::VitConfig,
        files: &DINO_VITB16_FILES,
        licence: "Apache-2.0 (config of TripoSR's image encoder; built in, so optional)",
        non_commercial: false,
        default_steps: 0,
        default_guidance: 0.0,
        default_size: 0,
    },
];

/// Looks a model up by name (case-insensitive).
pub fn known(name: &str) -> Result<&'static KnownModel> {
    KNOWN_MODELS
        .iter()
        .find(|m| m.name.eq_ignore_ascii_case(name))
        .ok_or_else(|| SdError::UnknownModel {
            name: name.to_owned(),
            known: KNOWN_MODELS
                .iter()
                .map(|m| m.name)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

impl KnownModel {
    pub fn approx_size_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.approx_size_bytes).sum()
    }

    /// `models--org--name`, the HF cache folder name.
    fn hf_cache_name(&self) -> String {
        format!("models--{}", self.repo_id.replace('/', "--"))
    }
}

/// The folder downloads go to: `$ORFEAS_MODELS` if set, else `<data dir>/models`.
pub fn default_models_root() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("ORFEAS_MODELS") {
        return Ok(PathBuf::from(dir));
    }
    Ok(orfeas_core::paths::data_dir()?.join("models"))
}

/// The Hugging Face hub cache folder (honours HF_HUB_CACHE and HF_HOME).
pub fn hf_hub_cache() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("HF_HUB_CACHE") {
        return Some(PathBuf::from(dir));
    }
    if let Some(home) = std::env::var_os("HF_HOME") {
        return Some(PathBuf::from(home).join("hub"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/huggingface/hub"))
}

/// Snapshots in an HF cache for `model`, the `refs/main` one first.
fn hf_snapshots(cache: &Path, model: &KnownModel) -> Vec<PathBuf> {
    let base = cache.join(model.hf_cache_name());
    let mut out = Vec::new();
    if let Ok(rev) = std::fs::read_to_string(base.join("refs/main")) {
        out.push(base.join("snapshots").join(rev.trim()));
    }
    if let Ok(entries) = std::fs::read_dir(base.join("snapshots")) {
        let mut rest: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        rest.sort();
        for p in rest {
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    out
}

/// The places models are looked for; `from_env` gives the real ones, tests pass their own.
#[derive(Debug, Clone, Default)]
pub struct SearchRoots {
    /// `$ORFEAS_MODELS`: `NAME/` folders or an HF-cache layout.
    pub orfeas_models: Option<PathBuf>,
    /// `<data dir>/models`.
    pub data_models: Option<PathBuf>,
    /// The HF hub cache.
    pub hf_cache: Option<PathBuf>,
}

impl SearchRoots {
    /// `$ORFEAS_MODELS`, `data_dir/models` and the HF cache: where an app
    /// with its own data folder looks.
    pub fn for_data_dir(data_dir: &Path) -> Self {
        Self {
            orfeas_models: std::env::var_os("ORFEAS_MODELS").map(PathBuf::from),
            data_models: Some(data_dir.join("models")),
            hf_cache: hf_hub_cache(),
        }
    }

    pub fn from_env() -> Self {
        Self {
            orfeas_models: std::env::var_os("ORFEAS_MODELS").map(PathBuf::from),
            data_models: orfeas_core::paths::data_dir()
                .ok()
                .map(|d| d.join("models")),
            hf_cache: hf_hub_cache(),
        }
    }

    /// Every folder where `model` could be, in search order (existing or not).
    pub fn candidate_dirs(&self, model: &KnownModel) -> Vec<PathBuf> {
        let mut dirs = Vec::new();
        if let Some(root) = &self.orfeas_models {
            dirs.push(root.join(model.name));
            dirs.extend(hf_snapshots(root, model));
        }
        if let Some(root) = &self.data_models {
            dirs.push(root.join(model.name));
        }
        if let Some(cache) = &self.hf_cache {
            dirs.extend(hf_snapshots(cache, model));
        }
        dirs
    }

    /// The first complete installed copy of `model`.
    pub fn find_installed(&self, model: &KnownModel) -> Option<PathBuf> {
        self.candidate_dirs(model)
            .into_iter()
            .find(|d| d.is_dir() && missing_files(model, d).is_empty())
    }

    fn not_found(&self, model: &KnownModel) -> SdError {
        SdError::ModelNotFound {
            name: model.name.to_owned(),
            searched: self
                .candidate_dirs(model)
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        }
    }

    /// Resolves a model name to its folder, or the error that says how to get it.
    pub fn resolve(&self, name: &str) -> Result<PathBuf> {
        let model = known(name)?;
        self.find_installed(model)
            .ok_or_else(|| self.not_found(model))
    }

    /// Every known model with its install state.
    pub fn list(&self) -> Vec<ModelStatus> {
        KNOWN_MODELS
            .iter()
            .map(|m| {
                let installed = self.find_installed(m);
                let size_bytes = installed.as_deref().map_or(0, dir_size_bytes);
                ModelStatus {
                    model: m,
                    installed,
                    size_bytes,
                }
            })
            .collect()
    }

    /// Verifies the first existing copy of `name` (complete or not).
    pub fn verify(&self, name: &str) -> Result<VerifyReport> {
        let model = known(name)?;
        let dir = self
            .candidate_dirs(model)
            .into_iter()
            .find(|d| d.is_dir())
            .ok_or_else(|| self.not_found(model))?;
        Ok(verify_dir(model, &dir))
    }
}

/// Resolves a model name using the real search roots.
pub fn resolve(name: &str) -> Result<PathBuf> {
    SearchRoots::from_env().resolve(name)
}

/// Every known model with its install state, using the real search roots.
pub fn list() -> Vec<ModelStatus> {
    SearchRoots::from_env().list()
}

/// Verifies the installed copy of `name`; a missing model is an error naming the download command.
pub fn verify(name: &str) -> Result<VerifyReport> {
    SearchRoots::from_env().verify(name)
}

/// Files of `model` absent from `dir`. A `.fp16` weights file also counts
/// when the full-precision one is present, and the other way round.
pub fn missing_files(model: &KnownModel, dir: &Path) -> Vec<&'static str> {
    model
        .files
        .iter()
        .filter(|f| {
            // The fp16 file, its full-precision twin, or either as shards
            // (`NAME.safetensors.index.json`, as the loader reads them).
            let full = f.path.replace(".fp16.safetensors", ".safetensors");
            let candidates = [
                f.path.to_owned(),
                format!("{}.index.json", f.path),
                format!("{full}.index.json"),
                full,
            ];
            !candidates.iter().any(|c| dir.join(c).is_file())
        })
        .map(|f| f.path)
        .collect()
}

/// One row of `orfeas models list`.
#[derive(Debug, Clone)]
pub struct ModelStatus {
    pub model: &'static KnownModel,
    /// Where the complete copy is, if any.
    pub installed: Option<PathBuf>,
    /// Bytes on disk of the installed copy (0 when missing).
    pub size_bytes: u64,
}

fn dir_size_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| {
            let p = e.path();
            // Follow symlinks: the HF cache links snapshots to blobs.
            match std::fs::metadata(&p) {
                Ok(m) if m.is_dir() => dir_size_bytes(&p),
                Ok(m) => m.len(),
                Err(_) => 0,
            }
        })
        .sum()
}

/// Checks a safetensors file without reading its tensors: the header parses
/// and the file is exactly as long as the header says.
pub fn check_safetensors(path: &Path) -> Result<()> {
    safetensors_names(path).map(|_| ())
}

/// The tensor names of a safetensors file, after the same checks as
/// [`check_safetensors`] (reads the header only).
pub fn safetensors_names(path: &Path) -> Result<Vec<String>> {
    let (_, header) = read_safetensors_header(path)?;
    Ok(header.tensors.keys().cloned().collect())
}

/// A safetensors file's header after [`check_safetensors`]' checks.
pub(crate) struct SafetensorsHeader {
    /// Where the tensor data starts: past the length word and the header.
    pub data_start: u64,
    /// The file's length, which the header accounts for exactly.
    pub file_len: u64,
    /// `name → {dtype, shape, data_offsets}`, without `__metadata__`.
    pub tensors: serde_json::Map<String, serde_json::Value>,
}

/// Opens a safetensors file and reads its header: it parses, every tensor has
/// sound `data_offsets`, and the file is exactly as long as the header says.
/// The file comes back positioned at the start of the data.
pub(crate) fn read_safetensors_header(path: &Path) -> Result<(std::fs::File, SafetensorsHeader)> {
    let corrupt = |reason: String| SdError::CorruptWeights {
        path: path.to_path_buf(),
        reason,
    };
    let mut file = std::fs::File::open(path).map_err(|e| SdError::io(path, e))?;
    let file_len = file.metadata().map_err(|e| SdError::io(path, e))?.len();
    let mut len_bytes = [0u8; 8];
    file.read_exact(&mut len_bytes)
        .map_err(|_| corrupt(format!("only {file_len} bytes, too short for a header")))?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > 100 * 1024 * 1024 || 8 + header_len > file_len {
        return Err(corrupt(format!(
            "header length {header_len} does not fit in {file_len} bytes"
        )));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header)
        .map_err(|e| corrupt(format!("cannot read the header: {e}")))?;
    let json: serde_json::Value =
        serde_json::from_slice(&header).map_err(|e| corrupt(format!("header is not JSON: {e}")))?;
    let serde_json::Value::Object(mut tensors) = json else {
        return Err(corrupt("header is not a JSON object".into()));
    };
    tensors.remove("__metadata__");
    let mut data_end = 0u64;
    for (name, info) in &tensors {
        let offs = info
            .get("data_offsets")
            .and_then(|o| o.as_array())
            .and_then(|a| Some((a.first()?.as_u64()?, a.get(1)?.as_u64()?)))
            .ok_or_else(|| corrupt(format!("tensor {name} has no data_offsets")))?;
        if offs.1 < offs.0 {
            return Err(corrupt(format!("tensor {name} has inverted offsets")));
        }
        data_end = data_end.max(offs.1);
    }
    let expected = 8 + header_len + data_end;
    if expected != file_len {
        return Err(corrupt(format!(
            "header describes {expected} bytes but the file has {file_len} (truncated download?)"
        )));
    }
    let data_start = 8 + header_len;
    Ok((
        file,
        SafetensorsHeader {
            data_start,
            file_len,
            tensors,
        },
    ))
}

/// Result of `verify`.
#[derive(Debug, Clone)]
pub struct VerifyReport {
    pub dir: PathBuf,
    /// Human-readable problems; empty means the copy is complete and sound.
    pub problems: Vec<String>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks a model folder: every file present, each safetensors header sound
/// and the file exactly as long as it says, weights roughly the expected size.
pub fn verify_dir(model: &KnownModel, dir: &Path) -> VerifyReport {
    let mut problems: Vec<String> = missing_files(model, dir)
        .into_iter()
        .map(|p| format!("missing {p}"))
        .collect();
    for file in model
        .files
        .iter()
        .filter(|f| f.path.ends_with(".safetensors"))
    {
        let p = [
            dir.join(file.path),
            dir.join(file.path.replace(".fp16.safetensors", ".safetensors")),
        ]
        .into_iter()
        .find(|p| p.is_file());
        let Some(p) = p else { continue };
        if let Err(e) = check_safetensors(&p) {
            problems.push(format!("{e}"));
            continue;
        }
        let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        // fp32 copies are twice the fp16 size; anything far outside is a different model.
        let (lo, hi) = (file.approx_size_bytes / 2, file.approx_size_bytes * 5 / 2);
        if len < lo || len > hi {
            problems.push(format!(
                "{} is {len} bytes; expected about {} (another model's weights?)",
                p.display(),
                file.approx_size_bytes
            ));
        }
    }
    VerifyReport {
        dir: dir.to_path_buf(),
        problems,
    }
}
