//! The Create tab's text→image mode and the Models tab, driven through the real app
//! with the tiny golden Stable Diffusion fixture (random weights, runs on the CPU).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use egui::accesskit::Role;
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;
use orfeas::app::job_views::JobPhase;
use orfeas::app::model_library::ModelInstall;
use orfeas::app::state::{Command, CreateMode, DecoderChoice, Tab, TextParams};
use orfeas::app::{AppConfig, StudioApp};
use orfeas_core::jobs::JobKind;

use crate::gui::{drop_file, harness, harness_with, step_until};

/// The tiny SD fixture, completed once per test process (see `orfeas_ml::fixture`).
fn fixture_model() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let src = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("crates/orfeas-ml/tests/fixtures/sd-tiny");
        let dst = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("sd-tiny-app");
        let _ = std::fs::remove_dir_all(&dst); // a previous run's copy
        orfeas_ml::fixture::complete_model_dir(&src, &dst).unwrap();
        dst
    })
    .clone()
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default()
}

fn tiny_params(prompt: &str) -> TextParams {
    TextParams {
        prompt: prompt.to_owned(),
        model_path: Some(fixture_model()),
        steps: 2,
        guidance: 0.0,
        seed: 7,
        seed_locked: true,
        width: 64,
        height: 64,
        ..TextParams::default()
    }
}

/// The app on Create → Text to image with `params` set.
fn text_mode(data: &Path, params: TextParams) -> Harness<'static, StudioApp> {
    let mut h = harness(data, None);
    h.run();
    h.state_mut()
        .apply(Command::SetMode(CreateMode::TextToImage));
    h.state_mut().apply(Command::SetTextParams(params));
    h
}

#[test]
fn a_prompt_becomes_an_image_in_the_gallery_and_make_3d_turns_it_into_a_mesh() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut h = harness(&data, None);
    h.run();
    h.get_by_role_and_label(Role::Button, "Text to image")
        .click();
    h.run();
    assert_eq!(h.state().saved_state().mode, CreateMode::TextToImage);
    assert!(
        h.query_by_label("Write a prompt first.").is_some(),
        "an empty prompt cannot be generated"
    );
    h.state_mut()
        .apply(Command::SetTextParams(tiny_params("a red teapot")));
    h.run();
    h.get_by_role_and_label(Role::Button, "Generate image")
        .click();
    step_until(&mut h, "the image job to finish", |h| {
        h.state()
            .jobs()
            .iter()
            .any(|j| j.kind == JobKind::TextToImage && j.phase.is_finished())
    });
    let job = h
        .state()
        .jobs()
        .iter()
        .find(|j| j.kind == JobKind::TextToImage)
        .unwrap()
        .clone();
    assert_eq!(job.phase, JobPhase::Succeeded, "{:?}", job.error);
    let png = job.image_output().expect("a PNG output").to_path_buf();
    let img = image::open(&png).unwrap();
    assert_eq!((img.width(), img.height()), (64, 64));
    assert!(
        png.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("a-red-teapot-"),
        "{png:?} is named after the prompt"
    );
    let score = job.quality_score.expect("images are scored");
    assert!((0.0..=1.0).contains(&score));
    assert!(
        h.state().preview_keys().is_empty(),
        "previews end with the job"
    );
    // The locked seed stays; the result is shown with its Make 3D button.
    assert_eq!(h.state().saved_state().text.seed, 7);
    step_until(&mut h, "the generated image on screen", |h| {
        h.query_by_label("Generated image").is_some()
    });

    // One in the result panel, one in the queue; both send the same image.
    h.query_all_by_role_and_label(Role::Button, "Make 3D")
        .next()
        .unwrap()
        .click();
    step_until(&mut h, "the 3D job from the image", |h| {
        h.state()
            .jobs()
            .iter()
            .any(|j| j.kind == JobKind::ImageTo3d && j.phase.is_finished())
    });
    assert_eq!(h.state().saved_state().mode, CreateMode::ImageTo3d);
    let mesh_job = h
        .state()
        .jobs()
        .iter()
        .find(|j| j.kind == JobKind::ImageTo3d)
        .unwrap()
        .clone();
    // The random-weight image may hold no clear subject; either way the job ends
    // with a mesh or a message, and the image it used is the generated one.
    assert!(mesh_job.phase.is_finished());
    if mesh_job.phase == JobPhase::Succeeded {
        assert!(mesh_job.mesh_output().is_some_and(Path::is_file));
    } else {
        assert!(mesh_job.error.is_some(), "a failure says why");
    }

    h.get_by_role_and_label(Role::Button, "Gallery").click();
    step_until(&mut h, "both entries in the Gallery", |h| {
        h.state().gallery().items.len() == 2
    });
    let item = h
        .state()
        .gallery()
        .items
        .iter()
        .find(|i| i.kind == JobKind::TextToImage)
        .unwrap()
        .clone();
    let text = item
        .text
        .clone()
        .expect("the image job's parameters are readable");
    assert_eq!(text.request.seed, 7);
    assert_eq!(text.request.prompt, "a red teapot");
    assert_eq!(item.image_output(), Some(png.as_path()));
}

/// Runs the text→image job the Create tab's fields describe and returns its PNG.
fn generate_png(h: &mut Harness<'static, StudioApp>) -> PathBuf {
    let before = h.state().jobs().len();
    h.get_by_role_and_label(Role::Button, "Generate image")
        .click();
    step_until(h, "the image job to finish", |h| {
        h.state().jobs().len() > before
            && h.state()
                .jobs()
                .last()
                .is_some_and(|j| j.phase.is_finished())
    });
    let job = h.state().jobs().last().unwrap().clone();
    assert_eq!(job.phase, JobPhase::Succeeded, "{:?}", job.error);
    job.image_output().expect("a PNG output").to_path_buf()
}

/// PNG Info: a generated PNG dropped on the text→image side brings back every
/// field that made it, and generating again gives the same picture, bit for bit.
#[test]
fn a_dropped_png_brings_back_its_settings_and_the_same_picture() {
    use orfeas_core::request::SchedulerKind;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let made_with = TextParams {
        negative: "blurry, dark".into(),
        style: "pixel-art".into(),
        scheduler: Some(SchedulerKind::EulerAncestral),
        seed: 90_210,
        steps: 3,
        width: 72,
        height: 64,
        ..tiny_params("a brass lantern on a rock")
    };
    let mut h = text_mode(&data, made_with.clone());
    h.run();
    let first = generate_png(&mut h);

    // Other settings on screen, then the PNG is dropped on the window.
    h.state_mut().apply(Command::SetTextParams(TextParams {
        seed_locked: false,
        style: "none".into(),
        scheduler: None,
        ..tiny_params("something else entirely")
    }));
    h.run();
    drop_file(&mut h, &first);
    h.run();
    let loaded = h.state().saved_state().text.clone();
    assert_eq!(loaded, made_with, "every field comes back from the PNG");
    assert!(
        h.query_by_label_contains("Settings loaded from").is_some(),
        "the user is told where the settings came from"
    );

    let second = generate_png(&mut h);
    assert_ne!(first, second, "a new file");
    let (a, b) = (
        image::open(&first).unwrap().to_rgb8(),
        image::open(&second).unwrap().to_rgb8(),
    );
    assert!(a == b, "the same picture, bit for bit");

    // A PNG without settings is refused with what to do, and changes nothing.
    let plain = tmp.path().join("plain.png");
    image::RgbImage::new(8, 8).save(&plain).unwrap();
    drop_file(&mut h, &plain);
    h.run();
    assert_eq!(h.state().saved_state().text, made_with);
    assert!(h.query_by_label_contains("records no prompt").is_some());
}

#[test]
fn a_model_that_is_not_installed_is_refused_with_the_way_to_get_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut h = text_mode(
        &data,
        TextParams {
            prompt: "a fox".into(),
            ..TextParams::default() // sd-turbo from the registry: not on this machine
        },
    );
    h.state_mut().apply(Command::GenerateImage);
    h.run();
    let toast = h
        .state()
        .toasts()
        .items()
        .iter()
        .map(|t| t.text.clone())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        toast.contains("sd-turbo") && toast.contains("Models tab"),
        "{toast}"
    );
    // Bad sizes are refused the same way, before any job.
    h.state_mut().apply(Command::SetTextParams(TextParams {
        width: 100,
        ..tiny_params("a fox")
    }));
    h.state_mut().apply(Command::GenerateImage);
    h.run();
    assert!(
        h.state()
            .toasts()
            .items()
            .iter()
            .any(|t| t.text.contains("width") && t.text.contains("multiple of 8")),
        "the size error names the field"
    );
    assert!(h.state().jobs().is_empty(), "no job was queued");
    assert!(
        files_in(&data.join("outputs")).is_empty(),
        "nothing was written"
    );
}

/// The Decoder choice "Tiny (TAESD)": refused with the way to get it while
/// taesd is not installed; once it is in the models folder the image is decoded
/// by it and its PNG says so.
#[test]
fn the_tiny_decoder_choice_decodes_with_taesd_once_installed() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut h = text_mode(
        &data,
        TextParams {
            decoder: DecoderChoice::Tiny,
            ..tiny_params("a green vase")
        },
    );
    h.run();
    h.state_mut().apply(Command::GenerateImage);
    h.run();
    let toasts: Vec<String> = h
        .state()
        .toasts()
        .items()
        .iter()
        .map(|t| t.text.clone())
        .collect();
    assert!(
        toasts
            .iter()
            .any(|t| t.contains("taesd") && t.contains("Models tab")),
        "{toasts:?}"
    );
    assert!(h.state().jobs().is_empty(), "no job was queued");

    // Install the tiny fixture decoder where the app keeps models.
    let taesd = data.join("models/taesd");
    std::fs::create_dir_all(&taesd).unwrap();
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("crates/orfeas-ml/tests/fixtures/taesd-tiny");
    for file in ["config.json", "diffusion_pytorch_model.safetensors"] {
        std::fs::copy(src.join(file), taesd.join(file)).unwrap();
    }
    h.state_mut().apply(Command::RefreshModels);
    h.run();
    h.state_mut().apply(Command::GenerateImage);
    step_until(&mut h, "the image job to finish", |h| {
        h.state()
            .jobs()
            .iter()
            .any(|j| j.kind == JobKind::TextToImage && j.phase.is_finished())
    });
    let job = h.state().jobs()[0].clone();
    assert_eq!(job.phase, JobPhase::Succeeded, "{:?}", job.error);
    let png = job.image_output().unwrap().to_path_buf();
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png).unwrap()));
    let reader = decoder.read_info().unwrap();
    let texts: HashMap<String, String> = reader
        .info()
        .uncompressed_latin1_text
        .iter()
        .map(|t| (t.keyword.clone(), t.text.clone()))
        .chain(
            reader
                .info()
                .utf8_text
                .iter()
                .map(|t| (t.keyword.clone(), t.get_text().unwrap())),
        )
        .collect();
    assert_eq!(texts.get("decoder").map(String::as_str), Some("taesd"));
}

/// "Vary" on a result makes it the start image of the next generation, which
/// then runs image to image (steps x strength) and records its start.
#[test]
fn vary_starts_the_next_image_from_the_result() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut h = text_mode(&data, tiny_params("a blue bowl"));
    h.state_mut().apply(Command::GenerateImage);
    step_until(&mut h, "the first image", |h| {
        h.query_by_label("Generated image").is_some()
    });
    let first = h.state().jobs()[0].image_output().unwrap().to_path_buf();
    h.get_by_role_and_label(Role::Button, "Vary").click();
    h.run();
    assert_eq!(
        h.state().saved_state().text.init_image.as_deref(),
        Some(first.as_path())
    );
    assert!(
        h.query_all_by_label("Strength").next().is_some(),
        "the strength slider appears with a start image"
    );
    let varied = TextParams {
        strength: 0.5,
        steps: 4,
        ..h.state().saved_state().text.clone()
    };
    h.state_mut().apply(Command::SetTextParams(varied));
    h.state_mut().apply(Command::GenerateImage);
    step_until(&mut h, "the varied image", |h| {
        h.state().jobs().len() == 2 && h.state().jobs()[1].phase.is_finished()
    });
    let job = h.state().jobs()[1].clone();
    assert_eq!(job.phase, JobPhase::Succeeded, "{:?}", job.error);
    let text = std::fs::read(job.image_output().unwrap()).unwrap();
    let needle = b"strength";
    assert!(
        text.windows(needle.len()).any(|w| w == needle),
        "the PNG records the strength"
    );
    // Clearing the start image goes back to pure noise.
    h.get_by_role_and_label(Role::Button, "Clear").click();
    h.run();
    assert!(h.state().saved_state().text.init_image.is_none());

    // Vary on a Gallery card brings the image back to the Create tab's text mode.
    h.get_by_role_and_label(Role::Button, "Gallery").click();
    step_until(&mut h, "both images in the Gallery", |h| {
        h.state().gallery().items.len() == 2
    });
    // The card's buttons sit at the bottom of the window: scroll them into view first.
    h.query_all_by_role_and_label(Role::Button, "Vary")
        .next()
        .expect("a Vary button on the cards")
        .scroll_to_me();
    h.run();
    h.query_all_by_role_and_label(Role::Button, "Vary")
        .next()
        .expect("a Vary button on the cards")
        .click();
    h.run();
    let saved = h.state().saved_state();
    assert_eq!(saved.tab, Tab::Create);
    assert_eq!(saved.mode, CreateMode::TextToImage);
    let start = saved.text.init_image.clone().expect("a start image");
    assert!(
        h.state()
            .jobs()
            .iter()
            .any(|j| j.image_output() == Some(start.as_path())),
        "{start:?} is one of the generated images"
    );
}

/// A minimal valid safetensors file: one f32 tensor of two values.
fn safetensors_bytes() -> Vec<u8> {
    let mut header = br#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#.to_vec();
    while !header.len().is_multiple_of(8) {
        header.push(b' ');
    }
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&header);
    out.extend_from_slice(&[0u8; 8]);
    out
}

/// A local stand-in for the hub serving every file of `sd-turbo`.
fn fake_hub() -> String {
    let model = orfeas_ml::models::known("sd-turbo").unwrap();
    let files: HashMap<String, Vec<u8>> = model
        .files
        .iter()
        .map(|f| {
            let body = if f.path.ends_with(".safetensors") {
                safetensors_bytes()
            } else {
                b"{}".to_vec()
            };
            (format!("/{}/resolve/main/{}", model.repo_id, f.path), body)
        })
        .collect();
    let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let url = format!("http://{}", server.server_addr().to_ip().unwrap());
    std::thread::Builder::new()
        .name("fake-hub".into())
        .spawn(move || {
            for req in server.incoming_requests() {
                let response = match files.get(req.url()) {
                    Some(_) if *req.method() == tiny_http::Method::Head => {
                        tiny_http::Response::from_data(Vec::new())
                    }
                    Some(body) => tiny_http::Response::from_data(body.clone()),
                    None => tiny_http::Response::from_data(Vec::new()).with_status_code(404),
                };
                let _ = req.respond(response);
            }
        })
        .unwrap();
    url
}

#[test]
fn models_tab_downloads_a_model_with_progress_then_deletes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut h = harness_with(
        &data,
        None,
        AppConfig {
            hf_endpoint: Some(fake_hub()),
            ..AppConfig::default()
        },
    );
    h.run();
    h.get_by_role_and_label(Role::Button, "Models").click();
    step_until(&mut h, "the model list", |h| h.state().models().loaded);
    h.run(); // draw the Models tab with the list
    let row = |h: &egui_kittest::Harness<'static, orfeas::app::StudioApp>, name: &str| {
        h.state()
            .models()
            .rows
            .iter()
            .find(|r| r.name == name)
            .unwrap()
            .clone()
    };
    assert_eq!(row(&h, "sd-turbo").install, ModelInstall::Missing);
    assert!(row(&h, "sd-turbo").non_commercial);
    assert!(
        h.query_all_by_label_contains("NON-COMMERCIAL").count() == 2,
        "SD-Turbo's and SDXL-Turbo's licences are shown"
    );
    // The first Download button is SD-Turbo's (the registry's first row).
    h.query_all_by_role_and_label(Role::Button, "Download")
        .next()
        .unwrap()
        .click();
    step_until(&mut h, "sd-turbo to be installed", |h| {
        matches!(row(h, "sd-turbo").install, ModelInstall::Installed { .. })
    });
    let dir = data.join("models/sd-turbo");
    assert!(
        dir.join("unet/diffusion_pytorch_model.fp16.safetensors")
            .is_file()
    );
    assert!(
        h.state()
            .toasts()
            .items()
            .iter()
            .any(|t| t.text.contains("sd-turbo is installed")),
        "the user is told"
    );
    // No partial files are left behind.
    let mut stack = vec![dir.clone()];
    while let Some(d) = stack.pop() {
        for p in files_in(&d) {
            assert!(!p.to_string_lossy().ends_with(".part"), "{p:?} left behind");
            if p.is_dir() {
                stack.push(p);
            }
        }
    }

    h.get_by_role_and_label(Role::Button, "Delete").click();
    h.run();
    assert!(h.query_by_label("Delete sd-turbo from disk?").is_some());
    h.get_by_role_and_label(Role::Button, "Delete").click();
    step_until(&mut h, "sd-turbo to be gone", |h| {
        row(h, "sd-turbo").install == ModelInstall::Missing
    });
    assert!(!dir.exists());
}

/// "Model defaults" for a model chosen by path: SD 1.5's for a checkpoint
/// file, 1024² for an SDXL one, a turbo model's for a folder; the prompt and
/// the seed stay.
#[test]
fn defaults_for_a_chosen_model_path_follow_what_it_holds() {
    let tmp = tempfile::tempdir().unwrap();
    let fixtures =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("crates/orfeas-ml/tests/fixtures");
    let sd1 = tmp.path().join("sd1.safetensors");
    let sdxl = tmp.path().join("sdxl.safetensors");
    orfeas_ml::fixture::complete_single_file(&fixtures.join("sd-tiny-single"), &sd1).unwrap();
    orfeas_ml::fixture::complete_single_file(&fixtures.join("sdxl-tiny-single"), &sdxl).unwrap();
    let mine = TextParams {
        prompt: "a fox".into(),
        seed: 9,
        steps: 3,
        ..TextParams::default()
    };
    let a = mine.with_path_defaults(&sd1);
    assert_eq!(
        (a.steps, a.guidance, a.width, a.height),
        (25, 7.5, 512, 512)
    );
    assert_eq!(a.model_path.as_deref(), Some(sd1.as_path()));
    assert_eq!((a.prompt.as_str(), a.seed), ("a fox", 9));
    let b = mine.with_path_defaults(&sdxl);
    assert_eq!((b.steps, b.width, b.height), (25, 1024, 1024));
    let c = mine.with_path_defaults(&fixture_model());
    assert_eq!((c.steps, c.guidance, c.width), (1, 0.0, 512));
    assert_eq!(c.model_path, Some(fixture_model()));
}
