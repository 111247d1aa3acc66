//! TripoSR's `config.yaml` (the hub file, OmegaConf `${a.b}` interpolations
//! resolved) and the ViT `config.json` of its image tokenizer, parsed once into
//! checked types: past [`Config::from_yaml_str`] every size is known to fit.

use std::path::{Path, PathBuf};

mod yaml;

use serde::Deserialize;

use crate::error::{Result, SdError};

/// The only classes TripoSR's official config names; a config naming others
/// is a different model.
const IMAGE_TOKENIZER_CLS: &str = "tsr.models.tokenizers.image.DINOSingleImageTokenizer";
const TOKENIZER_CLS: &str = "tsr.models.tokenizers.triplane.Triplane1DTokenizer";
const BACKBONE_CLS: &str = "tsr.models.transformer.transformer_1d.Transformer1D";
const POST_PROCESSOR_CLS: &str = "tsr.models.network_utils.TriplaneUpsampleNetwork";
const DECODER_CLS: &str = "tsr.models.network_utils.NeRFMLP";
const RENDERER_CLS: &str = "tsr.models.nerf_renderer.TriplaneNeRFRenderer";

/// The hub repository TripoSR's image tokenizer names; its `config.json` is built in
/// ([`ViTConfig::dino_vitb16`]) so a TripoSR folder needs nothing else.
pub const DINO_VITB16_REPO: &str = "facebook/dino-vitb16";

/// A TripoSR model: `config.yaml` plus the ViT config of its image tokenizer.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Side of the square image the model sees (512 for the official model).
    pub cond_image_size: usize,
    pub image_tokenizer: ImageTokenizerConfig,
    pub tokenizer: TokenizerConfig,
    pub backbone: BackboneConfig,
    pub post_processor: PostProcessorConfig,
    pub decoder: DecoderConfig,
    pub renderer: RendererConfig,
    /// The image tokenizer's `config.json` (transformers `ViTConfig`).
    pub vit: ViTConfig,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageTokenizerConfig {
    /// A hub repository (`facebook/dino-vitb16`) or a folder relative to `config.yaml`.
    #[serde(default = "default_vit_name")]
    pub pretrained_model_name_or_path: String,
    #[serde(default)]
    pub enable_gradient_checkpointing: bool,
}

fn default_vit_name() -> String {
    DINO_VITB16_REPO.to_owned()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizerConfig {
    pub plane_size: usize,
    pub num_channels: usize,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackboneConfig {
    #[serde(default = "d16")]
    pub num_attention_heads: usize,
    #[serde(default = "d88")]
    pub attention_head_dim: usize,
    pub in_channels: usize,
    #[serde(default)]
    pub out_channels: Option<usize>,
    #[serde(default = "d1")]
    pub num_layers: usize,
    #[serde(default)]
    pub dropout: f64,
    #[serde(default = "d32")]
    pub norm_num_groups: usize,
    pub cross_attention_dim: usize,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default = "geglu")]
    pub activation_fn: String,
    #[serde(default)]
    pub only_cross_attention: bool,
    #[serde(default)]
    pub double_self_attention: bool,
    #[serde(default)]
    pub upcast_attention: bool,
    #[serde(default = "layer_norm")]
    pub norm_type: String,
    #[serde(default = "yes")]
    pub norm_elementwise_affine: bool,
    #[serde(default)]
    pub gradient_checkpointing: bool,
}

impl BackboneConfig {
    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostProcessorConfig {
    pub in_channels: usize,
    pub out_channels: usize,
}

/// The activation between the NeRF MLP's layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MlpActivation {
    Silu,
    Relu,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecoderConfig {
    pub in_channels: usize,
    pub n_neurons: usize,
    pub n_hidden_layers: usize,
    #[serde(default = "relu")]
    pub activation: MlpActivation,
    #[serde(default = "yes")]
    pub bias: bool,
    /// Initialisation only (training); ignored here.
    #[serde(default)]
    pub weight_init: Option<String>,
    #[serde(default)]
    pub bias_init: Option<String>,
}

/// How the three planes' features are combined before the MLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FeatureReduction {
    /// `[plane0 | plane1 | plane2]`, 3 × channels.
    Concat,
    Mean,
}

/// Maps the raw density (plus `density_bias`) to a volume density.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DensityActivation {
    Exp,
    /// threestudio's `trunc_exp`: `exp` forward (it only clamps the gradient).
    TruncExp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColorActivation {
    Sigmoid,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RendererConfig {
    /// Half side of the cube the triplanes span, in world units.
    pub radius: f64,
    #[serde(default = "concat")]
    pub feature_reduction: FeatureReduction,
    #[serde(default = "trunc_exp")]
    pub density_activation: DensityActivation,
    #[serde(default = "minus_one")]
    pub density_bias: f64,
    #[serde(default = "sigmoid")]
    pub color_activation: ColorActivation,
    #[serde(default = "d128")]
    pub num_samples_per_ray: usize,
    #[serde(default)]
    pub randomized: bool,
}

/// The fields of transformers' `ViTConfig` the image tokenizer uses, with its defaults.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ViTConfig {
    #[serde(default = "d768")]
    pub hidden_size: usize,
    #[serde(default = "d12")]
    pub num_hidden_layers: usize,
    #[serde(default = "d12")]
    pub num_attention_heads: usize,
    #[serde(default = "d3072")]
    pub intermediate_size: usize,
    #[serde(default = "gelu")]
    pub hidden_act: String,
    #[serde(default = "eps12")]
    pub layer_norm_eps: f64,
    /// The image size the position embeddings were trained for (their grid is image_size / patch_size).
    #[serde(default = "d224")]
    pub image_size: usize,
    #[serde(default = "d16")]
    pub patch_size: usize,
    #[serde(default = "d3")]
    pub num_channels: usize,
    #[serde(default = "yes")]
    pub qkv_bias: bool,
}

impl ViTConfig {
    /// `facebook/dino-vitb16`'s `config.json` (the ViT-B/16 values, all transformers defaults).
    pub fn dino_vitb16() -> Self {
        Self {
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            hidden_act: "gelu".to_owned(),
            layer_norm_eps: 1e-12,
            image_size: 224,
            patch_size: 16,
            num_channels: 3,
            qkv_bias: true,
        }
    }

    /// Parses a ViT `config.json`.
    pub fn from_json_str(json: &str) -> std::result::Result<Self, String> {
        let cfg: Self = serde_json::from_str(json).map_err(|e| e.to_string())?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The sizes the tokenizer relies on (positive, heads dividing the width).
    pub fn validate(&self) -> std::result::Result<(), String> {
        let cfg = self;
        if cfg.hidden_act != "gelu" {
            return Err(format!(
                "hidden_act '{}' is not supported (DINO ViTs use 'gelu')",
                cfg.hidden_act
            ));
        }
        let checks = [
            (
                cfg.num_attention_heads > 0,
                "num_attention_heads must be positive",
            ),
            (cfg.patch_size > 0, "patch_size must be positive"),
            (cfg.num_channels == 3, "num_channels must be 3 (RGB)"),
            (
                cfg.image_size >= cfg.patch_size,
                "image_size must be at least patch_size",
            ),
        ];
        if let Some((_, msg)) = checks.iter().find(|(ok, _)| !ok) {
            return Err((*msg).to_owned());
        }
        if !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads) {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                cfg.hidden_size, cfg.num_attention_heads
            ));
        }
        Ok(())
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let text = read_text(path)?;
        Self::from_json_str(&text).map_err(|reason| config_err(path, reason))
    }

    /// Side of the trained position-embedding grid.
    pub fn position_grid(&self) -> usize {
        self.image_size / self.patch_size
    }
}

/// The raw `config.yaml` layout (class names and sections).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    cond_image_size: usize,
    image_tokenizer_cls: String,
    image_tokenizer: ImageTokenizerConfig,
    tokenizer_cls: String,
    tokenizer: TokenizerConfig,
    backbone_cls: String,
    backbone: BackboneConfig,
    post_processor_cls: String,
    post_processor: PostProcessorConfig,
    decoder_cls: String,
    decoder: DecoderConfig,
    renderer_cls: String,
    renderer: RendererConfig,
}

impl Config {
    /// Parses `config.yaml` text (OmegaConf interpolations such as
    /// `${tokenizer.num_channels}` resolved) and checks it against `vit`.
    pub fn from_yaml_str(yaml: &str, vit: ViTConfig) -> std::result::Result<Self, String> {
        let resolved = yaml::load_resolved(yaml)?;
        let raw: RawConfig =
            serde_json::from_value(resolved).map_err(|e| format!("unexpected layout: {e}"))?;
        let classes = [
            (
                "image_tokenizer_cls",
                &raw.image_tokenizer_cls,
                IMAGE_TOKENIZER_CLS,
            ),
            ("tokenizer_cls", &raw.tokenizer_cls, TOKENIZER_CLS),
            ("backbone_cls", &raw.backbone_cls, BACKBONE_CLS),
            (
                "post_processor_cls",
                &raw.post_processor_cls,
                POST_PROCESSOR_CLS,
            ),
            ("decoder_cls", &raw.decoder_cls, DECODER_CLS),
            ("renderer_cls", &raw.renderer_cls, RENDERER_CLS),
        ];
        for (key, got, want) in classes {
            if got != want {
                return Err(format!(
                    "{key} is '{got}'; only TripoSR's '{want}' is supported"
                ));
            }
        }
        let cfg = Self {
            cond_image_size: raw.cond_image_size,
            image_tokenizer: raw.image_tokenizer,
            tokenizer: raw.tokenizer,
            backbone: raw.backbone,
            post_processor: raw.post_processor,
            decoder: raw.decoder,
            renderer: raw.renderer,
            vit,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads `config.yaml` and the ViT `config.json` beside each other.
    pub fn from_files(config_yaml: &Path, vit_config_json: &Path) -> Result<Self> {
        let vit = ViTConfig::from_file(vit_config_json)?;
        let text = read_text(config_yaml)?;
        Self::from_yaml_str(&text, vit).map_err(|reason| config_err(config_yaml, reason))
    }

    /// Reads `DIR/config.yaml`; the ViT config comes from
    /// `DIR/<pretrained_model_name_or_path>/config.json` when that exists, else,
    /// for `facebook/dino-vitb16`, from the built-in copy.
    pub fn from_model_dir(dir: &Path) -> Result<Self> {
        Self::from_model_dir_with_roots(dir, &crate::models::SearchRoots::default())
    }

    /// [`Self::from_model_dir`], also looking for an installed `dino-vitb16`
    /// registry copy in `roots` before falling back to the built-in config.
    pub fn from_model_dir_with_roots(
        dir: &Path,
        roots: &crate::models::SearchRoots,
    ) -> Result<Self> {
        let config_yaml = dir.join("config.yaml");
        let text = read_text(&config_yaml)?;
        let vit_name = vit_name_of(&text).map_err(|reason| config_err(&config_yaml, reason))?;
        let installed = || -> Option<PathBuf> {
            let model = crate::models::KNOWN_MODELS
                .iter()
                .find(|m| m.repo_id == vit_name)?;
            Some(roots.find_installed(model)?.join("config.json"))
        };
        let vit = match vit_config_path(dir, &vit_name).or_else(installed) {
            Some(path) => ViTConfig::from_file(&path)?,
            None if vit_name == DINO_VITB16_REPO => ViTConfig::dino_vitb16(),
            None => {
                return Err(SdError::MissingPart {
                    dir: dir.to_path_buf(),
                    part: format!(
                        "{vit_name}/config.json (the image tokenizer's ViT config named in config.yaml)"
                    ),
                });
            }
        };
        Self::from_yaml_str(&text, vit).map_err(|reason| config_err(&config_yaml, reason))
    }

    /// Patches per side of the conditioning image.
    pub fn patch_grid(&self) -> usize {
        self.cond_image_size / self.vit.patch_size
    }

    /// Image tokens the backbone attends to: CLS + patches.
    pub fn num_image_tokens(&self) -> usize {
        1 + self.patch_grid() * self.patch_grid()
    }

    /// Side of a scene-code plane (the post-processor doubles the token plane).
    pub fn scene_plane_size(&self) -> usize {
        2 * self.tokenizer.plane_size
    }

    /// Every size relation the model relies on; a mismatch names both ends.
    /// Parsing runs it; [`super::TripoSr::load`] runs it again for configs built in code.
    pub fn validate(&self) -> std::result::Result<(), String> {
        self.vit.validate()?;
        let b = &self.backbone;
        let tok = &self.tokenizer;
        let pp = &self.post_processor;
        let dec = &self.decoder;
        let unsupported = [
            (
                b.activation_fn != "geglu",
                format!("backbone.activation_fn '{}' (only geglu)", b.activation_fn),
            ),
            (
                b.norm_type != "layer_norm",
                format!("backbone.norm_type '{}' (only layer_norm)", b.norm_type),
            ),
            (
                b.only_cross_attention,
                "backbone.only_cross_attention".to_owned(),
            ),
            (
                b.double_self_attention,
                "backbone.double_self_attention".to_owned(),
            ),
            (b.attention_bias, "backbone.attention_bias".to_owned()),
            (
                !b.norm_elementwise_affine,
                "backbone.norm_elementwise_affine false".to_owned(),
            ),
            (
                b.out_channels.is_some_and(|c| c != b.in_channels),
                "backbone.out_channels other than in_channels".to_owned(),
            ),
            (!dec.bias, "decoder.bias false".to_owned()),
        ];
        if let Some((_, what)) = unsupported.iter().find(|(bad, _)| *bad) {
            return Err(format!("{what} is not supported by this TripoSR port"));
        }
        let positive = [
            (self.cond_image_size, "cond_image_size"),
            (tok.plane_size, "tokenizer.plane_size"),
            (tok.num_channels, "tokenizer.num_channels"),
            (b.num_attention_heads, "backbone.num_attention_heads"),
            (b.attention_head_dim, "backbone.attention_head_dim"),
            (b.norm_num_groups, "backbone.norm_num_groups"),
            (pp.out_channels, "post_processor.out_channels"),
            (dec.n_neurons, "decoder.n_neurons"),
            (dec.n_hidden_layers, "decoder.n_hidden_layers"),
            (
                self.renderer.num_samples_per_ray,
                "renderer.num_samples_per_ray",
            ),
        ];
        if let Some((_, name)) = positive.iter().find(|(v, _)| *v == 0) {
            return Err(format!("{name} must be positive"));
        }
        let equal = [
            (
                b.in_channels,
                tok.num_channels,
                "backbone.in_channels",
                "tokenizer.num_channels",
            ),
            (
                pp.in_channels,
                tok.num_channels,
                "post_processor.in_channels",
                "tokenizer.num_channels",
            ),
            (
                b.cross_attention_dim,
                self.vit.hidden_size,
                "backbone.cross_attention_dim",
                "the ViT hidden_size",
            ),
            (
                dec.in_channels,
                self.decoder_input_channels(),
                "decoder.in_channels",
                "the triplane features (post_processor.out_channels x 3 for concat)",
            ),
        ];
        for (a, b_, an, bn) in equal {
            if a != b_ {
                return Err(format!("{an} is {a} but {bn} is {b_}"));
            }
        }
        if !b.in_channels.is_multiple_of(b.norm_num_groups) {
            return Err(format!(
                "backbone.in_channels {} is not a multiple of norm_num_groups {}",
                b.in_channels, b.norm_num_groups
            ));
        }
        if self.cond_image_size < self.vit.patch_size {
            return Err(format!(
                "cond_image_size {} is smaller than the ViT patch_size {}",
                self.cond_image_size, self.vit.patch_size
            ));
        }
        let r = self.renderer.radius;
        if !(r.is_finite() && r > 0.0) {
            return Err(format!(
                "renderer.radius must be a positive number, not {r}"
            ));
        }
        if !self.renderer.density_bias.is_finite() {
            return Err("renderer.density_bias must be a finite number".to_owned());
        }
        Ok(())
    }

    fn decoder_input_channels(&self) -> usize {
        match self.renderer.feature_reduction {
            FeatureReduction::Concat => 3 * self.post_processor.out_channels,
            FeatureReduction::Mean => self.post_processor.out_channels,
        }
    }
}

/// The ViT name in a config.yaml (TripoSR's default when absent).
fn vit_name_of(yaml_text: &str) -> std::result::Result<String, String> {
    Ok(yaml::vit_name(yaml_text)?.unwrap_or_else(default_vit_name))
}

/// `DIR/NAME/config.json` if NAME is a folder there (never outside `dir`).
fn vit_config_path(dir: &Path, name: &str) -> Option<PathBuf> {
    let rel = Path::new(name);
    let inside = rel
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)));
    let path = dir.join(rel).join("config.json");
    (inside && path.is_file()).then_some(path)
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            SdError::MissingPart {
                dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
                part: path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            }
        } else {
            SdError::io(path, e)
        }
    })
}

fn config_err(path: &Path, reason: String) -> SdError {
    SdError::Config {
        path: path.to_path_buf(),
        reason,
    }
}

// serde defaults (transformers / TripoSR dataclass defaults).
fn d1() -> usize {
    1
}
fn d3() -> usize {
    3
}
fn d12() -> usize {
    12
}
fn d16() -> usize {
    16
}
fn d32() -> usize {
    32
}
fn d88() -> usize {
    88
}
fn d128() -> usize {
    128
}
fn d224() -> usize {
    224
}
fn d768() -> usize {
    768
}
fn d3072() -> usize {
    3072
}
fn eps12() -> f64 {
    1e-12
}
fn minus_one() -> f64 {
    -1.0
}
fn yes() -> bool {
    true
}
fn gelu() -> String {
    "gelu".to_owned()
}
fn geglu() -> String {
    "geglu".to_owned()
}
fn layer_norm() -> String {
    "layer_norm".to_owned()
}
fn relu() -> MlpActivation {
    MlpActivation::Relu
}
fn concat() -> FeatureReduction {
    FeatureReduction::Concat
}
fn trunc_exp() -> DensityActivation {
    DensityActivation::TruncExp
}
fn sigmoid() -> ColorActivation {
    ColorActivation::Sigmoid
}
