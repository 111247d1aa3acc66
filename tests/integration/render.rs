//! Offscreen renderer tests: pixel assertions on images rendered through the
//! same renderer as the viewport (lavapipe in CI: WGPU_BACKEND=vulkan).

use orfeas::viewport::{
    Background, HeadlessRenderer, OrbitCamera, RenderOptions, ShadingMode, View,
};
use orfeas_core::mesh::Mesh;

/// The headless renderer, or `None` (with a loud note) where no adapter exists
/// and the environment does not require one.
pub fn renderer() -> Option<HeadlessRenderer> {
    match HeadlessRenderer::new() {
        Ok(renderer) => Some(renderer),
        Err(err) if std::env::var("ORFEAS_REQUIRE_TOOLS").as_deref() == Ok("1") => {
            panic!("ORFEAS_REQUIRE_TOOLS=1 but offscreen rendering is unavailable: {err}")
        }
        Err(err) => {
            eprintln!("skipped: GPU adapter (lavapipe) missing: {err}");
            None
        }
    }
}

/// An axis-aligned box from `min` to `max`, 12 triangles, outward winding.
pub fn box_mesh(min: [f32; 3], max: [f32; 3]) -> Mesh {
    let corner = |i: usize| {
        [
            if i & 1 == 0 { min[0] } else { max[0] },
            if i & 2 == 0 { min[1] } else { max[1] },
            if i & 4 == 0 { min[2] } else { max[2] },
        ]
    };
    let faces: [[u32; 4]; 6] = [
        [0, 2, 3, 1],
        [4, 5, 7, 6],
        [0, 1, 5, 4],
        [2, 6, 7, 3],
        [0, 4, 6, 2],
        [1, 3, 7, 5],
    ];
    Mesh {
        positions: (0..8).map(corner).collect(),
        indices: faces
            .iter()
            .flat_map(|f| [f[0], f[1], f[2], f[0], f[2], f[3]])
            .collect(),
        ..Mesh::default()
    }
}

const BLACK: Background = Background::Solid([0, 0, 0]);

fn options(size: u32, mode: ShadingMode) -> RenderOptions {
    RenderOptions {
        width: size,
        height: size,
        mode,
        grid: false,
        background: BLACK,
        ..RenderOptions::default()
    }
}

fn covered_fraction(image: &image::RgbaImage) -> f64 {
    let covered = image.pixels().filter(|p| p.0[..3] != [0, 0, 0]).count();
    covered as f64 / (image.width() * image.height()) as f64
}

#[test]
fn unit_cube_from_the_front_covers_the_projected_square() {
    let Some(renderer) = renderer() else { return };
    let fov_y_rad = 45f32.to_radians();
    let distance = 3.0;
    let camera = OrbitCamera {
        distance,
        fov_y_rad,
        ..OrbitCamera::default()
    };
    let image = renderer
        .render(
            &box_mesh([-0.5; 3], [0.5; 3]),
            &RenderOptions {
                camera: Some(camera),
                ..options(256, ShadingMode::Textured)
            },
        )
        .unwrap();
    // The front face (z = 0.5) is 2.5 units from the eye; its half side of 0.5
    // spans 0.5 / (2.5 tan 22.5°) of the half-height, and the image is square.
    let half_extent = 0.5 / ((f64::from(distance) - 0.5) * (f64::from(fov_y_rad) / 2.0).tan());
    let expected = half_extent * half_extent;
    let fraction = covered_fraction(&image);
    assert!(
        (fraction - expected).abs() < 0.01,
        "covered {fraction:.4}, expected {expected:.4}"
    );
    // A mesh without texture or colours shows in light clay grey, centred.
    let centre = image.get_pixel(128, 128).0;
    assert!(
        centre[..3].iter().all(|&c| c > 150),
        "centre pixel {centre:?}"
    );
}

#[test]
fn front_and_side_views_of_a_long_box_differ() {
    let Some(renderer) = renderer() else { return };
    // Long along X: wide from the front, narrow from the side.
    let mesh = box_mesh([-1.0, -0.25, -0.25], [1.0, 0.25, 0.25]);
    let camera = |view| {
        let mut camera = OrbitCamera {
            distance: 5.0,
            ..OrbitCamera::default()
        };
        camera.set_view(view);
        Some(camera)
    };
    let front = renderer
        .render(
            &mesh,
            &RenderOptions {
                camera: camera(View::Front),
                ..options(128, ShadingMode::Clay)
            },
        )
        .unwrap();
    let side = renderer
        .render(
            &mesh,
            &RenderOptions {
                camera: camera(View::Right),
                ..options(128, ShadingMode::Clay)
            },
        )
        .unwrap();
    let width = |image: &image::RgbaImage| {
        (0..image.width())
            .filter(|&x| image.get_pixel(x, 64).0[..3] != [0, 0, 0])
            .count()
    };
    assert!(
        width(&front) > 2 * width(&side),
        "front {} px wide, side {} px",
        width(&front),
        width(&side)
    );
    assert!(covered_fraction(&front) > 2.0 * covered_fraction(&side));
}

fn quad(x0: f32, x1: f32, y0: f32, y1: f32, color: [u8; 4]) -> Mesh {
    Mesh {
        positions: vec![[x0, y0, 0.0], [x1, y0, 0.0], [x1, y1, 0.0], [x0, y1, 0.0]],
        uvs: vec![[0.0, 1.0], [1.0, 1.0], [1.0, 0.0], [0.0, 0.0]],
        colors: vec![color; 4],
        indices: vec![0, 1, 2, 0, 2, 3],
        ..Mesh::default()
    }
}

fn merge(a: Mesh, b: Mesh) -> Mesh {
    let base = a.positions.len() as u32;
    let mut out = a;
    out.positions.extend(b.positions);
    out.uvs.extend(b.uvs);
    out.colors.extend(b.colors);
    out.indices.extend(b.indices.iter().map(|i| i + base));
    out
}

fn front_camera() -> Option<OrbitCamera> {
    Some(OrbitCamera {
        distance: 3.0,
        fov_y_rad: 60f32.to_radians(),
        ..OrbitCamera::default()
    })
}

fn close(actual: [u8; 4], expected: [u8; 3]) -> bool {
    actual.iter().zip(expected).all(|(a, e)| a.abs_diff(e) <= 6)
}

#[test]
fn vertex_colours_appear_where_they_are() {
    let Some(renderer) = renderer() else { return };
    let mesh = merge(
        quad(-1.0, 0.0, -1.0, 1.0, [255, 0, 0, 255]),
        quad(0.0, 1.0, -1.0, 1.0, [0, 0, 255, 255]),
    );
    let image = renderer
        .render(
            &mesh,
            &RenderOptions {
                camera: front_camera(),
                ..options(128, ShadingMode::VertexColor)
            },
        )
        .unwrap();
    let left = image.get_pixel(40, 64).0;
    let right = image.get_pixel(88, 64).0;
    assert!(close(left, [255, 0, 0]), "left of centre is red: {left:?}");
    assert!(
        close(right, [0, 0, 255]),
        "right of centre is blue: {right:?}"
    );
}

#[test]
fn texture_appears_upright_and_unmirrored() {
    let Some(renderer) = renderer() else { return };
    // 2×2 texture: red top-left, green top-right, blue bottom-left, white bottom-right.
    let texture = image::RgbaImage::from_fn(2, 2, |x, y| match (x, y) {
        (0, 0) => image::Rgba([255, 0, 0, 255]),
        (1, 0) => image::Rgba([0, 255, 0, 255]),
        (0, 1) => image::Rgba([0, 0, 255, 255]),
        _ => image::Rgba([255, 255, 255, 255]),
    });
    let mut mesh = quad(-1.0, 1.0, -1.0, 1.0, [255; 4]);
    mesh.colors.clear();
    mesh.texture = Some(texture);
    let image = renderer
        .render(
            &mesh,
            &RenderOptions {
                camera: front_camera(),
                ..options(128, ShadingMode::Textured)
            },
        )
        .unwrap();
    // The quad spans ±1 of the ±√3 visible at distance 3 with a 60° fov, so
    // 64 ± 36.9 px; texel centres (uv 0.25 and 0.75) sit at 64 ± 18.5 px.
    let at = |x, y| image.get_pixel(x, y).0;
    assert!(close(at(45, 45), [255, 0, 0]), "top-left {:?}", at(45, 45));
    assert!(close(at(82, 45), [0, 255, 0]), "top-right {:?}", at(82, 45));
    assert!(
        close(at(45, 82), [0, 0, 255]),
        "bottom-left {:?}",
        at(45, 82)
    );
    assert!(
        close(at(82, 82), [255, 255, 255]),
        "bottom-right {:?}",
        at(82, 82)
    );
    // Outside the quad: background.
    assert_eq!(at(20, 64)[..3], [0, 0, 0]);
}

#[test]
fn wireframe_adds_edge_pixels() {
    let Some(renderer) = renderer() else { return };
    let mesh = box_mesh([-0.5; 3], [0.5; 3]);
    let base = RenderOptions {
        view: View::Iso,
        ..options(200, ShadingMode::Clay)
    };
    let plain = renderer.render(&mesh, &base).unwrap();
    let wired = renderer
        .render(
            &mesh,
            &RenderOptions {
                wireframe: true,
                ..base.clone()
            },
        )
        .unwrap();
    // Pixels on the mesh that the wireframe darkens clearly: its 12 visible
    // edges (9 box edges, 3 face diagonals) are each dozens of pixels long.
    let darkened = wired
        .pixels()
        .zip(plain.pixels())
        .filter(|(w, p)| p.0[..3] != [0, 0, 0] && i32::from(p.0[1]) - i32::from(w.0[1]) > 40)
        .count();
    assert!(
        darkened > 300,
        "the wireframe darkened only {darkened} pixels"
    );
    let lightened = wired
        .pixels()
        .zip(plain.pixels())
        .filter(|(w, p)| w.0[1] > p.0[1].saturating_add(8))
        .count();
    assert_eq!(lightened, 0, "a wireframe only darkens");
    assert!(
        (covered_fraction(&plain) - covered_fraction(&wired)).abs() < 0.002,
        "same silhouette"
    );
}

#[test]
fn empty_mesh_renders_the_background() {
    let Some(renderer) = renderer() else { return };
    let solid = renderer
        .render(
            &Mesh::default(),
            &RenderOptions {
                background: Background::Solid([30, 60, 90]),
                ..options(64, ShadingMode::Lit)
            },
        )
        .unwrap();
    assert!(
        solid.pixels().all(|p| close(p.0, [30, 60, 90])),
        "{:?}",
        solid.get_pixel(0, 0)
    );
    let gradient = renderer
        .render(
            &Mesh::default(),
            &RenderOptions {
                background: Background::Gradient {
                    top: [200, 200, 200],
                    bottom: [20, 20, 20],
                },
                ..options(64, ShadingMode::Lit)
            },
        )
        .unwrap();
    assert!(gradient.get_pixel(32, 0).0[0] > 180 && gradient.get_pixel(32, 63).0[0] < 40);
}

#[test]
fn turntable_frames_turn_around_the_mesh() {
    let Some(renderer) = renderer() else { return };
    let mesh = box_mesh([-1.0, -0.25, -0.25], [1.0, 0.25, 0.25]);
    let frames = renderer
        .render_turntable(
            &mesh,
            &RenderOptions {
                view: View::Front,
                ..options(64, ShadingMode::Clay)
            },
            4,
        )
        .unwrap();
    assert_eq!(frames.len(), 4);
    // A quarter turn shows the narrow end: far less of the box.
    assert!(covered_fraction(&frames[0]) > 1.5 * covered_fraction(&frames[1]));
    // Half a turn shows the back, the same silhouette as the front.
    assert!((covered_fraction(&frames[0]) - covered_fraction(&frames[2])).abs() < 0.01);
}

#[test]
fn invalid_sizes_are_errors() {
    let Some(renderer) = renderer() else { return };
    let err = renderer
        .render(
            &box_mesh([0.0; 3], [1.0; 3]),
            &RenderOptions {
                width: 0,
                ..RenderOptions::default()
            },
        )
        .unwrap_err();
    assert!(err.to_string().contains("1..="), "{err}");
}

#[test]
fn only_closed_outward_meshes_get_back_faces_culled() {
    let is_closed_outward = |m: &orfeas_core::mesh::Mesh| m.topology().is_closed_outward();
    let outward = box_mesh([-0.5; 3], [0.5; 3]);
    assert!(is_closed_outward(&outward));
    let mut inward = outward.clone();
    for t in inward.indices.chunks_exact_mut(3) {
        t.swap(1, 2);
    }
    assert!(!is_closed_outward(&inward), "inward winding");
    let mut open = outward.clone();
    open.indices.truncate(open.indices.len() - 6);
    assert!(!is_closed_outward(&open), "a missing face");
    let mut mixed = outward.clone();
    mixed.indices.swap(1, 2);
    assert!(!is_closed_outward(&mixed), "one flipped triangle");
    // The benchmark's UV sphere (seams and poles welded by position) is closed.
    assert!(is_closed_outward(&orfeas::viewport::bench::sphere_mesh(
        10_000
    )));
}

#[test]
fn inward_wound_and_open_meshes_still_show_both_sides() {
    let Some(renderer) = renderer() else { return };
    let outward = box_mesh([-0.5; 3], [0.5; 3]);
    let mut inward = outward.clone();
    for t in inward.indices.chunks_exact_mut(3) {
        t.swap(1, 2);
    }
    let mut open = outward.clone();
    open.indices.truncate(open.indices.len() - 6);
    let opts = RenderOptions {
        view: View::Iso,
        ..options(128, ShadingMode::Clay)
    };
    let covered = |mesh: &Mesh| covered_fraction(&renderer.render(mesh, &opts).unwrap());
    let reference = covered(&outward);
    assert!(reference > 0.1, "the culled closed box shows: {reference}");
    for (name, mesh) in [("inward", &inward), ("open", &open)] {
        let c = covered(mesh);
        assert!(
            (c - reference).abs() < 0.02,
            "{name}: covered {c:.4} vs {reference:.4}"
        );
    }
}
