//! CLIP text encoder (transformers' `CLIPTextModel`, and `CLIPTextModelWithProjection`
//! when the checkpoint has a `text_projection`), any size, built from its config.json.
//!
//! Written here rather than taken from candle-transformers because candle's
//! config cannot be built at other sizes and its `gelu` is the tanh
//! approximation, while SD 2.x / SD-Turbo's OpenCLIP-H uses the exact erf form.

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Embedding, LayerNorm, VarBuilder};
use serde::Deserialize;

use crate::error::{Result, SdError};
use crate::kernels::Linear;

/// `hidden_act` of the checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Activation {
    /// Exact GELU, `x * Φ(x)` (erf).
    #[serde(rename = "gelu")]
    Gelu,
    /// `x * sigmoid(1.702 x)` (OpenAI CLIP ViT-L/14, SD 1.5).
    #[serde(rename = "quick_gelu")]
    QuickGelu,
    /// The tanh approximation, for checkpoints that ask for it by name.
    #[serde(rename = "gelu_new", alias = "gelu_pytorch_tanh")]
    GeluTanh,
}

impl Activation {
    fn apply(self, xs: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Gelu => match crate::kernels::gelu_erf(xs)? {
                Some(out) => Ok(out),
                None => xs.gelu_erf(),
            },
            Self::QuickGelu => xs * candle_nn::ops::sigmoid(&(xs * 1.702f64)?)?,
            Self::GeluTanh => xs.gelu(),
        }
    }
}

fn default_eps() -> f64 {
    1e-5
}
fn default_positions() -> usize {
    77
}
fn default_eos() -> u32 {
    2
}

/// Mirrors the `text_encoder/config.json` fields the forward pass needs.
#[derive(Debug, Clone, Deserialize)]
pub struct ClipConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default = "default_positions")]
    pub max_position_embeddings: usize,
    pub hidden_act: Activation,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Output size of `text_projection` (SDXL's second encoder).
    #[serde(default)]
    pub projection_dim: Option<usize>,
    /// Picks the pooled token: 2 (the hub's legacy value) means "the largest
    /// id", as transformers does; anything else is the first position of that id.
    #[serde(default = "default_eos")]
    pub eos_token_id: u32,
}

impl ClipConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        crate::sd::read_config(path)
    }
}

struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    heads: usize,
}

struct Layer {
    ln1: LayerNorm,
    attn: Attention,
    ln2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

/// The text encoder; `forward` returns `last_hidden_state` (after the final layer norm).
pub struct ClipTextModel {
    token_embedding: Embedding,
    position_embedding: Embedding,
    layers: Vec<Layer>,
    final_layer_norm: LayerNorm,
    text_projection: Option<Linear>,
    act: Activation,
    hidden_size: usize,
    eos_token_id: u32,
}

/// What SDXL takes from an encoder.
#[derive(Debug, Clone)]
pub struct EncoderOutput {
    /// After the final layer norm (SD 1.x/2.x's text embedding).
    pub last_hidden: Tensor,
    /// The second-to-last layer's output, before any norm (`hidden_states[-2]`).
    pub penultimate: Tensor,
    /// `text_projection` of the final-normed state at the pooled token
    /// (transformers' `text_embeds`); `None` without a projection.
    pub pooled: Option<Tensor>,
}

impl std::fmt::Debug for ClipTextModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTextModel")
            .field("layers", &self.layers.len())
            .field("hidden_size", &self.hidden_size)
            .finish()
    }
}

impl ClipTextModel {
    /// Accepts both the hub naming (`text_model.embeddings...`) and the
    /// unprefixed one transformers 5 writes (`embeddings...`).
    pub fn load(root: VarBuilder, cfg: &ClipConfig) -> Result<Self> {
        let vb = if root.contains_tensor("text_model.embeddings.token_embedding.weight") {
            root.pp("text_model")
        } else {
            root.clone()
        };
        let h = cfg.hidden_size;
        if cfg.num_attention_heads == 0 || !h.is_multiple_of(cfg.num_attention_heads) {
            return Err(SdError::invalid(
                "text_encoder.num_attention_heads",
                format!(
                    "{} does not divide hidden_size {h}",
                    cfg.num_attention_heads
                ),
            ));
        }
        let emb = vb.pp("embeddings");
        let token_embedding = candle_nn::embedding(cfg.vocab_size, h, emb.pp("token_embedding"))?;
        let position_embedding =
            candle_nn::embedding(cfg.max_position_embeddings, h, emb.pp("position_embedding"))?;
        let enc = vb.pp("encoder.layers");
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let l = enc.pp(i);
                let a = l.pp("self_attn");
                Ok(Layer {
                    ln1: candle_nn::layer_norm(h, cfg.layer_norm_eps, l.pp("layer_norm1"))?,
                    attn: Attention {
                        q: Linear::load(a.pp("q_proj"), h, h, true)?,
                        k: Linear::load(a.pp("k_proj"), h, h, true)?,
                        v: Linear::load(a.pp("v_proj"), h, h, true)?,
                        out: Linear::load(a.pp("out_proj"), h, h, true)?,
                        heads: cfg.num_attention_heads,
                    },
                    ln2: candle_nn::layer_norm(h, cfg.layer_norm_eps, l.pp("layer_norm2"))?,
                    fc1: Linear::load(l.pp("mlp.fc1"), h, cfg.intermediate_size, true)?,
                    fc2: Linear::load(l.pp("mlp.fc2"), cfg.intermediate_size, h, true)?,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let final_layer_norm =
            candle_nn::layer_norm(h, cfg.layer_norm_eps, vb.pp("final_layer_norm"))?;
        let text_projection = match cfg.projection_dim {
            Some(p) if root.contains_tensor("text_projection.weight") => {
                Some(Linear::load(root.pp("text_projection"), h, p, false)?)
            }
            _ => None,
        };
        Ok(Self {
            token_embedding,
            position_embedding,
            layers,
            final_layer_norm,
            text_projection,
            act: cfg.hidden_act,
            hidden_size: h,
            eos_token_id: cfg.eos_token_id,
        })
    }

    fn causal_mask(seq: usize, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        let mask: Vec<f32> = (0..seq)
            .flat_map(|i| (0..seq).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        Tensor::from_vec(mask, (seq, seq), device)?.to_dtype(dtype)
    }

    /// Embeddings output then each layer's output (before the final norm), for parity tests.
    pub fn forward_all(&self, input_ids: &Tensor) -> Result<(Tensor, Vec<Tensor>)> {
        let (_b, seq) = input_ids.dims2()?;
        let positions = Tensor::arange(0u32, seq as u32, input_ids.device())?;
        let tok = self.token_embedding.forward(input_ids)?;
        let pos = self.position_embedding.forward(&positions)?;
        let mut xs = tok.broadcast_add(&pos)?;
        let mask = Self::causal_mask(seq, xs.dtype(), xs.device())?;
        let mut states = vec![xs.clone()];
        for layer in &self.layers {
            let residual = xs.clone();
            let h = layer.ln1.forward(&xs)?;
            let h = layer.attn.forward(&h, &mask)?;
            xs = (h + residual)?;
            let residual = xs.clone();
            let h = layer.ln2.forward(&xs)?;
            let h = self.act.apply(&layer.fc1.forward(&h)?)?;
            xs = (layer.fc2.forward(&h)? + residual)?;
            states.push(xs.clone());
        }
        Ok((self.final_layer_norm.forward(&xs)?, states))
    }

    /// `last_hidden_state` for `input_ids` of shape (batch, seq).
    pub fn forward(&self, input_ids: &Tensor) -> Result<Tensor> {
        Ok(self.forward_all(input_ids)?.0)
    }

    /// Whether this encoder has a `text_projection` (gives `pooled`).
    pub fn has_projection(&self) -> bool {
        self.text_projection.is_some()
    }

    /// The last, penultimate and pooled outputs in one pass (SDXL).
    pub fn encode(&self, input_ids: &Tensor) -> Result<EncoderOutput> {
        let (last_hidden, states) = self.forward_all(input_ids)?;
        let penultimate = match states.len().checked_sub(2).and_then(|i| states.get(i)) {
            Some(s) => s.clone(),
            None => {
                return Err(SdError::invalid(
                    "text_encoder.num_hidden_layers",
                    "needs at least one layer for a penultimate hidden state",
                ));
            }
        };
        let pooled = match &self.text_projection {
            Some(proj) => {
                let rows = self.pooled_positions(input_ids)?;
                let picked = rows
                    .iter()
                    .enumerate()
                    .map(|(b, &pos)| last_hidden.get(b)?.get(pos)?.unsqueeze(0))
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Some(proj.forward(&Tensor::cat(&picked, 0)?)?)
            }
            None => None,
        };
        Ok(EncoderOutput {
            last_hidden,
            penultimate,
            pooled,
        })
    }

    /// Per batch row, the position transformers pools: the largest id (the
    /// end token, for configs with the legacy `eos_token_id` 2), else the
    /// first position holding `eos_token_id`.
    fn pooled_positions(&self, input_ids: &Tensor) -> Result<Vec<usize>> {
        let ids = input_ids.to_dtype(DType::U32)?.to_vec2::<u32>()?;
        Ok(ids
            .iter()
            .map(|row| {
                if self.eos_token_id == 2 {
                    // First of the largest, as torch.argmax.
                    row.iter()
                        .enumerate()
                        .fold(
                            (0, 0u32),
                            |best, (i, &v)| if v > best.1 { (i, v) } else { best },
                        )
                        .0
                } else {
                    row.iter()
                        .position(|&v| v == self.eos_token_id)
                        .unwrap_or(row.len().saturating_sub(1))
                }
            })
            .collect())
    }
}

impl Attention {
    fn forward(&self, xs: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let (b, seq, h) = xs.dims3()?;
        let head_dim = h / self.heads;
        let scale = (head_dim as f64).powf(-0.5);
        let split = |t: Tensor| {
            t.reshape((b, seq, self.heads, head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split((self.q.forward(xs)? * scale)?)?;
        let k = split(self.k.forward(xs)?)?;
        let v = split(self.v.forward(xs)?)?;
        let scores = q.matmul(&k.t()?)?.broadcast_add(mask)?;
        let probs =
            candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?.to_dtype(v.dtype())?;
        let out = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, seq, h))?;
        self.out.forward(&out)
    }
}
