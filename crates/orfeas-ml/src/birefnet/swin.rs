//! The Swin-v1 backbone as BiRefNet uses it (`models/backbones/swin_v1.py`,
//! the "detection" variant): patch embedding, shifted-window attention with a
//! relative position bias, patch merging, a LayerNorm on each stage output.
//!
//! Tokens are `(B, H·W, C)`, row-major. Windows pad the map with zeros at the
//! right/bottom after `norm1` and never clamp the window to the map (so a
//! window may be mostly padding; padded tokens take part in the softmax).

use candle_core::{D, DType, Device, Module, Result, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, LayerNorm, Linear, VarBuilder};

use super::config::SwinConfig;

fn layer_norm(dim: usize, eps: f64, vb: VarBuilder) -> Result<LayerNorm> {
    candle_nn::layer_norm(dim, eps, vb)
}

/// `Conv2d(3, E, 4, stride 4)` then LayerNorm over channels.
#[derive(Debug, Clone)]
pub struct PatchEmbed {
    proj: Conv2d,
    norm: LayerNorm,
}

impl PatchEmbed {
    pub fn load(vb: VarBuilder, cfg: &SwinConfig) -> Result<Self> {
        let conv = Conv2dConfig {
            stride: cfg.patch_size,
            ..Default::default()
        };
        Ok(Self {
            proj: candle_nn::conv2d(3, cfg.embed_dim, cfg.patch_size, conv, vb.pp("proj"))?,
            norm: layer_norm(cfg.embed_dim, cfg.layer_norm_eps, vb.pp("norm"))?,
        })
    }

    /// `(B, 3, H, W)` (sides multiples of 4) → normed `(B, E, H/4, W/4)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.proj.forward(x)?;
        let (b, c, h, w) = x.dims4()?;
        let t = x.flatten_from(2)?.transpose(1, 2)?;
        let t = self.norm.forward(&t)?;
        t.transpose(1, 2)?.reshape((b, c, h, w))
    }
}

/// The `(N·N)` relative-position index of a `ws`×`ws` window (the official
/// `relative_position_index` buffer, a pure function of `ws`).
pub fn relative_position_index(ws: usize) -> Vec<u32> {
    let n = ws * ws;
    let span = 2 * ws - 1;
    let mut idx = Vec::with_capacity(n * n);
    for i in 0..n {
        let (yi, xi) = (i / ws, i % ws);
        for j in 0..n {
            let (yj, xj) = (j / ws, j % ws);
            let dy = yi + ws - 1 - yj;
            let dx = xi + ws - 1 - xj;
            idx.push((dy * span + dx) as u32);
        }
    }
    idx
}

/// The shift mask `(nW, N, N)` for a padded `hp`×`wp` map: 0 where two tokens
/// of a window come from the same region of the rolled map, `-inf` elsewhere.
pub fn shift_mask(hp: usize, wp: usize, ws: usize, device: &Device) -> Result<Tensor> {
    let s = ws / 2;
    // Regions along one side: [0, len-ws), [len-ws, len-s), [len-s, len).
    let region = |v: usize, len: usize| -> usize {
        if v < len.saturating_sub(ws) {
            0
        } else if v < len.saturating_sub(s) {
            1
        } else {
            2
        }
    };
    let (nh, nw) = (hp / ws, wp / ws);
    let n = ws * ws;
    let mut mask = Vec::with_capacity(nh * nw * n * n);
    let mut ids = vec![0usize; n];
    for wy in 0..nh {
        for wx in 0..nw {
            for (t, id) in ids.iter_mut().enumerate() {
                let (y, x) = (wy * ws + t / ws, wx * ws + t % ws);
                *id = region(y, hp) * 3 + region(x, wp);
            }
            for &a in &ids {
                for &b in &ids {
                    mask.push(if a == b { 0f32 } else { f32::NEG_INFINITY });
                }
            }
        }
    }
    Tensor::from_vec(mask, (nh * nw, n, n), device)
}

/// Window multi-head self-attention with the relative position bias.
#[derive(Debug, Clone)]
pub struct WindowAttention {
    qkv: Linear,
    proj: Linear,
    /// `(nH, N, N)`, gathered once from the table.
    bias: Tensor,
    num_heads: usize,
    scale: f64,
}

impl WindowAttention {
    pub fn load(vb: VarBuilder, dim: usize, num_heads: usize, ws: usize) -> Result<Self> {
        let table = vb.get(
            ((2 * ws - 1) * (2 * ws - 1), num_heads),
            "relative_position_bias_table",
        )?;
        let n = ws * ws;
        let index = Tensor::from_vec(relative_position_index(ws), n * n, table.device())?;
        let bias = table
            .contiguous()?
            .index_select(&index, 0)?
            .reshape((n, n, num_heads))?
            .permute((2, 0, 1))?
            .contiguous()?;
        Ok(Self {
            qkv: candle_nn::linear(dim, 3 * dim, vb.pp("qkv"))?,
            proj: candle_nn::linear(dim, dim, vb.pp("proj"))?,
            bias,
            num_heads,
            scale: ((dim / num_heads) as f64).powf(-0.5),
        })
    }

    /// Windows `(nW, N, C)` → `(nW, N, C)`; `mask` `(nW, N, N)` for shifted blocks.
    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (nw, n, c) = x.dims3()?;
        let nh = self.num_heads;
        let qkv = self
            .qkv
            .forward(x)?
            .reshape((nw, n, 3, nh, c / nh))?
            .permute((2, 0, 3, 1, 4))?;
        let q = (qkv.get(0)?.contiguous()? * self.scale)?;
        let k = qkv.get(1)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        let mut attn = q.matmul(&k.t()?)?.broadcast_add(&self.bias.unsqueeze(0)?)?;
        if let Some(mask) = mask {
            attn = attn.broadcast_add(&mask.unsqueeze(1)?.to_dtype(attn.dtype())?)?;
        }
        let attn = candle_nn::ops::softmax_last_dim(&attn)?;
        let out = attn.matmul(&v)?.transpose(1, 2)?.reshape((nw, n, c))?;
        self.proj.forward(&out)
    }
}

/// `Linear(C, 4C)` → exact GELU → `Linear(4C, C)`.
#[derive(Debug, Clone)]
struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    fn load(vb: VarBuilder, dim: usize, hidden: usize) -> Result<Self> {
        Ok(Self {
            fc1: candle_nn::linear(dim, hidden, vb.pp("fc1"))?,
            fc2: candle_nn::linear(hidden, dim, vb.pp("fc2"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.fc2.forward(&self.fc1.forward(x)?.gelu_erf()?)
    }
}

/// One pre-norm Swin block; `shift` is `ws/2` for odd blocks of a stage, else 0.
#[derive(Debug, Clone)]
pub struct SwinBlock {
    norm1: LayerNorm,
    attn: WindowAttention,
    norm2: LayerNorm,
    mlp: Mlp,
    ws: usize,
    shift: usize,
}

impl SwinBlock {
    pub fn load(
        vb: VarBuilder,
        cfg: &SwinConfig,
        dim: usize,
        num_heads: usize,
        shift: usize,
    ) -> Result<Self> {
        let hidden = (dim as f64 * cfg.mlp_ratio) as usize;
        Ok(Self {
            norm1: layer_norm(dim, cfg.layer_norm_eps, vb.pp("norm1"))?,
            attn: WindowAttention::load(vb.pp("attn"), dim, num_heads, cfg.window_size)?,
            norm2: layer_norm(dim, cfg.layer_norm_eps, vb.pp("norm2"))?,
            mlp: Mlp::load(vb.pp("mlp"), dim, hidden)?,
            ws: cfg.window_size,
            shift,
        })
    }

    pub fn shift(&self) -> usize {
        self.shift
    }

    /// The padded map size for an `h`×`w` map.
    pub fn padded(&self, h: usize, w: usize) -> (usize, usize) {
        (h.div_ceil(self.ws) * self.ws, w.div_ceil(self.ws) * self.ws)
    }

    /// The raw window-attention output `(nW, N, C)` for tokens `(1, h·w, C)`:
    /// norm1, zero padding, roll, partition, attention (before the reverse steps).
    pub fn attention_windows(
        &self,
        x: &Tensor,
        h: usize,
        w: usize,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (b, _, c) = x.dims3()?;
        let ws = self.ws;
        let (hp, wp) = self.padded(h, w);
        let mut m = self.norm1.forward(x)?.reshape((b, h, w, c))?;
        if wp > w {
            m = m.pad_with_zeros(2, 0, wp - w)?;
        }
        if hp > h {
            m = m.pad_with_zeros(1, 0, hp - h)?;
        }
        if self.shift > 0 {
            let s = self.shift as i32;
            m = m.roll(-s, 1)?.roll(-s, 2)?;
        }
        let windows = m
            .reshape((b, hp / ws, ws, wp / ws, ws, c))?
            .permute((0, 1, 3, 2, 4, 5))?
            .reshape((b * (hp / ws) * (wp / ws), ws * ws, c))?;
        self.attn
            .forward(&windows, if self.shift > 0 { mask } else { None })
    }

    /// Tokens `(1, h·w, C)` → `(1, h·w, C)`; `mask` is the stage's [`shift_mask`] (used when shifted).
    pub fn forward(&self, x: &Tensor, h: usize, w: usize, mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, l, c) = x.dims3()?;
        let ws = self.ws;
        let (hp, wp) = self.padded(h, w);
        let windows = self.attention_windows(x, h, w, mask)?;
        let mut m = windows
            .reshape((b, hp / ws, wp / ws, ws, ws, c))?
            .permute((0, 1, 3, 2, 4, 5))?
            .reshape((b, hp, wp, c))?;
        if self.shift > 0 {
            let s = self.shift as i32;
            m = m.roll(s, 1)?.roll(s, 2)?;
        }
        let m = m.narrow(1, 0, h)?.narrow(2, 0, w)?.reshape((b, l, c))?;
        let x = (x + m)?;
        &x + self.mlp.forward(&self.norm2.forward(&x)?)?
    }
}

/// `x[0::2,0::2] | x[1::2,0::2] | x[0::2,1::2] | x[1::2,1::2]` → LayerNorm(4C) → Linear(4C, 2C).
#[derive(Debug, Clone)]
pub struct PatchMerging {
    norm: LayerNorm,
    reduction: Linear,
}

impl PatchMerging {
    pub fn load(vb: VarBuilder, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            norm: layer_norm(4 * dim, eps, vb.pp("norm"))?,
            reduction: candle_nn::linear_no_bias(4 * dim, 2 * dim, vb.pp("reduction"))?,
        })
    }

    /// Tokens `(B, h·w, C)` → `(B, ⌈h/2⌉·⌈w/2⌉, 2C)`; an odd side is zero-padded
    /// at the bottom/right first (the ×0.5 pyramid call reaches 3×4 maps).
    pub fn forward(&self, x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
        let (b, _, c) = x.dims3()?;
        let mut m = x.reshape((b, h, w, c))?;
        if w % 2 == 1 {
            m = m.pad_with_zeros(2, 0, 1)?;
        }
        if h % 2 == 1 {
            m = m.pad_with_zeros(1, 0, 1)?;
        }
        let (h2, w2) = (h.div_ceil(2), w.div_ceil(2));
        // (B, h/2, row, w/2, col, C) → (B, h/2, w/2, col, row, C): the row offset varies first.
        let x = m
            .reshape((b, h2, 2, w2, 2, c))?
            .permute((0, 1, 3, 4, 2, 5))?
            .reshape((b, h2 * w2, 4 * c))?;
        self.reduction.forward(&self.norm.forward(&x)?)
    }
}

/// One stage: its blocks and the merging that follows (none after the last).
#[derive(Debug, Clone)]
pub struct SwinStage {
    pub blocks: Vec<SwinBlock>,
    pub downsample: Option<PatchMerging>,
    ws: usize,
}

impl SwinStage {
    /// The shift mask for an `h`×`w` map of this stage.
    pub fn mask(&self, h: usize, w: usize, device: &Device) -> Result<Tensor> {
        let (hp, wp) = (h.div_ceil(self.ws) * self.ws, w.div_ceil(self.ws) * self.ws);
        shift_mask(hp, wp, self.ws, device)
    }

    /// Tokens → (the stage output before merging, the merged tokens if any).
    pub fn forward(&self, x: &Tensor, h: usize, w: usize) -> Result<(Tensor, Option<Tensor>)> {
        let mask = if self.blocks.iter().any(|b| b.shift() > 0) {
            Some(self.mask(h, w, x.device())?)
        } else {
            None
        };
        let mut x = x.clone();
        for block in &self.blocks {
            x = block.forward(&x, h, w, mask.as_ref())?;
        }
        let down = match &self.downsample {
            Some(d) => Some(d.forward(&x, h, w)?),
            None => None,
        };
        Ok((x, down))
    }
}

/// The backbone (`bb.*`): four stages with normed outputs at strides 4, 8, 16, 32.
#[derive(Debug, Clone)]
pub struct SwinTransformer {
    pub patch_embed: PatchEmbed,
    pub stages: Vec<SwinStage>,
    pub norms: Vec<LayerNorm>,
}

impl SwinTransformer {
    pub fn load(vb: VarBuilder, cfg: &SwinConfig) -> Result<Self> {
        let patch_embed = PatchEmbed::load(vb.pp("patch_embed"), cfg)?;
        let n_stages = cfg.depths.len();
        let mut stages = Vec::with_capacity(n_stages);
        let mut norms = Vec::with_capacity(n_stages);
        for (i, (&depth, &heads)) in cfg.depths.iter().zip(&cfg.num_heads).enumerate() {
            let dim = cfg.stage_channels(i);
            let vl = vb.pp(format!("layers.{i}"));
            let blocks = (0..depth)
                .map(|j| {
                    let shift = if j % 2 == 1 { cfg.window_size / 2 } else { 0 };
                    SwinBlock::load(vl.pp(format!("blocks.{j}")), cfg, dim, heads, shift)
                })
                .collect::<Result<Vec<_>>>()?;
            let downsample = if i + 1 < n_stages {
                Some(PatchMerging::load(
                    vl.pp("downsample"),
                    dim,
                    cfg.layer_norm_eps,
                )?)
            } else {
                None
            };
            stages.push(SwinStage {
                blocks,
                downsample,
                ws: cfg.window_size,
            });
            norms.push(layer_norm(
                dim,
                cfg.layer_norm_eps,
                vb.pp(format!("norm{i}")),
            )?);
        }
        Ok(Self {
            patch_embed,
            stages,
            norms,
        })
    }

    /// `(1, 3, H, W)` → the four normed stage outputs, NCHW.
    pub fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        let pe = self.patch_embed.forward(x)?;
        let (b, _, mut h, mut w) = pe.dims4()?;
        let mut tokens = pe.flatten_from(2)?.transpose(1, 2)?.contiguous()?;
        let mut outs = Vec::with_capacity(self.stages.len());
        for (stage, norm) in self.stages.iter().zip(&self.norms) {
            let (out, down) = stage.forward(&tokens, h, w)?;
            let c = out.dim(D::Minus1)?;
            let out = norm
                .forward(&out)?
                .reshape((b, h, w, c))?
                .permute((0, 3, 1, 2))?
                .contiguous()?;
            outs.push(out);
            if let Some(down) = down {
                tokens = down;
                h = h.div_ceil(2);
                w = w.div_ceil(2);
            }
        }
        Ok(outs)
    }
}

/// Bilinear resize with `align_corners=True` (every resize inside BiRefNet).
pub fn interp(x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (_, _, xh, xw) = x.dims4()?;
    if (xh, xw) == (h, w) {
        return Ok(x.clone());
    }
    // candle's CPU kernel works in the tensor's dtype; keep half-precision models in f32 here.
    let dtype = x.dtype();
    if matches!(dtype, DType::F16 | DType::BF16) {
        return x
            .to_dtype(DType::F32)?
            .upsample_bilinear2d(h, w, true)?
            .to_dtype(dtype);
    }
    x.upsample_bilinear2d(h, w, true)
}
