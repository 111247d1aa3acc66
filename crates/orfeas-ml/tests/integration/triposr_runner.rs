//! TripoSR as a job, end to end on the tiny fixture: picture → scene code →
//! density grid → marching cubes → coloured GLB, through the same runner the
//! GUI, the CLI and the API get from `register_runners`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use orfeas_core::export::ExportFormat;
use orfeas_core::image_to_3d::ImageTo3dParams;
use orfeas_core::jobs::{Engine, EngineConfig, JobSpec, JobState};
use orfeas_core::request::{ImageTo3dMethod, ImageTo3dRequest, TripoSrOptions};

use crate::triposr_parity::fixture;

/// A models folder where the registry finds the tiny model as `triposr`.
fn models_with_triposr(root: &Path) -> orfeas_ml::models::SearchRoots {
    let dir = root.join("triposr");
    std::fs::create_dir_all(&dir).unwrap();
    for file in ["config.yaml", "model.ckpt"] {
        std::fs::copy(fixture().join(file), dir.join(file)).unwrap();
    }
    copy_dir(&fixture().join("dino-vit-tiny"), &dir.join("dino-vit-tiny"));
    orfeas_ml::models::SearchRoots {
        orfeas_models: Some(root.to_path_buf()),
        ..Default::default()
    }
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dst.join(entry.file_name())).unwrap();
    }
}

fn request(out: PathBuf) -> ImageTo3dRequest {
    ImageTo3dRequest {
        method: ImageTo3dMethod::TripoSr,
        params: ImageTo3dParams {
            smooth_iterations: 0,
            decimate_ratio: 1.0,
            ..ImageTo3dParams::default()
        },
        triposr: TripoSrOptions {
            mc_resolution: 32,
            mc_threshold: 25.0,
            ..TripoSrOptions::default()
        },
        ..ImageTo3dRequest::new(
            fixture().join("golden/input_rgba.png"),
            out,
            ExportFormat::Glb,
        )
    }
}

fn golden_mesh() -> (Vec<[f32; 3]>, Vec<[u8; 4]>) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../orfeas-core/tests/fixtures/triposr-mc/mesh_official_trimesh.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let v = st.tensor("vertices").unwrap();
    let positions = v
        .data()
        .chunks_exact(12)
        .map(|b| {
            let f = |i: usize| f32::from_le_bytes(b[i..i + 4].try_into().unwrap());
            [f(0), f(4), f(8)]
        })
        .collect();
    let c = st.tensor("vertex_colors_rgba_u8").unwrap();
    let colours = c
        .data()
        .chunks_exact(4)
        .map(|b| [b[0], b[1], b[2], b[3]])
        .collect();
    (positions, colours)
}

#[test]
fn a_picture_becomes_triposrs_coloured_mesh_through_the_job_runner() {
    let tmp = tempfile::tempdir().unwrap();
    let engine = Engine::new(EngineConfig::default(), None).unwrap();
    orfeas_ml::register_runners(
        &engine,
        models_with_triposr(&tmp.path().join("models")),
        None,
    );
    let out = tmp.path().join("object.glb");
    let id = engine.submit(JobSpec::from(request(out.clone()))).unwrap();
    let done = engine.wait(id, Duration::from_secs(300)).unwrap();
    assert_eq!(done.state, JobState::Succeeded, "{:?}", done.failure);
    let output = done.output.unwrap();
    assert_eq!(output.files, vec![out.clone()]);
    assert_eq!(output.summary["method"], "triposr");
    let q = output.quality.expect("the mesh is scored");
    assert!((0.0..=1.0).contains(&q), "{q}");

    // The GLB holds the official mesh (turned into glTF's frame: (x, y, z) →
    // (y, z, x)) with its vertex colours.
    let mesh = orfeas_core::import::import_mesh(&out).unwrap();
    let (positions, colours) = golden_mesh();
    let turned: Vec<[f32; 3]> = positions.iter().map(|&[x, y, z]| [y, z, x]).collect();
    let mut matched = 0;
    let mut worst_colour = 0u8;
    for (p, c) in turned.iter().zip(&colours) {
        if let Some(i) = mesh
            .positions
            .iter()
            .position(|q| (0..3).all(|k| (q[k] - p[k]).abs() < 2e-5))
        {
            matched += 1;
            let got = mesh.colors[i];
            for k in 0..3 {
                worst_colour = worst_colour.max(got[k].abs_diff(c[k]));
            }
        }
    }
    assert_eq!(matched, turned.len(), "every official vertex is in the GLB");
    assert!(
        worst_colour <= 1,
        "vertex colours differ by up to {worst_colour}/255"
    );
    // Outward faces in the new frame too.
    assert!(mesh.signed_volume() > 0.0);
}

#[test]
fn triposr_without_weights_is_refused_when_submitted_with_the_way_to_get_them() {
    let tmp = tempfile::tempdir().unwrap();
    let engine = Engine::new(EngineConfig::default(), None).unwrap();
    orfeas_ml::register_runners(
        &engine,
        orfeas_ml::models::SearchRoots {
            orfeas_models: Some(tmp.path().to_path_buf()),
            ..Default::default()
        },
        None,
    );
    let out = tmp.path().join("never.glb");
    let e = engine
        .submit(JobSpec::from(request(out.clone())))
        .unwrap_err();
    let text = e.to_string();
    assert!(text.contains("triposr"), "{text}");
    assert!(text.contains("orfeas models download"), "{text}");
    assert!(!out.exists());
    // Texture baking is said to be unavailable, not silently skipped.
    let mut baked = request(out.clone());
    baked.triposr.model_path = Some(fixture());
    baked.triposr.bake_texture = true;
    let e = engine.submit(JobSpec::from(baked)).unwrap_err();
    assert!(e.to_string().contains("bake_texture"), "{e}");
    // The inflate method needs nothing and still runs through the same runner.
    let inflate = ImageTo3dRequest {
        method: ImageTo3dMethod::Inflate,
        ..request(tmp.path().join("inflated.glb"))
    };
    let id = engine.submit(JobSpec::from(inflate)).unwrap();
    let done = engine.wait(id, Duration::from_secs(120)).unwrap();
    assert_eq!(done.state, JobState::Succeeded, "{:?}", done.failure);
}

#[test]
fn bad_triposr_input_is_refused_with_what_to_do_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let engine = Engine::new(EngineConfig::default(), None).unwrap();
    orfeas_ml::register_runners(
        &engine,
        models_with_triposr(&tmp.path().join("models")),
        None,
    );
    // Grid resolutions outside 32..=1024: refused when submitted.
    for res in [0, 2048] {
        let mut r = request(tmp.path().join(format!("res-{res}.glb")));
        r.triposr.mc_resolution = res;
        let e = engine.submit(JobSpec::from(r)).unwrap_err();
        assert!(e.to_string().contains("mc_resolution"), "{res}: {e}");
    }
    // A picture with nothing in it: the job fails saying so, and no file appears.
    let empty = tmp.path().join("empty.png");
    image::RgbaImage::new(64, 64).save(&empty).unwrap();
    let out = tmp.path().join("empty.glb");
    let r = ImageTo3dRequest {
        input: empty,
        ..request(out.clone())
    };
    let id = engine.submit(JobSpec::from(r)).unwrap();
    let done = engine.wait(id, Duration::from_secs(120)).unwrap();
    assert_eq!(done.state, JobState::Failed);
    let failure = done.failure.unwrap();
    assert_eq!(failure.reason, "no_foreground", "{}", failure.message);
    assert!(!out.exists());
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
