//! CLIP text encoder (transformers' `CLIPTextModel`), any size, built from its config.json.
//!
//! Written here rather than taken from candle-transformers because candle's
//! config cannot be built at other sizes and its `gelu` is the tanh
//! approximation, while SD 2.x / SD-Turbo's OpenCLIP-H uses the exact erf form.

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder};
use serde::Deserialize;

use crate::error::{Result, SdError};

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
            Self::Gelu => xs.gelu_erf(),
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
    act: Activation,
    hidden_size: usize,
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
    pub fn load(vb: VarBuilder, cfg: &ClipConfig) -> Result<Self> {
        let vb = if vb.contains_tensor("text_model.embeddings.token_embedding.weight") {
            vb.pp("text_model")
        } else {
            vb
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
                        q: candle_nn::linear(h, h, a.pp("q_proj"))?,
                        k: candle_nn::linear(h, h, a.pp("k_proj"))?,
                        v: candle_nn::linear(h, h, a.pp("v_proj"))?,
                        out: candle_nn::linear(h, h, a.pp("out_proj"))?,
                        heads: cfg.num_attention_heads,
                    },
                    ln2: candle_nn::layer_norm(h, cfg.layer_norm_eps, l.pp("layer_norm2"))?,
                    fc1: candle_nn::linear(h, cfg.intermediate_size, l.pp("mlp.fc1"))?,
                    fc2: candle_nn::linear(cfg.intermediate_size, h, l.pp("mlp.fc2"))?,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let final_layer_norm =
            candle_nn::layer_norm(h, cfg.layer_norm_eps, vb.pp("final_layer_norm"))?;
        Ok(Self {
            token_embedding,
            position_embedding,
            layers,
            final_layer_norm,
            act: cfg.hidden_act,
            hidden_size: h,
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
