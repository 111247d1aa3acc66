//! Bad input: each case is a clear error, a bounded reason, and no output file.

use std::path::{Path, PathBuf};

use image::{Rgba, RgbaImage};
use orfeas_core::export::{self, ExportFormat};
use orfeas_core::image_input::{self, ImageLimits};
use orfeas_core::image_to_3d::{self, ImageTo3dError, ImageTo3dParams, ImageTo3dRequest};

use super::image_to_3d::disc;

struct Case {
    dir: tempfile::TempDir,
}

impl Case {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn input(&self, bytes: &[u8]) -> PathBuf {
        let path = self.dir.path().join("in.png");
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn run(&self, input: PathBuf, output: PathBuf) -> ImageTo3dError {
        let req = ImageTo3dRequest {
            input,
            output,
            format: ExportFormat::Glb,
            params: ImageTo3dParams::default(),
            method: Default::default(),
            triposr: Default::default(),
            mask: None,
        };
        let err = image_to_3d::run_file(&req, &mut |_, _| {}, &|| false).unwrap_err();
        // Nothing but the input is left in the folder.
        let files: Vec<String> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "in.png")
            .collect();
        assert!(files.is_empty(), "left behind: {files:?} after {err}");
        err
    }

    fn run_bytes(&self, bytes: &[u8]) -> ImageTo3dError {
        let input = self.input(bytes);
        self.run(input, self.dir.path().join("out.glb"))
    }
}

fn input_reason(err: &ImageTo3dError) -> &'static str {
    match err {
        ImageTo3dError::Input(e) => e.reason(),
        other => other.reason(),
    }
}

fn png(image: &RgbaImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    image.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

#[test]
fn missing_and_empty_files() {
    let case = Case::new();
    let err = case.run(
        case.dir.path().join("nope.png"),
        case.dir.path().join("out.glb"),
    );
    assert_eq!(
        (err.reason(), input_reason(&err)),
        ("invalid_image", "not_found"),
        "{err}"
    );
    assert!(err.to_string().contains("nope.png"), "{err}");
    let err = case.run_bytes(b"");
    assert_eq!(input_reason(&err), "empty", "{err}");
}

#[test]
fn text_gif_and_bmp_files_are_unsupported() {
    let case = Case::new();
    let err = case.run_bytes(b"hello, I am not a picture\n");
    assert_eq!(input_reason(&err), "unsupported_format", "{err}");
    assert!(err.to_string().contains("PNG, JPEG or WebP"), "{err}");
    let gif = b"GIF89a\x10\x00\x10\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00!\xf9\x04\x00\x00\x00\x00\x00,\x00\x00\x00\x00\x10\x00\x10\x00\x00\x02\x02D\x01\x00;";
    let err = case.run_bytes(gif);
    assert_eq!(input_reason(&err), "unsupported_format", "{err}");
    assert!(err.to_string().contains("GIF"), "{err}");
    let mut bmp = b"BM".to_vec();
    bmp.extend_from_slice(&[0u8; 60]);
    assert_eq!(input_reason(&case.run_bytes(&bmp)), "unsupported_format");
}

#[test]
fn truncated_png_is_corrupt() {
    let case = Case::new();
    let bytes = png(&disc());
    let err = case.run_bytes(&bytes[..bytes.len() / 2]);
    assert_eq!(input_reason(&err), "corrupt", "{err}");
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
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

fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
    out
}

#[test]
fn decompression_bomb_is_refused_from_the_header() {
    // A valid PNG header declaring 40000×40000 RGBA (6.4 GB decoded) and a tiny body.
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&40000u32.to_be_bytes());
    ihdr.extend_from_slice(&40000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 6, 0, 0, 0]);
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    bytes.extend(chunk(b"IHDR", &ihdr));
    bytes.extend(chunk(
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    ));
    bytes.extend(chunk(b"IEND", &[]));
    let case = Case::new();
    let err = case.run_bytes(&bytes);
    assert_eq!(input_reason(&err), "too_large", "{err}");
    assert!(err.to_string().contains("40000×40000"), "{err}");
    // Tighter limits refuse smaller images too.
    let limits = ImageLimits {
        max_pixels: 100,
        ..Default::default()
    };
    let err = image_input::decode_image(&png(&disc()), &limits).unwrap_err();
    assert_eq!(err.reason(), "too_large");
}

#[test]
fn images_without_a_foreground_are_refused() {
    let case = Case::new();
    let clear = RgbaImage::from_pixel(64, 64, Rgba([10, 200, 10, 0]));
    let err = case.run_bytes(&png(&clear));
    assert_eq!(err.reason(), "no_foreground", "{err}");
    assert!(err.to_string().contains("transparent"), "{err}");
    let uniform = RgbaImage::from_pixel(64, 64, Rgba([120, 90, 200, 255]));
    let err = case.run_bytes(&png(&uniform));
    assert_eq!(err.reason(), "no_foreground", "{err}");
}

#[test]
fn a_one_pixel_image_is_too_small() {
    let case = Case::new();
    let err = case.run_bytes(&png(&RgbaImage::from_pixel(1, 1, Rgba([255, 0, 0, 255]))));
    assert_eq!(input_reason(&err), "too_small", "{err}");
    assert!(err.to_string().contains("1×1"), "{err}");
    let err = image_to_3d::generate(
        &RgbaImage::new(1, 1),
        &ImageTo3dParams::default(),
        &mut |_, _| {},
        &|| false,
    )
    .unwrap_err();
    assert_eq!(input_reason(&err), "too_small");
}

#[test]
fn output_in_a_missing_folder_or_under_a_file_is_refused() {
    let case = Case::new();
    let input = case.input(&png(&disc()));
    let err = case.run(input.clone(), case.dir.path().join("missing/sub/out.glb"));
    assert_eq!(err.reason(), "io", "{err}");
    assert!(err.to_string().contains("does not exist"), "{err}");
    // A file used as a folder.
    let err = case.run(input.clone(), input.join("out.glb"));
    assert_eq!(err.reason(), "io", "{err}");
    assert!(err.to_string().contains("not a folder"), "{err}");
    // The output path is an existing folder.
    let err = case.run(input, case.dir.path().to_path_buf());
    assert_eq!(err.reason(), "io", "{err}");
}

/// Whether this process can write into a folder it made read-only (root can).
fn read_only_is_enforced(dir: &Path) -> bool {
    std::fs::write(dir.join("probe"), b"x").is_err()
}

#[test]
fn output_in_a_read_only_folder_is_refused_without_partial_files() {
    use std::os::unix::fs::PermissionsExt as _;
    let case = Case::new();
    let mesh = image_to_3d::generate(
        &disc(),
        &ImageTo3dParams::default(),
        &mut |_, _| {},
        &|| false,
    )
    .unwrap()
    .mesh;
    let ro = case.dir.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    if read_only_is_enforced(&ro) {
        for format in ExportFormat::ALL {
            let err =
                export::export_mesh(&mesh, &ro.join(format!("out.{format}")), format).unwrap_err();
            assert_eq!(err.reason(), "io", "{err}");
            assert!(err.to_string().contains("writable"), "{err}");
        }
    } else {
        eprintln!(
            "note: running as root, chmod does not stop writes; testing a read-only filesystem path instead"
        );
        let _ = std::fs::remove_file(ro.join("probe"));
        // /proc is not writable for regular files even for root.
        let target = Path::new("/proc/orfeas-test-out.glb");
        let err = export::export_mesh(&mesh, target, ExportFormat::Glb).unwrap_err();
        assert_eq!(err.reason(), "io", "{err}");
        assert!(!target.exists());
    }
    assert_eq!(
        std::fs::read_dir(&ro).unwrap().count(),
        0,
        "partial files in the read-only folder"
    );
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn unknown_output_extension_is_refused_before_any_work() {
    let err = ExportFormat::from_path(Path::new("out.fbx")).unwrap_err();
    assert!(err.to_string().contains("'fbx'"), "{err}");
    assert!(
        err.to_string().contains(".glb, .obj, .ply or .stl"),
        "{err}"
    );
}
