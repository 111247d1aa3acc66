//! Single-file checkpoints in the original (CompVis/LDM and Stability SGM)
//! layout, as community SD 1.x and SDXL models are shared: one `.safetensors`
//! with the UNet under `model.diffusion_model.` and the VAE under
//! `first_stage_model.`; SD 1.x's CLIP text encoder under
//! `cond_stage_model.transformer.`, SDXL's two under `conditioner.embedders.0.`
//! (CLIP-L, transformers naming) and `conditioner.embedders.1.model.` (OpenCLIP
//! bigG: fused attention projections, a transposed text projection). Their
//! tensors are renamed to the diffusers layout the loaders read; configs and
//! tokenizers are SD 1.5's or SDXL's (built in), or those of a diffusers folder
//! given alongside.
//!
//! SD 2.x single files (OpenCLIP under `cond_stage_model.model.`) are recognised
//! and refused with the way forward: whether one predicts noise or velocity
//! (512-base or 768-v) is not in the file.

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
const XL_TEXT_PREFIX: &str = "conditioner.embedders.0.transformer.";
const XL_OPEN_CLIP_PREFIX: &str = "conditioner.embedders.1.model.";

/// SD 1.5's configs and CLIP BPE files, for files that carry none.
mod sd15 {
    pub const UNET: &str = include_str!("../../assets/sd-1.5/unet.json");
    pub const VAE: &str = include_str!("../../assets/sd-1.5/vae.json");
    pub const TEXT_ENCODER: &str = include_str!("../../assets/sd-1.5/text_encoder.json");
    pub const SCHEDULER: &str = include_str!("../../assets/sd-1.5/scheduler.json");
    /// OpenAI CLIP's BPE (every SD tokenizer uses it).
    pub const VOCAB: &str = include_str!("../../assets/clip/vocab.json");
    pub const MERGES: &str = include_str!("../../assets/clip/merges.txt");
}

/// SDXL's configs (SDXL base and its fine-tunes share SDXL-Turbo's architecture).
mod sdxl {
    pub const UNET: &str = include_str!("../../assets/sdxl/unet.json");
    pub const VAE: &str = include_str!("../../assets/sdxl/vae.json");
    pub const TEXT_ENCODER: &str = include_str!("../../assets/sdxl/text_encoder.json");
    pub const TEXT_ENCODER_2: &str = include_str!("../../assets/sdxl/text_encoder_2.json");
    /// SDXL base's published scheduler (Euler, leading spacing).
    pub const SCHEDULER: &str = r#"{
        "_class_name": "EulerDiscreteScheduler",
        "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "num_train_timesteps": 1000, "prediction_type": "epsilon",
        "timestep_spacing": "leading", "steps_offset": 1
    }"#;
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

/// The family of a single file, from its header alone.
pub fn family_of_file(path: &Path) -> Result<Option<CheckpointFamily>> {
    Ok(family_of(&crate::models::safetensors_names(path)?))
}

/// Whether `path` is named like a single-file checkpoint (no file-system access).
pub fn has_checkpoint_name(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"))
}

/// Whether `path` is a single-file checkpoint rather than a folder.
pub fn is_single_file(path: &Path) -> bool {
    has_checkpoint_name(path) && path.is_file()
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| SdError::Config {
        path: PathBuf::from(format!("<built-in {what}>")),
        reason: e.to_string(),
    })
}

/// The parts besides the weights: from `config_dir` (a diffusers folder of the
/// same architecture) or the family's built-in ones.
pub struct SingleFileConfigs {
    pub unet: UNetConfig,
    pub vae: VaeConfig,
    pub text_encoder: ClipConfig,
    pub scheduler: SchedulerConfig,
    pub tokenizer: ClipTokenizer,
    /// SDXL's second text encoder and its tokenizer.
    pub second: Option<(ClipConfig, ClipTokenizer)>,
}

fn builtin_tokenizer(pad: &str) -> Result<ClipTokenizer> {
    ClipTokenizer::from_parts(
        parse("CLIP vocabulary", sd15::VOCAB)?,
        sd15::MERGES,
        pad,
        77,
    )
}

impl SingleFileConfigs {
    pub fn load(family: CheckpointFamily, config_dir: Option<&Path>) -> Result<Self> {
        let xl = family == CheckpointFamily::Sdxl;
        match config_dir {
            Some(dir) => Ok(Self {
                unet: UNetConfig::from_file(&dir.join("unet/config.json"))?,
                vae: VaeConfig::from_file(&dir.join("vae/config.json"))?,
                text_encoder: ClipConfig::from_file(&dir.join("text_encoder/config.json"))?,
                scheduler: SchedulerConfig::from_file(
                    &dir.join("scheduler/scheduler_config.json"),
                )?,
                tokenizer: ClipTokenizer::from_dir(&dir.join("tokenizer"))?,
                second: if xl {
                    Some((
                        ClipConfig::from_file(&dir.join("text_encoder_2/config.json"))?,
                        ClipTokenizer::from_dir(&dir.join("tokenizer_2"))?,
                    ))
                } else {
                    None
                },
            }),
            None if xl => Ok(Self {
                unet: parse("SDXL unet config", sdxl::UNET)?,
                vae: parse("SDXL vae config", sdxl::VAE)?,
                text_encoder: parse("SDXL text encoder config", sdxl::TEXT_ENCODER)?,
                scheduler: parse("SDXL scheduler config", sdxl::SCHEDULER)?,
                // CLIP-L pads with the end token, OpenCLIP-bigG with "!".
                tokenizer: builtin_tokenizer("<|endoftext|>")?,
                second: Some((
                    parse("SDXL second text encoder config", sdxl::TEXT_ENCODER_2)?,
                    builtin_tokenizer("!")?,
                )),
            }),
            None => Ok(Self {
                unet: parse("SD 1.5 unet config", sd15::UNET)?,
                vae: parse("SD 1.5 vae config", sd15::VAE)?,
                text_encoder: parse("SD 1.5 text encoder config", sd15::TEXT_ENCODER)?,
                scheduler: parse("SD 1.5 scheduler config", sd15::SCHEDULER)?,
                // SD 1.x pads with the end token.
                tokenizer: builtin_tokenizer("<|endoftext|>")?,
                second: None,
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
    /// SDXL's second (OpenCLIP) encoder, under transformers names.
    TextEncoder2(OpenClip),
    /// Not a weight the pipeline uses (position ids, EMA copies, …).
    Skip,
}

/// How an OpenCLIP tensor becomes transformers' `CLIPTextModelWithProjection` ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenClip {
    /// Renamed only.
    Rename(String),
    /// Layer `layer`'s fused q, k, v projection (weight or bias): split in three.
    InProj { layer: usize, bias: bool },
    /// `text_projection` (hidden × projection): transposed into the Linear weight.
    Projection,
}

/// The transformers name of an OpenCLIP text tower tensor (without the prefix).
pub fn open_clip_name(name: &str) -> Option<OpenClip> {
    let plain = |s: String| Some(OpenClip::Rename(s));
    match name {
        "token_embedding.weight" => {
            return plain("text_model.embeddings.token_embedding.weight".into());
        }
        "positional_embedding" => {
            return plain("text_model.embeddings.position_embedding.weight".into());
        }
        "text_projection" => return Some(OpenClip::Projection),
        _ => {}
    }
    if let Some(tail) = name.strip_prefix("ln_final.") {
        return plain(format!("text_model.final_layer_norm.{tail}"));
    }
    let rest = name.strip_prefix("transformer.resblocks.")?;
    let (layer, tail) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    match tail {
        "attn.in_proj_weight" => return Some(OpenClip::InProj { layer, bias: false }),
        "attn.in_proj_bias" => return Some(OpenClip::InProj { layer, bias: true }),
        _ => {}
    }
    let base = format!("text_model.encoder.layers.{layer}");
    for (from, to) in [
        ("ln_1.", "layer_norm1."),
        ("ln_2.", "layer_norm2."),
        ("attn.out_proj.", "self_attn.out_proj."),
        ("mlp.c_fc.", "mlp.fc1."),
        ("mlp.c_proj.", "mlp.fc2."),
    ] {
        if let Some(param) = tail.strip_prefix(from) {
            return plain(format!("{base}.{to}{param}"));
        }
    }
    None
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
            format!("{part} tensor '{name}' does not fit the SD 1.x / SDXL layout"),
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
    if let Some(rest) = name
        .strip_prefix(TEXT_PREFIX)
        .or_else(|| name.strip_prefix(XL_TEXT_PREFIX))
    {
        if rest.ends_with("position_ids") {
            return Ok(Target::Skip);
        }
        return Ok(Target::TextEncoder(rest.to_owned()));
    }
    if let Some(rest) = name.strip_prefix(XL_OPEN_CLIP_PREFIX) {
        // CLIP's contrastive temperature and buffers are not used for text conditioning.
        if rest == "logit_scale" || rest == "attn_mask" {
            return Ok(Target::Skip);
        }
        return open_clip_name(rest)
            .map(Target::TextEncoder2)
            .ok_or_else(|| unmapped("OpenCLIP text encoder"));
    }
    Ok(Target::Skip)
}

/// Each model's tensors under diffusers names, in `dtype` on `device`.
pub struct SplitWeights {
    pub unet: HashMap<String, Tensor>,
    pub vae: HashMap<String, Tensor>,
    pub text_encoder: HashMap<String, Tensor>,
    /// SDXL's second encoder (empty otherwise).
    pub text_encoder_2: HashMap<String, Tensor>,
}

/// Renames every tensor of an SD 1.x or SDXL single file; VAE attention weights stored
/// as 1×1 convolutions become the linear weights diffusers uses.
pub fn split(
    tensors: HashMap<String, Tensor>,
    cfg: &SingleFileConfigs,
    dtype: DType,
    vae_dtype: DType,
) -> Result<SplitWeights> {
    let layout = UnetLayout::of(&cfg.unet);
    let vae_blocks = cfg.vae.block_out_channels.len();
    let mut out = SplitWeights {
        unet: HashMap::new(),
        vae: HashMap::new(),
        text_encoder: HashMap::new(),
        text_encoder_2: HashMap::new(),
    };
    for (name, t) in tensors {
        let target = target(&name, &layout, vae_blocks)?;
        let want = if matches!(target, Target::Vae(_)) {
            vae_dtype
        } else {
            dtype
        };
        let t = if t.dtype().is_float() {
            t.to_dtype(want)?
        } else {
            t
        };
        match target {
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
            Target::TextEncoder2(OpenClip::Rename(n)) => {
                out.text_encoder_2.insert(n, t);
            }
            Target::TextEncoder2(OpenClip::Projection) => {
                out.text_encoder_2
                    .insert("text_projection.weight".into(), t.t()?.contiguous()?);
            }
            Target::TextEncoder2(OpenClip::InProj { layer, bias }) => {
                let rows = t.dim(0)?;
                if rows % 3 != 0 {
                    return Err(SdError::invalid(
                        "checkpoint",
                        format!("{name} has {rows} rows; a fused q/k/v needs a multiple of 3"),
                    ));
                }
                let h = rows / 3;
                let param = if bias { "bias" } else { "weight" };
                for (i, part) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
                    out.text_encoder_2.insert(
                        format!("text_model.encoder.layers.{layer}.self_attn.{part}.{param}"),
                        t.narrow(0, i * h, h)?.contiguous()?,
                    );
                }
            }
            Target::Skip => {}
        }
    }
    Ok(out)
}

/// The loaded parts of a single file.
pub struct SingleFileModel {
    pub family: CheckpointFamily,
    pub tokenizer: ClipTokenizer,
    pub text_encoder: ClipTextModel,
    /// SDXL's second tokenizer and encoder.
    pub second: Option<(ClipTokenizer, ClipTextModel)>,
    pub unet: UNet,
    pub vae: Vae,
    /// f32 where the VAE forces an upcast (SDXL), else the model's dtype.
    pub vae_dtype: DType,
    pub scheduler: SchedulerConfig,
}

fn refuse(path: &Path, what: &str) -> SdError {
    SdError::invalid(
        "checkpoint",
        format!(
            "{} is a single-file {what} checkpoint; only SD 1.x and SDXL single files load directly. \
             Use the model's diffusers-format folder instead (Hugging Face repos have one), \
             or convert it with diffusers' from_single_file(...).save_pretrained(DIR)",
            path.display()
        ),
    )
}

/// Loads an SD 1.x or SDXL single-file checkpoint; `config_dir` supplies
/// configs and tokenizers in place of the built-in ones.
pub fn load(
    path: &Path,
    config_dir: Option<&Path>,
    device: &Device,
    dtype: DType,
) -> Result<SingleFileModel> {
    let tensors = super::weights::read_safetensors(path, device)?;
    let names: Vec<String> = tensors.keys().cloned().collect();
    let family = match family_of(&names) {
        Some(CheckpointFamily::Sd2) => return Err(refuse(path, "SD 2.x")),
        Some(f) => f,
        None => {
            return Err(SdError::invalid(
                "checkpoint",
                format!(
                    "{} is not a Stable Diffusion checkpoint (no model.diffusion_model., \
                     first_stage_model. and cond_stage_model./conditioner. tensors)",
                    path.display()
                ),
            ));
        }
    };
    let cfg = SingleFileConfigs::load(family, config_dir)?;
    // As diffusers' SDXL pipeline: a VAE that asks for it decodes in f32.
    let vae_dtype = if family == CheckpointFamily::Sdxl && cfg.vae.force_upcast {
        DType::F32
    } else {
        dtype
    };
    let parts = split(tensors, &cfg, dtype, vae_dtype)?;
    let mismatch = |part: &str| {
        super::weights::mismatch_err(
            path,
            format!("its {part} does not match the {family:?} layout"),
        )
    };
    let vb = |map: HashMap<String, Tensor>| VarBuilder::from_tensors(map, dtype, device);
    let text_encoder = ClipTextModel::load(vb(parts.text_encoder), &cfg.text_encoder)
        .map_err(mismatch("text encoder"))?;
    let second = match cfg.second {
        Some((te_cfg, tokenizer)) => {
            let model = ClipTextModel::load(vb(parts.text_encoder_2), &te_cfg)
                .map_err(mismatch("second text encoder"))?;
            Some((tokenizer, model))
        }
        None => None,
    };
    let unet = UNet::load(vb(parts.unet), &cfg.unet).map_err(mismatch("UNet"))?;
    let vae = Vae::load(
        VarBuilder::from_tensors(parts.vae, vae_dtype, device),
        &cfg.vae,
    )
    .map_err(mismatch("VAE"))?;
    Ok(SingleFileModel {
        family,
        tokenizer: cfg.tokenizer,
        text_encoder,
        second,
        unet,
        vae,
        vae_dtype,
        scheduler: cfg.scheduler,
    })
}
