//! The DINO ViT image tokenizer (`image_tokenizer.model.*`, transformers 4.x
//! `ViTModel` names): patch embeddings + CLS + position embeddings interpolated
//! to the patch grid exactly as transformers 4.35 does, pre-norm encoder
//! layers, final LayerNorm. Its output (CLS included) is what the backbone's
//! cross-attention reads.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2d, LayerNorm, Linear, VarBuilder};

use super::config::ViTConfig;
use super::transformer::Attention;

/// Catmull-Rom-like cubic of PyTorch's `upsample_bicubic2d`.
const BICUBIC_A: f32 = -0.75;

/// ViT's MLP: `intermediate.dense` → exact (erf) GELU → `output.dense`.
#[derive(Debug)]
struct ViTMlp {
    fc1: Linear,
    fc2: Linear,
}

/// One pre-norm encoder layer (`encoder.layer.N`).
#[derive(Debug)]
pub struct ViTLayer {
    layernorm_before: LayerNorm,
    attention: Attention,
    layernorm_after: LayerNorm,
    mlp: ViTMlp,
}

impl ViTLayer {
    fn load(vb: VarBuilder, cfg: &ViTConfig) -> Result<Self> {
        let h = cfg.hidden_size;
        let ln = |name: &str| candle_nn::layer_norm(h, cfg.layer_norm_eps, vb.pp(name));
        Ok(Self {
            layernorm_before: ln("layernorm_before")?,
            attention: Attention::load_vit(
                vb.pp("attention"),
                h,
                cfg.num_attention_heads,
                cfg.qkv_bias,
            )?,
            layernorm_after: ln("layernorm_after")?,
            mlp: ViTMlp {
                fc1: candle_nn::linear(h, cfg.intermediate_size, vb.pp("intermediate.dense"))?,
                fc2: candle_nn::linear(cfg.intermediate_size, h, vb.pp("output.dense"))?,
            },
        })
    }

    /// `(B, T, hidden)` → `(B, T, hidden)`.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let h = (self
            .attention
            .forward(&self.layernorm_before.forward(xs)?, None)?
            + xs)?;
        let mlp = self.mlp.fc2.forward(
            &self
                .mlp
                .fc1
                .forward(&self.layernorm_after.forward(&h)?)?
                .gelu_erf()?,
        )?;
        mlp + h
    }
}

/// `image_tokenizer.model`: a DINO ViT without its (unused) pooler.
#[derive(Debug)]
pub struct DinoImageTokenizer {
    cls_token: Tensor,
    position_embeddings: Tensor,
    patch_embeddings: Conv2d,
    layers: Vec<ViTLayer>,
    layernorm: LayerNorm,
    patch_size: usize,
}

impl DinoImageTokenizer {
    /// `vb` at `image_tokenizer.model`.
    pub fn load(vb: VarBuilder, cfg: &ViTConfig) -> Result<Self> {
        cfg.validate()
            .map_err(|e| candle_core::Error::Msg(format!("invalid ViT config: {e}")))?;
        let h = cfg.hidden_size;
        let emb = vb.pp("embeddings");
        let grid = cfg.position_grid();
        let conv_cfg = candle_nn::Conv2dConfig {
            stride: cfg.patch_size,
            ..Default::default()
        };
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| ViTLayer::load(vb.pp(format!("encoder.layer.{i}")), cfg))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            cls_token: emb.get((1, 1, h), "cls_token")?,
            position_embeddings: emb.get((1, 1 + grid * grid, h), "position_embeddings")?,
            patch_embeddings: candle_nn::conv2d(
                cfg.num_channels,
                h,
                cfg.patch_size,
                conv_cfg,
                emb.pp("patch_embeddings.projection"),
            )?,
            layers,
            layernorm: candle_nn::layer_norm(h, cfg.layer_norm_eps, vb.pp("layernorm"))?,
            patch_size: cfg.patch_size,
        })
    }

    /// Conv2d(16, stride 16) of `pixel_values` `(B, 3, H, W)`, flattened to `(B, N, hidden)`.
    pub fn patch_embeddings(&self, pixel_values: &Tensor) -> Result<Tensor> {
        self.patch_embeddings
            .forward(pixel_values)?
            .flatten_from(2)?
            .transpose(1, 2)
    }

    /// The position embeddings for an `height × width` input, CLS row first:
    /// the trained grid resampled by [`interpolate_pos_encoding`].
    pub fn position_embeddings(&self, height: usize, width: usize) -> Result<Tensor> {
        interpolate_pos_encoding(
            &self.position_embeddings,
            height / self.patch_size,
            width / self.patch_size,
        )
    }

    /// `[CLS | patches] + position embeddings`: the encoder input (`hidden_states[0]`).
    pub fn embeddings(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let (b, _, height, width) = pixel_values.dims4()?;
        let patches = self.patch_embeddings(pixel_values)?;
        let cls =
            self.cls_token
                .to_dtype(patches.dtype())?
                .broadcast_as((b, 1, patches.dim(2)?))?;
        let pos = self
            .position_embeddings(height, width)?
            .to_dtype(patches.dtype())?;
        Tensor::cat(&[&cls, &patches], 1)?.broadcast_add(&pos)
    }

    pub fn layers(&self) -> &[ViTLayer] {
        &self.layers
    }

    /// The final LayerNorm after the last layer.
    pub fn final_layernorm(&self, hidden: &Tensor) -> Result<Tensor> {
        self.layernorm.forward(hidden)
    }

    /// `pixel_values` `(B, 3, H, W)` (ImageNet-normalised) → image tokens `(B, 1 + N, hidden)`.
    pub fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let mut h = self.embeddings(pixel_values)?;
        for layer in &self.layers {
            h = layer.forward(&h)?;
        }
        self.final_layernorm(&h)
    }
}

/// transformers 4.35's `ViTEmbeddings.interpolate_pos_encoding`: the `g × g`
/// patch position grid of `pos` `(1, 1 + g², C)` resampled to `n_h × n_w` with
/// `F.interpolate(scale_factor=((n_h + 0.1) / g, (n_w + 0.1) / g), mode="bicubic",
/// align_corners=False)`. PyTorch then maps output to source with the given
/// scale (`src = (dst + 0.5) · g / (n + 0.1) − 0.5`, not `g / n`), cubic
/// A = −0.75, source indices clamped at the border. The CLS row is kept.
/// A grid that already matches (`g == n_h == n_w`) is returned unchanged.
pub fn interpolate_pos_encoding(pos: &Tensor, n_h: usize, n_w: usize) -> Result<Tensor> {
    let (one, rows, dim) = pos.dims3()?;
    let patches = rows.saturating_sub(1);
    let g = (patches as f64).sqrt() as usize;
    if one != 1 || g == 0 || g * g != patches {
        candle_core::bail!(
            "position embeddings {:?} are not (1, 1 + g*g, C)",
            pos.dims()
        );
    }
    if n_h == g && n_w == g {
        return Ok(pos.clone());
    }
    let dtype = pos.dtype();
    let values = pos
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let scale_h = (n_h as f64 + 0.1) / g as f64;
    let scale_w = (n_w as f64 + 0.1) / g as f64;
    // F.interpolate's output size: floor(input * scale_factor).
    let (out_h, out_w) = (
        (g as f64 * scale_h).floor() as usize,
        (g as f64 * scale_w).floor() as usize,
    );
    if out_h != n_h || out_w != n_w {
        candle_core::bail!("position grid {g} resamples to {out_h}x{out_w}, not {n_h}x{n_w}");
    }
    let taps_h = cubic_taps(g, out_h, scale_h);
    let taps_w = cubic_taps(g, out_w, scale_w);
    let mut out = Vec::with_capacity((1 + out_h * out_w) * dim);
    out.extend_from_slice(&values[..dim]);
    let patch = |y: usize, x: usize, c: usize| values[(1 + y * g + x) * dim + c];
    for (ys, wy) in &taps_h {
        for (xs, wx) in &taps_w {
            for c in 0..dim {
                // Rows first (over x), then the column of row results (over y), as PyTorch sums.
                let mut acc = 0f32;
                for (y, wy) in ys.iter().zip(wy) {
                    let row = xs
                        .iter()
                        .zip(wx)
                        .fold(0f32, |s, (x, w)| s + patch(*y, *x, c) * w);
                    acc += row * wy;
                }
                out.push(acc);
            }
        }
    }
    Tensor::from_vec(out, (1, 1 + out_h * out_w, dim), pos.device())?.to_dtype(dtype)
}

/// For each output index: the four clamped source indices and their cubic weights.
fn cubic_taps(in_size: usize, out_size: usize, scale_factor: f64) -> Vec<([usize; 4], [f32; 4])> {
    // PyTorch: the source scale is 1 / scale_factor in double, then used in float.
    let scale = (1.0 / scale_factor) as f32;
    (0..out_size)
        .map(|dst| {
            let real = scale * (dst as f32 + 0.5) - 0.5;
            let index = (real.floor() as i64).min(in_size as i64 - 1);
            let t = (real - index as f32).clamp(0.0, 1.0);
            let idx = std::array::from_fn(|k| {
                (index - 1 + k as i64).clamp(0, in_size as i64 - 1) as usize
            });
            (idx, cubic_coefficients(t))
        })
        .collect()
}

fn cubic_coefficients(t: f32) -> [f32; 4] {
    let a = BICUBIC_A;
    let near = |x: f32| ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
    let far = |x: f32| ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a;
    [far(t + 1.0), near(t), near(1.0 - t), far(1.0 - t + 1.0)]
}
