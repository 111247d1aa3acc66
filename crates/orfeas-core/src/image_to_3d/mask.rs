//! Foreground mask of the input image and its framing on the working grid.

use image::RgbaImage;

use super::{ImageTo3dError, ImageTo3dParams};

/// Binary foreground mask at image resolution (1 = foreground).
pub(super) struct Mask {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

/// The foreground by `params.background`: `alpha` reads the alpha channel,
/// `border` is what a flood fill from the border does not reach through
/// pixels within `border_tolerance` of the border colour (plus enclosed
/// regions of that colour big enough to be holes, the inside of a mug
/// handle, so holes survive on opaque images too), `none` keeps the whole
/// picture, and `auto` is alpha when the picture has any transparency, else
/// border. (`neural` is resolved by the model runner into an alpha channel
/// before this runs.) Then eroded by `erode_px`.
pub(super) fn foreground_mask(
    image: &RgbaImage,
    params: &ImageTo3dParams,
) -> Result<Mask, ImageTo3dError> {
    use crate::request::Background;
    let (w, h) = image.dimensions();
    let px = image.as_raw();
    let n = (w as usize) * (h as usize);
    let has_alpha = px.chunks_exact(4).any(|p| p[3] < 255);
    let mut data = vec![0u8; n];
    let source = match params.background {
        Background::Auto if has_alpha => Background::Alpha,
        Background::Auto => Background::Border,
        Background::Alpha if !has_alpha => {
            return Err(ImageTo3dError::InvalidParameter {
                field: "background",
                detail: "the picture has no transparency to read the foreground from; use \
                         background border or neural (or auto)"
                    .to_owned(),
            });
        }
        Background::Neural => {
            return Err(ImageTo3dError::InvalidParameter {
                field: "background",
                detail: "the neural segmenter runs in the model runner, not here; submit the \
                         job to an engine from orfeas_ml::register_runners"
                    .to_owned(),
            });
        }
        other => other,
    };
    match source {
        Background::Alpha => {
            let threshold = params.mask_threshold.max(1);
            for (m, p) in data.iter_mut().zip(px.chunks_exact(4)) {
                *m = u8::from(p[3] >= threshold);
            }
            if !data.contains(&1) {
                return Err(ImageTo3dError::NoForeground {
                    detail: "the image is fully transparent".to_owned(),
                });
            }
        }
        Background::None => data.fill(1),
        _ => {
            border_mask(image, params.border_tolerance, &mut data);
            if !data.contains(&1) {
                return Err(ImageTo3dError::NoForeground {
                    detail:
                        "the whole image is the background colour (nothing stands out from the border)"
                            .to_owned(),
                });
            }
        }
    }
    let mut mask = Mask {
        width: w,
        height: h,
        data,
    };
    if params.erode_px > 0 {
        erode(&mut mask, params.erode_px);
        if !mask.data.contains(&1) {
            return Err(ImageTo3dError::NoForeground {
                detail: format!(
                    "nothing is left after eroding the mask by {} px; lower erode_px",
                    params.erode_px
                ),
            });
        }
    }
    Ok(mask)
}

/// The user's painted mask (128 and above = foreground) as the pipeline's
/// mask; it replaces the background step and its erosion.
pub(super) fn from_user(
    user: &image::GrayImage,
    image: &RgbaImage,
) -> Result<Mask, ImageTo3dError> {
    if user.dimensions() != image.dimensions() {
        return Err(ImageTo3dError::InvalidParameter {
            field: "mask",
            detail: format!(
                "the mask is {}×{} but the picture is {}×{}",
                user.width(),
                user.height(),
                image.width(),
                image.height()
            ),
        });
    }
    let data: Vec<u8> = user.pixels().map(|p| u8::from(p.0[0] >= 128)).collect();
    if !data.contains(&1) {
        return Err(ImageTo3dError::NoForeground {
            detail: "the mask is all background; paint the object back in or reset the mask"
                .to_owned(),
        });
    }
    Ok(Mask {
        width: user.width(),
        height: user.height(),
        data,
    })
}

fn border_mask(image: &RgbaImage, tolerance: f32, out: &mut [u8]) {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let px = image.as_raw();
    let rgb = |i: usize| [px[i * 4] as i32, px[i * 4 + 1] as i32, px[i * 4 + 2] as i32];
    let mut border: Vec<usize> = Vec::with_capacity(2 * (w + h));
    for x in 0..w {
        border.push(x);
        border.push((h - 1) * w + x);
    }
    for y in 1..h.saturating_sub(1) {
        border.push(y * w);
        border.push(y * w + w - 1);
    }
    // Per-channel median of the border: robust to an object touching the edge.
    let mut reference = [0i32; 3];
    for (c, slot) in reference.iter_mut().enumerate() {
        let mut hist = [0usize; 256];
        for &i in &border {
            hist[rgb(i)[c] as usize] += 1;
        }
        let mut seen = 0;
        for (value, count) in hist.iter().enumerate() {
            seen += count;
            if seen * 2 >= border.len() {
                *slot = value as i32;
                break;
            }
        }
    }
    let limit = (tolerance.clamp(0.0, 1.0) * 441.68) as i32;
    let limit_sq = limit * limit;
    // 0 = unvisited, 1 = foreground, 2 = background-coloured.
    for (i, o) in out.iter_mut().enumerate() {
        let c = rgb(i);
        let d = (c[0] - reference[0]).pow(2)
            + (c[1] - reference[1]).pow(2)
            + (c[2] - reference[2]).pow(2);
        *o = if d <= limit_sq { 2 } else { 1 };
    }
    // Label 4-connected background-coloured regions; those touching the border
    // or large enough to be a hole are background, small specks are foreground.
    let min_hole_px = (w * h / 2000).max(16);
    let mut stack = Vec::new();
    let mut region = Vec::new();
    for start in 0..w * h {
        if out[start] != 2 {
            continue;
        }
        region.clear();
        stack.push(start);
        out[start] = 3;
        let mut touches_border = false;
        while let Some(i) = stack.pop() {
            region.push(i);
            let (x, y) = (i % w, i / w);
            if x == 0 || y == 0 || x == w - 1 || y == h - 1 {
                touches_border = true;
            }
            let mut visit = |j: usize| {
                if out[j] == 2 {
                    out[j] = 3;
                    stack.push(j);
                }
            };
            if x > 0 {
                visit(i - 1);
            }
            if x + 1 < w {
                visit(i + 1);
            }
            if y > 0 {
                visit(i - w);
            }
            if y + 1 < h {
                visit(i + w);
            }
        }
        let value = if touches_border || region.len() >= min_hole_px {
            0
        } else {
            1
        };
        for &i in &region {
            out[i] = value;
        }
    }
}

/// Square erosion with radius `r` via a summed-area table.
fn erode(mask: &mut Mask, r: u32) {
    let (w, h) = (mask.width as usize, mask.height as usize);
    let sat = summed_area(&mask.data, w, h);
    let r = r as usize;
    let full = |x0: usize, y0: usize, x1: usize, y1: usize| (x1 - x0) * (y1 - y0);
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            if mask.data[i] == 0 {
                continue;
            }
            // Outside the image counts as background.
            if x < r || y < r || x + r >= w || y + r >= h {
                mask.data[i] = 0;
                continue;
            }
            let (x0, y0, x1, y1) = (x - r, y - r, x + r + 1, y + r + 1);
            if box_sum(&sat, w, x0, y0, x1, y1) as usize != full(x0, y0, x1, y1) {
                mask.data[i] = 0;
            }
        }
    }
}

/// Summed-area table with a zero first row and column: (w+1)×(h+1).
pub(super) fn summed_area(data: &[u8], w: usize, h: usize) -> Vec<u32> {
    let mut sat = vec![0u32; (w + 1) * (h + 1)];
    for y in 0..h {
        let mut row = 0u32;
        for x in 0..w {
            row += data[y * w + x] as u32;
            sat[(y + 1) * (w + 1) + x + 1] = sat[y * (w + 1) + x + 1] + row;
        }
    }
    sat
}

/// Sum over [x0, x1) × [y0, y1).
pub(super) fn box_sum(sat: &[u32], w: usize, x0: usize, y0: usize, x1: usize, y1: usize) -> u32 {
    let s = w + 1;
    sat[y1 * s + x1] + sat[y0 * s + x0] - sat[y0 * s + x1] - sat[y1 * s + x0]
}

/// The square, in image pixels, that the mesh's [-1, 1]² covers: centred on
/// the foreground's bounding box, side = long side of the box / foreground_ratio.
#[derive(Clone, Copy, Debug)]
pub(super) struct Frame {
    pub left: f64,
    pub top: f64,
    pub side: f64,
}

pub(super) fn frame(mask: &Mask, foreground_ratio: f32) -> Frame {
    let (w, h) = (mask.width as usize, mask.height as usize);
    let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
    for y in 0..h {
        let row = &mask.data[y * w..(y + 1) * w];
        if let (Some(first), Some(last)) = (
            row.iter().position(|&m| m != 0),
            row.iter().rposition(|&m| m != 0),
        ) {
            x0 = x0.min(first);
            x1 = x1.max(last + 1);
            y0 = y0.min(y);
            y1 = y1.max(y + 1);
        }
    }
    let (bw, bh) = (x1.saturating_sub(x0) as f64, y1.saturating_sub(y0) as f64);
    let side = bw.max(bh).max(1.0) / foreground_ratio.clamp(0.05, 1.0) as f64;
    Frame {
        left: (x0 + x1) as f64 * 0.5 - side * 0.5,
        top: (y0 + y1) as f64 * 0.5 - side * 0.5,
        side,
    }
}

/// Foreground coverage (0..1) of an N×N grid over the frame, with a ring of
/// zeros around it, so the field is (N+2)². Cell (i, j) of the grid is sample
/// (i+1, j+1). Each sample is the box average of the mask over its cell when
/// cells span at least two pixels, else a bilinear sample at the cell centre.
/// A binary 0/1 mask blurred with the 5-tap kernel [1, 2, 3, 2, 1]/9 (two 3-box
/// passes) along each axis, outside the image counting as 0. The 0.5 level of
/// the result follows the middle of the mask's pixel steps; features two
/// pixels wide stay above it (peak 5/9), one-pixel ones drop out.
fn soften(data: &[u8], w: usize, h: usize) -> Vec<f32> {
    let mut a: Vec<f32> = data.iter().map(|&v| f32::from(v.min(1))).collect();
    let mut b = vec![0.0f32; a.len()];
    let at = |buf: &[f32], i: usize| buf.get(i).copied().unwrap_or(0.0);
    for _ in 0..2 {
        for y in 0..h {
            for x in 0..w {
                let i = y * w + x;
                let left = if x > 0 { at(&a, i - 1) } else { 0.0 };
                let right = if x + 1 < w { at(&a, i + 1) } else { 0.0 };
                b[i] = (left + at(&a, i) + right) / 3.0;
            }
        }
        for y in 0..h {
            for x in 0..w {
                let i = y * w + x;
                let up = if y > 0 { at(&b, i - w) } else { 0.0 };
                let down = if y + 1 < h { at(&b, i + w) } else { 0.0 };
                a[i] = (up + at(&b, i) + down) / 3.0;
            }
        }
    }
    a
}

pub(super) fn coverage(mask: &Mask, frame: Frame, n: usize) -> Vec<f32> {
    let g = n + 2;
    let mut field = vec![0.0f32; g * g];
    let (w, h) = (mask.width as usize, mask.height as usize);
    let cell = frame.side / n as f64;
    if cell >= 2.0 {
        let sat = summed_area(&mask.data, w, h);
        for j in 0..n {
            let y0 = (frame.top + j as f64 * cell).round().clamp(0.0, h as f64) as usize;
            let y1 = (frame.top + (j + 1) as f64 * cell)
                .round()
                .clamp(0.0, h as f64) as usize;
            for i in 0..n {
                let x0 = (frame.left + i as f64 * cell).round().clamp(0.0, w as f64) as usize;
                let x1 = (frame.left + (i + 1) as f64 * cell)
                    .round()
                    .clamp(0.0, w as f64) as usize;
                if x1 <= x0 || y1 <= y0 {
                    continue;
                }
                // Pixels of the cell outside the image count as background.
                let cell_px = ((frame.left + (i + 1) as f64 * cell).round()
                    - (frame.left + i as f64 * cell).round())
                    * ((frame.top + (j + 1) as f64 * cell).round()
                        - (frame.top + j as f64 * cell).round());
                let inside = box_sum(&sat, w, x0, y0, x1, y1) as f64;
                field[(j + 1) * g + i + 1] = (inside / cell_px.max(1.0)) as f32;
            }
        }
    } else {
        // Cells under two pixels sample the mask between pixels; a binary mask
        // would put its pixel staircase into the outline (ridges along the
        // sides), so it is softened first.
        let soft = soften(&mask.data, w, h);
        let at = |x: i64, y: i64| -> f32 {
            if x < 0 || y < 0 || x >= w as i64 || y >= h as i64 {
                0.0
            } else {
                soft[y as usize * w + x as usize]
            }
        };
        for j in 0..n {
            let sy = frame.top + (j as f64 + 0.5) * cell - 0.5;
            for i in 0..n {
                let sx = frame.left + (i as f64 + 0.5) * cell - 0.5;
                let (fx, fy) = (sx.floor(), sy.floor());
                let (tx, ty) = ((sx - fx) as f32, (sy - fy) as f32);
                let (xi, yi) = (fx as i64, fy as i64);
                let top = at(xi, yi) * (1.0 - tx) + at(xi + 1, yi) * tx;
                let bottom = at(xi, yi + 1) * (1.0 - tx) + at(xi + 1, yi + 1) * tx;
                field[(j + 1) * g + i + 1] = top * (1.0 - ty) + bottom * ty;
            }
        }
    }
    field
}
