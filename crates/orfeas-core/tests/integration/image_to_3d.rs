//! The built-in image→3D method on synthetic silhouettes: closed, manifold,
//! outward-wound meshes of the right genus that match the input silhouette.

use image::{Rgba, RgbaImage};
use orfeas_core::image_to_3d::{self, Generated, ImageTo3dError, ImageTo3dParams, Quality};
use orfeas_core::quality;

const SIZE: u32 = 256;
const RED: [u8; 4] = [220, 30, 30, 255];
const BLUE: [u8; 4] = [30, 40, 210, 255];

/// A SIZE² image: `inside(x, y)` pixels get `color(x, y)`, the rest `background`.
pub fn shape(
    inside: impl Fn(f32, f32) -> bool,
    color: impl Fn(f32, f32) -> [u8; 4],
    background: [u8; 4],
) -> RgbaImage {
    RgbaImage::from_fn(SIZE, SIZE, |x, y| {
        let (fx, fy) = (x as f32 + 0.5, y as f32 + 0.5);
        Rgba(if inside(fx, fy) {
            color(fx, fy)
        } else {
            background
        })
    })
}

const CLEAR: [u8; 4] = [0, 0, 0, 0];

fn within(x: f32, y: f32, cx: f32, cy: f32, r: f32) -> bool {
    (x - cx).powi(2) + (y - cy).powi(2) <= r * r
}

pub fn disc() -> RgbaImage {
    shape(|x, y| within(x, y, 128.0, 128.0, 90.0), |_, _| RED, CLEAR)
}

pub fn ring() -> RgbaImage {
    shape(
        |x, y| within(x, y, 128.0, 128.0, 100.0) && !within(x, y, 128.0, 128.0, 45.0),
        |_, _| RED,
        CLEAR,
    )
}

fn l_shape() -> RgbaImage {
    shape(
        |x, y| {
            (40.0..100.0).contains(&x) && (30.0..220.0).contains(&y)
                || (40.0..210.0).contains(&x) && (160.0..220.0).contains(&y)
        },
        |_, _| BLUE,
        CLEAR,
    )
}

fn thin_limb() -> RgbaImage {
    // A body with a 6 px wide arm reaching out to the right.
    shape(
        |x, y| {
            within(x, y, 90.0, 128.0, 60.0)
                || (140.0..240.0).contains(&x) && (125.0..131.0).contains(&y)
        },
        |_, _| RED,
        CLEAR,
    )
}

fn two_blobs() -> RgbaImage {
    shape(
        |x, y| within(x, y, 70.0, 128.0, 45.0) || within(x, y, 190.0, 128.0, 35.0),
        |_, _| RED,
        CLEAR,
    )
}

fn run(image: &RgbaImage, params: &ImageTo3dParams) -> Generated {
    image_to_3d::generate(image, params, &mut |_, _| {}, &|| false).expect("generation succeeds")
}

/// Asserts the mesh is closed, manifold, outward wound, has `shells` shells of
/// total genus `genus`, and matches its mask.
fn assert_solid(name: &str, g: &Generated, shells: usize, genus: i64) {
    let topo = g.mesh.topology();
    assert!(topo.is_closed(), "{name}: not closed: {topo:?}");
    assert!(topo.is_manifold(), "{name}: not manifold: {topo:?}");
    assert!(
        topo.is_consistently_wound(),
        "{name}: inconsistent winding: {topo:?}"
    );
    assert!(
        topo.signed_volume > 0.0,
        "{name}: volume {} not positive",
        topo.signed_volume
    );
    assert_eq!(
        topo.components(),
        shells,
        "{name}: shells {:?}",
        topo.component_faces
    );
    // χ = 2·shells − 2·genus for closed orientable surfaces.
    assert_eq!(
        topo.euler_characteristic,
        2 * shells as i64 - 2 * genus,
        "{name}: Euler characteristic"
    );
    assert_eq!(topo.degenerate_faces, 0, "{name}: degenerate faces");
    let report = quality::score_mesh(&g.mesh, &g.mask);
    assert!(
        report.silhouette_iou > 0.9,
        "{name}: silhouette IoU {}",
        report.silhouette_iou
    );
    assert!(
        report.watertight && report.manifold && report.consistent_winding,
        "{name}: {report:?}"
    );
    assert!(report.score > 0.9, "{name}: score {}", report.score);
    // Every per-vertex attribute is present and the texture exists.
    let n = g.mesh.positions.len();
    assert_eq!(
        (g.mesh.normals.len(), g.mesh.uvs.len(), g.mesh.colors.len()),
        (n, n, n),
        "{name}"
    );
    assert!(g.mesh.texture.is_some(), "{name}: texture");
}

#[test]
fn disc_becomes_one_closed_sphere_like_shell() {
    let g = run(&disc(), &ImageTo3dParams::default());
    assert_solid("disc", &g, 1, 0);
    // Round: depth comparable to width (a sphere, not a slab or a needle).
    let (lo, hi) = g.mesh.bounds().unwrap();
    let (width, depth) = (hi[0] - lo[0], hi[2] - lo[2]);
    assert!(
        depth > 0.7 * width && depth < 1.2 * width,
        "width {width}, depth {depth}"
    );
    // Front and back are mirror images: the mesh is symmetric in z.
    assert!(
        (hi[2] + lo[2]).abs() < 0.02 * depth,
        "z range {lo:?}..{hi:?}"
    );
    // Foreground ratio 0.85: the disc spans 85 % of the [-1, 1] frame.
    assert!((width / 2.0 - 0.85).abs() < 0.03, "width {width}");
}

#[test]
fn ring_keeps_its_hole_as_a_torus() {
    let g = run(&ring(), &ImageTo3dParams::default());
    assert_solid("ring", &g, 1, 1);
    // Nothing covers the middle of the hole.
    let silhouette = quality::render_silhouette(&g.mesh, 64, 64);
    assert_eq!(silhouette.get_pixel(32, 32).0[0], 0, "the hole is filled");
}

#[test]
fn l_shape_and_thin_limb_are_single_closed_shells() {
    assert_solid("L", &run(&l_shape(), &ImageTo3dParams::default()), 1, 0);
    let g = run(&thin_limb(), &ImageTo3dParams::default());
    assert_solid("thin limb", &g, 1, 0);
    // The arm survives: the silhouette reaches the right end of the arm.
    let (_, hi) = g.mesh.bounds().unwrap();
    assert!(hi[0] > 0.8, "arm lost, max x {}", hi[0]);
}

#[test]
fn two_separate_blobs_become_two_closed_shells() {
    let g = run(&two_blobs(), &ImageTo3dParams::default());
    assert_solid("two blobs", &g, 2, 0);
}

#[test]
fn specks_below_the_component_share_are_dropped() {
    let img = shape(
        |x, y| within(x, y, 100.0, 128.0, 80.0) || within(x, y, 235.0, 30.0, 3.0),
        |_, _| RED,
        CLEAR,
    );
    let g = run(&img, &ImageTo3dParams::default());
    assert_eq!(
        g.mesh.topology().components(),
        1,
        "the 3 px speck should be dropped"
    );
}

#[test]
fn every_quality_preset_is_closed_and_finer_presets_have_more_triangles() {
    let mut last = 0;
    for q in Quality::ALL {
        let params = ImageTo3dParams {
            quality: q,
            ..Default::default()
        };
        let g = run(&ring(), &params);
        assert_solid(q.as_str(), &g, 1, 1);
        assert!(
            g.mesh.triangle_count() > last,
            "{q}: {} triangles",
            g.mesh.triangle_count()
        );
        last = g.mesh.triangle_count();
    }
}

#[test]
fn opaque_image_on_a_plain_background_uses_the_border_colour() {
    let white = [255, 255, 255, 255];
    let g = run(
        &shape(|x, y| within(x, y, 128.0, 128.0, 90.0), |_, _| RED, white),
        &ImageTo3dParams::default(),
    );
    assert_solid("opaque disc", &g, 1, 0);
    // A ring on white keeps its hole although no pixel is transparent.
    let g = run(
        &shape(
            |x, y| within(x, y, 128.0, 128.0, 100.0) && !within(x, y, 128.0, 128.0, 45.0),
            |_, _| BLUE,
            white,
        ),
        &ImageTo3dParams::default(),
    );
    assert_solid("opaque ring", &g, 1, 1);
}

#[test]
fn the_background_mode_decides_what_is_cut_away() {
    use orfeas_core::request::Background;
    let white = [255, 255, 255, 255];
    let opaque = shape(|x, y| within(x, y, 128.0, 128.0, 60.0), |_, _| RED, white);
    let with = |background| ImageTo3dParams {
        background,
        ..ImageTo3dParams::default()
    };
    let foreground = |g: &Generated| g.mask.pixels().filter(|p| p.0[0] > 127).count();
    let disc = run(&opaque, &with(Background::Border));
    assert_solid("border", &disc, 1, 0);
    // Auto on an opaque picture is the border colour.
    let auto = run(&opaque, &with(Background::Auto));
    assert_eq!(foreground(&auto), foreground(&disc));
    // None keeps the whole picture: the white square is the object. Both are
    // framed to the same size, so the square covers 4/π of the disc's area.
    let whole = run(&opaque, &with(Background::None));
    assert_solid("none", &whole, 1, 0);
    let ratio = foreground(&whole) as f64 / foreground(&disc) as f64;
    assert!(
        (ratio - 4.0 / std::f64::consts::PI).abs() < 0.08,
        "square / disc = {ratio}"
    );
    // Alpha on a picture without transparency is refused with the way out.
    let e = image_to_3d::generate(&opaque, &with(Background::Alpha), &mut |_, _| {}, &|| false)
        .unwrap_err();
    assert!(
        matches!(&e, ImageTo3dError::InvalidParameter { field: "background", detail } if detail.contains("border")),
        "{e}"
    );
    // Border on a cut-out ignores the alpha: the transparent black around the
    // disc is the border colour, so the same disc comes out.
    let border_on_cutout = run(&disc_image(), &with(Background::Border));
    assert_solid("border on a cut-out", &border_on_cutout, 1, 0);
}

fn disc_image() -> RgbaImage {
    disc()
}

fn near(c: [u8; 4], want: [u8; 4], tol: i32) -> bool {
    (0..3).all(|k| (c[k] as i32 - want[k] as i32).abs() <= tol)
}

#[test]
fn front_shows_the_image_and_back_a_mirrored_copy_of_it() {
    // Left half red, right half blue.
    let img = shape(
        |x, y| within(x, y, 128.0, 128.0, 90.0),
        |x, _| if x < 128.0 { RED } else { BLUE },
        CLEAR,
    );
    let g = run(&img, &ImageTo3dParams::default());
    let m = &g.mesh;
    let (mut front_checked, mut back_checked) = (0, 0);
    for (i, p) in m.positions.iter().enumerate() {
        if p[0].abs() < 0.3 || p[0].abs() > 0.6 || p[1].abs() > 0.3 {
            continue;
        }
        // Seen from the front, the left (x < 0) is the image's left.
        let want = if p[0] < 0.0 { RED } else { BLUE };
        let c = m.colors[i];
        assert!(
            near(c, want, 40),
            "vertex {p:?} colour {c:?}, want {want:?}"
        );
        if p[2] > 0.0 {
            front_checked += 1
        } else {
            back_checked += 1
        }
    }
    assert!(
        front_checked > 20 && back_checked > 20,
        "{front_checked} front, {back_checked} back vertices checked"
    );
    // The atlas: front half is the image, back half its mirror.
    let tex = m.texture.as_ref().unwrap();
    let (w, h) = tex.dimensions();
    assert_eq!(w, 2 * h, "atlas is front | back");
    let front_left = tex.get_pixel(w / 4 - w / 16, h / 2).0;
    let back_left = tex.get_pixel(w / 2 + w / 16, h / 2).0;
    assert!(
        near(front_left, RED, 30) && near(back_left, BLUE, 30),
        "front {front_left:?}, back {back_left:?}"
    );
}

#[test]
fn smoothing_and_decimation_keep_the_mesh_closed() {
    let full = run(
        &ring(),
        &ImageTo3dParams {
            smooth_iterations: 0,
            ..Default::default()
        },
    );
    assert_solid("ring unsmoothed", &full, 1, 1);
    let smooth = run(
        &ring(),
        &ImageTo3dParams {
            smooth_iterations: 10,
            ..Default::default()
        },
    );
    assert_solid("ring smoothed", &smooth, 1, 1);
    let dec = run(
        &ring(),
        &ImageTo3dParams {
            decimate_ratio: 0.25,
            ..Default::default()
        },
    );
    assert_solid("ring decimated", &dec, 1, 1);
    let ratio = dec.mesh.topology().faces as f32 / full.mesh.topology().faces as f32;
    assert!(
        ratio < 0.35 && ratio > 0.15,
        "decimated to {ratio} of the triangles"
    );
    let blobs = run(
        &two_blobs(),
        &ImageTo3dParams {
            decimate_ratio: 0.1,
            ..Default::default()
        },
    );
    assert_solid("blobs decimated", &blobs, 2, 0);
}

#[test]
fn progress_is_ordered_and_cancel_stops_the_run() {
    let mut seen: Vec<(&str, f32)> = Vec::new();
    run_with_progress(&mut seen);
    assert!(seen.len() >= 5, "{seen:?}");
    assert!(
        seen.windows(2).all(|w| w[0].1 <= w[1].1),
        "progress goes backwards: {seen:?}"
    );
    assert_eq!(seen.first().unwrap().0, "mask");
    assert_eq!(seen.last().unwrap().0, "texture");

    let calls = std::cell::Cell::new(0);
    let err = image_to_3d::generate(
        &disc(),
        &ImageTo3dParams::default(),
        &mut |_, _| {},
        &|| {
            calls.set(calls.get() + 1);
            calls.get() > 2
        },
    )
    .unwrap_err();
    assert!(matches!(err, ImageTo3dError::Cancelled), "{err:?}");
    assert_eq!(err.reason(), "cancelled");
}

fn run_with_progress(seen: &mut Vec<(&'static str, f32)>) {
    image_to_3d::generate(
        &disc(),
        &ImageTo3dParams::default(),
        &mut |s, f| seen.push((s, f)),
        &|| false,
    )
    .unwrap();
}

#[test]
fn parameters_are_validated_and_named_in_lowercase() {
    for bad in [
        ImageTo3dParams {
            foreground_ratio: 0.0,
            ..Default::default()
        },
        ImageTo3dParams {
            foreground_ratio: f32::NAN,
            ..Default::default()
        },
        ImageTo3dParams {
            decimate_ratio: 0.0,
            ..Default::default()
        },
        ImageTo3dParams {
            border_tolerance: 1.5,
            ..Default::default()
        },
        ImageTo3dParams {
            thickness: -1.0,
            ..Default::default()
        },
        ImageTo3dParams {
            smooth_iterations: 1000,
            ..Default::default()
        },
    ] {
        let err = image_to_3d::generate(&disc(), &bad, &mut |_, _| {}, &|| false).unwrap_err();
        assert_eq!(err.reason(), "invalid_parameter", "{bad:?}: {err}");
    }
    assert_eq!("HIGH".parse::<Quality>().unwrap(), Quality::High);
    assert!("ultra".parse::<Quality>().is_err());
    assert_eq!(serde_json::to_string(&Quality::Draft).unwrap(), "\"draft\"");
    let partial: ImageTo3dParams = serde_json::from_str(r#"{"quality":"high"}"#).unwrap();
    assert_eq!(
        partial,
        ImageTo3dParams {
            quality: Quality::High,
            ..Default::default()
        }
    );
}

/// RMS distance of the front vertices near the rim (ρ > 0.6 R) from the best
/// fitting spheroid z = k·√(R² − ρ²), relative to R: the ripples a jittery
/// distance field leaves along the silhouette.
fn rim_roughness(mesh: &orfeas_core::mesh::Mesh) -> f32 {
    let (lo, hi) = mesh.bounds().unwrap();
    let r = (hi[0] - lo[0]) / 2.0;
    let (cx, cy) = ((hi[0] + lo[0]) / 2.0, (hi[1] + lo[1]) / 2.0);
    let band: Vec<(f32, f32)> = mesh
        .positions
        .iter()
        .filter(|p| p[2] > 1e-4)
        .map(|p| {
            let rho = ((p[0] - cx).powi(2) + (p[1] - cy).powi(2)).sqrt();
            ((r * r - rho * rho).max(0.0).sqrt(), p[2])
        })
        .filter(|&(s, _)| s < 0.8 * r) // ρ > 0.6 R
        .collect();
    let k =
        band.iter().map(|(s, z)| s * z).sum::<f32>() / band.iter().map(|(s, _)| s * s).sum::<f32>();
    let mse = band.iter().map(|(s, z)| (z - k * s).powi(2)).sum::<f32>() / band.len() as f32;
    mse.sqrt() / r
}

#[test]
fn a_disc_inflates_to_a_smooth_round_rim_at_every_quality() {
    for quality in [Quality::Draft, Quality::Standard, Quality::High] {
        let g = run(
            &disc(),
            &ImageTo3dParams {
                quality,
                ..ImageTo3dParams::default()
            },
        );
        let rough = rim_roughness(&g.mesh);
        eprintln!("{quality}: rim roughness {rough:.5} of the radius");
        // Grid distances (1, √2, 2, … cells to the outline) and the mask's pixel
        // steps left 1.4 % of the radius at draft, 1.0 % at standard, 0.8 % at high.
        let limit = if quality == Quality::Draft {
            0.0095
        } else {
            0.007
        };
        assert!(rough < limit, "{quality}: rim roughness {rough}");
    }
}

/// A request on `disc()` saved in `dir`, with `mask` as its painted mask.
fn masked_request(
    dir: &std::path::Path,
    mask: image::GrayImage,
) -> orfeas_core::request::ImageTo3dRequest {
    let input = dir.join("disc.png");
    disc().save(&input).unwrap();
    let mask_path = dir.join("mask.png");
    mask.save(&mask_path).unwrap();
    orfeas_core::request::ImageTo3dRequest {
        mask: Some(mask_path),
        ..orfeas_core::request::ImageTo3dRequest::new(
            input,
            dir.join("out.glb"),
            orfeas_core::export::ExportFormat::Glb,
        )
    }
}

fn width_over_height(path: &std::path::Path) -> f32 {
    let mesh = orfeas_core::import::import_mesh(path).unwrap();
    let (lo, hi) = mesh.bounds().unwrap();
    (hi[0] - lo[0]) / (hi[1] - lo[1])
}

#[test]
fn a_painted_mask_replaces_the_background_and_shapes_the_silhouette() {
    let dir = tempfile::tempdir().unwrap();
    // The alpha says a whole disc; the mask keeps its left half only.
    let mut req = masked_request(
        dir.path(),
        image::GrayImage::from_fn(256, 256, |x, _| {
            image::Luma([if x < 128 { 255 } else { 0 }])
        }),
    );
    req.params.background = orfeas_core::request::Background::Alpha;
    image_to_3d::run_file(&req, &mut |_, _| {}, &|| false).unwrap();
    let half = width_over_height(&req.output);
    assert!((0.4..0.6).contains(&half), "half disc: width/height {half}");

    let whole = masked_request(
        dir.path(),
        image::GrayImage::from_pixel(256, 256, image::Luma([255])),
    );
    let whole = orfeas_core::request::ImageTo3dRequest {
        output: dir.path().join("whole.glb"),
        ..whole
    };
    image_to_3d::run_file(&whole, &mut |_, _| {}, &|| false).unwrap();
    // An all-foreground mask keeps the square picture, not the disc.
    let square = width_over_height(&whole.output);
    assert!(
        (0.9..1.1).contains(&square),
        "square: width/height {square}"
    );
}

#[test]
fn a_mask_of_another_size_or_all_background_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let req = masked_request(
        dir.path(),
        image::GrayImage::from_pixel(100, 80, image::Luma([255])),
    );
    let err = image_to_3d::run_file(&req, &mut |_, _| {}, &|| false).unwrap_err();
    assert!(
        matches!(err, ImageTo3dError::InvalidParameter { field: "mask", .. }),
        "{err}"
    );
    assert!(err.to_string().contains("100×80"), "{err}");
    let req = masked_request(dir.path(), image::GrayImage::new(256, 256));
    let err = image_to_3d::run_file(&req, &mut |_, _| {}, &|| false).unwrap_err();
    assert!(matches!(err, ImageTo3dError::NoForeground { .. }), "{err}");
    assert!(err.to_string().contains("all background"), "{err}");
    assert!(!req.output.exists());
}

#[test]
fn preview_mask_is_the_mask_generation_uses() {
    let mask = image_to_3d::preview_mask(&disc(), &ImageTo3dParams::default()).unwrap();
    assert_eq!(mask.dimensions(), (256, 256));
    assert_eq!(mask.get_pixel(128, 128).0[0], 255);
    assert_eq!(mask.get_pixel(2, 2).0[0], 0);
    let share = mask.pixels().filter(|p| p.0[0] == 255).count() as f32 / (256.0 * 256.0);
    let disc_share = std::f32::consts::PI * 90.0 * 90.0 / (256.0 * 256.0);
    assert!((share - disc_share).abs() < 0.02, "{share} vs {disc_share}");
}

#[test]
fn a_disagreeing_segmenter_lowers_the_score_and_a_refold_replaces_it() {
    let g = run(&disc(), &ImageTo3dParams::default());
    let report = quality::score_mesh(&g.mesh, &g.mask);
    assert_eq!(report.mask_agreement, None, "no segmenter asked yet");
    let agreed = quality::with_mask_agreement(report.clone(), 1.0);
    assert!(
        (agreed.score - report.score).abs() < 1e-6,
        "full agreement keeps the score"
    );
    let wrong = quality::with_mask_agreement(report.clone(), 0.25);
    assert_eq!(wrong.mask_agreement, Some(0.25));
    assert!(
        wrong.score < 0.3 && report.score > 0.9,
        "a quarter agreement must pull a {} mesh score down, got {}",
        report.score,
        wrong.score
    );
    // Folding again (a re-score) replaces the factor, it does not compound.
    let again = quality::with_mask_agreement(wrong, 0.5);
    assert!(
        (again.score - report.score * 0.5).abs() < 1e-5,
        "{}",
        again.score
    );
    // Nonsense agreement counts as none at all, not as a perfect one.
    assert_eq!(quality::with_mask_agreement(report, f32::NAN).score, 0.0);
}
