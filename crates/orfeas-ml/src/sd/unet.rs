//! Diffusers' `UNet2DConditionModel` for SD 1.x / 2.x and SDXL (text_time added conditioning).

use std::path::Path;

use candle_core::{D, DType, Module, Result as CResult, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::stable_diffusion::embeddings::{TimestepEmbedding, Timesteps};
use serde::Deserialize;

use super::attention::{Transformer2D, TransformerSettings};
use super::resnet::{Downsample2D, ResnetBlock2D, ResnetConfig, Upsample2D};
use crate::error::{Result, SdError};
use crate::kernels::{Conv2d, GroupNorm};

/// A config value that is either one number for every block or one per block.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PerBlock {
    One(usize),
    Many(Vec<usize>),
}

impl PerBlock {
    fn get(&self, i: usize) -> Option<usize> {
        match self {
            Self::One(n) => Some(*n),
            Self::Many(v) => v.get(i).copied(),
        }
    }
}

fn d_true() -> bool {
    true
}
fn d_one() -> PerBlock {
    PerBlock::One(1)
}
fn d_groups() -> usize {
    32
}
fn d_eps() -> f64 {
    1e-5
}
fn d_four() -> usize {
    4
}
fn d_pad() -> usize {
    1
}

/// Mirrors `unet/config.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct UNetConfig {
    #[serde(default = "d_four")]
    pub in_channels: usize,
    #[serde(default = "d_four")]
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    pub layers_per_block: usize,
    pub attention_head_dim: Option<PerBlock>,
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock>,
    pub cross_attention_dim: usize,
    #[serde(default)]
    pub use_linear_projection: bool,
    #[serde(default = "d_groups")]
    pub norm_num_groups: usize,
    #[serde(default = "d_eps")]
    pub norm_eps: f64,
    #[serde(default = "d_true")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: f64,
    #[serde(default = "d_one")]
    pub transformer_layers_per_block: PerBlock,
    #[serde(default)]
    pub upcast_attention: Option<bool>,
    #[serde(default = "d_pad")]
    pub downsample_padding: usize,
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    #[serde(default)]
    pub addition_time_embed_dim: Option<usize>,
    #[serde(default)]
    pub projection_class_embeddings_input_dim: Option<usize>,
    #[serde(default)]
    pub sample_size: Option<usize>,
}

impl UNetConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        crate::sd::read_config(path)
    }

    /// Diffusers reads `attention_head_dim` as the number of heads when `num_attention_heads` is unset.
    fn heads(&self, i: usize) -> Option<usize> {
        self.num_attention_heads
            .as_ref()
            .or(self.attention_head_dim.as_ref())
            .map_or(Some(8), |p| p.get(i))
    }

    /// SDXL-style added conditioning (pooled text + size ids).
    pub fn is_xl(&self) -> bool {
        self.addition_embed_type.as_deref() == Some("text_time")
    }

    fn depth(&self, i: usize) -> Option<usize> {
        self.transformer_layers_per_block.get(i)
    }
}

/// One down or up block: resnets, optional transformers after each, optional resampler.
#[derive(Debug)]
struct Block {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2D>,
    down: Option<Downsample2D>,
    up: Option<Upsample2D>,
}

/// Added conditioning of SDXL (`addition_embed_type: text_time`).
#[derive(Debug)]
pub struct AddedCond<'a> {
    /// Pooled text embedding of the second text encoder, (batch, 1280).
    pub text_embeds: &'a Tensor,
    /// (batch, 6): original size, crop top-left, target size.
    pub time_ids: &'a Tensor,
}

#[derive(Debug)]
struct AddEmbedding {
    time_proj: Timesteps,
    embedding: TimestepEmbedding,
}

/// The denoiser.
#[derive(Debug)]
pub struct UNet {
    time_proj: Timesteps,
    time_embedding: TimestepEmbedding,
    add: Option<AddEmbedding>,
    conv_in: Conv2d,
    down: Vec<Block>,
    mid_resnets: [ResnetBlock2D; 2],
    mid_attention: Transformer2D,
    up: Vec<Block>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
    pub config: UNetConfig,
}

fn bad(field: &'static str, reason: String) -> SdError {
    SdError::invalid(field, reason)
}

impl UNet {
    pub fn load(vb: VarBuilder, cfg: &UNetConfig) -> Result<Self> {
        let n = cfg.block_out_channels.len();
        if n == 0 || cfg.down_block_types.len() != n || cfg.up_block_types.len() != n {
            return Err(bad(
                "unet.block_out_channels",
                "down/up block type lists must have one entry per block_out_channels entry".into(),
            ));
        }
        let ch0 = cfg.block_out_channels[0];
        let temb = ch0 * 4;
        let groups = cfg.norm_num_groups;
        let ts = TransformerSettings {
            context_dim: cfg.cross_attention_dim,
            use_linear_projection: cfg.use_linear_projection,
            norm_groups: groups,
            upcast_attention: cfg.upcast_attention.unwrap_or(false),
        };
        let resnet = |vb: VarBuilder, cin: usize, cout: usize| {
            let rc = ResnetConfig {
                out_channels: cout,
                temb_channels: Some(temb),
                groups,
                eps: cfg.norm_eps,
            };
            ResnetBlock2D::load(vb, cin, rc)
        };
        let spec = |i: usize| -> Result<(usize, usize)> {
            let heads = cfg
                .heads(i)
                .ok_or_else(|| bad("unet.attention_head_dim", format!("no entry for block {i}")))?;
            let depth = cfg.depth(i).ok_or_else(|| {
                bad(
                    "unet.transformer_layers_per_block",
                    format!("no entry for block {i}"),
                )
            })?;
            Ok((heads, depth))
        };
        let time_proj = Timesteps::new(ch0, cfg.flip_sin_to_cos, cfg.freq_shift);
        let time_embedding = TimestepEmbedding::new(vb.pp("time_embedding"), ch0, temb)?;
        let add = match cfg.addition_embed_type.as_deref() {
            None => None,
            Some("text_time") => {
                let (Some(dim), Some(input)) = (
                    cfg.addition_time_embed_dim,
                    cfg.projection_class_embeddings_input_dim,
                ) else {
                    return Err(bad(
                        "unet.addition_time_embed_dim",
                        "text_time conditioning needs addition_time_embed_dim and projection_class_embeddings_input_dim".into(),
                    ));
                };
                Some(AddEmbedding {
                    time_proj: Timesteps::new(dim, cfg.flip_sin_to_cos, cfg.freq_shift),
                    embedding: TimestepEmbedding::new(vb.pp("add_embedding"), input, temb)?,
                })
            }
            Some(other) => {
                return Err(bad(
                    "unet.addition_embed_type",
                    format!("'{other}' is not supported"),
                ));
            }
        };
        let conv_in = Conv2d::load(vb.pp("conv_in"), cfg.in_channels, ch0, 3, 1, 1, true)?;

        let mut down = Vec::with_capacity(n);
        let mut out_ch = ch0;
        for (i, kind) in cfg.down_block_types.iter().enumerate() {
            let in_ch = out_ch;
            out_ch = cfg.block_out_channels[i];
            let vbb = vb.pp("down_blocks").pp(i);
            let with_attn = match kind.as_str() {
                "CrossAttnDownBlock2D" => true,
                "DownBlock2D" => false,
                other => {
                    return Err(bad(
                        "unet.down_block_types",
                        format!("'{other}' is not supported"),
                    ));
                }
            };
            let (heads, depth) = spec(i)?;
            let mut resnets = Vec::new();
            let mut attentions = Vec::new();
            for j in 0..cfg.layers_per_block {
                let cin = if j == 0 { in_ch } else { out_ch };
                resnets.push(resnet(vbb.pp("resnets").pp(j), cin, out_ch)?);
                if with_attn {
                    attentions.push(Transformer2D::load(
                        vbb.pp("attentions").pp(j),
                        out_ch,
                        heads,
                        depth,
                        ts,
                    )?);
                }
            }
            let down_s = if i + 1 < n {
                Some(Downsample2D::load(
                    vbb.pp("downsamplers.0"),
                    out_ch,
                    cfg.downsample_padding,
                )?)
            } else {
                None
            };
            down.push(Block {
                resnets,
                attentions,
                down: down_s,
                up: None,
            });
        }

        let last = cfg.block_out_channels[n - 1];
        let (mid_heads, mid_depth) = spec(n - 1)?;
        let mid = vb.pp("mid_block");
        let mid_resnets = [
            resnet(mid.pp("resnets.0"), last, last)?,
            resnet(mid.pp("resnets.1"), last, last)?,
        ];
        let mid_attention =
            Transformer2D::load(mid.pp("attentions.0"), last, mid_heads, mid_depth, ts)?;

        let rev: Vec<usize> = cfg.block_out_channels.iter().rev().copied().collect();
        let mut up = Vec::with_capacity(n);
        let mut out_ch = rev[0];
        for (i, kind) in cfg.up_block_types.iter().enumerate() {
            let prev_out = out_ch;
            out_ch = rev[i];
            let in_ch = rev[(i + 1).min(n - 1)];
            let vbb = vb.pp("up_blocks").pp(i);
            let with_attn = match kind.as_str() {
                "CrossAttnUpBlock2D" => true,
                "UpBlock2D" => false,
                other => {
                    return Err(bad(
                        "unet.up_block_types",
                        format!("'{other}' is not supported"),
                    ));
                }
            };
            let (heads, depth) = spec(n - 1 - i)?;
            let layers = cfg.layers_per_block + 1;
            let mut resnets = Vec::new();
            let mut attentions = Vec::new();
            for j in 0..layers {
                let skip = if j + 1 == layers { in_ch } else { out_ch };
                let cin = if j == 0 { prev_out } else { out_ch };
                resnets.push(resnet(vbb.pp("resnets").pp(j), cin + skip, out_ch)?);
                if with_attn {
                    attentions.push(Transformer2D::load(
                        vbb.pp("attentions").pp(j),
                        out_ch,
                        heads,
                        depth,
                        ts,
                    )?);
                }
            }
            let up_s = if i + 1 < n {
                Some(Upsample2D::load(vbb.pp("upsamplers.0"), out_ch)?)
            } else {
                None
            };
            up.push(Block {
                resnets,
                attentions,
                down: None,
                up: up_s,
            });
        }
        let norm_out = GroupNorm::load(groups, ch0, cfg.norm_eps, vb.pp("conv_norm_out"))?;
        let conv_out = Conv2d::load(vb.pp("conv_out"), ch0, cfg.out_channels, 3, 1, 1, true)?;
        Ok(Self {
            time_proj,
            time_embedding,
            add,
            conv_in,
            down,
            mid_resnets,
            mid_attention,
            up,
            norm_out,
            conv_out,
            config: cfg.clone(),
        })
    }

    /// Predicts the noise for `sample` (B, 4, h, w) at `timestep` given text `context` (B, 77, dim).
    pub fn forward(
        &self,
        sample: &Tensor,
        timestep: f64,
        context: &Tensor,
        added: Option<&AddedCond<'_>>,
    ) -> Result<Tensor> {
        Ok(self.forward_inner(sample, timestep, context, added)?)
    }

    fn forward_inner(
        &self,
        sample: &Tensor,
        timestep: f64,
        context: &Tensor,
        added: Option<&AddedCond<'_>>,
    ) -> CResult<Tensor> {
        let (b, _, _, _) = sample.dims4()?;
        let dtype = sample.dtype();
        let dev = sample.device();
        let t = Tensor::full(timestep as f32, b, dev)?;
        let t_emb = self.time_proj.forward(&t)?.to_dtype(dtype)?;
        let mut emb = self.time_embedding.forward(&t_emb)?;
        match (&self.add, added) {
            (Some(add), Some(cond)) => {
                let ids = cond.time_ids.flatten_all()?.to_dtype(DType::F32)?;
                let time_embeds = add
                    .time_proj
                    .forward(&ids)?
                    .reshape((b, ()))?
                    .to_dtype(dtype)?;
                let add_in = Tensor::cat(
                    &[&cond.text_embeds.to_dtype(dtype)?, &time_embeds],
                    D::Minus1,
                )?;
                emb = (emb + add.embedding.forward(&add_in)?)?;
            }
            (Some(_), None) => candle_core::bail!(
                "this UNet needs SDXL added conditioning (text_embeds, time_ids)"
            ),
            (None, _) => {}
        }
        let context = context.to_dtype(dtype)?;

        let mut xs = self.conv_in.forward(sample)?;
        let mut skips = vec![xs.clone()];
        for block in &self.down {
            for (j, resnet) in block.resnets.iter().enumerate() {
                xs = resnet.forward(&xs, Some(&emb))?;
                if let Some(attn) = block.attentions.get(j) {
                    xs = attn.forward(&xs, &context)?;
                }
                skips.push(xs.clone());
            }
            if let Some(d) = &block.down {
                xs = d.forward(&xs)?;
                skips.push(xs.clone());
            }
        }
        let [r0, r1] = &self.mid_resnets;
        xs = r0.forward(&xs, Some(&emb))?;
        xs = self.mid_attention.forward(&xs, &context)?;
        xs = r1.forward(&xs, Some(&emb))?;

        for block in &self.up {
            for (j, resnet) in block.resnets.iter().enumerate() {
                let Some(skip) = skips.pop() else {
                    candle_core::bail!("UNet skip connections ran out (config mismatch)");
                };
                xs = resnet.forward(&Tensor::cat(&[&xs, &skip], 1)?, Some(&emb))?;
                if let Some(attn) = block.attentions.get(j) {
                    xs = attn.forward(&xs, &context)?;
                }
            }
            if let Some(u) = &block.up {
                // Upsample to the next skip's size so odd latent sizes line up.
                let size = match skips.last() {
                    Some(s) => (s.dim(2)?, s.dim(3)?),
                    None => (xs.dim(2)? * 2, xs.dim(3)? * 2),
                };
                xs = u.forward(&xs, Some(size))?;
            }
        }
        self.conv_out
            .forward_norm_silu(&xs, &self.norm_out, None, None)
    }
}
