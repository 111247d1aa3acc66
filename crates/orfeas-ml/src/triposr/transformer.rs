//! The triplane half of TripoSR: the learnt triplane tokens
//! (`tokenizer.embeddings`), the `Transformer1D` backbone that refines them
//! while attending to the image tokens (`backbone.*`), and the ConvTranspose2d
//! post-processor that turns them into scene codes (`post_processor.*`).
//! Also the multi-head attention both transformers share.

use candle_core::{D, DType, Module, Result, Tensor};
use candle_nn::{GroupNorm, LayerNorm, Linear, VarBuilder};

use super::config::{BackboneConfig, PostProcessorConfig, TokenizerConfig};

/// Largest attention-score block computed at once (bytes, f32). The full-size
/// backbone's self-attention over 3072 tokens would need 604 MB for all 16
/// heads; it runs a few heads at a time instead.
const MAX_SCORES_BYTES: usize = 256 << 20;

/// Multi-head attention over `(B, S, C)` tokens; keys and values from `context` when given.
#[derive(Debug)]
pub struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    heads: usize,
    head_dim: usize,
}

impl Attention {
    /// transformers' ViT layout: `attention.{query,key,value}` (bias per config), `output.dense`.
    pub fn load_vit(vb: VarBuilder, dim: usize, heads: usize, qkv_bias: bool) -> Result<Self> {
        if heads == 0 || !dim.is_multiple_of(heads) {
            candle_core::bail!("{heads} attention heads do not divide the width {dim}");
        }
        let proj = |name: &str| {
            let vb = vb.pp("attention").pp(name);
            if qkv_bias {
                candle_nn::linear(dim, dim, vb)
            } else {
                candle_nn::linear_no_bias(dim, dim, vb)
            }
        };
        Ok(Self {
            q: proj("query")?,
            k: proj("key")?,
            v: proj("value")?,
            out: candle_nn::linear(dim, dim, vb.pp("output.dense"))?,
            heads,
            head_dim: dim / heads,
        })
    }

    /// diffusers' layout (TripoSR's copy): `to_q/to_k/to_v` without bias, `to_out.0` with.
    pub fn load_diffusers(
        vb: VarBuilder,
        query_dim: usize,
        context_dim: usize,
        heads: usize,
        head_dim: usize,
    ) -> Result<Self> {
        let inner = heads * head_dim;
        Ok(Self {
            q: candle_nn::linear_no_bias(query_dim, inner, vb.pp("to_q"))?,
            k: candle_nn::linear_no_bias(context_dim, inner, vb.pp("to_k"))?,
            v: candle_nn::linear_no_bias(context_dim, inner, vb.pp("to_v"))?,
            out: candle_nn::linear(inner, query_dim, vb.pp("to_out.0"))?,
            heads,
            head_dim,
        })
    }

    pub fn forward(&self, xs: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        let (b, seq, _) = xs.dims3()?;
        let ctx = context.unwrap_or(xs);
        let ctx_seq = ctx.dim(1)?;
        let scale = (self.head_dim as f64).powf(-0.5);
        let (q, k, v) = (
            self.q.forward(xs)?,
            self.k.forward(ctx)?,
            self.v.forward(ctx)?,
        );
        // f32 on the CPU: the flash-style kernel (no score matrix, no transposes).
        if let Some(out) = crate::kernels::attention(
            &q,
            &k,
            &v,
            self.heads,
            scale,
            crate::kernels::SoftmaxExp::Libm,
        )? {
            return self.out.forward(&out);
        }
        let split = |t: Tensor, s: usize| {
            t.reshape((b, s, self.heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split(q, seq)?;
        let k = split(k, ctx_seq)?;
        let v = split(v, ctx_seq)?;
        let per_head_bytes = b * seq * ctx_seq * DType::F32.size_in_bytes();
        let group = (MAX_SCORES_BYTES / per_head_bytes.max(1)).clamp(1, self.heads);
        let mut outs = Vec::with_capacity(self.heads.div_ceil(group));
        for start in (0..self.heads).step_by(group) {
            let n = group.min(self.heads - start);
            let (q, k, v) = (
                q.narrow(1, start, n)?,
                k.narrow(1, start, n)?,
                v.narrow(1, start, n)?,
            );
            let scores = (q.matmul(&k.t()?)? * scale)?;
            outs.push(candle_nn::ops::softmax_last_dim(&scores)?.matmul(&v)?);
        }
        let out = Tensor::cat(&outs, 1)?.transpose(1, 2)?.reshape((
            b,
            seq,
            self.heads * self.head_dim,
        ))?;
        self.out.forward(&out)
    }
}

/// GEGLU feed-forward: `net.0.proj` to `2 × 4C`, split `[hidden, gate]`,
/// `hidden * gelu(gate)` with the exact erf GELU (candle's stable-diffusion
/// GEGLU uses the tanh form), then `net.2`.
#[derive(Debug)]
struct GegluFeedForward {
    proj: Linear,
    out: Linear,
}

impl GegluFeedForward {
    fn load(vb: VarBuilder, dim: usize) -> Result<Self> {
        let inner = 4 * dim;
        Ok(Self {
            proj: candle_nn::linear(dim, 2 * inner, vb.pp("net.0.proj"))?,
            out: candle_nn::linear(inner, dim, vb.pp("net.2"))?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let h = self.proj.forward(xs)?;
        let half = h.dim(D::Minus1)? / 2;
        let hidden = h.narrow(D::Minus1, 0, half)?;
        let gate = h.narrow(D::Minus1, half, half)?;
        self.out.forward(&(hidden * gate.gelu_erf()?)?)
    }
}

/// diffusers' `BasicTransformerBlock` as TripoSR configures it: LayerNorm →
/// self-attention, LayerNorm → cross-attention to the image tokens, LayerNorm →
/// GEGLU feed-forward, each added back.
#[derive(Debug)]
pub struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff: GegluFeedForward,
}

impl BasicTransformerBlock {
    fn load(vb: VarBuilder, cfg: &BackboneConfig) -> Result<Self> {
        let dim = cfg.inner_dim();
        let (heads, head_dim) = (cfg.num_attention_heads, cfg.attention_head_dim);
        // torch.nn.LayerNorm's default eps.
        let ln = |name: &str| candle_nn::layer_norm(dim, 1e-5, vb.pp(name));
        Ok(Self {
            norm1: ln("norm1")?,
            attn1: Attention::load_diffusers(vb.pp("attn1"), dim, dim, heads, head_dim)?,
            norm2: ln("norm2")?,
            attn2: Attention::load_diffusers(
                vb.pp("attn2"),
                dim,
                cfg.cross_attention_dim,
                heads,
                head_dim,
            )?,
            norm3: ln("norm3")?,
            ff: GegluFeedForward::load(vb.pp("ff"), dim)?,
        })
    }

    /// `(B, T, C)` triplane tokens, `image_tokens` `(B, N, C_img)` → `(B, T, C)`.
    pub fn forward(&self, xs: &Tensor, image_tokens: &Tensor) -> Result<Tensor> {
        let xs = (self.attn1.forward(&self.norm1.forward(xs)?, None)? + xs)?;
        let xs = (self
            .attn2
            .forward(&self.norm2.forward(&xs)?, Some(image_tokens))?
            + xs)?;
        self.ff.forward(&self.norm3.forward(&xs)?)? + xs
    }
}

/// `tokenizer.embeddings`: three learnt `C × P × P` planes.
#[derive(Debug)]
pub struct TriplaneTokenizer {
    embeddings: Tensor,
    cfg: TokenizerConfig,
}

impl TriplaneTokenizer {
    /// `vb` at `tokenizer`.
    pub fn load(vb: VarBuilder, cfg: &TokenizerConfig) -> Result<Self> {
        let (c, p) = (cfg.num_channels, cfg.plane_size);
        Ok(Self {
            embeddings: vb.get((3, c, p, p), "embeddings")?,
            cfg: *cfg,
        })
    }

    /// The planes as tokens `(B, C, 3·P·P)`, token index `plane·P² + h·P + w`.
    pub fn forward(&self, batch: usize) -> Result<Tensor> {
        let (c, p) = (self.cfg.num_channels, self.cfg.plane_size);
        let tokens = self
            .embeddings
            .permute((1, 0, 2, 3))?
            .reshape((1, c, 3 * p * p))?;
        tokens.broadcast_as((batch, c, 3 * p * p))?.contiguous()
    }

    /// Tokens `(B, C, 3·P·P)` back to planes `(B, 3, C, P, P)`.
    pub fn detokenize(&self, tokens: &Tensor) -> Result<Tensor> {
        let (b, c, n) = tokens.dims3()?;
        let p = self.cfg.plane_size;
        if c != self.cfg.num_channels || n != 3 * p * p {
            candle_core::bail!(
                "triplane tokens {:?} do not match {} channels x 3 planes of {p}x{p}",
                tokens.dims(),
                self.cfg.num_channels
            );
        }
        tokens
            .reshape((b, c, 3, p, p))?
            .permute((0, 2, 1, 3, 4))?
            .contiguous()
    }
}

/// `backbone`: TripoSR's `Transformer1D` over the triplane tokens.
#[derive(Debug)]
pub struct Transformer1d {
    norm: GroupNorm,
    proj_in: Linear,
    blocks: Vec<BasicTransformerBlock>,
    proj_out: Linear,
}

impl Transformer1d {
    /// `vb` at `backbone`.
    pub fn load(vb: VarBuilder, cfg: &BackboneConfig) -> Result<Self> {
        let inner = cfg.inner_dim();
        let blocks = (0..cfg.num_layers)
            .map(|i| BasicTransformerBlock::load(vb.pp(format!("transformer_blocks.{i}")), cfg))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            norm: candle_nn::group_norm(cfg.norm_num_groups, cfg.in_channels, 1e-6, vb.pp("norm"))?,
            proj_in: candle_nn::linear(cfg.in_channels, inner, vb.pp("proj_in"))?,
            blocks,
            proj_out: candle_nn::linear(inner, cfg.in_channels, vb.pp("proj_out"))?,
        })
    }

    /// GroupNorm (eps 1e-6) of the tokens `(B, C, T)`.
    pub fn group_norm(&self, tokens: &Tensor) -> Result<Tensor> {
        self.norm.forward(tokens)
    }

    /// Normalised `(B, C, T)` → `(B, T, inner)` through `proj_in`.
    pub fn proj_in(&self, normed: &Tensor) -> Result<Tensor> {
        self.proj_in.forward(&normed.transpose(1, 2)?.contiguous()?)
    }

    pub fn blocks(&self) -> &[BasicTransformerBlock] {
        &self.blocks
    }

    /// `proj_out` of the last block's output, back to `(B, C, T)`, plus the input tokens.
    pub fn proj_out(&self, hidden: &Tensor, residual: &Tensor) -> Result<Tensor> {
        self.proj_out.forward(hidden)?.transpose(1, 2)? + residual
    }

    /// Tokens `(B, C, T)`, image tokens `(B, N, C_img)` → refined tokens `(B, C, T)`.
    pub fn forward(&self, tokens: &Tensor, image_tokens: &Tensor) -> Result<Tensor> {
        let mut h = self.proj_in(&self.group_norm(tokens)?)?;
        for block in &self.blocks {
            h = block.forward(&h, image_tokens)?;
        }
        self.proj_out(&h, tokens)
    }
}

/// `post_processor.upsample`: ConvTranspose2d(C, Co, kernel 2, stride 2) per
/// plane. With kernel = stride every input pixel writes its own 2×2 block, so
/// it runs as one matmul: `(P², C) × (C, Co·4)`.
#[derive(Debug)]
pub struct TriplaneUpsampler {
    /// `(C, Co·2·2)`.
    weight: Tensor,
    bias: Tensor,
    out_channels: usize,
}

impl TriplaneUpsampler {
    /// `vb` at `post_processor`.
    pub fn load(vb: VarBuilder, cfg: &PostProcessorConfig) -> Result<Self> {
        let (ci, co) = (cfg.in_channels, cfg.out_channels);
        let vb = vb.pp("upsample");
        Ok(Self {
            weight: vb.get((ci, co, 2, 2), "weight")?.reshape((ci, co * 4))?,
            bias: vb.get(co, "bias")?,
            out_channels: co,
        })
    }

    /// Planes `(B, 3, C, P, P)` → scene codes `(B, 3, Co, 2P, 2P)`.
    pub fn forward(&self, planes: &Tensor) -> Result<Tensor> {
        let (b, np, c, p, p2) = planes.dims5()?;
        if p != p2 {
            candle_core::bail!("triplanes {:?} are not square", planes.dims());
        }
        let co = self.out_channels;
        let pixels = planes
            .reshape((b * np, c, p * p))?
            .transpose(1, 2)?
            .contiguous()?;
        // (B·3, P², Co·4) → (B·3, P, P, Co, 2, 2) → (B·3, Co, P, 2, P, 2).
        let out = pixels
            .broadcast_matmul(&self.weight)?
            .reshape((b * np, p, p, co, 2, 2))?
            .permute((0, 3, 1, 4, 2, 5))?
            .reshape((b, np, co, 2 * p, 2 * p))?;
        out.broadcast_add(&self.bias.reshape((1, 1, co, 1, 1))?)
    }
}
