//! Single-file checkpoints in the original (CompVis/LDM) layout, as community SD
//! 1.x models are shared: one `.safetensors` with the UNet under
//! `model.diffusion_model.`, the VAE under `first_stage_model.` and the CLIP text
//! encoder under `cond_stage_model.transformer.`. Their tensors are renamed to
//! the diffusers layout the loaders read; the configs and the tokenizer are
//! SD 1.5's (built in), or those of a diffusers folder given alongside.
//!
//! SD 2.x (OpenCLIP text encoder, `cond_stage_model.model.`) and SDXL
//! (`conditioner.embedders.`) single files are recognised and refused with the
//! way forward: their text encoders need fused-attention splitting and, for 2.x
//! 768 models, a v-prediction flag the file does not carry.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::clip::{ClipConfig, ClipTextModel};
use super::schedulers::SchedulerConfig;
use super::tokenizer::ClipTokenizer;
use super::unet::{UNet, UNetConfig};
use super::vae::{Vae, VaeConfig};
use crate::error::{Result, SdError};

const UNET_PREFIX: &str = "model.diffusion_model.";
const VAE_PREFIX: &str = "first_stage_model.";
const TEXT_PREFIX: &str = "cond_stage_model.transformer.";

/// SD 1.5's configs and CLIP BPE files, for files that carry none.
mod sd15 {
    pub const UNET: &str = include_str!(
        "../../tests/fixtures/sd-tiny/full-configs/stable-diffusion-v1-5/unet/config.json"
    );
    pub const VAE: &str = include_str!(
        "../../tests/fixtures/sd-tiny/full-configs/stable-diffusion-v1-5/vae/config.json"
    );
    pub const TEXT_ENCODER: &str = include_str!(
        "../../tests/fixtures/sd-tiny/full-configs/stable-diffusion-v1-5/text_encoder/config.json"
    );
    pub const SCHEDULER: &str = include_str!(
        "../../tests/fixtures/sd-tiny/full-configs/stable-diffusion-v1-5/scheduler/scheduler_config.json"
    );
    /// OpenAI CLIP's BPE (the SD fixture's copy; every SD tokenizer uses it).
    pub const VOCAB: &str = include_str!("../../tests/fixtures/sd-tiny/tokenizer/vocab.json");
    pub const MERGES: &str = include_str!("../../tests/fixtures/sd-tiny/tokenizer/merges.txt");
}

/// Which family a single file holds, from its tensor names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointFamily {
    Sd1,
    Sd2,
    Sdxl,
}

/// Reads the family from the names alone (no tensor data).
pub fn family_of(names: &[String]) -> Option<CheckpointFamily> {
    let has = |prefix: &str| names.iter().any(|n| n.starts_with(prefix));
    if has("conditioner.embedders.") {
        Some(CheckpointFamily::Sdxl)
    } else if has("cond_stage_model.model.") {
        Some(CheckpointFamily::Sd2)
    } else if has(TEXT_PREFIX) && has(UNET_PREFIX) && has(VAE_PREFIX) {
        Some(CheckpointFamily::Sd1)
    } else {
        None
    }
}

/// Whether `path` looks like a single-file checkpoint rather than a folder.
pub fn is_single_file(path: &Path) -> bool {
    path.is_file()
        && path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"))
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| SdError::Config {
        path: PathBuf::from(format!("<built-in SD 1.5 {what}>")),
        reason: e.to_string(),
    })
}

/// The parts besides the weights: from `config_dir` (a diffusers folder of the
/// same architecture) or SD 1.5's built-in ones.
pub struct SingleFileConfigs {
    pub unet: UNetConfig,
    pub vae: VaeConfig,
    pub text_encoder: ClipConfig,
    pub scheduler: SchedulerConfig,
    pub tokenizer: ClipTokenizer,
}

impl SingleFileConfigs {
    pub fn load(config_dir: Option<&Path>) -> Result<Self> {
        match config_dir {
            Some(dir) => Ok(Self {
                unet: UNetConfig::from_file(&dir.join("unet/config.json"))?,
                vae: VaeConfig::from_file(&dir.join("vae/config.json"))?,
                text_encoder: ClipConfig::from_file(&dir.join("text_encoder/config.json"))?,
                scheduler: SchedulerConfig::from_file(
                    &dir.join("scheduler/scheduler_config.json"),
                )?,
                tokenizer: ClipTokenizer::from_dir(&dir.join("tokenizer"))?,
            }),
            None => Ok(Self {
                unet: parse("unet config", sd15::UNET)?,
                vae: parse("vae config", sd15::VAE)?,
                text_encoder: parse("text encoder config", sd15::TEXT_ENCODER)?,
                scheduler: parse("scheduler config", sd15::SCHEDULER)?,
                // SD 1.x pads with the end token.
                tokenizer: ClipTokenizer::from_parts(
                    parse("vocabulary", sd15::VOCAB)?,
                    sd15::MERGES,
                    "<|endoftext|>",
                    77,
                )?,
            }),
        }
    }
}

/// Where one LDM tensor goes: its component and diffusers name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Unet(String),
    Vae(String),
    TextEncoder(String),
    /// Not a weight the pipeline uses (position ids, EMA copies, …).
    Skip,
}

/// The UNet block layout the index arithmetic needs.
#[derive(Debug, Clone)]
pub struct UnetLayout {
    pub layers_per_block: usize,
    pub blocks: usize,
    /// Per up block (diffusers order): whether it has attentions.
    pub up_has_attention: Vec<bool>,
}

impl UnetLayout {
    pub fn of(cfg: &UNetConfig) -> Self {
        Self {
            layers_per_block: cfg.layers_per_block,
            blocks: cfg.block_out_channels.len(),
            up_has_attention: cfg
                .up_block_types
                .iter()
                .map(|t| t.starts_with("CrossAttn"))
                .collect(),
        }
    }
}

fn resnet_part(rest: &str) -> String {
    for (from, to) in [
        ("in_layers.0", "norm1"),
        ("in_layers.2", "conv1"),
        ("emb_layers.1", "time_emb_proj"),
        ("out_layers.0", "norm2"),
        ("out_layers.3", "conv2"),
        ("skip_connection", "conv_shortcut"),
    ] {
        if let Some(tail) = rest.strip_prefix(from) {
            return format!("{to}{tail}");
        }
    }
    rest.to_owned()
}

/// Splits `"12.0.in_layers.0.weight"` into (12, 0, "in_layers.0.weight").
fn two_indices(s: &str) -> Option<(usize, usize, &str)> {
    let (a, rest) = s.split_once('.')?;
    let (b, rest) = rest.split_once('.')?;
    Some((a.parse().ok()?, b.parse().ok()?, rest))
}

/// The diffusers UNet name of an LDM UNet name (without `model.diffusion_model.`).
pub fn unet_name(name: &str, layout: &UnetLayout) -> Option<String> {
    let l = layout.layers_per_block;
    for (from, to) in [
        ("time_embed.0.", "time_embedding.linear_1."),
        ("time_embed.2.", "time_embedding.linear_2."),
        ("label_emb.0.0.", "add_embedding.linear_1."),
        ("label_emb.0.2.", "add_embedding.linear_2."),
        ("out.0.", "conv_norm_out."),
        ("out.2.", "conv_out."),
        ("input_blocks.0.0.", "conv_in."),
    ] {
        if let Some(tail) = name.strip_prefix(from) {
            return Some(format!("{to}{tail}"));
        }
    }
    if let Some(rest) = name.strip_prefix("input_blocks.") {
        let (k, sub, tail) = two_indices(rest)?;
        let k = k.checked_sub(1)?;
        let (block, j) = (k / (l + 1), k % (l + 1));
        if j == l {
            let tail = tail.strip_prefix("op.")?;
            return Some(format!("down_blocks.{block}.downsamplers.0.conv.{tail}"));
        }
        return Some(match sub {
            0 => format!("down_blocks.{block}.resnets.{j}.{}", resnet_part(tail)),
            1 => format!("down_blocks.{block}.attentions.{j}.{tail}"),
            _ => return None,
        });
    }
    if let Some(rest) = name.strip_prefix("middle_block.") {
        let (sub, tail) = rest.split_once('.')?;
        return Some(match sub {
            "0" => format!("mid_block.resnets.0.{}", resnet_part(tail)),
            "1" => format!("mid_block.attentions.0.{tail}"),
            "2" => format!("mid_block.resnets.1.{}", resnet_part(tail)),
            _ => return None,
        });
    }
    if let Some(rest) = name.strip_prefix("output_blocks.") {
        let (k, sub, tail) = two_indices(rest)?;
        let (block, j) = (k / (l + 1), k % (l + 1));
        let attn = *layout.up_has_attention.get(block)?;
        return Some(match (sub, attn) {
            (0, _) => format!("up_blocks.{block}.resnets.{j}.{}", resnet_part(tail)),
            (1, true) => format!("up_blocks.{block}.attentions.{j}.{tail}"),
            (1, false) | (2, true) => {
                format!("up_blocks.{block}.upsamplers.0.{tail}")
            }
            _ => return None,
        });
    }
    None
}

fn vae_resnet_part(rest: &str) -> String {
    match rest.strip_prefix("nin_shortcut") {
        Some(tail) => format!("conv_shortcut{tail}"),
        None => rest.to_owned(),
    }
}

fn vae_mid(rest: &str) -> Option<String> {
    if let Some(tail) = rest.strip_prefix("block_1.") {
        return Some(format!("mid_block.resnets.0.{}", vae_resnet_part(tail)));
    }
    if let Some(tail) = rest.strip_prefix("block_2.") {
        return Some(format!("mid_block.resnets.1.{}", vae_resnet_part(tail)));
    }
    let tail = rest.strip_prefix("attn_1.")?;
    let (part, param) = tail.split_once('.')?;
    let to = match part {
        "norm" => "group_norm",
        "q" => "to_q",
        "k" => "to_k",
        "v" => "to_v",
        "proj_out" => "to_out.0",
        _ => return None,
    };
    Some(format!("mid_block.attentions.0.{to}.{param}"))
}

/// The diffusers VAE name of an LDM VAE name (without `first_stage_model.`).
pub fn vae_name(name: &str, blocks: usize) -> Option<String> {
    for side in ["encoder", "decoder"] {
        let Some(rest) = name.strip_prefix(side).and_then(|r| r.strip_prefix('.')) else {
            continue;
        };
        if let Some(tail) = rest.strip_prefix("norm_out.") {
            return Some(format!("{side}.conv_norm_out.{tail}"));
        }
        if rest.starts_with("conv_in.") || rest.starts_with("conv_out.") {
            return Some(format!("{side}.{rest}"));
        }
        if let Some(mid) = rest.strip_prefix("mid.") {
            return vae_mid(mid).map(|m| format!("{side}.{m}"));
        }
        let (level, tail) = rest
            .strip_prefix("down.")
            .or_else(|| rest.strip_prefix("up."))
            .and_then(|r| r.split_once('.'))?;
        let level: usize = level.parse().ok()?;
        let (kind, blocks_name, level) = if side == "encoder" {
            ("downsample", "down_blocks", level)
        } else {
            // LDM counts the decoder's levels from the lowest resolution up.
            ("upsample", "up_blocks", blocks.checked_sub(level + 1)?)
        };
        if let Some(block) = tail.strip_prefix("block.") {
            let (j, param) = block.split_once('.')?;
            return Some(format!(
                "{side}.{blocks_name}.{level}.resnets.{j}.{}",
                vae_resnet_part(param)
            ));
        }
        let sampler = tail.strip_prefix(kind)?.strip_prefix(".conv.")?;
        let samplers = if side == "encoder" {
            "downsamplers"
        } else {
            "upsamplers"
        };
        return Some(format!(
            "{side}.{blocks_name}.{level}.{samplers}.0.conv.{sampler}"
        ));
    }
    for conv in ["quant_conv.", "post_quant_conv."] {
        if name.starts_with(conv) {
            return Some(name.to_owned());
        }
    }
    None
}

/// Where an LDM tensor goes; `Err` names a tensor of a known part that does
/// not fit the layout (a different architecture).
pub fn target(name: &str, layout: &UnetLayout, vae_blocks: usize) -> Result<Target> {
    let unmapped = |part: &str| {
        SdError::invalid(
            "checkpoint",
            format!("{part} tensor '{name}' does not fit the SD 1.x layout"),
        )
    };
    if let Some(rest) = name.strip_prefix(UNET_PREFIX) {
        return unet_name(rest, layout)
            .map(Target::Unet)
            .ok_or_else(|| unmapped("UNet"));
    }
    if let Some(rest) = name.strip_prefix(VAE_PREFIX) {
        return vae_name(rest, vae_blocks)
            .map(Target::Vae)
            .ok_or_else(|| unmapped("VAE"));
    }
    if let Some(rest) = name.strip_prefix(TEXT_PREFIX) {
        if rest.ends_with("position_ids") {
            return Ok(Target::Skip);
        }
        return Ok(Target::TextEncoder(rest.to_owned()));
    }
    Ok(Target::Skip)
}

/// The three components' tensors under diffusers names, in `dtype` on `device`.
pub struct SplitWeights {
    pub unet: HashMap<String, Tensor>,
    pub vae: HashMap<String, Tensor>,
    pub text_encoder: HashMap<String, Tensor>,
}

/// Renames every tensor of an SD 1.x single file; VAE attention weights stored
/// as 1×1 convolutions become the linear weights diffusers uses.
pub fn split(
    tensors: HashMap<String, Tensor>,
    cfg: &SingleFileConfigs,
    dtype: DType,
) -> Result<SplitWeights> {
    let layout = UnetLayout::of(&cfg.unet);
    let vae_blocks = cfg.vae.block_out_channels.len();
    let mut out = SplitWeights {
        unet: HashMap::new(),
        vae: HashMap::new(),
        text_encoder: HashMap::new(),
    };
    for (name, t) in tensors {
        let t = if t.dtype().is_float() {
            t.to_dtype(dtype)?
        } else {
            t
        };
        match target(&name, &layout, vae_blocks)? {
            Target::Unet(n) => {
                out.unet.insert(n, t);
            }
            Target::Vae(n) => {
                let is_attn_weight = n.contains("mid_block.attentions.0.to_")
                    && n.ends_with(".weight")
                    && t.rank() == 4;
                let t = if is_attn_weight {
                    let (o, i, _, _) = t.dims4()?;
                    t.reshape((o, i))?
                } else {
                    t
                };
                out.vae.insert(n, t);
            }
            Target::TextEncoder(n) => {
                out.text_encoder.insert(n, t);
            }
            Target::Skip => {}
        }
    }
    Ok(out)
}

/// The loaded parts of a single file.
pub struct SingleFileModel {
    pub tokenizer: ClipTokenizer,
    pub text_encoder: ClipTextModel,
    pub unet: UNet,
    pub vae: Vae,
    pub scheduler: SchedulerConfig,
}

fn refuse(path: &Path, what: &str) -> SdError {
    SdError::invalid(
        "checkpoint",
        format!(
            "{} is a single-file {what} checkpoint; only SD 1.x single files load directly. \
             Use the model's diffusers-format folder instead (Hugging Face repos have one), \
             or convert it with diffusers' from_single_file(...).save_pretrained(DIR)",
            path.display()
        ),
    )
}

/// Loads an SD 1.x single-file checkpoint; `config_dir` supplies configs and a
/// tokenizer in place of SD 1.5's.
pub fn load(
    path: &Path,
    config_dir: Option<&Path>,
    device: &Device,
    dtype: DType,
) -> Result<SingleFileModel> {
    crate::models::check_safetensors(path)?;
    let bytes = std::fs::read(path).map_err(|e| SdError::io(path, e))?;
    let tensors = candle_core::safetensors::load_buffer(&bytes, device).map_err(|e| {
        SdError::CorruptWeights {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }
    })?;
    drop(bytes);
    let names: Vec<String> = tensors.keys().cloned().collect();
    match family_of(&names) {
        Some(CheckpointFamily::Sd1) => {}
        Some(CheckpointFamily::Sd2) => return Err(refuse(path, "SD 2.x")),
        Some(CheckpointFamily::Sdxl) => return Err(refuse(path, "SDXL")),
        None => {
            return Err(SdError::invalid(
                "checkpoint",
                format!(
                    "{} is not a Stable Diffusion checkpoint (no model.diffusion_model., \
                     first_stage_model. and cond_stage_model. tensors)",
                    path.display()
                ),
            ));
        }
    }
    let cfg = SingleFileConfigs::load(config_dir)?;
    let parts = split(tensors, &cfg, dtype)?;
    let mismatch = |part: &str| {
        let path = path.to_path_buf();
        let part = part.to_owned();
        move |e: SdError| match e {
            SdError::Candle(c) => SdError::CorruptWeights {
                path: path.clone(),
                reason: format!("its {part} does not match the SD 1.x layout: {c}"),
            },
            other => other,
        }
    };
    let vb = |map: HashMap<String, Tensor>| VarBuilder::from_tensors(map, dtype, device);
    let text_encoder = ClipTextModel::load(vb(parts.text_encoder), &cfg.text_encoder)
        .map_err(mismatch("text encoder"))?;
    let unet = UNet::load(vb(parts.unet), &cfg.unet).map_err(mismatch("UNet"))?;
    let vae = Vae::load(vb(parts.vae), &cfg.vae).map_err(mismatch("VAE"))?;
    Ok(SingleFileModel {
        tokenizer: cfg.tokenizer,
        text_encoder,
        unet,
        vae,
        scheduler: cfg.scheduler,
    })
}
