//! The `orfeas` binary as a user scripts it: exit codes, the one-line summary,
//! progress on stderr, and history records for successes and refusals.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use image::{Rgba, RgbaImage};
use orfeas_core::history::History;
use orfeas_core::jobs::JobState;

struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Sandbox {
        Sandbox {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn data_dir(&self) -> PathBuf {
        self.path("data")
    }

    fn orfeas(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_orfeas"))
            .args(args)
            .current_dir(self.dir.path())
            .env("ORFEAS_DATA_DIR", self.data_dir())
            .output()
            .unwrap()
    }

    fn history_states(&self) -> Vec<(JobState, Option<String>)> {
        let history = History::open(&self.data_dir().join("history.sqlite3")).unwrap();
        history
            .list(100, 0, None)
            .unwrap()
            .into_iter()
            .map(|r| (r.state, r.error_reason))
            .collect()
    }

    /// Files in the sandbox other than the data folder and the given inputs.
    fn outputs(&self, inputs: &[&str]) -> Vec<String> {
        std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "data" && !inputs.contains(&n.as_str()))
            .collect()
    }
}

/// A red disc with a green stem on a transparent background.
fn write_object_png(path: &Path, side: u32) {
    let c = side as f32 / 2.0;
    let r = side as f32 * 0.3;
    let img = RgbaImage::from_fn(side, side, |x, y| {
        let (dx, dy) = (x as f32 - c, y as f32 - c);
        if dx * dx + dy * dy < r * r {
            Rgba([200, 40, 30, 255])
        } else if (dx.abs() < side as f32 * 0.04)
            && (y as f32) < c - r + 4.0
            && y as f32 > c - r * 1.5
        {
            Rgba([40, 160, 60, 255])
        } else {
            Rgba([0, 0, 0, 0])
        }
    });
    img.save(path).unwrap();
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn image_to_3d_writes_a_mesh_prints_a_summary_and_records_the_job() {
    let sb = Sandbox::new();
    write_object_png(&sb.path("apple.png"), 256);
    let out = sb.orfeas(&[
        "image-to-3d",
        "apple.png",
        "-o",
        "apple.glb",
        "--quality",
        "draft",
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let glb = std::fs::read(sb.path("apple.glb")).unwrap();
    assert_eq!(&glb[..4], b"glTF", "not a GLB file");
    // The one-line summary names the file and gives vertices, faces, quality and time.
    assert!(stdout.contains("apple.glb"), "{stdout}");
    for word in ["vertices", "faces", "quality", "ms"] {
        assert!(stdout.contains(word), "summary lacks {word}: {stdout}");
    }
    // Progress goes to stderr, ending at 100 %.
    assert!(text(&out.stderr).contains("100%"), "{}", text(&out.stderr));
    let states = sb.history_states();
    assert_eq!(states, vec![(JobState::Succeeded, None)]);
    // `orfeas history` lists it.
    let listed = text(&sb.orfeas(&["history"]).stdout);
    assert!(
        listed.contains("succeeded") && listed.contains("apple.png"),
        "{listed}"
    );
}

#[test]
fn format_flag_overrides_the_extension_and_obj_writes_its_siblings() {
    let sb = Sandbox::new();
    write_object_png(&sb.path("in.png"), 128);
    let out = sb.orfeas(&[
        "image-to-3d",
        "in.png",
        "-o",
        "model.obj",
        "--quality",
        "draft",
    ]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let mut files = sb.outputs(&["in.png"]);
    files.sort();
    assert_eq!(files, vec!["model.mtl", "model.obj", "model.png"]);

    let out = sb.orfeas(&[
        "image-to-3d",
        "in.png",
        "-o",
        "model.bin",
        "--format",
        "stl",
        "--quality",
        "draft",
    ]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let bytes = std::fs::read(sb.path("model.bin")).unwrap();
    // Binary STL: 80-byte header, triangle count, 50 bytes per triangle.
    let triangles = u32::from_le_bytes(bytes[80..84].try_into().unwrap()) as usize;
    assert_eq!(bytes.len(), 84 + 50 * triangles);
    assert!(triangles > 100);
}

/// Each refusal: non-zero exit, a message on stderr that says what to do, no output file,
/// and a failed job in the history.
#[test]
fn bad_input_fails_clearly_writes_nothing_and_is_recorded() {
    let sb = Sandbox::new();
    std::fs::write(sb.path("empty.png"), b"").unwrap();
    std::fs::write(sb.path("notes.png"), b"these are my notes, not a picture\n").unwrap();
    write_object_png(&sb.path("ok.png"), 64);
    let mut truncated = std::fs::read(sb.path("ok.png")).unwrap();
    truncated.truncate(truncated.len() / 2);
    std::fs::write(sb.path("truncated.png"), truncated).unwrap();
    RgbaImage::from_pixel(64, 64, Rgba([0, 0, 0, 0]))
        .save(sb.path("clear.png"))
        .unwrap();
    RgbaImage::from_pixel(1, 1, Rgba([255, 0, 0, 255]))
        .save(sb.path("dot.png"))
        .unwrap();
    let inputs = [
        "empty.png",
        "notes.png",
        "ok.png",
        "truncated.png",
        "clear.png",
        "dot.png",
    ];

    let cases: [(&[&str], &str); 8] = [
        (
            &["image-to-3d", "missing.png", "-o", "a.glb"],
            "does not exist",
        ),
        (&["image-to-3d", "empty.png", "-o", "a.glb"], "empty"),
        (
            &["image-to-3d", "notes.png", "-o", "a.glb"],
            "PNG, JPEG or WebP",
        ),
        (
            &["image-to-3d", "truncated.png", "-o", "a.glb"],
            "truncated",
        ),
        (&["image-to-3d", "clear.png", "-o", "a.glb"], "transparent"),
        (&["image-to-3d", "dot.png", "-o", "a.glb"], "at least 8"),
        (
            &["image-to-3d", "ok.png", "-o", "no/such/dir/a.glb"],
            "does not exist",
        ),
        (
            &["image-to-3d", "ok.png", "-o", "a.fbx"],
            ".glb, .obj, .ply or .stl",
        ),
    ];
    for (args, hint) in cases {
        let out = sb.orfeas(args);
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            stderr.to_lowercase().contains(&hint.to_lowercase()),
            "{args:?}: stderr does not mention {hint:?}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
        assert_eq!(
            sb.outputs(&inputs),
            Vec::<String>::new(),
            "{args:?} left a file"
        );
    }
    let states = sb.history_states();
    assert_eq!(
        states.len(),
        cases.len(),
        "every refusal is a history record: {states:?}"
    );
    assert!(
        states
            .iter()
            .all(|(s, reason)| *s == JobState::Failed && reason.is_some()),
        "{states:?}"
    );
}

#[test]
fn help_lists_the_commands_and_the_options_of_image_to_3d() {
    let sb = Sandbox::new();
    let top = text(&sb.orfeas(&["--help"]).stdout);
    for cmd in ["image-to-3d", "history", "serve", "monitoring"] {
        assert!(top.contains(cmd), "--help lacks {cmd}: {top}");
    }
    let sub = text(&sb.orfeas(&["image-to-3d", "--help"]).stdout);
    for opt in [
        "--output",
        "--quality",
        "--foreground-ratio",
        "--format",
        "--method",
    ] {
        assert!(sub.contains(opt), "image-to-3d --help lacks {opt}: {sub}");
    }
}

/// The tiny SDXL fixture, completed (embeddings rebuilt, BPE files copied in).
fn sdxl_fixture(sb: &Sandbox) -> PathBuf {
    let fixtures =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("crates/orfeas-ml/tests/fixtures");
    let dst = sb.path("sdxl-tiny");
    orfeas_ml::fixture::complete_model_dir_with_vocab(
        &fixtures.join("sdxl-tiny"),
        &dst,
        Some(&fixtures.join("sd-tiny/tokenizer")),
    )
    .unwrap();
    dst
}

/// An SDXL folder through the CLI, from diffusers' stored noise: the PNG is
/// diffusers' own (SDXL-Turbo's way: 1 step, Euler ancestral, no guidance).
#[test]
fn text_to_image_runs_an_sdxl_folder_and_matches_diffusers() {
    let sb = Sandbox::new();
    let model = sdxl_fixture(&sb);
    let golden = model.join("golden");
    let run = candle_core::safetensors::load(
        golden.join("euler_a_1step_nocfg.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let noise = sb.path("noise.safetensors");
    candle_core::safetensors::save(
        &std::collections::HashMap::from([("latents", run["noise"].clone())]),
        &noise,
    )
    .unwrap();
    let out = sb.orfeas(&[
        "text-to-image",
        "a red ceramic teapot, studio lighting",
        "-o",
        "teapot.png",
        "--model-dir",
        model.to_str().unwrap(),
        "--size",
        "96x64",
        "--steps",
        "1",
        "--guidance",
        "0",
        "--scheduler",
        "euler-a",
        "--init-latents",
        noise.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let got = image::open(sb.path("teapot.png")).unwrap().to_rgb8();
    let want = image::open(golden.join("euler_a_1step_nocfg.png"))
        .unwrap()
        .to_rgb8();
    assert_eq!(got.dimensions(), want.dimensions());
    let max = got
        .as_raw()
        .iter()
        .zip(want.as_raw())
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap();
    assert!(max <= 1, "max channel difference {max}");
}

#[test]
fn tiled_decode_and_the_tiny_decoder_cannot_be_combined() {
    let sb = Sandbox::new();
    let out = sb.orfeas(&[
        "text-to-image",
        "a fox",
        "-o",
        "fox.png",
        "--tiled-decode",
        "--tiny-decoder",
    ]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("--tiny-decoder"), "{stderr}");
    assert!(sb.outputs(&[]).is_empty(), "nothing was written");
}

/// The tiny random-weight TripoSR and BiRefNet of the ML crate's fixtures,
/// installed as the registry's `triposr` and `birefnet-lite` under `root`.
fn install_tiny_models(root: &Path) {
    let fixtures =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("crates/orfeas-ml/tests/fixtures");
    let copy = |from: &Path, to: &Path| {
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, to).unwrap();
    };
    let tsr = fixtures.join("triposr-tiny");
    for f in ["config.yaml", "model.ckpt", "dino-vit-tiny/config.json"] {
        copy(&tsr.join(f), &root.join("triposr").join(f));
    }
    let brn = fixtures.join("birefnet-tiny");
    for f in ["config.json", "model.safetensors"] {
        copy(&brn.join(f), &root.join("birefnet-lite").join(f));
    }
}

/// An opaque "photo": a red disc on a noisy grey-green background.
fn write_opaque_photo(path: &Path) {
    let img = RgbaImage::from_fn(160, 120, |x, y| {
        let (dx, dy) = (x as f32 - 80.0, y as f32 - 60.0);
        if dx * dx + dy * dy < 35.0 * 35.0 {
            Rgba([200, 40, 30, 255])
        } else {
            let n = ((x * 37 + y * 91) % 23) as u8;
            Rgba([90 + n, 110 + n, 80 + n, 255])
        }
    });
    img.save(path).unwrap();
}

impl Sandbox {
    fn orfeas_with_models(&self, models: &Path, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_orfeas"))
            .args(args)
            .current_dir(self.dir.path())
            .env("ORFEAS_DATA_DIR", self.data_dir())
            .env("ORFEAS_MODELS", models)
            .env("HF_HOME", self.path("no-hf-cache"))
            .output()
            .unwrap()
    }
}

#[test]
fn triposr_and_the_background_choice_run_from_the_command_line() {
    let s = Sandbox::new();
    let models = s.path("models");
    write_object_png(&s.path("cutout.png"), 96);
    write_opaque_photo(&s.path("photo.png"));

    // Without weights: TripoSR says how to get them; auto falls back to the border and says so.
    let out = s.orfeas_with_models(
        &models,
        &[
            "image-to-3d",
            "cutout.png",
            "-o",
            "a.glb",
            "--method",
            "triposr",
        ],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("orfeas models download triposr"),
        "{}",
        text(&out.stderr)
    );
    let out = s.orfeas_with_models(&models, &["image-to-3d", "photo.png", "-o", "b.glb"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("background: border"),
        "{}",
        text(&out.stdout)
    );
    let out = s.orfeas_with_models(
        &models,
        &[
            "image-to-3d",
            "photo.png",
            "-o",
            "c.glb",
            "--background",
            "neural",
        ],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("orfeas models download birefnet-lite"),
        "{}",
        text(&out.stderr)
    );

    // With the tiny models: TripoSR makes a GLB from the cut-out, with its summary.
    install_tiny_models(&models);
    let out = s.orfeas_with_models(
        &models,
        &[
            "image-to-3d",
            "cutout.png",
            "-o",
            "tsr.glb",
            "--method",
            "triposr",
            "--mc-resolution",
            "32",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("background: alpha"),
        "{}",
        text(&out.stdout)
    );
    let mesh = orfeas_core::import::import_mesh(&s.path("tsr.glb")).unwrap();
    assert!(mesh.triangle_count() > 0);
    // An opaque picture now goes through the segmenter under auto.
    let out = s.orfeas_with_models(
        &models,
        &[
            "image-to-3d",
            "photo.png",
            "-o",
            "n.glb",
            "--method",
            "triposr",
            "--mc-resolution",
            "32",
        ],
    );
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        said.contains("background: neural") || said.contains("segmenter found no object"),
        "{said}"
    );
    // Bad resolutions are refused before any work, naming the flag's field.
    let out = s.orfeas_with_models(
        &models,
        &[
            "image-to-3d",
            "cutout.png",
            "-o",
            "z.glb",
            "--method",
            "triposr",
            "--mc-resolution",
            "2048",
        ],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("mc_resolution"),
        "{}",
        text(&out.stderr)
    );
    assert!(!s.path("z.glb").exists());
}

#[test]
fn remove_background_writes_the_picture_with_the_segmenters_mask_as_alpha() {
    let s = Sandbox::new();
    let models = s.path("models");
    install_tiny_models(&models);
    write_opaque_photo(&s.path("photo.png"));
    let out = s.orfeas_with_models(
        &models,
        &["remove-background", "photo.png", "-o", "cut.png"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let cut = image::open(s.path("cut.png")).unwrap().to_rgba8();
    let photo = image::open(s.path("photo.png")).unwrap().to_rgba8();
    assert_eq!(
        cut.dimensions(),
        photo.dimensions(),
        "the picture's own size"
    );
    assert!(
        cut.pixels()
            .zip(photo.pixels())
            .all(|(a, b)| a.0[..3] == b.0[..3]),
        "the picture's own pixels"
    );
    // The alpha is the segmenter's mask at the fixture's inference size.
    let dir = models.join("birefnet-lite");
    let model =
        orfeas_ml::image_to_3d::load_segmenter(&dir, orfeas_ml::sd::pipeline::DevicePref::Cpu)
            .unwrap();
    let size = orfeas_ml::birefnet::default_input_size(&dir).unwrap();
    let mask = model
        .mask(&image::DynamicImage::ImageRgba8(photo), size)
        .unwrap();
    assert!(
        cut.pixels()
            .zip(mask.pixels())
            .all(|(c, m)| c.0[3] == m.0[0])
    );
    // A size that is not a multiple of 32 is refused, nothing written.
    let out = s.orfeas_with_models(
        &models,
        &[
            "remove-background",
            "photo.png",
            "-o",
            "bad.png",
            "--size",
            "100x128",
        ],
    );
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("32"), "{}", text(&out.stderr));
    assert!(!s.path("bad.png").exists());
    // Without the model: how to get it.
    let empty = s.path("none");
    let out = s.orfeas_with_models(&empty, &["remove-background", "photo.png", "-o", "x.png"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("orfeas models download birefnet-lite"),
        "{}",
        text(&out.stderr)
    );
}

/// The number after `key` in the command's output (`"quality "` → 0.93).
fn number_after(said: &str, key: &str) -> f64 {
    let at = said
        .find(key)
        .unwrap_or_else(|| panic!("no {key:?} in {said}"));
    let rest = &said[at + key.len()..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    rest[..end]
        .parse()
        .unwrap_or_else(|e| panic!("{key:?} is followed by {:?}: {e}", &rest[..end]))
}

#[test]
fn with_the_segmenter_installed_the_score_is_scaled_by_the_masks_agreement_with_it() {
    let s = Sandbox::new();
    let models = s.path("models");
    write_opaque_photo(&s.path("photo.png"));
    let border = ["--background", "border"];

    // No segmenter: the score is the mesh against its own mask, and nothing is checked.
    let args = |out: &'static str| {
        let mut a = vec!["image-to-3d", "photo.png", "-o", out];
        a.extend(border);
        a
    };
    let out = s.orfeas_with_models(&models, &args("plain.glb"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let plain = text(&out.stdout);
    assert!(!plain.contains("mask agreement"), "{plain}");
    let base = number_after(&plain, "quality ");

    // With it: the border mask is held against the segmenter's own mask.
    install_tiny_models(&models);
    let out = s.orfeas_with_models(&models, &args("checked.glb"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let checked = text(&out.stdout);
    let agreement = number_after(&checked, "mask agreement: ");
    let scored = number_after(&checked, "quality ");

    // The same agreement, worked out here from the segmenter's cut-out (its
    // alpha) and the border mask, each thresholded at the middle.
    let out = s.orfeas_with_models(
        &models,
        &["remove-background", "photo.png", "-o", "cut.png"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let cut = image::open(s.path("cut.png")).unwrap().to_rgba8();
    let picture = image::open(s.path("photo.png")).unwrap().to_rgba8();
    let params = orfeas_core::image_to_3d::ImageTo3dParams {
        background: orfeas_core::request::Background::Border,
        ..Default::default()
    };
    let used = orfeas_core::image_to_3d::preview_mask(&picture, &params).unwrap();
    let (mut both, mut either) = (0u32, 0u32);
    for (m, c) in used.pixels().zip(cut.pixels()) {
        let (m, c) = (m.0[0] >= 128, c.0[3] >= 128);
        both += u32::from(m && c);
        either += u32::from(m || c);
    }
    let expected = if either == 0 {
        1.0
    } else {
        f64::from(both) / f64::from(either)
    };
    assert!(
        (agreement - expected).abs() < 0.002,
        "said {agreement}, the masks' IoU is {expected}"
    );
    // Printed with two decimals each, so the product is checked to ±0.01.
    assert!(
        (scored - base * agreement).abs() <= 0.011,
        "quality {scored} is not {base} × {agreement}"
    );
}

/// A PNG whose header declares `side`×`side` RGB and whose body is one empty
/// deflate block: refused from the header, never decoded.
fn png_declaring(side: u32) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    let chunk = |kind: &[u8; 4], data: &[u8]| {
        let mut out = (data.len() as u32).to_be_bytes().to_vec();
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32(&body).to_be_bytes());
        out
    };
    let mut ihdr = side.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&side.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    bytes.extend(chunk(b"IHDR", &ihdr));
    bytes.extend(chunk(
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    ));
    bytes.extend(chunk(b"IEND", &[]));
    bytes
}

#[test]
fn the_segmenter_path_refuses_bad_pictures_and_a_corrupt_checkpoint_and_writes_nothing() {
    let s = Sandbox::new();
    let models = s.path("models");
    install_tiny_models(&models);
    std::fs::write(s.path("huge.png"), png_declaring(16384)).unwrap();
    RgbaImage::from_pixel(1, 1, Rgba([200, 40, 30, 255]))
        .save(s.path("dot.png"))
        .unwrap();
    write_opaque_photo(&s.path("photo.png"));
    let neural = |input: &str, out: &str| {
        vec![
            "image-to-3d".to_owned(),
            input.to_owned(),
            "-o".to_owned(),
            out.to_owned(),
            "--background".to_owned(),
            "neural".to_owned(),
        ]
    };
    let run = |args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        s.orfeas_with_models(&models, &args)
    };
    let cut = |input: &str, out: &str| {
        vec![
            "remove-background".to_owned(),
            input.to_owned(),
            "-o".to_owned(),
            out.to_owned(),
        ]
    };

    for (args, out, says) in [
        (neural("huge.png", "huge.glb"), "huge.glb", "16384×16384"),
        (
            cut("huge.png", "huge-cut.png"),
            "huge-cut.png",
            "16384×16384",
        ),
        (neural("dot.png", "dot.glb"), "dot.glb", "1×1"),
        (cut("dot.png", "dot-cut.png"), "dot-cut.png", "1×1"),
    ] {
        let out_status = run(args.clone());
        let stderr = text(&out_status.stderr);
        assert!(!out_status.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(!s.path(out).exists(), "{args:?} wrote {out}");
    }

    // A checkpoint cut short (an interrupted copy): named as corrupt, with the way out.
    let weights = models.join("birefnet-lite/model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    for (args, out) in [
        (neural("photo.png", "p.glb"), "p.glb"),
        (cut("photo.png", "p-cut.png"), "p-cut.png"),
    ] {
        let result = run(args.clone());
        let stderr = text(&result.stderr);
        assert!(
            !result.status.success(),
            "{args:?} succeeded on a corrupt checkpoint"
        );
        assert!(
            stderr.contains("model.safetensors") && stderr.to_lowercase().contains("corrupt"),
            "{args:?}: {stderr}"
        );
        assert!(!s.path(out).exists(), "{args:?} wrote {out}");
    }
}

#[test]
fn version_shows_commit_features_and_model_licences() {
    let sandbox = Sandbox::new();
    let long = sandbox.orfeas(&["--version"]);
    assert!(long.status.success());
    let version = text(&long.stdout);
    let first = version.lines().next().unwrap_or_default();
    assert!(
        first.starts_with(&format!("orfeas {}", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );
    let commit = version
        .lines()
        .find_map(|l| l.strip_prefix("commit:"))
        .map(str::trim)
        .unwrap_or_default();
    assert!(
        !commit.is_empty() && commit != "unknown",
        "a build from git names its commit: {version}"
    );
    assert!(
        version.contains("features: none (CPU inference only)"),
        "{version}"
    );
    for model in orfeas_ml::models::KNOWN_MODELS {
        assert!(
            version.contains(&format!("{}: {}", model.name, model.licence)),
            "{} and its licence are listed: {version}",
            model.name
        );
    }
    let short = sandbox.orfeas(&["-V"]);
    assert_eq!(
        text(&short.stdout).trim(),
        format!("orfeas {} (commit {commit})", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn open_refuses_files_it_cannot_show_before_any_window_opens() {
    let sandbox = Sandbox::new();
    std::fs::write(sandbox.path("notes.txt"), "not a mesh").unwrap();
    let out = sandbox.orfeas(&["open", "notes.txt"]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("cannot open notes.txt") && stderr.contains(".glb"),
        "{stderr}"
    );
    let out = sandbox.orfeas(&["open", "missing.glb"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("does not exist"),
        "{}",
        text(&out.stderr)
    );
}
