//! Exports checked by real peers: the Khronos glTF-Validator and trimesh.

use std::path::{Path, PathBuf};
use std::process::Command;

use orfeas_core::export::{self, ExportFormat};
use orfeas_core::image_to_3d::{self, ImageTo3dParams, ImageTo3dRequest, Quality};

use super::image_to_3d::{disc, ring};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The tool's command, or `None` (after a loud note) when it is missing and
/// ORFEAS_REQUIRE_TOOLS is not set; panics when it is required.
fn tool(env: &str, probe: impl Fn(&str) -> bool) -> Option<String> {
    let value = std::env::var(env).ok().filter(|v| probe(v));
    if value.is_none() {
        if std::env::var("ORFEAS_REQUIRE_TOOLS").as_deref() == Ok("1") {
            panic!("{env} is not set or unusable; run `eval \"$(scripts/install-tools.sh)\"`");
        }
        eprintln!("skipped: {env} missing (run `eval \"$(scripts/install-tools.sh)\"`)");
    }
    value
}

fn trimesh_check(files: &[PathBuf], euler: i64, bodies: usize) {
    let Some(python) = tool("ORFEAS_PYTHON", |p| Path::new(p).exists()) else {
        return;
    };
    let out = Command::new(python)
        .arg(repo_root().join("tests/tools/check_mesh.py"))
        .args([
            "--euler",
            &euler.to_string(),
            "--bodies",
            &bodies.to_string(),
        ])
        .args(files)
        .output()
        .expect("run check_mesh.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "trimesh check failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.lines().count(), files.len(), "{stdout}");
}

fn gltf_validate(file: &Path) {
    let Some(modules) = tool("ORFEAS_NODE_MODULES", |p| {
        Path::new(p).join("gltf-validator").exists()
    }) else {
        return;
    };
    let out = Command::new("node")
        .arg(repo_root().join("tests/tools/validate_gltf.mjs"))
        .arg(file)
        .env("ORFEAS_NODE_MODULES", modules)
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "glTF-Validator: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("\"errors\":0"), "{stdout}");
}

#[test]
fn every_format_is_closed_and_outward_for_trimesh_and_glb_passes_the_validator() {
    let dir = tempfile::tempdir().unwrap();
    let params = ImageTo3dParams {
        quality: Quality::Draft,
        ..Default::default()
    };
    let ring = image_to_3d::generate(&ring(), &params, &mut |_, _| {}, &|| false).unwrap();
    let mut files = Vec::new();
    for format in ExportFormat::ALL {
        let path = dir.path().join(format!("ring.{}", format.extension()));
        let written = export::export_mesh(&ring.mesh, &path, format).unwrap();
        assert_eq!(written[0], path);
        for f in &written {
            assert!(
                std::fs::metadata(f).unwrap().len() > 40,
                "{f:?} is (nearly) empty"
            );
        }
        if format == ExportFormat::Obj {
            let names: Vec<_> = written
                .iter()
                .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
                .collect();
            assert_eq!(names, ["ring.obj", "ring.mtl", "ring.png"]);
        }
        files.push(path);
    }
    // A torus: χ = 0, one body.
    trimesh_check(&files, 0, 1);
    gltf_validate(&dir.path().join("ring.glb"));
    // No temporary files are left behind.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn untextured_mesh_exports_vertex_colours_to_a_valid_glb() {
    let dir = tempfile::tempdir().unwrap();
    let params = ImageTo3dParams {
        quality: Quality::Draft,
        decimate_ratio: 0.5,
        ..Default::default()
    };
    let mut mesh = image_to_3d::generate(&disc(), &params, &mut |_, _| {}, &|| false)
        .unwrap()
        .mesh;
    mesh.texture = None;
    mesh.uvs.clear();
    let path = dir.path().join("disc.glb");
    export::export_mesh(&mesh, &path, ExportFormat::Glb).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(&bytes[..4], b"glTF");
    let json_len = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
    let json: serde_json::Value = serde_json::from_slice(&bytes[20..20 + json_len]).unwrap();
    assert!(
        json["meshes"][0]["primitives"][0]["attributes"]["COLOR_0"].is_number(),
        "{json}"
    );
    gltf_validate(&path);
    trimesh_check(&[path], 2, 1);
}

#[test]
fn run_file_writes_a_scored_glb() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.png");
    ring().save(&input).unwrap();
    let req = ImageTo3dRequest {
        input,
        output: dir.path().join("out.glb"),
        format: ExportFormat::Glb,
        params: ImageTo3dParams::default(),
        method: Default::default(),
        triposr: Default::default(),
        mask: None,
    };
    let mut stages = Vec::new();
    let outcome = image_to_3d::run_file(&req, &mut |s, f| stages.push((s, f)), &|| false).unwrap();
    assert_eq!(outcome.files, vec![req.output.clone()]);
    assert!(
        outcome.report.score > 0.9 && outcome.report.watertight,
        "{:?}",
        outcome.report
    );
    assert!(outcome.triangles > 1000 && outcome.vertices > 500);
    assert_eq!(stages.last().map(|s| s.0), Some("export"));
    assert!(stages.windows(2).all(|w| w[0].1 <= w[1].1), "{stages:?}");
    let names: Vec<_> = outcome.stage_millis.iter().map(|s| s.0).collect();
    assert_eq!(names.first(), Some(&"decode"));
    assert_eq!(names.last(), Some(&"export"));
    gltf_validate(&req.output);
}

#[test]
fn formats_come_from_extensions_and_names() {
    assert_eq!(
        ExportFormat::from_path(Path::new("a/b.GLB")).unwrap(),
        ExportFormat::Glb
    );
    assert_eq!(
        ExportFormat::from_path(Path::new("b.stl")).unwrap(),
        ExportFormat::Stl
    );
    assert_eq!("ply".parse::<ExportFormat>().unwrap(), ExportFormat::Ply);
    for bad in ["model.fbx", "model", "model.glb.bak"] {
        let err = ExportFormat::from_path(Path::new(bad)).unwrap_err();
        assert!(err.to_string().contains(".glb"), "{bad}: {err}");
        assert_eq!(err.reason(), "invalid_parameter");
    }
    assert_eq!(
        serde_json::to_string(&ExportFormat::Obj).unwrap(),
        "\"obj\""
    );
}
