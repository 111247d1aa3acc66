//! Pre- and post-processing exactly as the HF model card does it:
//! `Resize((H, W))` on the PIL image (PIL's antialiased bilinear in 8-bit fixed
//! point), `ToTensor`, ImageNet `Normalize`; after the model, sigmoid, `ToPILImage`
//! (×255, truncated) and a PIL bicubic resize back to the picture.
//!
//! The GitHub `inference.py` instead resizes the mask with
//! `F.interpolate(bilinear, align_corners=True)`; [`mask_to_size_bilinear`] is that rule.

use candle_core::{Device, Result, Tensor};

pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// PIL's resampling filters (`Resample.c`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PilFilter {
    Bilinear,
    Bicubic,
}

impl PilFilter {
    fn support(self) -> f64 {
        match self {
            Self::Bilinear => 1.0,
            Self::Bicubic => 2.0,
        }
    }

    fn eval(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Self::Bilinear => {
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Self::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// One axis of PIL's resampling: for each output index, the first input index
/// and the fixed-point weights.
struct Coeffs {
    bounds: Vec<(usize, usize)>,
    weights: Vec<Vec<i32>>,
}

fn coeffs(in_size: usize, out_size: usize, filter: PilFilter) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = Vec::with_capacity(out_size);
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // PIL truncates toward zero here (C casts); both values are ≥ −0.5 + 0.5.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin);
        let raw: Vec<f64> = (0..n)
            .map(|x| filter.eval((x as f64 + xmin as f64 - center + 0.5) * ss))
            .collect();
        let total: f64 = raw.iter().sum();
        let fixed = raw
            .iter()
            .map(|&w| {
                let w = if total != 0.0 { w / total } else { w };
                let v = w * f64::from(1u32 << PRECISION_BITS);
                if v < 0.0 {
                    (v - 0.5) as i32
                } else {
                    (v + 0.5) as i32
                }
            })
            .collect();
        bounds.push((xmin, n));
        weights.push(fixed);
    }
    Coeffs { bounds, weights }
}

fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// PIL `Image.resize((out_w, out_h), filter)` of an 8-bit image with `channels`
/// interleaved channels: horizontal pass (to 8 bits), then vertical pass, each
/// skipped when that side does not change.
pub fn pil_resize_u8(
    src: &[u8],
    (w, h): (usize, usize),
    channels: usize,
    (out_w, out_h): (usize, usize),
    filter: PilFilter,
) -> Vec<u8> {
    let half = 1i64 << (PRECISION_BITS - 1);
    let (mut cur, mut cw) = (src.to_vec(), w);
    let vert = coeffs(h, out_h, filter);
    // Only the rows the vertical pass reads are resampled horizontally.
    let (y_first, y_last) = match (vert.bounds.first(), vert.bounds.last()) {
        (Some(&(f, _)), Some(&(l, n))) => (f, l + n),
        _ => (0, h),
    };
    let mut row_offset = 0;
    if out_w != w {
        let hc = coeffs(w, out_w, filter);
        let rows = y_last - y_first;
        let mut tmp = vec![0u8; out_w * rows * channels];
        for y in 0..rows {
            let src_row = &cur[(y + y_first) * cw * channels..(y + y_first + 1) * cw * channels];
            for (x, ((xmin, n), k)) in hc.bounds.iter().zip(&hc.weights).enumerate() {
                for ch in 0..channels {
                    let mut acc = half;
                    for (i, &kw) in k.iter().enumerate().take(*n) {
                        acc += i64::from(src_row[(xmin + i) * channels + ch]) * i64::from(kw);
                    }
                    tmp[(y * out_w + x) * channels + ch] = clip8(acc);
                }
            }
        }
        cur = tmp;
        cw = out_w;
        row_offset = y_first;
    }
    if out_h == h {
        // Identity vertical scale reads every row: `cur` is the whole picture.
        return cur;
    }
    let mut out = vec![0u8; out_w * out_h * channels];
    for (y, ((ymin, n), k)) in vert.bounds.iter().zip(&vert.weights).enumerate() {
        let ymin = ymin - row_offset;
        for x in 0..cw {
            for ch in 0..channels {
                let mut acc = half;
                for (i, &kw) in k.iter().enumerate().take(*n) {
                    acc += i64::from(cur[((ymin + i) * cw + x) * channels + ch]) * i64::from(kw);
                }
                out[(y * cw + x) * channels + ch] = clip8(acc);
            }
        }
    }
    out
}

/// The picture resized to the model's `(H, W)` as torchvision's `Resize` on a PIL image does.
pub fn resize_rgb(image: &image::RgbImage, (h, w): (usize, usize)) -> image::RgbImage {
    let (iw, ih) = (image.width() as usize, image.height() as usize);
    let data = pil_resize_u8(image.as_raw(), (iw, ih), 3, (w, h), PilFilter::Bilinear);
    // The buffer holds exactly w·h·3 bytes by construction.
    image::RgbImage::from_raw(w as u32, h as u32, data).unwrap_or_default()
}

/// `ToTensor` + `Normalize(mean, std)` of an RGB picture: `(1, 3, H, W)` f32.
pub fn normalize(image: &image::RgbImage, device: &Device) -> Result<Tensor> {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let mut data = vec![0f32; 3 * h * w];
    for (i, px) in image.as_raw().chunks_exact(3).enumerate() {
        for (c, (&v, (mean, std))) in px
            .iter()
            .zip(IMAGENET_MEAN.iter().zip(&IMAGENET_STD))
            .enumerate()
        {
            // ToTensor divides in f32, then Normalize subtracts and divides, as here.
            data[c * h * w + i] = (f32::from(v) / 255.0 - mean) / std;
        }
    }
    Tensor::from_vec(data, (1, 3, h, w), device)
}

/// Sigmoid mask `(1, 1, H, W)` → 8-bit as `ToPILImage` makes it (`×255`, truncated).
pub fn mask_to_u8(mask: &Tensor) -> Result<image::GrayImage> {
    let (_, _, h, w) = mask.dims4()?;
    let values = mask
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let bytes = values
        .iter()
        .map(|&v| (v * 255.0).clamp(0.0, 255.0) as u8)
        .collect();
    image::GrayImage::from_raw(w as u32, h as u32, bytes)
        .ok_or_else(|| candle_core::Error::Msg("mask buffer size".into()))
}

/// The HF model card's resize back to the picture: PIL bicubic on the 8-bit mask.
pub fn resize_mask_u8(mask: &image::GrayImage, (h, w): (usize, usize)) -> image::GrayImage {
    let (mw, mh) = (mask.width() as usize, mask.height() as usize);
    let data = pil_resize_u8(mask.as_raw(), (mw, mh), 1, (w, h), PilFilter::Bicubic);
    image::GrayImage::from_raw(w as u32, h as u32, data).unwrap_or_default()
}

/// The GitHub `inference.py` resize: bilinear, `align_corners=True`, in f32.
pub fn mask_to_size_bilinear(mask: &Tensor, (h, w): (usize, usize)) -> Result<Tensor> {
    super::swin::interp(mask, h, w)
}
