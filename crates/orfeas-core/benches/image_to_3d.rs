//! Image → mesh time (decode excluded, texture and normals included) for 512²
//! and 1024² inputs at every quality preset. Prints the median of several runs.
//! Run: `cargo bench -p orfeas-core --bench image_to_3d`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark fails loudly

use std::time::Instant;

use image::{Rgba, RgbaImage};
use orfeas_core::image_to_3d::{ImageTo3dParams, Quality, generate};
use orfeas_core::quality::score_mesh;

/// A coloured figure with a hole and a limb on a transparent background.
fn figure(size: u32) -> RgbaImage {
    let s = size as f32;
    RgbaImage::from_fn(size, size, |x, y| {
        let (u, v) = (x as f32 / s, y as f32 / s);
        let body = (u - 0.45).powi(2) + (v - 0.5).powi(2) < 0.3f32.powi(2);
        let hole = (u - 0.45).powi(2) + (v - 0.5).powi(2) < 0.1f32.powi(2);
        let arm = (0.6..0.92).contains(&u) && (0.47..0.53).contains(&v);
        if (body && !hole) || arm {
            Rgba([(u * 255.0) as u8, (v * 255.0) as u8, 160, 255])
        } else {
            Rgba([0, 0, 0, 0])
        }
    })
}

fn main() {
    let runs = 7;
    println!("image_to_3d: median of {runs} runs (release build expected)");
    println!(
        "{:>6} {:>9} {:>10} {:>10} {:>10} {:>10}",
        "input", "quality", "mesh_ms", "score_ms", "vertices", "triangles"
    );
    for size in [512u32, 1024] {
        let image = figure(size);
        for quality in Quality::ALL {
            let params = ImageTo3dParams {
                quality,
                ..Default::default()
            };
            let mut mesh_ms = Vec::new();
            let mut score_ms = Vec::new();
            let mut counts = (0, 0);
            for _ in 0..runs {
                let start = Instant::now();
                let g = generate(&image, &params, &mut |_, _| {}, &|| false).unwrap();
                mesh_ms.push(start.elapsed().as_secs_f64() * 1000.0);
                let start = Instant::now();
                let report = score_mesh(&g.mesh, &g.mask);
                score_ms.push(start.elapsed().as_secs_f64() * 1000.0);
                assert!(report.watertight, "{report:?}");
                counts = (g.mesh.vertex_count(), g.mesh.triangle_count());
            }
            mesh_ms.sort_by(f64::total_cmp);
            score_ms.sort_by(f64::total_cmp);
            println!(
                "{:>6} {:>9} {:>10.1} {:>10.1} {:>10} {:>10}",
                format!("{size}²"),
                quality.as_str(),
                mesh_ms[runs / 2],
                score_ms[runs / 2],
                counts.0,
                counts.1
            );
        }
    }
}
