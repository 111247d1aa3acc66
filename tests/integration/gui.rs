//! GUI tests: the real app in egui_kittest, found by role and label through AccessKit.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use egui::accesskit::Role;
use egui_kittest::Harness;
use egui_kittest::kittest::{NodeT, Queryable};
use orfeas::app::job_views::JobPhase;
use orfeas::app::state::{SavedState, ThemeChoice};
use orfeas::app::{AppConfig, StudioApp};

/// Fixed window size for every GUI test (and the snapshot).
const WINDOW: [f32; 2] = [1280.0, 800.0];
/// Longest a generation may take in these tests (debug build, shared 2-core CI box).
pub const JOB_TIMEOUT: Duration = Duration::from_secs(120);

/// The one way tests build the app: fixed size, own data dir, optional saved state.
pub(crate) fn harness(
    data_dir: &Path,
    storage: Option<&MemStorage>,
) -> Harness<'static, StudioApp> {
    harness_with(data_dir, storage, AppConfig::default())
}

/// [`harness`] with more of the app's start-up config (the data dir is always set).
pub(crate) fn harness_with(
    data_dir: &Path,
    storage: Option<&MemStorage>,
    config: AppConfig,
) -> Harness<'static, StudioApp> {
    let data_dir = data_dir.to_path_buf();
    let storage = storage.cloned();
    Harness::builder()
        .with_size(WINDOW)
        .with_max_steps(64)
        .build_eframe(move |cc| {
            StudioApp::with_storage(
                &cc.egui_ctx,
                storage.as_ref().map(|s| s as &dyn eframe::Storage),
                AppConfig {
                    data_dir: Some(data_dir),
                    ..config.clone()
                },
            )
        })
}

/// Steps frames (in real time, so background threads progress) until `done` holds.
pub(crate) fn step_until(
    h: &mut Harness<'static, StudioApp>,
    what: &str,
    mut done: impl FnMut(&Harness<'static, StudioApp>) -> bool,
) {
    let start = Instant::now();
    while !done(h) {
        assert!(
            start.elapsed() < JOB_TIMEOUT,
            "timed out waiting for {what}"
        );
        h.step();
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An in-memory eframe storage, standing in for the file eframe writes on exit.
#[derive(Clone, Default)]
pub(crate) struct MemStorage(HashMap<String, String>);

impl eframe::Storage for MemStorage {
    fn get_string(&self, key: &str) -> Option<String> {
        self.0.get(key).cloned()
    }
    fn set_string(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
    fn remove_string(&mut self, key: &str) {
        self.0.remove(key);
    }
    fn flush(&mut self) {}
}

/// A file "dropped" from the OS, as egui-winit would hand it over.
#[derive(Debug)]
struct Dropped(PathBuf);

impl egui::DroppedFile for Dropped {
    fn path(&self) -> &Path {
        &self.0
    }
    fn bytes(&self) -> Result<Vec<u8>, String> {
        std::fs::read(&self.0).map_err(|e| e.to_string())
    }
}

pub(crate) fn drop_file(h: &mut Harness<'static, StudioApp>, path: &Path) {
    h.input_mut()
        .dropped_files
        .push(Arc::new(Dropped(path.to_path_buf())));
}

/// A 96×96 opaque orange disc on a transparent background.
pub(crate) fn write_disc_png(path: &Path) {
    let img = image::RgbaImage::from_fn(96, 96, |x, y| {
        let (dx, dy) = (x as f32 - 47.5, y as f32 - 47.5);
        if dx * dx + dy * dy < 36.0 * 36.0 {
            image::Rgba([240, 140, 40, 255])
        } else {
            image::Rgba([0, 0, 0, 0])
        }
    });
    img.save(path).unwrap();
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default()
}

#[test]
fn dropping_an_image_generates_a_model_that_appears_in_the_gallery() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("disc.png");
    write_disc_png(&input);
    let data = tmp.path().join("data");
    let mut h = harness(&data, None);

    drop_file(&mut h, &input);
    step_until(&mut h, "the job to finish", |h| {
        h.state().jobs().iter().any(|j| j.phase.is_finished())
    });
    let job = h.state().jobs()[0].clone();
    assert_eq!(
        job.phase,
        JobPhase::Succeeded,
        "job failed: {:?}",
        job.error
    );
    let glb = job.outputs.first().expect("the job names its output file");
    assert!(
        glb.starts_with(data.join("outputs")),
        "output outside the data dir: {}",
        glb.display()
    );
    let bytes = std::fs::read(glb).unwrap();
    assert_eq!(&bytes[..4], b"glTF", "the output is a binary glTF");

    // The success shows in the window, not just in the state.
    step_until(&mut h, "the success toast", |h| {
        h.query_by_label_contains("disc.png is ready").is_some()
    });

    h.get_by_role_and_label(Role::Button, "Gallery").click();
    step_until(&mut h, "the gallery card with its thumbnail", |h| {
        h.query_by_label("Thumbnail of disc.png").is_some()
    });
    // The thumbnail is a render of the mesh (square, lit orange), not the 96 px input.
    let thumb = match h.state().thumbnails().get(glb) {
        orfeas::app::thumbnails::Thumb::Ready(t) => t,
        other => panic!(
            "the mesh thumbnail is not ready: {}",
            match other {
                orfeas::app::thumbnails::Thumb::Failed(e) => e,
                _ => "loading".into(),
            }
        ),
    };
    assert_eq!(
        thumb.size(),
        [
            orfeas::app::thumbnails::MESH_THUMB_SIDE_PX as usize,
            orfeas::app::thumbnails::MESH_THUMB_SIDE_PX as usize
        ]
    );
    assert!(
        h.query_by_label("Re-run").is_some(),
        "the card offers re-run"
    );
    assert!(
        h.query_by_label("Export as…").is_some(),
        "the card offers export"
    );

    // Delete asks first, then removes the entry and its file.
    h.get_by_role_and_label(Role::Button, "Delete").click();
    step_until(&mut h, "the delete confirmation", |h| {
        h.query_by_label("Delete this generation?").is_some()
    });
    assert!(glb.exists(), "nothing is deleted before confirming");
    let confirm = h
        .get_all_by_role_and_label(Role::Button, "Delete")
        .last()
        .unwrap();
    confirm.click();
    step_until(&mut h, "the card to go away", |h| {
        h.query_by_label("Thumbnail of disc.png").is_none()
            && h.query_by_label("Delete this generation?").is_none()
    });
    assert!(!glb.exists(), "the output file is deleted with the entry");
}

#[test]
fn tabs_switch_and_show_their_content() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = harness(tmp.path(), None);
    h.run();
    assert!(
        h.query_by_label("Open image…").is_some(),
        "Create is the first tab"
    );

    h.get_by_role_and_label(Role::Button, "Settings").click();
    h.run();
    assert!(
        h.query_by_role_and_label(Role::Slider, "Jobs at once")
            .is_some()
    );
    assert!(
        h.query_by_label("Open image…").is_none(),
        "Create is hidden"
    );

    h.get_by_role_and_label(Role::Button, "Viewer").click();
    h.run();
    assert!(
        h.query_by_label("No mesh loaded").is_some(),
        "the Viewer is there and says it is empty"
    );
    h.get_by_role_and_label(Role::Button, "Models").click();
    step_until(&mut h, "the model list", |h| h.state().models().loaded);
    h.run(); // draw the Models tab with the list
    assert!(
        h.query_by_label("sd-turbo").is_some() && h.query_by_label("sd-1.5").is_some(),
        "Models lists the registry"
    );
    assert_eq!(h.state().saved_state().tab, orfeas::app::state::Tab::Models);
}

#[test]
fn a_text_file_named_png_fails_with_a_toast_and_is_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("notes.png");
    std::fs::write(&bad, "these are my notes, not a picture\n").unwrap();
    let data = tmp.path().join("data");
    let mut h = harness(&data, None);

    drop_file(&mut h, &bad);
    step_until(&mut h, "the job to fail", |h| {
        h.state().jobs().iter().any(|j| j.phase.is_finished())
    });
    assert_eq!(h.state().jobs()[0].phase, JobPhase::Failed);
    step_until(&mut h, "the error toast", |h| {
        h.query_by_label_contains("notes.png failed").is_some()
    });
    assert!(
        files_in(&data.join("outputs")).is_empty(),
        "no output file for a bad input"
    );

    // The failure is in the history database (what the Gallery and `orfeas history` read).
    let history =
        orfeas_core::history::History::open(&data.join(orfeas_core::history::HISTORY_FILE_NAME))
            .unwrap();
    let records = history.list(10, 0, None).unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].state, orfeas_core::jobs::JobState::Failed);
    assert!(
        records[0]
            .error_message
            .as_deref()
            .is_some_and(|m| !m.is_empty())
    );
}

#[test]
fn settings_survive_a_restart_through_eframe_storage() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = harness(tmp.path(), None);
    h.get_by_role_and_label(Role::Button, "Settings").click();
    h.run();
    h.get_by_label("Light").click();
    h.run();
    h.get_by_role_and_label(Role::ComboBox, "Default format")
        .click();
    h.run();
    h.get_by_label("OBJ").click();
    h.run();

    let mut storage = MemStorage::default();
    eframe::App::save(h.state_mut(), &mut storage);
    drop(h);

    let mut h = harness(tmp.path(), Some(&storage));
    h.run();
    let saved: &SavedState = h.state().saved_state();
    assert_eq!(saved.settings.theme, ThemeChoice::Light);
    assert_eq!(
        saved.settings.default_format,
        orfeas::app::state::FormatChoice::Obj
    );
    assert_eq!(
        saved.tab,
        orfeas::app::state::Tab::Settings,
        "reopens on the last tab"
    );
    assert_eq!(
        h.ctx.theme(),
        egui::Theme::Light,
        "the light theme is in use"
    );
    assert_eq!(
        h.get_by_label("Light").accesskit_node().toggled(),
        Some(egui::accesskit::Toggled::True),
        "the Settings tab shows Light as chosen"
    );
}

#[test]
fn create_tab_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let mut storage = MemStorage::default();
    let saved = SavedState {
        settings: orfeas::app::state::Settings {
            theme: ThemeChoice::Dark,
            ..Default::default()
        },
        ..Default::default()
    };
    eframe::set_value(&mut storage, SavedState::STORAGE_KEY, &saved);
    let mut h = harness(tmp.path(), Some(&storage));
    h.run();
    h.snapshot("create_tab");
}

#[test]
fn settings_about_box_shows_version_commit_features_and_model_licences() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = harness(tmp.path(), None);
    h.run();
    h.get_by_role_and_label(Role::Button, "Settings").click();
    h.run();
    h.get_by_label("About ORFEAS Studio");
    h.get_by_label(orfeas::about::VERSION);
    h.get_by_label(orfeas::about::COMMIT);
    h.get_by_label("none (CPU inference only)");
    for model in orfeas_ml::models::KNOWN_MODELS {
        assert!(
            h.query_by_label(model.name).is_some() && h.query_by_label(model.licence).is_some(),
            "{} and its licence are in the About box",
            model.name
        );
    }
}

#[test]
fn open_with_a_picture_selects_it_as_the_image_to_3d_input() {
    let tmp = tempfile::tempdir().unwrap();
    let picture = tmp.path().join("disc.png");
    write_disc_png(&picture);
    let config = orfeas::cli::open_config(AppConfig::default(), Some(&picture)).unwrap();
    assert_eq!(config.open_image.as_deref(), Some(picture.as_path()));
    let mut h = harness_with(&tmp.path().join("data"), None, config);
    h.run();
    assert_eq!(h.state().saved_state().tab, orfeas::app::state::Tab::Create);
    // The file name under the preview of the Create tab.
    h.get_by_label("disc.png");
}
