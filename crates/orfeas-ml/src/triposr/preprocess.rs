//! The image TripoSR sees, as `run.py` and `ImagePreprocessor` make it:
//! [`resize_foreground`] → [`composite_grey`] → [`resize_antialiased`] to
//! `cond_image_size` → [`normalize`] (ImageNet mean/std) → `pixel_values`.
//!
//! Each step reproduces the upstream arithmetic in f32, quirks included (the
//! crop that drops the last foreground row and column, truncation to u8).

use candle_core::{Device, Tensor};
use image::{RgbImage, RgbaImage};

use crate::error::{Result, SdError};

/// run.py's default `--foreground-ratio`.
pub const DEFAULT_FOREGROUND_RATIO: f64 = 0.85;

/// Largest side [`resize_foreground`] produces (a tiny ratio would ask for gigapixels).
pub const MAX_PREPARED_SIDE: u32 = 8192;

/// ImageNet statistics the DINO tokenizer normalises with.
pub const IMAGE_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGE_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Whether `image` has a background already cut out (some alpha below 255):
/// upstream then skips background removal and centres the foreground.
pub fn has_transparency(image: &RgbaImage) -> bool {
    image.pixels().any(|p| p.0[3] < 255)
}

/// Centres the foreground (alpha > 0) in a square image whose side is the
/// foreground's longer side / `ratio`, as TripoSR's `resize_foreground`:
/// the crop is `[y_min, y_max) × [x_min, x_max)` (the last foreground row and
/// column are dropped, as upstream does), padded with transparent black to a
/// square (the odd pixel at the bottom/right), then to `floor(side / ratio)`.
pub fn resize_foreground(image: &RgbaImage, ratio: f64) -> Result<RgbaImage> {
    if !(ratio > 0.0 && ratio <= 1.0) {
        return Err(SdError::invalid(
            "foreground_ratio",
            format!("{ratio} is outside (0, 1]; use a value such as 0.85"),
        ));
    }
    let (w, h) = image.dimensions();
    let mut bbox: Option<(u32, u32, u32, u32)> = None;
    for (x, y, p) in image.enumerate_pixels() {
        if p.0[3] > 0 {
            let b = bbox.get_or_insert((y, y, x, x));
            b.0 = b.0.min(y);
            b.1 = b.1.max(y);
            b.2 = b.2.min(x);
            b.3 = b.3.max(x);
        }
    }
    let Some((y1, y2, x1, x2)) = bbox else {
        return Err(SdError::invalid(
            "image",
            format!(
                "the {w}x{h} image is fully transparent; give an image whose object has alpha > 0"
            ),
        ));
    };
    let (fg_h, fg_w) = (y2 - y1, x2 - x1);
    if fg_h == 0 || fg_w == 0 {
        return Err(SdError::invalid(
            "image",
            "the visible foreground is a single row or column of pixels; give an image with a larger object",
        ));
    }
    let size = fg_h.max(fg_w);
    let (ph0, pw0) = ((size - fg_h) / 2, (size - fg_w) / 2);
    // numpy: int(size / ratio), a float division then truncation.
    let new_size = f64::from(size) / ratio;
    if new_size > f64::from(MAX_PREPARED_SIDE) {
        return Err(SdError::invalid(
            "foreground_ratio",
            format!(
                "{ratio} would pad the {size}-pixel object to {new_size:.0} pixels (at most {MAX_PREPARED_SIDE}); use a ratio such as 0.85"
            ),
        ));
    }
    let new_size = new_size as u32;
    let pad = (new_size - size) / 2;
    let mut out = RgbaImage::new(new_size, new_size);
    for y in 0..fg_h {
        for x in 0..fg_w {
            let p = *image.get_pixel(x1 + x, y1 + y);
            out.put_pixel(pad + pw0 + x, pad + ph0 + y, p);
        }
    }
    Ok(out)
}

/// run.py's grey composite: `rgb * a + 0.5 * (1 - a)` in f32 on `u8 / 255`,
/// then `(x * 255)` truncated to u8.
pub fn composite_grey(image: &RgbaImage) -> RgbImage {
    let mut out = RgbImage::new(image.width(), image.height());
    for (src, dst) in image.pixels().zip(out.pixels_mut()) {
        let a = f32::from(src.0[3]) / 255.0;
        for c in 0..3 {
            let v = f32::from(src.0[c]) / 255.0;
            let mixed = v * a + (1.0 - a) * 0.5;
            // `as u8` truncates toward zero and saturates, like numpy's astype on [0, 255].
            dst.0[c] = (mixed * 255.0) as u8;
        }
    }
    out
}

/// The image the model is given: an image with transparency is centred and
/// composited on grey ([`resize_foreground`] + [`composite_grey`]); an opaque
/// one is taken as it is (like run.py's `--no-remove-bg`: it should already show
/// the object centred on a grey background).
pub fn prepare_image(image: &image::DynamicImage, foreground_ratio: f64) -> Result<RgbImage> {
    let rgba = image.to_rgba8();
    if has_transparency(&rgba) {
        Ok(composite_grey(&resize_foreground(&rgba, foreground_ratio)?))
    } else {
        tracing::warn!(
            "input image has no transparent background; using it as is (the object should be centred on grey; cut the background out for best results)"
        );
        Ok(image.to_rgb8())
    }
}

/// One output index's source taps of PyTorch's antialiased bilinear resize
/// (`_upsample_bilinear2d_aa`, align_corners=False): a triangle filter widened by
/// the downscale ratio, weights normalised to sum 1.
fn aa_taps(out_size: usize, in_size: usize) -> Vec<(usize, Vec<f32>)> {
    let scale = in_size as f32 / out_size as f32;
    let support = if scale >= 1.0 { scale } else { 1.0 };
    let invscale = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
    (0..out_size)
        .map(|i| {
            let center = scale * (i as f32 + 0.5);
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
            let mut weights: Vec<f32> = (xmin..xmax.max(xmin))
                .map(|j| {
                    let x = ((j as f32 - center + 0.5) * invscale).abs();
                    if x < 1.0 { 1.0 - x } else { 0.0 }
                })
                .collect();
            let total: f32 = weights.iter().sum();
            if total != 0.0 {
                for w in &mut weights {
                    *w /= total;
                }
            }
            (xmin as usize, weights)
        })
        .collect()
}

/// `F.interpolate(x, (size, size), mode="bilinear", align_corners=False,
/// antialias=True)` of `image / 255`, returned NHWC (`size × size × 3`, row-major), as
/// `ImagePreprocessor` gives it (`rgb_cond`). Width is resampled first, as PyTorch does.
pub fn resize_antialiased(image: &RgbImage, size: usize) -> Result<Vec<f32>> {
    let (w, h) = (image.width() as usize, image.height() as usize);
    if w == 0 || h == 0 || size == 0 {
        return Err(SdError::invalid(
            "image",
            format!("cannot resize a {w}x{h} image to {size}x{size}"),
        ));
    }
    let src: Vec<f32> = image
        .as_raw()
        .iter()
        .map(|&v| f32::from(v) / 255.0)
        .collect();
    let mut horizontal = vec![0f32; h * size * 3];
    for (ox, (xmin, weights)) in aa_taps(size, w).iter().enumerate() {
        for y in 0..h {
            for c in 0..3 {
                let mut acc = 0f32;
                for (k, wt) in weights.iter().enumerate() {
                    acc += src[(y * w + xmin + k) * 3 + c] * wt;
                }
                horizontal[(y * size + ox) * 3 + c] = acc;
            }
        }
    }
    let mut out = vec![0f32; size * size * 3];
    for (oy, (ymin, weights)) in aa_taps(size, h).iter().enumerate() {
        for x in 0..size {
            for c in 0..3 {
                let mut acc = 0f32;
                for (k, wt) in weights.iter().enumerate() {
                    acc += horizontal[((ymin + k) * size + x) * 3 + c] * wt;
                }
                out[(oy * size + x) * 3 + c] = acc;
            }
        }
    }
    Ok(out)
}

/// `(rgb - mean) / std` per channel, NHWC `size × size × 3` → NCHW tensor `(1, 3, size, size)`.
pub fn normalize(rgb_cond: &[f32], size: usize, device: &Device) -> Result<Tensor> {
    if rgb_cond.len() != size * size * 3 {
        return Err(SdError::invalid(
            "rgb_cond",
            format!("{} values is not {size}x{size}x3", rgb_cond.len()),
        ));
    }
    let plane = size * size;
    let mut nchw = vec![0f32; 3 * plane];
    for (i, px) in rgb_cond.chunks_exact(3).enumerate() {
        for c in 0..3 {
            nchw[c * plane + i] = (px[c] - IMAGE_MEAN[c]) / IMAGE_STD[c];
        }
    }
    Ok(Tensor::from_vec(nchw, (1, 3, size, size), device)?)
}

/// The whole preprocessing: [`prepare_image`] → [`resize_antialiased`] →
/// [`normalize`]: `pixel_values` `(1, 3, size, size)` for [`super::TripoSr::forward`].
pub fn pixel_values(
    image: &image::DynamicImage,
    cond_image_size: usize,
    foreground_ratio: f64,
    device: &Device,
) -> Result<Tensor> {
    let prepared = prepare_image(image, foreground_ratio)?;
    let rgb = resize_antialiased(&prepared, cond_image_size)?;
    normalize(&rgb, cond_image_size, device)
}
