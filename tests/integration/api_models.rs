//! The HTTP API with the real runners of `orfeas serve` and the tiny
//! random-weight TripoSR and BiRefNet installed: an opaque photo goes
//! through the segmenter and TripoSR and comes back as a GLB, and without
//! the weights the API says how to get them.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use orfeas_core::http::{self, ServeConfig, ServerHandle};
use orfeas_core::jobs::{Engine, EngineConfig};
use orfeas_core::telemetry::Telemetry;

struct Server {
    _handle: ServerHandle,
    base: String,
    _dir: tempfile::TempDir,
}

fn start(models: &Path) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::new(EngineConfig::default(), None).unwrap();
    orfeas_ml::register_runners(
        &engine,
        orfeas_ml::models::SearchRoots {
            orfeas_models: Some(models.to_path_buf()),
            ..Default::default()
        },
        None,
    );
    let config = ServeConfig {
        bind: "127.0.0.1:0".into(),
        rate_limit: None,
        data_dir: Some(dir.path().to_path_buf()),
        ..ServeConfig::default()
    };
    let handle = http::start(config, Telemetry::without_sampler().unwrap(), engine).unwrap();
    let base = format!("http://{}", handle.addr());
    Server {
        _handle: handle,
        base,
        _dir: dir,
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .new_agent()
}

fn json(resp: ureq::http::Response<ureq::Body>) -> (u16, serde_json::Value) {
    let status = resp.status().as_u16();
    let body = resp.into_body().read_to_vec().unwrap();
    (
        status,
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    )
}

fn post_png(s: &Server, query: &str, png: &[u8]) -> (u16, serde_json::Value) {
    json(
        agent()
            .post(format!("{}/api/image-to-3d?{query}", s.base))
            .header("Content-Type", "image/png")
            .send(png)
            .unwrap(),
    )
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("crates/orfeas-ml/tests/fixtures")
}

fn install(root: &Path) {
    let copy = |from: PathBuf, to: PathBuf| {
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, to).unwrap();
    };
    for f in ["config.yaml", "model.ckpt", "dino-vit-tiny/config.json"] {
        copy(
            fixtures().join("triposr-tiny").join(f),
            root.join("triposr").join(f),
        );
    }
    for f in ["config.json", "model.safetensors"] {
        copy(
            fixtures().join("birefnet-tiny").join(f),
            root.join("birefnet-lite").join(f),
        );
    }
}

fn example(name: &str) -> Vec<u8> {
    std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("assets/examples")
            .join(name),
    )
    .unwrap()
}

#[test]
fn a_photo_goes_through_the_segmenter_and_triposr_over_http() {
    let tmp = tempfile::tempdir().unwrap();
    install(tmp.path());
    let s = start(tmp.path());
    let (status, health) = json(agent().get(format!("{}/health", s.base)).call().unwrap());
    assert_eq!(status, 200);
    assert_eq!(
        health["job_kinds"],
        serde_json::json!(["image_to_3d", "text_to_image"])
    );

    let (status, accepted) = post_png(
        &s,
        "method=triposr&mc_resolution=32&background=neural",
        &example("rocket-sky.png"),
    );
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["id"].as_i64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    let job = loop {
        let (_, job) = json(
            agent()
                .get(format!("{}/api/jobs/{id}", s.base))
                .call()
                .unwrap(),
        );
        if ["succeeded", "failed", "cancelled"].contains(&job["state"].as_str().unwrap_or("")) {
            break job;
        }
        assert!(Instant::now() < deadline, "the job never finished: {job}");
        std::thread::sleep(Duration::from_millis(100));
    };
    // Random weights may find no object in the picture; either way the
    // segmenter decided, and a success is a GLB with TripoSR's summary.
    match job["state"].as_str() {
        Some("succeeded") => {
            assert_eq!(job["summary"]["method"], "triposr");
            assert_eq!(job["summary"]["background"], "neural");
            let url = job["outputs"][0]["url"].as_str().unwrap();
            let resp = agent().get(format!("{}{url}", s.base)).call().unwrap();
            assert_eq!(resp.status().as_u16(), 200);
            let glb = resp
                .into_body()
                .with_config()
                .limit(256 << 20)
                .read_to_vec()
                .unwrap();
            assert_eq!(&glb[..4], b"glTF");
        }
        _ => {
            let message = job["error"].to_string();
            assert!(message.contains("segmenter found no object"), "{job}");
        }
    }
}

#[test]
fn without_weights_the_api_says_how_to_get_them() {
    let tmp = tempfile::tempdir().unwrap();
    let s = start(tmp.path());
    for (query, model) in [
        ("method=triposr", "triposr"),
        ("background=neural", "birefnet-lite"),
    ] {
        let (status, body) = post_png(&s, query, &example("mug-on-table.png"));
        assert_eq!(status, 503, "{query}: {body}");
        assert_eq!(body["error"]["code"], "model_unavailable");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("orfeas models download {model}")),
            "{message}"
        );
    }
    // Auto on an opaque photo falls back to the border colour, and says so.
    let (status, accepted) = post_png(&s, "background=auto", &example("mug-on-table.png"));
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["id"].as_i64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, job) = json(
            agent()
                .get(format!("{}/api/jobs/{id}", s.base))
                .call()
                .unwrap(),
        );
        if job["state"] == "succeeded" {
            assert_eq!(job["summary"]["background"], "border");
            break;
        }
        assert_ne!(job["state"], "failed", "{job}");
        assert!(Instant::now() < deadline, "{job}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
