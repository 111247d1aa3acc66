//! Quality score (0..1) for generated meshes and images.
//!
//! Mesh score:
//! `score = (0.6·IoU + 0.1·watertight + 0.1·manifold + 0.1·consistent_winding
//!          + 0.1·(1 − degenerate_share)) × 0.9^floating_components`,
//! where IoU is the silhouette of the mesh rendered orthographically from the
//! input view against the input mask, the booleans count 1 when true, and a
//! floating component is a connected piece with under 1 % of the triangles.
//!
//! That compares the mesh with the very mask it was built from, so a mesh of
//! the background scores well. When the neural segmenter is installed, the
//! mask itself is also checked against the segmenter's saliency and the
//! score is multiplied by their agreement (see [`with_mask_agreement`]).
//!
//! Image score (no reference; a CLIP score needs CLIP weights): see [`score_image`].

use crate::mesh::{Mesh, Topology};

/// Everything the score is made of, for the history and the UI.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MeshReport {
    /// Every edge has exactly two faces (after welding UV seams).
    pub watertight: bool,
    /// No edge with three or more faces, no vertex where two sheets touch.
    pub manifold: bool,
    /// Neighbouring faces agree on orientation.
    pub consistent_winding: bool,
    /// Share of faces with zero area or a repeated vertex (0..1).
    pub degenerate_share: f32,
    pub components: usize,
    /// Components with under 1 % of the triangles.
    pub floating_components: usize,
    /// Positive signed volume: the outside is outside.
    pub positive_volume: bool,
    /// Intersection over union of the rendered silhouette and the input mask (0..1).
    pub silhouette_iou: f32,
    /// Intersection over union of the input mask and the segmenter's saliency
    /// (0..1), when the segmenter was there to ask; it multiplies the score.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask_agreement: Option<f32>,
    /// The weighted score above (0..1).
    pub score: f32,
}

/// The connectivity facts of a mesh (see [`Topology`]).
pub fn analyze_mesh(mesh: &Mesh) -> Topology {
    mesh.topology()
}

/// Scores `mesh` against the input-view `mask` (foreground > 127), whose
/// pixels cover the mesh's xy square [-1, 1]² (y up, row 0 at y = +1).
pub fn score_mesh(mesh: &Mesh, mask: &image::GrayImage) -> MeshReport {
    let topo = analyze_mesh(mesh);
    let iou = silhouette_iou(mesh, mask);
    let degenerate_share = if topo.faces == 0 {
        1.0
    } else {
        topo.degenerate_faces as f32 / topo.faces as f32
    };
    let floating = topo
        .component_faces
        .iter()
        .filter(|&&f| (f as f64) < 0.01 * topo.faces as f64)
        .count();
    let watertight = topo.is_closed();
    let manifold = topo.is_manifold();
    let winding = topo.is_consistently_wound();
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    let score = (0.6 * iou
        + 0.1 * flag(watertight)
        + 0.1 * flag(manifold)
        + 0.1 * flag(winding)
        + 0.1 * (1.0 - degenerate_share))
        * 0.9f32.powi(floating as i32);
    MeshReport {
        watertight,
        manifold,
        consistent_winding: winding,
        degenerate_share,
        components: topo.components(),
        floating_components: floating,
        positive_volume: topo.signed_volume > 0.0,
        silhouette_iou: iou,
        mask_agreement: None,
        score: score.clamp(0.0, 1.0),
    }
}

/// `report` with the mask's agreement with an independent segmenter folded
/// in: `score × agreement` (agreement 0..1, clamped), so a mesh built from a
/// wrong foreground scores low however well it matches that foreground.
/// Folding twice replaces the earlier agreement instead of compounding it.
pub fn with_mask_agreement(mut report: MeshReport, agreement: f32) -> MeshReport {
    let agreement = if agreement.is_finite() {
        agreement.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let base = match report.mask_agreement {
        Some(earlier) if earlier > 0.0 => report.score / earlier,
        _ => report.score,
    };
    report.mask_agreement = Some(agreement);
    report.score = (base * agreement).clamp(0.0, 1.0);
    report
}

/// Orthographic silhouette of the mesh seen along −Z, in the framing of a
/// `width`×`height` mask (see [`score_mesh`]); 255 where any triangle covers
/// the pixel centre.
pub fn render_silhouette(mesh: &Mesh, width: u32, height: u32) -> image::GrayImage {
    let (w, h) = (width as usize, height as usize);
    let mut out = vec![0u8; w * h];
    let to_px = |p: [f32; 3]| {
        [
            (p[0] as f64 + 1.0) * 0.5 * w as f64 - 0.5,
            (1.0 - p[1] as f64) * 0.5 * h as f64 - 0.5,
        ]
    };
    for t in mesh.indices.chunks_exact(3) {
        let (Some(&a), Some(&b), Some(&c)) = (
            mesh.positions.get(t[0] as usize),
            mesh.positions.get(t[1] as usize),
            mesh.positions.get(t[2] as usize),
        ) else {
            continue;
        };
        let (a, b, c) = (to_px(a), to_px(b), to_px(c));
        let area = (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0]);
        if area.abs() < 1e-12 {
            continue;
        }
        let sign = area.signum();
        let x0 = a[0].min(b[0]).min(c[0]).ceil().max(0.0) as usize;
        let y0 = a[1].min(b[1]).min(c[1]).ceil().max(0.0) as usize;
        let x1 = a[0].max(b[0]).max(c[0]).floor().min(w as f64 - 1.0);
        let y1 = a[1].max(b[1]).max(c[1]).floor().min(h as f64 - 1.0);
        if x1 < 0.0 || y1 < 0.0 {
            continue;
        }
        let edge = |p: [f64; 2], q: [f64; 2], x: f64, y: f64| {
            ((q[0] - p[0]) * (y - p[1]) - (q[1] - p[1]) * (x - p[0])) * sign
        };
        for y in y0..=y1 as usize {
            for x in x0..=x1 as usize {
                let (fx, fy) = (x as f64, y as f64);
                if edge(a, b, fx, fy) >= 0.0
                    && edge(b, c, fx, fy) >= 0.0
                    && edge(c, a, fx, fy) >= 0.0
                {
                    out[y * w + x] = 255;
                }
            }
        }
    }
    image::GrayImage::from_raw(width, height, out)
        .unwrap_or_else(|| image::GrayImage::new(width, height))
}

/// IoU of the rendered silhouette and `mask` (1.0 when both are empty).
pub fn silhouette_iou(mesh: &Mesh, mask: &image::GrayImage) -> f32 {
    mask_iou(&render_silhouette(mesh, mask.width(), mask.height()), mask)
}

/// Intersection over union of two same-sized masks, each cut at 128
/// (foreground > 127); 1.0 when both are empty: nothing to disagree about.
pub fn mask_iou(a: &image::GrayImage, b: &image::GrayImage) -> f32 {
    let (mut inter, mut union) = (0u64, 0u64);
    for (a, b) in a.as_raw().iter().zip(b.as_raw()) {
        let (a, b) = (*a > 127, *b > 127);
        inter += u64::from(a && b);
        union += u64::from(a || b);
    }
    if union == 0 {
        1.0
    } else {
        inter as f32 / union as f32
    }
}

/// The no-reference measures behind an image's score (see [`score_image`]).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ImageReport {
    /// Variance of the luma Laplacian mapped to 0..1 (`v / (v + 100)`).
    pub sharpness: f32,
    /// Share of pixels with luma at 0..=2 or 253..=255 (0..1; lower is better).
    pub clipped_share: f32,
    /// Hasler–Süsstrunk colourfulness mapped to 0..1 (`m / (m + 30)`).
    pub colourfulness: f32,
    /// Shannon entropy of the 256-bin luma histogram over 8 bits (0..1).
    pub entropy: f32,
    /// How much the image looks like per-pixel noise (0..1): the Laplacian's
    /// variance over 20× the luma variance, which is what independent noise gives.
    pub noise: f32,
    /// `(0.35·sharpness + 0.25·(1 − min(1, 4·clipped)) + 0.15·colourfulness
    /// + 0.25·entropy) × (1 − noise)`.
    pub score: f32,
}

/// Scores a generated image without a reference: a flat or blown-out picture
/// scores low, a detailed, well-exposed, colourful one high.
pub fn score_image(img: &image::RgbImage) -> ImageReport {
    let (w, h) = (img.width() as usize, img.height() as usize);
    if w == 0 || h == 0 {
        return ImageReport::default();
    }
    let luma: Vec<f32> = img
        .pixels()
        .map(|p| 0.299 * f32::from(p[0]) + 0.587 * f32::from(p[1]) + 0.114 * f32::from(p[2]))
        .collect();
    let at = |x: usize, y: usize| luma.get(y * w + x).copied().unwrap_or(0.0);

    // Sharpness: variance of the 4-neighbour Laplacian over interior pixels.
    let (mut sum, mut sum_sq, mut n) = (0f64, 0f64, 0f64);
    for y in 1..h.saturating_sub(1) {
        for x in 1..w.saturating_sub(1) {
            let lap = f64::from(
                at(x - 1, y) + at(x + 1, y) + at(x, y - 1) + at(x, y + 1) - 4.0 * at(x, y),
            );
            sum += lap;
            sum_sq += lap * lap;
            n += 1.0;
        }
    }
    let lap_var = if n > 0.0 {
        (sum_sq / n - (sum / n).powi(2)).max(0.0)
    } else {
        0.0
    };
    let sharpness = (lap_var / (lap_var + 100.0)) as f32;

    let mut hist = [0u64; 256];
    let mut clipped = 0u64;
    for &l in &luma {
        let bin = l.round().clamp(0.0, 255.0) as usize;
        if let Some(c) = hist.get_mut(bin) {
            *c += 1;
        }
        if bin <= 2 || bin >= 253 {
            clipped += 1;
        }
    }
    let total = luma.len() as f64;
    let clipped_share = (clipped as f64 / total) as f32;
    let entropy = hist
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / total;
            -p * p.log2()
        })
        .sum::<f64>()
        / 8.0;

    // Colourfulness (Hasler & Süsstrunk 2003) on rg = R − G, yb = (R + G)/2 − B.
    let (mut rg_s, mut rg_ss, mut yb_s, mut yb_ss) = (0f64, 0f64, 0f64, 0f64);
    for p in img.pixels() {
        let (r, g, b) = (f64::from(p[0]), f64::from(p[1]), f64::from(p[2]));
        let rg = r - g;
        let yb = 0.5 * (r + g) - b;
        rg_s += rg;
        rg_ss += rg * rg;
        yb_s += yb;
        yb_ss += yb * yb;
    }
    let (rg_m, yb_m) = (rg_s / total, yb_s / total);
    let rg_sd = (rg_ss / total - rg_m * rg_m).max(0.0).sqrt();
    let yb_sd = (yb_ss / total - yb_m * yb_m).max(0.0).sqrt();
    let m = (rg_sd * rg_sd + yb_sd * yb_sd).sqrt() + 0.3 * (rg_m * rg_m + yb_m * yb_m).sqrt();
    let colourfulness = (m / (m + 30.0)) as f32;

    // Noise: for independent pixels of variance σ², the 4-neighbour Laplacian
    // has variance 20σ²; natural pictures and renders stay far below that.
    let mean = luma.iter().map(|&l| f64::from(l)).sum::<f64>() / total;
    let luma_var = luma
        .iter()
        .map(|&l| (f64::from(l) - mean).powi(2))
        .sum::<f64>()
        / total;
    let noise = if luma_var > 0.0 {
        (lap_var / (20.0 * luma_var)).clamp(0.0, 1.0) as f32
    } else {
        0.0
    };

    let entropy = entropy.clamp(0.0, 1.0) as f32;
    let exposure = 1.0 - (4.0 * clipped_share).min(1.0);
    let score = ((0.35 * sharpness + 0.25 * exposure + 0.15 * colourfulness + 0.25 * entropy)
        * (1.0 - noise))
        .clamp(0.0, 1.0);
    ImageReport {
        sharpness,
        clipped_share,
        colourfulness,
        entropy,
        noise,
        score,
    }
}
