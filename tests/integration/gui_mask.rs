//! GUI tests of the Create tab's mask: the overlay, the brush, keep largest
//! object and undo, and that generation and Re-run use the edited mask.

use std::path::{Path, PathBuf};

use egui::accesskit::Role;
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;
use orfeas::app::StudioApp;
use orfeas::app::job_views::JobPhase;
use orfeas::app::mask::MaskCommand;
use orfeas::app::state::Command;
use orfeas::ui::mask::CANVAS_LABEL;

use crate::gui::{harness, step_until, write_disc_png};

/// Where a picture pixel is on screen, given the canvas's rect.
fn on_screen(h: &Harness<'static, StudioApp>, at: [f32; 2]) -> egui::Pos2 {
    let rect = h.get_by_label(CANVAS_LABEL).rect();
    let [w, hgt] = h
        .state()
        .mask_editor()
        .picture_size()
        .expect("the overlay shows a loaded picture");
    egui::pos2(
        rect.min.x + at[0] / w as f32 * rect.width(),
        rect.min.y + at[1] / hgt as f32 * rect.height(),
    )
}

/// One brush stroke with the mouse, from `from` to `to` (picture pixels).
fn stroke(h: &mut Harness<'static, StudioApp>, from: [f32; 2], to: [f32; 2]) {
    let (from, to) = (on_screen(h, from), on_screen(h, to));
    h.hover_at(from);
    h.step();
    h.drag_at(from);
    h.step();
    for i in 1..=10 {
        h.hover_at(from.lerp(to, i as f32 / 10.0));
        h.step();
    }
    h.drop_at(to);
    h.step();
    h.step();
}

/// The mask value the job would get at picture pixel (x, y).
fn mask_at(h: &Harness<'static, StudioApp>, x: u32, y: u32) -> u8 {
    h.state()
        .mask_editor()
        .effective()
        .expect("a mask is loaded")
        .get_pixel(x, y)
        .0[0]
}

/// Width over height of a mesh file's front view, and its piece count.
fn front_aspect_and_pieces(path: &Path) -> (f32, usize) {
    let mesh = orfeas_core::import::import_mesh(path).unwrap();
    let (mut lo, mut hi) = ([f32::MAX; 2], [f32::MIN; 2]);
    for p in &mesh.positions {
        for i in 0..2 {
            lo[i] = lo[i].min(p[i]);
            hi[i] = hi[i].max(p[i]);
        }
    }
    (
        (hi[0] - lo[0]) / (hi[1] - lo[1]),
        mesh.topology().components(),
    )
}

fn finished_output(h: &Harness<'static, StudioApp>, index: usize) -> PathBuf {
    let job = h.state().jobs()[index].clone();
    assert_eq!(
        job.phase,
        JobPhase::Succeeded,
        "job failed: {:?}",
        job.error
    );
    job.outputs
        .first()
        .expect("the job names its output")
        .clone()
}

#[test]
fn a_brush_stroke_and_keep_largest_shape_the_mesh_and_rerun_reproduces_it() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("disc.png");
    write_disc_png(&input); // 96×96, a disc of radius 36 at the centre, transparent around
    let data = tmp.path().join("data");
    let mut h = harness(&data, None);
    h.state_mut().apply(Command::SelectInput(input.clone()));
    step_until(&mut h, "the mask overlay", |h| {
        h.query_by_label(CANVAS_LABEL).is_some()
    });
    assert!(
        h.query_by_label_contains("Mask: Transparency").is_some(),
        "the panel says where the mask came from"
    );
    assert_eq!(mask_at(&h, 48, 48), 255, "the disc is foreground");
    assert_eq!(mask_at(&h, 2, 2), 0, "the corner is background");

    // Erase a thin band through the disc, left of its centre: two pieces remain.
    h.state_mut()
        .apply(Command::Mask(MaskCommand::SetBrushSize(12.0)));
    stroke(&mut h, [56.0, 4.0], [56.0, 92.0]);
    assert_eq!(mask_at(&h, 56, 48), 0, "the stroke erased the band");
    assert_eq!(mask_at(&h, 30, 48), 255, "left of it is untouched");
    assert_eq!(mask_at(&h, 72, 48), 255, "right of it is untouched");
    step_until(&mut h, "the edited mark", |h| {
        h.query_by_label_contains("edited").is_some()
    });

    // Undo takes the stroke back; the same stroke again puts it back.
    h.get_by_role_and_label(Role::Button, "Undo").click();
    h.run();
    assert_eq!(mask_at(&h, 56, 48), 255, "undo restored the band");
    assert!(!h.state().mask_editor().is_edited());
    stroke(&mut h, [56.0, 4.0], [56.0, 92.0]);
    assert_eq!(mask_at(&h, 56, 48), 0);

    // Keep largest object drops the smaller right-hand piece.
    h.get_by_label("Keep largest object").click();
    h.run();
    assert_eq!(mask_at(&h, 72, 48), 0, "the smaller piece is gone");
    assert_eq!(mask_at(&h, 30, 48), 255, "the larger one stays");
    let cut = h.state().mask_editor().cut_out().unwrap();
    assert_eq!(
        cut.get_pixel(72, 48).0[3],
        0,
        "the cut-out's alpha is the mask"
    );
    assert_eq!(
        cut.get_pixel(30, 48).0,
        [240, 140, 40, 255],
        "its colours are the picture's"
    );

    h.get_by_role_and_label(Role::Button, "Generate 3D model")
        .click();
    step_until(&mut h, "the job to finish", |h| {
        h.state().jobs().iter().any(|j| j.phase.is_finished())
    });
    let first = finished_output(&h, 0);
    let (aspect, pieces) = front_aspect_and_pieces(&first);
    // The piece left of x = 50 of a disc spanning 12..84: about 38 px wide, 72 tall.
    assert!(
        (0.35..0.7).contains(&aspect),
        "the mesh is {aspect} times as wide as tall; the whole disc would be about 1"
    );
    assert_eq!(pieces, 1, "the erased-off piece made no mesh");

    // The job carries the mask it used, written under the data dir.
    h.get_by_role_and_label(Role::Button, "Gallery").click();
    step_until(&mut h, "the gallery card", |h| {
        h.query_by_label("Re-run").is_some()
    });
    let item = h.state().gallery().items[0].clone();
    let mask_file = item
        .params
        .as_ref()
        .and_then(|p| p.mask.clone())
        .expect("the history holds the edited mask");
    assert!(mask_file.starts_with(&data), "{}", mask_file.display());
    assert!(mask_file.exists());

    // Re-run reproduces the edited shape from the history alone.
    h.state_mut().apply(Command::Mask(MaskCommand::Reset));
    h.run_steps(4);
    h.get_by_role_and_label(Role::Button, "Re-run").click();
    step_until(&mut h, "the re-run to finish", |h| {
        h.state().jobs().len() == 2 && h.state().jobs()[1].phase.is_finished()
    });
    // The overlay shows the mask the job used again, not the automatic one.
    assert_eq!(mask_at(&h, 72, 48), 0, "the re-run's mask is on show");
    assert!(h.state().mask_editor().is_edited());
    let second = finished_output(&h, 1);
    assert_ne!(first, second, "a re-run writes a new file");
    let (again, pieces_again) = front_aspect_and_pieces(&second);
    assert!(
        (again - aspect).abs() < 1e-4 && pieces_again == 1,
        "re-run made {again} ({pieces_again} pieces), the first run {aspect}"
    );
}

#[test]
fn an_all_background_mask_is_refused_before_anything_is_queued() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("disc.png");
    write_disc_png(&input);
    let data = tmp.path().join("data");
    let mut h = harness(&data, None);
    h.state_mut().apply(Command::SelectInput(input));
    step_until(&mut h, "the mask overlay", |h| {
        h.query_by_label(CANVAS_LABEL).is_some()
    });
    h.state_mut()
        .apply(Command::Mask(MaskCommand::SetBrushSize(200.0)));
    stroke(&mut h, [0.0, 48.0], [95.0, 48.0]);
    assert_eq!(mask_at(&h, 48, 48), 0);
    h.get_by_role_and_label(Role::Button, "Generate 3D model")
        .click();
    step_until(&mut h, "the refusal", |h| {
        h.query_by_label_contains("all background").is_some()
    });
    assert!(h.state().jobs().is_empty(), "nothing was queued");
    assert!(!data.join("masks").exists(), "no mask file was written");
}

/// The overlay on an opaque photo before and after the user's edit; with
/// `ORFEAS_SCREENSHOT_DIR` set the two frames are saved there as PNGs.
#[test]
fn the_overlay_on_a_photo_before_and_after_a_brush_stroke() {
    let tmp = tempfile::tempdir().unwrap();
    let photo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/examples/mug-on-table.png");
    let data = tmp.path().join("data");
    let mut h = harness(&data, None);
    let mut params = h.state().saved_state().params.clone();
    params.background = orfeas_core::request::Background::Border;
    h.state_mut().apply(Command::SetParams(params));
    h.state_mut().apply(Command::SelectInput(photo));
    step_until(&mut h, "the mask overlay", |h| {
        h.query_by_label(CANVAS_LABEL).is_some()
    });
    h.run();
    let shots = std::env::var_os("ORFEAS_SCREENSHOT_DIR").map(PathBuf::from);
    let save = |h: &mut Harness<'static, StudioApp>, name: &str| {
        if let Some(dir) = &shots {
            std::fs::create_dir_all(dir).unwrap();
            h.render().unwrap().save(dir.join(name)).unwrap();
        }
    };
    save(&mut h, "mask-overlay-before.png");
    // The border fill keeps the wooden table in front of the mug (640×480 photo).
    assert_eq!(mask_at(&h, 100, 440), 255, "the table starts as foreground");
    assert_eq!(mask_at(&h, 320, 280), 255, "the mug is foreground");

    h.get_by_label("Keep largest object").click();
    h.state_mut()
        .apply(Command::Mask(MaskCommand::SetBrushSize(110.0)));
    stroke(&mut h, [5.0, 430.0], [635.0, 430.0]);
    stroke(&mut h, [5.0, 310.0], [170.0, 310.0]);
    stroke(&mut h, [500.0, 300.0], [635.0, 300.0]);
    // The strip of table under the mug, with a fine brush.
    h.state_mut()
        .apply(Command::Mask(MaskCommand::SetBrushSize(16.0)));
    stroke(&mut h, [150.0, 377.0], [520.0, 377.0]);
    h.state_mut()
        .apply(Command::Mask(MaskCommand::SetBrushSize(26.0)));
    stroke(&mut h, [2.0, 367.0], [212.0, 367.0]);
    stroke(&mut h, [425.0, 367.0], [638.0, 367.0]);
    h.run();
    save(&mut h, "mask-overlay-after.png");
    assert_eq!(mask_at(&h, 100, 440), 0, "the table in front is erased");
    assert_eq!(mask_at(&h, 60, 310), 0, "and left of the mug");
    assert_eq!(mask_at(&h, 320, 280), 255, "the mug stays");
    assert!(h.query_by_label_contains("edited").is_some());
}

/// With the tiny random-weight segmenter installed in the data dir, an opaque
/// example photo under Auto goes through it: the overlay says so and the job
/// runs it (random weights may find no object; then the job says exactly that).
#[test]
fn an_opaque_photo_under_auto_is_masked_by_the_installed_segmenter() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("crates/orfeas-ml/tests/fixtures/birefnet-tiny");
    let installed = data.join("models/birefnet-lite");
    std::fs::create_dir_all(&installed).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture.join(f), installed.join(f)).unwrap();
    }
    let photo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/examples/rocket-sky.png");
    let mut h = harness(&data, None);
    h.state_mut().apply(Command::SelectInput(photo));
    step_until(&mut h, "the segmenter's mask", |h| {
        h.query_by_label_contains("Mask: Neural segmenter")
            .is_some()
            || h.query_by_label_contains("No mask:").is_some()
    });
    assert!(
        h.query_by_label_contains("No mask:").is_none(),
        "the segmenter ran on the mask thread"
    );
    h.get_by_role_and_label(Role::Button, "Generate 3D model")
        .click();
    step_until(&mut h, "the job to finish", |h| {
        h.state().jobs().iter().any(|j| j.phase.is_finished())
    });
    let job = h.state().jobs()[0].clone();
    match job.phase {
        JobPhase::Succeeded => {
            let (_, pieces) = front_aspect_and_pieces(&job.outputs[0]);
            assert!(pieces >= 1);
        }
        _ => {
            let err = job.error.unwrap_or_default();
            assert!(err.contains("segmenter found no object"), "{err}");
        }
    }
}

/// A dropped opaque photo is shown with its mask first; a cut-out (alpha)
/// still becomes a mesh at once (see `gui::dropping_an_image_generates…`).
#[test]
fn a_dropped_opaque_photo_waits_for_generate_with_its_mask_on_show() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let photo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/examples/mug-on-table.png");
    let mut h = harness(&data, None);
    crate::gui::drop_file(&mut h, &photo);
    step_until(&mut h, "the mask overlay", |h| {
        h.query_by_label(CANVAS_LABEL).is_some()
    });
    assert!(
        h.query_by_label_contains("check the tinted mask").is_some(),
        "the toast says what to do"
    );
    assert!(
        h.state().jobs().is_empty(),
        "nothing generated before the user asks"
    );
    h.get_by_role_and_label(Role::Button, "Generate 3D model")
        .click();
    step_until(&mut h, "the job to finish", |h| {
        h.state().jobs().iter().any(|j| j.phase.is_finished())
    });
    finished_output(&h, 0);
}
