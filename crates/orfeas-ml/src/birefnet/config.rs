//! BiRefNet's architecture values and where they come from.
//!
//! The released checkpoints' `config.json` hold only four keys
//! (`_name_or_path`, `architectures`, `auto_map`, `bb_pretrained`): the
//! official code takes every dimension from its Python `Config` class and the
//! `swin_v1_*` constructors. So the dims come from, in order:
//! 1. the folder's `config.json` blocks `swin` / `decoder_hardcoded` /
//!    `birefnet_config` when present (the test fixtures carry them),
//! 2. else the built-in values of the released model named by
//!    `birefnet_config.bb` or `_name_or_path` ([`Config::lite`], [`Config::large`]).
//!
//! Only the released default code path is supported (Swin backbone, `cat`
//! multi-scale input, `ASPPDeformable` decoder attention, split image-patch
//! inputs, gradient attention); any other value is refused with the reason.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Result, SdError};

/// The inference size of the released models (their `Config.size`).
pub const RELEASED_INPUT_SIZE_HW: (usize, usize) = (1024, 1024);

/// Model input sides must be multiples of this (the stride of the coarsest feature map).
pub const SIZE_MULTIPLE: usize = 32;

/// The Swin-v1 backbone (`models/backbones/swin_v1.py`).
#[derive(Debug, Clone, PartialEq)]
pub struct SwinConfig {
    pub embed_dim: usize,
    pub depths: Vec<usize>,
    pub num_heads: Vec<usize>,
    pub window_size: usize,
    pub patch_size: usize,
    pub mlp_ratio: f64,
    pub layer_norm_eps: f64,
}

impl SwinConfig {
    /// `swin_v1_t`: BiRefNet_lite's backbone.
    pub fn swin_v1_t() -> Self {
        Self::new(96, [2, 2, 6, 2], [3, 6, 12, 24], 7)
    }

    /// `swin_v1_l`: BiRefNet's backbone.
    pub fn swin_v1_l() -> Self {
        Self::new(192, [2, 2, 18, 2], [6, 12, 24, 48], 12)
    }

    fn new(embed_dim: usize, depths: [usize; 4], num_heads: [usize; 4], ws: usize) -> Self {
        Self {
            embed_dim,
            depths: depths.to_vec(),
            num_heads: num_heads.to_vec(),
            window_size: ws,
            patch_size: 4,
            mlp_ratio: 4.0,
            layer_norm_eps: 1e-5,
        }
    }

    /// Channels of stage `i`'s output (`E·2^i`).
    pub fn stage_channels(&self, i: usize) -> usize {
        self.embed_dim << i
    }
}

/// Everything needed to build a BiRefNet.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub swin: SwinConfig,
    /// `BasicDecBlk` inter width (the official literal `64`).
    pub dec_inter_channels: usize,
    /// `ASPPDeformable` branch width (the official literal `256`).
    pub aspp_planes: usize,
    /// `SimpleConvs` (image-patch input blocks) inter width (the official `ic = 64`).
    pub ipt_inter_channels: usize,
    /// Gradient-attention width `_N` (16).
    pub gdt_channels: usize,
    pub batchnorm_eps: f64,
    /// The inference size the folder asks for, if it says (`input_size_hw`).
    pub input_size_hw: Option<(usize, usize)>,
}

impl Config {
    /// ZhengPeng7/BiRefNet_lite (Swin-T).
    pub fn lite() -> Self {
        Self::released(SwinConfig::swin_v1_t())
    }

    /// ZhengPeng7/BiRefNet (Swin-L).
    pub fn large() -> Self {
        Self::released(SwinConfig::swin_v1_l())
    }

    fn released(swin: SwinConfig) -> Self {
        Self {
            swin,
            dec_inter_channels: 64,
            aspp_planes: 256,
            ipt_inter_channels: 64,
            gdt_channels: 16,
            batchnorm_eps: 1e-5,
            input_size_hw: None,
        }
    }

    /// `lateral_channels_in_collection` with `mul_scl_ipt='cat'`: `[16E, 8E, 4E, 2E]`.
    pub fn lateral_channels(&self) -> [usize; 4] {
        let e = self.swin.embed_dim;
        [16 * e, 8 * e, 4 * e, 2 * e]
    }

    /// `cxt` channels (the three finer encoder levels joined to the coarsest): `[2E, 4E, 8E]`.
    pub fn cxt_channels(&self) -> [usize; 3] {
        let l = self.lateral_channels();
        [l[3], l[2], l[1]]
    }

    /// The inference size: `input_size_hw` when the config has one, else 1024×1024.
    pub fn default_input_size_hw(&self) -> (usize, usize) {
        self.input_size_hw.unwrap_or(RELEASED_INPUT_SIZE_HW)
    }

    /// Reads `dir/config.json`.
    pub fn from_model_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        if !path.is_file() {
            return Err(SdError::MissingPart {
                dir: dir.to_path_buf(),
                part: "config.json".to_owned(),
            });
        }
        let text = std::fs::read_to_string(&path).map_err(|e| SdError::io(&path, e))?;
        Self::from_json_str(&text).map_err(|reason| SdError::Config { path, reason })
    }

    /// Parses a `config.json` (official four keys, optionally with the extension blocks).
    pub fn from_json_str(text: &str) -> std::result::Result<Self, String> {
        let raw: RawConfig = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let backbone = raw
            .birefnet_config
            .as_ref()
            .and_then(|b| b.bb.clone())
            .or_else(|| backbone_of_name(raw.name_or_path.as_deref()?).map(str::to_owned));
        let mut cfg = match (backbone.as_deref(), &raw.swin) {
            (Some("swin_v1_t"), _) => Self::lite(),
            (Some("swin_v1_l"), _) => Self::large(),
            (Some(other), _) => {
                return Err(format!(
                    "backbone '{other}' is not supported (only swin_v1_t and swin_v1_l, the released BiRefNet_lite and BiRefNet)"
                ));
            }
            (None, Some(_)) => Self::lite(),
            (None, None) => {
                return Err(format!(
                    "cannot tell which BiRefNet this is: '_name_or_path' is {:?} (expected ZhengPeng7/BiRefNet or ZhengPeng7/BiRefNet_lite) and there is no 'birefnet_config.bb'; use the config.json of the released model",
                    raw.name_or_path.as_deref().unwrap_or("missing")
                ));
            }
        };
        if let Some(b) = &raw.birefnet_config {
            b.check_supported()?;
        }
        if let Some(s) = raw.swin {
            if s.depths.len() != 4 || s.num_heads.len() != 4 {
                return Err("swin.depths and swin.num_heads must have 4 entries".into());
            }
            if s.num_heads
                .iter()
                .enumerate()
                .any(|(i, &h)| h == 0 || (s.embed_dim << i) % h != 0)
            {
                return Err(format!(
                    "swin.num_heads {:?} do not divide the stage widths of embed_dim {}",
                    s.num_heads, s.embed_dim
                ));
            }
            if s.embed_dim == 0 || s.window_size == 0 || s.patch_size != 4 {
                return Err("swin: embed_dim and window_size must be > 0 and patch_size 4".into());
            }
            cfg.swin = SwinConfig {
                embed_dim: s.embed_dim,
                depths: s.depths,
                num_heads: s.num_heads,
                window_size: s.window_size,
                patch_size: s.patch_size,
                mlp_ratio: s.mlp_ratio,
                layer_norm_eps: s.layer_norm_eps,
            };
        }
        if let Some(d) = raw.decoder_hardcoded {
            cfg.dec_inter_channels = d.dec_inter_channels;
            cfg.aspp_planes = d.aspp_planes;
            cfg.ipt_inter_channels = d.ipt_inter_channels;
            cfg.gdt_channels = d.gdt_channels;
        }
        if let Some(eps) = raw.batchnorm_eps {
            cfg.batchnorm_eps = eps;
        }
        if let Some([h, w]) = raw.input_size_hw {
            check_input_size((h, w)).map_err(|e| format!("input_size_hw: {e}"))?;
            cfg.input_size_hw = Some((h, w));
        }
        Ok(cfg)
    }
}

/// The backbone of a released model, from its hub name.
fn backbone_of_name(name: &str) -> Option<&'static str> {
    match name.rsplit('/').next()? {
        "BiRefNet_lite" => Some("swin_v1_t"),
        "BiRefNet" => Some("swin_v1_l"),
        _ => None,
    }
}

/// A model input size BiRefNet can run: both sides non-zero multiples of 32.
pub fn check_input_size((h, w): (usize, usize)) -> std::result::Result<(), String> {
    if h == 0 || w == 0 || h % SIZE_MULTIPLE != 0 || w % SIZE_MULTIPLE != 0 {
        let round = |v: usize| (v.max(1)).div_ceil(SIZE_MULTIPLE) * SIZE_MULTIPLE;
        return Err(format!(
            "model input size {h}x{w} (HxW) is not a multiple of {SIZE_MULTIPLE}; use e.g. {}x{} (1024x1024 for the released models)",
            round(h),
            round(w)
        ));
    }
    Ok(())
}

#[derive(Deserialize)]
struct RawConfig {
    #[serde(rename = "_name_or_path")]
    name_or_path: Option<String>,
    birefnet_config: Option<RawBirefnet>,
    swin: Option<RawSwin>,
    decoder_hardcoded: Option<RawDecoder>,
    batchnorm_eps: Option<f64>,
    input_size_hw: Option<[usize; 2]>,
}

#[derive(Deserialize)]
struct RawBirefnet {
    bb: Option<String>,
    mul_scl_ipt: Option<String>,
    dec_att: Option<String>,
    squeeze_block: Option<String>,
    dec_blk: Option<String>,
    lat_blk: Option<String>,
    dec_ipt: Option<bool>,
    dec_ipt_split: Option<bool>,
    cxt_num: Option<usize>,
    out_ref: Option<bool>,
    dec_channels_inter: Option<String>,
    batch_size: Option<usize>,
}

impl RawBirefnet {
    /// Refuses any value of the official `Config` other than the released default path.
    fn check_supported(&self) -> std::result::Result<(), String> {
        let want_str = [
            ("mul_scl_ipt", &self.mul_scl_ipt, "cat"),
            ("dec_att", &self.dec_att, "ASPPDeformable"),
            ("squeeze_block", &self.squeeze_block, "BasicDecBlk_x1"),
            ("dec_blk", &self.dec_blk, "BasicDecBlk"),
            ("lat_blk", &self.lat_blk, "BasicLatBlk"),
            ("dec_channels_inter", &self.dec_channels_inter, "fixed"),
        ];
        for (key, got, want) in want_str {
            if let Some(got) = got
                && got != want
            {
                return Err(format!(
                    "birefnet_config.{key} = '{got}' is not supported (only the released '{want}')"
                ));
            }
        }
        let want_bool = [
            ("dec_ipt", self.dec_ipt),
            ("dec_ipt_split", self.dec_ipt_split),
            ("out_ref", self.out_ref),
        ];
        for (key, got) in want_bool {
            if got == Some(false) {
                return Err(format!(
                    "birefnet_config.{key} = false is not supported (the released models use true)"
                ));
            }
        }
        if let Some(n) = self.cxt_num
            && n != 3
        {
            return Err(format!(
                "birefnet_config.cxt_num = {n} is not supported (the released models use 3)"
            ));
        }
        if self.batch_size == Some(1) {
            return Err(
                "birefnet_config.batch_size = 1 (no BatchNorm layers) is not supported".into(),
            );
        }
        Ok(())
    }
}

#[derive(Deserialize)]
struct RawSwin {
    embed_dim: usize,
    depths: Vec<usize>,
    num_heads: Vec<usize>,
    window_size: usize,
    #[serde(default = "four")]
    patch_size: usize,
    #[serde(default = "mlp_ratio")]
    mlp_ratio: f64,
    #[serde(default = "ln_eps")]
    layer_norm_eps: f64,
}

fn four() -> usize {
    4
}
fn mlp_ratio() -> f64 {
    4.0
}
fn ln_eps() -> f64 {
    1e-5
}

#[derive(Deserialize)]
struct RawDecoder {
    dec_inter_channels: usize,
    aspp_planes: usize,
    ipt_inter_channels: usize,
    gdt_channels: usize,
}
