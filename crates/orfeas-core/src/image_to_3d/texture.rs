//! Texture atlas (front | mirrored, blurred back), UVs and vertex colours.

use image::RgbaImage;

use super::mask::{Frame, Mask};
use crate::mesh::Mesh;

/// The atlas is 2S×S: the left half is the framed image (background pixels
/// filled from the nearest foreground so edges do not bleed the backdrop), the
/// right half is that half mirrored left-right and blurred — what the back of
/// the object plausibly looks like, seen from behind.
pub(super) fn atlas(image: &RgbaImage, mask: &Mask, frame: Frame, s: u32) -> RgbaImage {
    let (w, h) = (image.width() as i64, image.height() as i64);
    let px = image.as_raw();
    let n = (s * s) as usize;
    let mut rgb = vec![[0.0f32; 3]; n];
    let mut known = vec![false; n];
    let step = frame.side / s as f64;
    for ty in 0..s as usize {
        let sy = frame.top + (ty as f64 + 0.5) * step - 0.5;
        for tx in 0..s as usize {
            let sx = frame.left + (tx as f64 + 0.5) * step - 0.5;
            // Bilinear over foreground pixels only (weights renormalised).
            let (fx, fy) = (sx.floor(), sy.floor());
            let (ax, ay) = ((sx - fx) as f32, (sy - fy) as f32);
            let mut acc = [0.0f32; 3];
            let mut wsum = 0.0f32;
            for (dx, dy, wgt) in [
                (0, 0, (1.0 - ax) * (1.0 - ay)),
                (1, 0, ax * (1.0 - ay)),
                (0, 1, (1.0 - ax) * ay),
                (1, 1, ax * ay),
            ] {
                let (x, y) = (fx as i64 + dx, fy as i64 + dy);
                if x < 0 || y < 0 || x >= w || y >= h || wgt <= 0.0 {
                    continue;
                }
                let i = (y * w + x) as usize;
                if mask.data[i] == 0 {
                    continue;
                }
                for c in 0..3 {
                    acc[c] += px[i * 4 + c] as f32 * wgt;
                }
                wsum += wgt;
            }
            if wsum > 1e-4 {
                let t = ty * s as usize + tx;
                rgb[t] = acc.map(|a| a / wsum);
                known[t] = true;
            }
        }
    }
    dilate_fill(&mut rgb, &mut known, s as usize);
    let back = blur(&rgb, s as usize, (s as usize / 64).max(1));
    RgbaImage::from_fn(2 * s, s, |x, y| {
        let (x, y) = (x as usize, y as usize);
        let v = if x < s as usize {
            rgb[y * s as usize + x]
        } else {
            back[y * s as usize + (2 * s as usize - 1 - x)]
        };
        image::Rgba([
            v[0].round() as u8,
            v[1].round() as u8,
            v[2].round() as u8,
            255,
        ])
    })
}

/// Grows known colours outwards a few texels at a time, then fills the rest
/// with the mean, so bilinear filtering at the silhouette sees object colours.
fn dilate_fill(rgb: &mut [[f32; 3]], known: &mut [bool], s: usize) {
    for _ in 0..8 {
        let snapshot = known.to_vec();
        let mut changed = false;
        for y in 0..s {
            for x in 0..s {
                let i = y * s + x;
                if snapshot[i] {
                    continue;
                }
                let mut acc = [0.0f32; 3];
                let mut count = 0.0;
                for (dx, dy) in [(-1i64, 0i64), (1, 0), (0, -1), (0, 1)] {
                    let (nx, ny) = (x as i64 + dx, y as i64 + dy);
                    if nx < 0 || ny < 0 || nx >= s as i64 || ny >= s as i64 {
                        continue;
                    }
                    let j = ny as usize * s + nx as usize;
                    if snapshot[j] {
                        for c in 0..3 {
                            acc[c] += rgb[j][c];
                        }
                        count += 1.0;
                    }
                }
                if count > 0.0 {
                    rgb[i] = acc.map(|a| a / count);
                    known[i] = true;
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }
    let (mut mean, mut count) = ([0.0f32; 3], 0.0f32);
    for (v, &k) in rgb.iter().zip(known.iter()) {
        if k {
            for c in 0..3 {
                mean[c] += v[c];
            }
            count += 1.0;
        }
    }
    let mean = if count > 0.0 {
        mean.map(|m| m / count)
    } else {
        [128.0; 3]
    };
    for (v, &k) in rgb.iter_mut().zip(known.iter()) {
        if !k {
            *v = mean;
        }
    }
}

/// Two passes of a separable box blur (close to a Gaussian).
fn blur(src: &[[f32; 3]], s: usize, r: usize) -> Vec<[f32; 3]> {
    let mut a = src.to_vec();
    let mut b = vec![[0.0f32; 3]; a.len()];
    let norm = 1.0 / (2 * r + 1) as f32;
    for _ in 0..2 {
        for horizontal in [true, false] {
            for line in 0..s {
                let at = |k: usize| {
                    if horizontal {
                        line * s + k
                    } else {
                        k * s + line
                    }
                };
                let mut acc = [0.0f32; 3];
                // The window centred on 0, edges clamped: a[0] counts r+1 times.
                for k in 0..=r {
                    let v = a[at(k.min(s - 1))];
                    let weight = if k == 0 { (r + 1) as f32 } else { 1.0 };
                    for c in 0..3 {
                        acc[c] += v[c] * weight;
                    }
                }
                for k in 0..s {
                    b[at(k)] = acc.map(|x| x * norm);
                    let add = a[at((k + r + 1).min(s - 1))];
                    let sub = a[at(k.saturating_sub(r))];
                    for c in 0..3 {
                        acc[c] += add[c] - sub[c];
                    }
                }
            }
            std::mem::swap(&mut a, &mut b);
        }
    }
    a
}

/// Splits vertices used by both front (z > 0 side) and back faces into two
/// copies at the same position — the UV seam along the silhouette — and sets
/// UVs and vertex colours from the atlas. Positions are unchanged, so the
/// welded surface stays closed.
pub(super) fn apply(mesh: &Mesh, atlas: RgbaImage) -> Mesh {
    let nv = mesh.positions.len();
    let mut remap = [vec![u32::MAX; nv], vec![u32::MAX; nv]];
    let mut out = Mesh::default();
    for t in mesh.indices.chunks_exact(3) {
        let p = [t[0], t[1], t[2]].map(|v| mesh.positions[v as usize]);
        let z = p[0][2] + p[1][2] + p[2][2];
        let back = if z.abs() > 1e-7 {
            z < 0.0
        } else {
            crate::mesh::triangle_normal(p[0], p[1], p[2])[2] < 0.0
        };
        let side = usize::from(back);
        for &v in t {
            let slot = &mut remap[side][v as usize];
            if *slot == u32::MAX {
                *slot = out.positions.len() as u32;
                let [x, y, _] = mesh.positions[v as usize];
                let (s, tv) = (
                    ((x + 1.0) * 0.5).clamp(0.0, 1.0),
                    ((1.0 - y) * 0.5).clamp(0.0, 1.0),
                );
                let u = if back { 0.5 + (1.0 - s) * 0.5 } else { s * 0.5 };
                out.positions.push(mesh.positions[v as usize]);
                out.uvs.push([u, tv]);
                out.colors.push(sample(&atlas, u, tv));
            }
            out.indices.push(*slot);
        }
    }
    out.texture = Some(atlas);
    out
}

fn sample(img: &RgbaImage, u: f32, v: f32) -> [u8; 4] {
    let x = ((u * img.width() as f32) as u32).min(img.width().saturating_sub(1));
    let y = ((v * img.height() as f32) as u32).min(img.height().saturating_sub(1));
    img.get_pixel(x, y).0
}
