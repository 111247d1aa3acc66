//! Diffusers' `Transformer2DModel` (continuous input) and its `BasicTransformerBlock`.
//!
//! Ours rather than candle-transformers' `SpatialTransformer` because candle's
//! GEGLU uses the tanh GELU (diffusers: exact erf, a 5e-5 difference on the
//! fixtures) and its attention always upcasts to f32, which costs on GPU.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{LayerNorm, VarBuilder};

use crate::kernels::{self, Linear};

/// Multi-head attention with `to_q/to_k/to_v` (no bias) and `to_out.0`.
#[derive(Debug)]
pub struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    head_dim: usize,
    upcast: bool,
}

impl Attention {
    pub fn load(
        vb: VarBuilder,
        query_dim: usize,
        context_dim: Option<usize>,
        heads: usize,
        head_dim: usize,
        upcast: bool,
    ) -> Result<Self> {
        let inner = heads * head_dim;
        let ctx = context_dim.unwrap_or(query_dim);
        Ok(Self {
            to_q: Linear::load(vb.pp("to_q"), query_dim, inner, false)?,
            to_k: Linear::load(vb.pp("to_k"), ctx, inner, false)?,
            to_v: Linear::load(vb.pp("to_v"), ctx, inner, false)?,
            to_out: Linear::load(vb.pp("to_out.0"), inner, query_dim, true)?,
            heads,
            head_dim,
            upcast,
        })
    }

    /// `residual + attention(xs, context)`: the residual is the output
    /// projection's starting value on the CPU.
    pub fn forward(
        &self,
        xs: &Tensor,
        context: Option<&Tensor>,
        residual: &Tensor,
    ) -> Result<Tensor> {
        let (b, seq, _) = xs.dims3()?;
        let ctx = context.unwrap_or(xs);
        let ctx_seq = ctx.dim(1)?;
        let scale = (self.head_dim as f64).powf(-0.5);
        let (q, k, v) = (
            self.to_q.forward(xs)?,
            self.to_k.forward(ctx)?,
            self.to_v.forward(ctx)?,
        );
        // f32 on the CPU: the flash-style kernel (no score matrix, no transposes).
        if let Some(out) = kernels::attention(
            &q,
            &k,
            &v,
            self.heads,
            scale,
            crate::kernels::SoftmaxExp::Fast,
        )? {
            return self.to_out.forward_residual(&out, residual);
        }
        let heads = |t: Tensor, s: usize| {
            t.reshape((b, s, self.heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = heads((q * scale)?, seq)?;
        let k = heads(k, ctx_seq)?;
        let v = heads(v, ctx_seq)?;
        let in_dtype = q.dtype();
        let (q, k, v) = if self.upcast && in_dtype != DType::F32 {
            (
                q.to_dtype(DType::F32)?,
                k.to_dtype(DType::F32)?,
                v.to_dtype(DType::F32)?,
            )
        } else {
            (q, k, v)
        };
        let probs = candle_nn::ops::softmax_last_dim(&q.matmul(&k.t()?)?)?;
        let out = probs
            .matmul(&v)?
            .to_dtype(in_dtype)?
            .transpose(1, 2)?
            .reshape((b, seq, self.heads * self.head_dim))?;
        self.to_out.forward(&out)? + residual
    }
}

/// GEGLU feed-forward: `net.0.proj` → x * gelu_erf(gate) → `net.2`.
#[derive(Debug)]
struct FeedForward {
    proj: Linear,
    out: Linear,
}

impl FeedForward {
    fn load(vb: VarBuilder, dim: usize) -> Result<Self> {
        let inner = 4 * dim;
        Ok(Self {
            proj: Linear::load(vb.pp("net.0.proj"), dim, inner * 2, true)?,
            out: Linear::load(vb.pp("net.2"), inner, dim, true)?,
        })
    }

    /// `residual + feed_forward(xs)`.
    fn forward(&self, xs: &Tensor, residual: &Tensor) -> Result<Tensor> {
        let h = self.proj.forward(xs)?;
        // f32 on the CPU: one fused, vectorised pass.
        if let Some(gated) = kernels::geglu(&h)? {
            return self.out.forward_residual(&gated, residual);
        }
        let chunks = h.chunk(2, candle_core::D::Minus1)?;
        let (Some(x), Some(gate)) = (chunks.first(), chunks.get(1)) else {
            candle_core::bail!("GEGLU projection did not split in two");
        };
        self.out.forward(&(x * gate.gelu_erf()?)?)? + residual
    }
}

#[derive(Debug)]
struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff: FeedForward,
}

impl BasicTransformerBlock {
    fn load(
        vb: VarBuilder,
        dim: usize,
        heads: usize,
        context_dim: usize,
        upcast: bool,
    ) -> Result<Self> {
        let head_dim = dim / heads;
        Ok(Self {
            norm1: candle_nn::layer_norm(dim, 1e-5, vb.pp("norm1"))?,
            attn1: Attention::load(vb.pp("attn1"), dim, None, heads, head_dim, upcast)?,
            norm2: candle_nn::layer_norm(dim, 1e-5, vb.pp("norm2"))?,
            attn2: Attention::load(
                vb.pp("attn2"),
                dim,
                Some(context_dim),
                heads,
                head_dim,
                upcast,
            )?,
            norm3: candle_nn::layer_norm(dim, 1e-5, vb.pp("norm3"))?,
            ff: FeedForward::load(vb.pp("ff"), dim)?,
        })
    }

    fn forward(&self, xs: &Tensor, context: &Tensor) -> Result<Tensor> {
        let xs = self.attn1.forward(&self.norm1.forward(xs)?, None, xs)?;
        let xs = self
            .attn2
            .forward(&self.norm2.forward(&xs)?, Some(context), &xs)?;
        self.ff.forward(&self.norm3.forward(&xs)?, &xs)
    }
}

#[derive(Debug)]
enum Proj {
    Linear(Linear),
    Conv(kernels::Conv2d),
}

/// Settings shared by every `Transformer2DModel` of one UNet.
#[derive(Debug, Clone, Copy)]
pub struct TransformerSettings {
    pub context_dim: usize,
    pub use_linear_projection: bool,
    pub norm_groups: usize,
    pub upcast_attention: bool,
}

/// `Transformer2DModel`: group norm, proj_in, `depth` transformer blocks, proj_out, residual.
#[derive(Debug)]
pub struct Transformer2D {
    norm: kernels::GroupNorm,
    proj_in: Proj,
    blocks: Vec<BasicTransformerBlock>,
    proj_out: Proj,
}

impl Transformer2D {
    pub fn load(
        vb: VarBuilder,
        channels: usize,
        heads: usize,
        depth: usize,
        s: TransformerSettings,
    ) -> Result<Self> {
        if heads == 0 || !channels.is_multiple_of(heads) {
            candle_core::bail!("{channels} channels cannot be split into {heads} attention heads");
        }
        let norm = kernels::GroupNorm::load(s.norm_groups, channels, 1e-6, vb.pp("norm"))?;
        let (proj_in, proj_out) = if s.use_linear_projection {
            (
                Proj::Linear(Linear::load(vb.pp("proj_in"), channels, channels, true)?),
                Proj::Linear(Linear::load(vb.pp("proj_out"), channels, channels, true)?),
            )
        } else {
            (
                Proj::Conv(kernels::Conv2d::load(
                    vb.pp("proj_in"),
                    channels,
                    channels,
                    1,
                    1,
                    0,
                    true,
                )?),
                Proj::Conv(kernels::Conv2d::load(
                    vb.pp("proj_out"),
                    channels,
                    channels,
                    1,
                    1,
                    0,
                    true,
                )?),
            )
        };
        let tb = vb.pp("transformer_blocks");
        let blocks = (0..depth)
            .map(|i| {
                BasicTransformerBlock::load(
                    tb.pp(i),
                    channels,
                    heads,
                    s.context_dim,
                    s.upcast_attention,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            norm,
            proj_in,
            blocks,
            proj_out,
        })
    }

    pub fn forward(&self, xs: &Tensor, context: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = xs.dims4()?;
        let residual = xs;
        let xs = self.norm.forward(xs)?;
        let to_tokens = |t: Tensor| t.permute((0, 2, 3, 1))?.reshape((b, h * w, c));
        let mut tokens = match &self.proj_in {
            // Read straight from the channel-major map on the CPU.
            Proj::Linear(p) => p.forward_from_nchw(&xs)?,
            Proj::Conv(p) => to_tokens(p.forward(&xs)?)?,
        };
        for block in &self.blocks {
            tokens = block.forward(&tokens, context)?;
        }
        let to_image = |t: Tensor| t.reshape((b, h, w, c))?.permute((0, 3, 1, 2))?.contiguous();
        match &self.proj_out {
            // Written straight into the channel-major map, the residual its starting value.
            Proj::Linear(p) => p.forward_to_nchw(&tokens, residual),
            // The residual is the conv's starting value: one pass fewer.
            Proj::Conv(p) => p.forward_with(&to_image(tokens)?, None, Some(residual)),
        }
    }
}
