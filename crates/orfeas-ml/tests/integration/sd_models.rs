//! Model registry: discovery in the three places, list/verify, and resumable,
//! verified downloads against a local HTTP server (no network).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use orfeas_ml::models::{self, Architecture, KnownModel, ModelFile, SearchRoots};
use sha2::Digest;

fn sd_turbo() -> &'static KnownModel {
    models::known("sd-turbo").unwrap()
}

/// Writes every file of `model` (weights as tiny valid safetensors) into `dir`.
fn fake_install(model: &KnownModel, dir: &Path) {
    for f in model.files {
        let p = dir.join(f.path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        if f.path.ends_with(".safetensors") {
            std::fs::write(&p, safetensors_bytes(4)).unwrap();
        } else {
            std::fs::write(&p, b"{}").unwrap();
        }
    }
}

fn safetensors_bytes(n: usize) -> Vec<u8> {
    let t =
        candle_core::Tensor::ones(n, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    let tmp = tempfile::NamedTempFile::new().unwrap();
    candle_core::safetensors::save(&HashMap::from([("w".to_owned(), t)]), tmp.path()).unwrap();
    std::fs::read(tmp.path()).unwrap()
}

#[test]
fn registry_knows_the_models_and_flags_non_commercial_licences() {
    let names: Vec<&str> = models::KNOWN_MODELS.iter().map(|m| m.name).collect();
    assert_eq!(
        names,
        [
            "sd-turbo",
            "sd-1.5",
            "sd-2.1",
            "sdxl-turbo",
            "taesd",
            "taesdxl",
            "triposr",
            "birefnet-lite",
            "birefnet",
            "dino-vitb16"
        ]
    );
    for name in ["taesd", "taesdxl"] {
        let m = models::known(name).unwrap();
        assert!(!m.architecture.generates_images(), "{name}");
        // About 9.8 MB each (encoder + decoder, f32).
        assert!(
            (5e6..2e7).contains(&(m.approx_size_bytes() as f64)),
            "{name}"
        );
    }
    assert!(sd_turbo().non_commercial);
    assert!(sd_turbo().licence.to_lowercase().contains("non-commercial"));
    assert!(!models::known("sd-1.5").unwrap().non_commercial);
    assert_eq!(
        models::known("SDXL-Turbo").unwrap().architecture,
        Architecture::Sdxl
    );
    // SD-Turbo fp16 is about 2.6 GB.
    let gb = sd_turbo().approx_size_bytes() as f64 / 1e9;
    assert!((2.3..3.0).contains(&gb), "{gb}");
}

#[test]
fn discovery_checks_orfeas_models_data_dir_and_the_hf_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let roots = SearchRoots {
        orfeas_models: Some(tmp.path().join("orfeas")),
        data_models: Some(tmp.path().join("data/models")),
        hf_cache: Some(tmp.path().join("hf/hub")),
    };
    assert!(roots.find_installed(sd_turbo()).is_none());
    let listed = roots.list();
    assert!(
        listed
            .iter()
            .all(|s| s.installed.is_none() && s.size_bytes == 0)
    );

    // HF cache layout, revision named by refs/main.
    let base = tmp.path().join("hf/hub/models--stabilityai--sd-turbo");
    std::fs::create_dir_all(base.join("refs")).unwrap();
    std::fs::write(base.join("refs/main"), "abc123\n").unwrap();
    let snap = base.join("snapshots/abc123");
    fake_install(sd_turbo(), &snap);
    assert_eq!(roots.find_installed(sd_turbo()), Some(snap.clone()));

    // The data dir comes before the HF cache; an incomplete copy is skipped.
    let data = tmp.path().join("data/models/sd-turbo");
    fake_install(sd_turbo(), &data);
    std::fs::remove_file(data.join("vae/config.json")).unwrap();
    assert_eq!(roots.find_installed(sd_turbo()), Some(snap));
    std::fs::write(data.join("vae/config.json"), b"{}").unwrap();
    assert_eq!(roots.find_installed(sd_turbo()), Some(data.clone()));

    // $ORFEAS_MODELS wins over both.
    let mine = tmp.path().join("orfeas/sd-turbo");
    fake_install(sd_turbo(), &mine);
    assert_eq!(roots.resolve("sd-turbo").unwrap(), mine);
    let row = roots
        .list()
        .into_iter()
        .find(|s| s.model.name == "sd-turbo")
        .unwrap();
    assert_eq!(row.installed, Some(mine));
    assert!(row.size_bytes > 0);
}

#[test]
fn verify_reports_missing_corrupt_and_wrong_size_files() {
    let tmp = tempfile::tempdir().unwrap();
    let roots = SearchRoots {
        orfeas_models: Some(tmp.path().to_path_buf()),
        ..SearchRoots::default()
    };
    let dir = tmp.path().join("sd-turbo");
    fake_install(sd_turbo(), &dir);
    std::fs::remove_file(dir.join("tokenizer/vocab.json")).unwrap();
    let unet = dir.join("unet/diffusion_pytorch_model.fp16.safetensors");
    let bytes = std::fs::read(&unet).unwrap();
    std::fs::write(&unet, &bytes[..bytes.len() - 3]).unwrap();
    let report = roots.verify("sd-turbo").unwrap();
    assert!(!report.ok());
    let all = report.problems.join("\n");
    assert!(all.contains("missing tokenizer/vocab.json"), "{all}");
    assert!(all.contains("truncated"), "{all}");
    // The tiny stand-in text encoder is far smaller than the real one.
    assert!(all.contains("expected about"), "{all}");
}

/// A local stand-in for the hub: serves files with Range support and publishes
/// size + SHA-256 on HEAD like the hub's LFS redirect does.
struct Hub {
    url: String,
    ranges: Arc<Mutex<Vec<String>>>,
}

fn serve(files: HashMap<String, Vec<u8>>, wrong_sha: bool) -> Hub {
    let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let url = format!("http://{}", server.server_addr().to_ip().unwrap());
    let ranges = Arc::new(Mutex::new(Vec::new()));
    let seen = ranges.clone();
    std::thread::Builder::new()
        .name("fake-hub".into())
        .spawn(move || {
            for req in server.incoming_requests() {
                let path = req.url().to_owned();
                let Some(body) = files.get(&path).cloned() else {
                    let _ = req.respond(tiny_http::Response::empty(404));
                    continue;
                };
                let header = |k: &str, v: &str| {
                    tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()).unwrap()
                };
                if *req.method() == tiny_http::Method::Head {
                    let mut sha = format!("{:x}", sha2::Sha256::digest(&body));
                    if wrong_sha {
                        sha = sha.replace(|c: char| c.is_ascii_digit(), "0");
                    }
                    let resp = tiny_http::Response::empty(302)
                        .with_header(header("x-linked-size", &body.len().to_string()))
                        .with_header(header("x-linked-etag", &format!("\"{sha}\"")));
                    let _ = req.respond(resp);
                    continue;
                }
                let range = req
                    .headers()
                    .iter()
                    .find(|h| h.field.equiv("Range"))
                    .map(|h| h.value.to_string());
                if let Some(r) = range {
                    seen.lock().unwrap().push(r.clone());
                    let start: usize = r
                        .trim_start_matches("bytes=")
                        .trim_end_matches('-')
                        .parse()
                        .unwrap();
                    let part = body[start..].to_vec();
                    let resp = tiny_http::Response::from_data(part)
                        .with_status_code(206)
                        .with_header(header(
                            "Content-Range",
                            &format!("bytes {start}-{}/{}", body.len() - 1, body.len()),
                        ));
                    let _ = req.respond(resp);
                } else {
                    let _ = req.respond(tiny_http::Response::from_data(body));
                }
            }
        })
        .unwrap();
    Hub { url, ranges }
}

fn tiny_model() -> &'static KnownModel {
    let files: &'static [ModelFile] = Box::leak(
        vec![
            ModelFile {
                path: "model_index.json",
                approx_size_bytes: 20,
            },
            ModelFile {
                path: "unet/diffusion_pytorch_model.safetensors",
                approx_size_bytes: 4000,
            },
        ]
        .into_boxed_slice(),
    );
    Box::leak(Box::new(KnownModel {
        name: "tiny-test",
        repo_id: "orfeas/tiny-test",
        files,
        ..*sd_turbo()
    }))
}

fn hub_files() -> HashMap<String, Vec<u8>> {
    HashMap::from([
        (
            "/orfeas/tiny-test/resolve/main/model_index.json".to_owned(),
            b"{\"a\": 1}".to_vec(),
        ),
        (
            "/orfeas/tiny-test/resolve/main/unet/diffusion_pytorch_model.safetensors".to_owned(),
            safetensors_bytes(1000),
        ),
    ])
}

#[test]
fn download_fetches_verifies_and_resumes_a_part_file() {
    let files = hub_files();
    let weights =
        files["/orfeas/tiny-test/resolve/main/unet/diffusion_pytorch_model.safetensors"].clone();
    let hub = serve(files, false);
    let root = tempfile::tempdir().unwrap();
    // A previous run stopped half-way through the weights.
    let dest = root
        .path()
        .join("tiny-test/unet/diffusion_pytorch_model.safetensors");
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    let half = weights.len() / 2;
    std::fs::write(dest.with_extension("safetensors.part"), &weights[..half]).unwrap();

    let mut last = HashMap::new();
    let dir = models::download(
        tiny_model(),
        Some(root.path()),
        Some(&hub.url),
        &mut |p| {
            last.insert(p.file.clone(), (p.done_bytes, p.total_bytes));
        },
        &AtomicBool::new(false),
    )
    .unwrap();
    assert_eq!(dir, root.path().join("tiny-test"));
    assert_eq!(std::fs::read(&dest).unwrap(), weights);
    assert_eq!(
        std::fs::read(dir.join("model_index.json")).unwrap(),
        b"{\"a\": 1}"
    );
    assert_eq!(
        hub.ranges.lock().unwrap().as_slice(),
        [format!("bytes={half}-")]
    );
    let total = weights.len() as u64;
    assert_eq!(
        last["unet/diffusion_pytorch_model.safetensors"],
        (total, Some(total))
    );
    assert!(!dest.with_extension("safetensors.part").exists());
    let roots = SearchRoots {
        orfeas_models: Some(root.path().to_path_buf()),
        ..SearchRoots::default()
    };
    assert_eq!(roots.find_installed(tiny_model()), Some(dir));
}

#[test]
fn download_with_a_wrong_hash_leaves_no_file() {
    let hub = serve(hub_files(), true);
    let root = tempfile::tempdir().unwrap();
    let e = models::download(
        tiny_model(),
        Some(root.path()),
        Some(&hub.url),
        &mut |_| {},
        &AtomicBool::new(false),
    )
    .unwrap_err();
    assert!(e.to_string().contains("SHA-256"), "{e}");
    let dest = root
        .path()
        .join("tiny-test/unet/diffusion_pytorch_model.safetensors");
    assert!(!dest.exists());
    assert!(!dest.with_extension("safetensors.part").exists());
}

#[test]
fn download_from_an_unreachable_server_says_what_to_do() {
    let root = tempfile::tempdir().unwrap();
    let e = models::download(
        tiny_model(),
        Some(root.path()),
        Some("http://127.0.0.1:9"),
        &mut |_| {},
        &AtomicBool::new(false),
    )
    .unwrap_err();
    assert!(e.to_string().contains("run the command again"), "{e}");
}

/// The git copy of the fixture keeps only some token-embedding rows: every token
/// the goldens use must be among them, and the completed folder must hold the
/// full table with exactly those rows.
#[test]
fn the_partial_fixture_embedding_keeps_every_golden_token() {
    let src = crate::common::fixture_root().join("sd-tiny");
    let part = candle_core::safetensors::load(
        src.join("text_encoder").join(orfeas_ml::fixture::ROWS_FILE),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let ids: Vec<i64> = part["ids"].to_vec1().unwrap();
    let cases: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(src.join("golden/tokenizer_cases.json")).unwrap(),
    )
    .unwrap();
    for case in cases["cases"].as_array().unwrap() {
        for id in case["ids_padded_77"].as_array().unwrap() {
            assert!(ids.contains(&id.as_i64().unwrap()), "token {id} missing");
        }
    }
    let done = crate::common::fixture_dir();
    let full = candle_core::safetensors::load(
        done.join("text_encoder/model-00002-of-00003.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let table = &full["text_model.embeddings.token_embedding.weight"];
    assert_eq!(table.dims(), &[49408, 16]);
    let rows: Vec<Vec<f32>> = part["rows"].to_vec2().unwrap();
    let first = usize::try_from(ids[0]).unwrap();
    let kept: Vec<f32> = table.get(first).unwrap().to_vec1().unwrap();
    assert_eq!(kept, rows[0]);
    let dropped = (0..49408i64).find(|i| !ids.contains(i)).unwrap();
    let zero: Vec<f32> = table.get(dropped as usize).unwrap().to_vec1().unwrap();
    assert!(zero.iter().all(|&v| v == 0.0));
}
