//! Request validation: JSON bodies, query strings, uploaded images. Every
//! rejection is an [`ApiError`] with a stable code and the offending field.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::PathBuf;

use serde_json::Value;

use super::Reply;
use crate::request::{
    ExportFormat, ImageTo3dMethod, ImageTo3dRequest, Quality, RequestError, TextToImageRequest,
    TripoSrOptions,
};

/// An API error: the status, a stable `code`, a message that says what to do,
/// and the field at fault. Never carries a local path or a backtrace.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
    pub retry_after_secs: Option<u64>,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after_secs: None,
        }
    }

    /// A rejected input (400/413/415/422), counted in `validation_errors_total`.
    pub fn invalid(
        status: u16,
        code: &'static str,
        field: &str,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError {
            field: Some(field.to_owned()),
            ..ApiError::new(status, code, message)
        }
    }

    pub fn retry_after(mut self, secs: u64) -> ApiError {
        self.retry_after_secs = Some(secs);
        self
    }

    /// True for rejections of the request's content (counted as validation errors).
    pub fn is_validation(&self) -> bool {
        matches!(self.status, 400 | 413 | 415 | 422)
    }

    /// The bounded `validation_errors_total{field}` value for this error.
    pub fn field_label(&self) -> &'static str {
        field_label(self.field.as_deref().unwrap_or("body"))
    }

    pub fn to_reply(&self) -> Reply {
        let mut reply = Reply::json(
            self.status,
            &serde_json::json!({
                "error": { "code": self.code, "message": self.message, "field": self.field }
            }),
        );
        if let Some(secs) = self.retry_after_secs {
            reply.extra_headers.push(("Retry-After", secs.to_string()));
        }
        if matches!(self.status, 408 | 413) {
            // The rest of an oversized or stalled body is not worth reading.
            reply.extra_headers.push(("Connection", "close".to_owned()));
        }
        reply
    }
}

/// Maps a request field to the bounded label set of the metrics contract.
pub fn field_label(field: &str) -> &'static str {
    match field {
        "width" | "height" => "size",
        f => crate::telemetry::metrics::VALIDATION_FIELDS
            .iter()
            .find(|known| **known == f)
            .copied()
            .unwrap_or("other"),
    }
}

// ---- text → image ------------------------------------------------------

/// Request fields that name files on the server: never taken from a client.
const SERVER_PATH_FIELDS: [&str; 5] = [
    "model_path",
    "init_image",
    "init_latents",
    "tiny_decoder_path",
    "device",
];

/// The one conversion of a `POST /api/text-to-image` JSON body into a
/// [`TextToImageRequest`]: unknown fields, fields that would name server
/// files or devices, and values outside the request's limits are refused with
/// the field named. A missing seed is drawn at random (and then recorded).
pub fn text_to_image(
    body: &[u8],
    random_seed: impl FnOnce() -> u64,
) -> Result<TextToImageRequest, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid(
            400,
            "invalid_json",
            "body",
            format!("the body is not valid JSON ({e}); send a JSON object"),
        )
    })?;
    let Value::Object(obj) = &value else {
        return Err(ApiError::invalid(
            422,
            "invalid_type",
            "body",
            "the body must be a JSON object such as {\"prompt\": \"a red fox\"}",
        ));
    };
    if let Some(field) = obj
        .keys()
        .find(|k| SERVER_PATH_FIELDS.contains(&k.as_str()))
    {
        return Err(ApiError::invalid(
            422,
            "unknown_field",
            bounded_name(field),
            "this field names a file or device of the server and is not accepted over HTTP; \
             the server's operator chooses models and devices",
        ));
    }
    if !obj.contains_key("prompt") {
        return Err(ApiError::invalid(
            422,
            "missing_field",
            "prompt",
            "a prompt is required",
        ));
    }
    let seed_given = obj.contains_key("seed");
    let mut request: TextToImageRequest =
        serde_path_to_error::deserialize(&value).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner().to_string();
            match inner.strip_prefix("unknown field `") {
                Some(rest) => {
                    let name = rest.split('`').next().unwrap_or("other");
                    ApiError::invalid(
                        422,
                        "unknown_field",
                        bounded_name(name),
                        format!(
                            "unknown field; allowed fields are {}",
                            TEXT_TO_IMAGE_FIELDS.join(", ")
                        ),
                    )
                }
                None => {
                    let field = if path == "." || path.is_empty() {
                        "body"
                    } else {
                        path.as_str()
                    };
                    ApiError::invalid(422, "invalid_type", bounded_name(field), inner)
                }
            }
        })?;
    if !seed_given {
        request.seed = random_seed();
    }
    request.check().map_err(request_error)?;
    Ok(request)
}

/// The fields a client may send to `POST /api/text-to-image`.
pub const TEXT_TO_IMAGE_FIELDS: [&str; 13] = [
    "prompt",
    "negative_prompt",
    "model",
    "style",
    "steps",
    "guidance",
    "width",
    "height",
    "seed",
    "batch",
    "scheduler",
    "decoder",
    "precision",
];

/// A request check that failed, as a 422 naming the field.
pub fn request_error(err: RequestError) -> ApiError {
    let code = match err.field {
        "prompt" | "negative_prompt" if err.message.contains("longer") => "too_long",
        _ => "out_of_range",
    };
    ApiError::invalid(422, code, err.field, err.message)
}

/// Field names echoed back are bounded so an error body never grows with input.
fn bounded_name(name: &str) -> &str {
    match name.char_indices().nth(64) {
        Some((i, _)) => &name[..i],
        None => name,
    }
}

// ---- query strings -----------------------------------------------------

/// Percent-decoded `key=value` pairs of a URL's query. Repeated keys are an
/// error (which one would win is a guess).
pub fn query(url: &str) -> Result<BTreeMap<String, String>, ApiError> {
    let mut out = BTreeMap::new();
    let Some((_, q)) = url.split_once('?') else {
        return Ok(out);
    };
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let bad = || {
            ApiError::invalid(
                400,
                "invalid_query",
                "other",
                "the query string is not valid percent-encoding",
            )
        };
        let k = percent_decode(k).ok_or_else(bad)?;
        let v = percent_decode(v).ok_or_else(bad)?;
        if out.contains_key(&k) {
            return Err(ApiError::invalid(
                422,
                "duplicate_parameter",
                bounded_name(&k),
                "give each query parameter once",
            ));
        }
        out.insert(k, v);
    }
    Ok(out)
}

/// Decodes `%XX` and `+`; `None` for bad escapes or non-UTF-8 results.
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Rejects parameters outside `allowed`.
pub fn only_known(params: &BTreeMap<String, String>, allowed: &[&str]) -> Result<(), ApiError> {
    match params.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(ApiError::invalid(
            422,
            "unknown_parameter",
            bounded_name(k),
            format!("unknown parameter; allowed: {}", allowed.join(", ")),
        )),
        None => Ok(()),
    }
}

/// An optional integer query parameter within a range.
pub fn query_int(
    params: &BTreeMap<String, String>,
    name: &str,
    (lo, hi): (u64, u64),
) -> Result<Option<u64>, ApiError> {
    match params.get(name) {
        None => Ok(None),
        Some(v) => match v.parse::<u64>() {
            Ok(n) if (lo..=hi).contains(&n) => Ok(Some(n)),
            _ => Err(ApiError::invalid(
                422,
                "out_of_range",
                name,
                format!("must be an integer between {lo} and {hi}"),
            )),
        },
    }
}

/// An optional parameter from a fixed set of words.
pub fn query_choice(
    params: &BTreeMap<String, String>,
    name: &str,
    choices: &[&'static str],
) -> Result<Option<&'static str>, ApiError> {
    match params.get(name) {
        None => Ok(None),
        Some(v) => choices
            .iter()
            .find(|c| c.eq_ignore_ascii_case(v))
            .copied()
            .map(Some)
            .ok_or_else(|| {
                ApiError::invalid(
                    422,
                    "invalid_value",
                    name,
                    format!("use one of {}", choices.join(", ")),
                )
            }),
    }
}

// ---- image → 3D --------------------------------------------------------

pub const MESH_FORMATS: [&str; 4] = ["glb", "obj", "ply", "stl"];
pub const QUALITIES: [&str; 3] = ["draft", "standard", "high"];
pub const METHODS: [&str; 2] = ["inflate", "triposr"];
pub const IMAGE_TO_3D_PARAMS: [&str; 7] = [
    "format",
    "quality",
    "method",
    "background",
    "mc_resolution",
    "mc_threshold",
    "bake_texture",
];

/// Options of `POST /api/image-to-3d` (query or multipart text fields).
#[derive(Clone, Debug, PartialEq)]
pub struct ImageTo3dOptions {
    pub format: ExportFormat,
    pub quality: Quality,
    pub method: ImageTo3dMethod,
    pub background: crate::request::Background,
    pub triposr: TripoSrOptions,
}

impl ImageTo3dOptions {
    /// The one conversion of these options into the typed request, once the
    /// upload is stored at `input` and the output path chosen.
    pub fn into_request(
        self,
        input: PathBuf,
        output: PathBuf,
    ) -> Result<ImageTo3dRequest, ApiError> {
        let mut request = ImageTo3dRequest::new(input, output, self.format);
        request.method = self.method;
        request.params.quality = self.quality;
        request.params.background = self.background;
        request.triposr = self.triposr;
        request.check().map_err(request_error)?;
        Ok(request)
    }
}

pub fn image_to_3d_options(
    params: &BTreeMap<String, String>,
) -> Result<ImageTo3dOptions, ApiError> {
    only_known(params, &IMAGE_TO_3D_PARAMS)?;
    let parse = |name: &str, choices: &[&'static str], default: &'static str| {
        query_choice(params, name, choices).map(|c| c.unwrap_or(default))
    };
    let typed = |r: Result<_, RequestError>| r.map_err(request_error);
    let format = parse("format", &MESH_FORMATS, "glb")?;
    let format = ExportFormat::ALL
        .into_iter()
        .find(|f| f.as_str() == format)
        .unwrap_or(ExportFormat::Glb);
    let quality: Quality = parse("quality", &QUALITIES, "standard")?
        .parse()
        .unwrap_or_default();
    let method = typed(parse("method", &METHODS, "inflate")?.parse::<ImageTo3dMethod>())?;
    let background = parse(
        "background",
        &["auto", "alpha", "neural", "border", "none"],
        "auto",
    )?
    .parse::<crate::request::Background>()
    .map_err(request_error)?;
    let mut triposr = TripoSrOptions::default();
    if method != ImageTo3dMethod::TripoSr
        && let Some(name) = ["mc_resolution", "mc_threshold", "bake_texture"]
            .into_iter()
            .find(|n| params.contains_key(*n))
    {
        return Err(ApiError::invalid(
            422,
            "invalid_value",
            name,
            "only applies to method=triposr",
        ));
    }
    let (lo, hi) = crate::request::MC_RESOLUTION_RANGE;
    if let Some(n) = query_int(params, "mc_resolution", (u64::from(lo), u64::from(hi)))? {
        triposr.mc_resolution = n as u32;
    }
    if let Some(t) = params.get("mc_threshold") {
        triposr.mc_threshold = t
            .trim()
            .parse::<f32>()
            .ok()
            .filter(|t| t.is_finite())
            .ok_or_else(|| {
                ApiError::invalid(
                    422,
                    "out_of_range",
                    "mc_threshold",
                    "must be a number, e.g. 25",
                )
            })?;
    }
    if let Some(b) = query_choice(params, "bake_texture", &["true", "false", "1", "0"])? {
        triposr.bake_texture = matches!(b, "true" | "1");
    }
    Ok(ImageTo3dOptions {
        format,
        quality,
        method,
        background,
        triposr,
    })
}

/// Image size limits checked from the header, before any pixel is decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageLimits {
    pub max_side_px: u32,
    pub max_pixels: u64,
}

impl Default for ImageLimits {
    fn default() -> Self {
        ImageLimits {
            max_side_px: 4096,
            max_pixels: 16 * 1024 * 1024,
        }
    }
}

/// What was learnt about an accepted upload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    /// File extension for the stored copy: `png`, `jpg`, `webp`.
    pub extension: &'static str,
    pub width: u32,
    pub height: u32,
}

/// The image formats accepted, by their MIME type.
pub const IMAGE_TYPES: [&str; 3] = ["image/png", "image/jpeg", "image/webp"];

/// Identifies an image by its magic bytes (never by a name or header alone).
pub fn sniff(bytes: &[u8]) -> Option<(image::ImageFormat, &'static str, &'static str)> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some((image::ImageFormat::Png, "png", "image/png"))
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some((image::ImageFormat::Jpeg, "jpg", "image/jpeg"))
    } else if bytes.len() >= 12 && bytes.starts_with(b"RIFF") && bytes.get(8..12) == Some(b"WEBP") {
        Some((image::ImageFormat::WebP, "webp", "image/webp"))
    } else {
        None
    }
}

/// Checks an uploaded image: a supported format (by content), dimensions
/// within `limits` (read from the header first), and a full decode under an
/// allocation cap, so an accepted job never fails on its input file.
pub fn image(bytes: &[u8], limits: ImageLimits) -> Result<ImageInfo, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::invalid(
            422,
            "missing_image",
            "image",
            "the image is empty",
        ));
    }
    let (format, extension, _) = sniff(bytes).ok_or_else(|| {
        ApiError::invalid(
            415,
            "unsupported_image",
            "image",
            "the image is not PNG, JPEG or WebP; convert it to PNG",
        )
    })?;
    let unreadable = |_| {
        ApiError::invalid(
            422,
            "invalid_image",
            "image",
            "the image cannot be read (truncated or damaged); export it again as PNG",
        )
    };
    let (width, height) = image::ImageReader::with_format(Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(unreadable)?;
    if width == 0
        || height == 0
        || width > limits.max_side_px
        || height > limits.max_side_px
        || u64::from(width) * u64::from(height) > limits.max_pixels
    {
        return Err(ApiError::invalid(
            413,
            "image_too_large",
            "image",
            format!(
                "the image is {width}x{height}; the limit is {} px per side and {} pixels; scale it down",
                limits.max_side_px, limits.max_pixels
            ),
        ));
    }
    let mut reader = image::ImageReader::with_format(Cursor::new(bytes), format);
    let mut decode_limits = image::Limits::default();
    decode_limits.max_image_width = Some(limits.max_side_px);
    decode_limits.max_image_height = Some(limits.max_side_px);
    // RGBA16 of the largest allowed image, plus decoder working space.
    decode_limits.max_alloc = Some(limits.max_pixels.saturating_mul(8).saturating_add(64 << 20));
    reader.limits(decode_limits);
    reader.decode().map_err(unreadable)?;
    Ok(ImageInfo {
        extension,
        width,
        height,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbaImage::from_pixel(w, h, image::Rgba([200, 10, 10, 255]));
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
        out
    }

    #[test]
    fn a_minimal_text_to_image_body_is_accepted() {
        let body = text_to_image(br#"{"prompt":"a red fox","steps":4,"width":512}"#, || 9).unwrap();
        assert_eq!(body.prompt, "a red fox");
        assert_eq!(body.steps, Some(4));
        assert_eq!(body.width, Some(512));
        assert_eq!(body.height, None);
        assert_eq!(body.seed, 9, "a missing seed is drawn");
    }

    #[test]
    fn every_listed_field_is_a_request_field() {
        // A field renamed on one side (list or struct) fails here.
        for field in TEXT_TO_IMAGE_FIELDS {
            let value = match field {
                "prompt" | "negative_prompt" => json!("x"),
                "model" => json!("sd-turbo"),
                "style" => json!("anime"),
                "scheduler" => json!("euler-a"),
                "decoder" => json!("taesd"),
                "precision" => json!("f16"),
                "guidance" => json!(1.5),
                "width" | "height" => json!(64),
                _ => json!(1),
            };
            let mut body = json!({ "prompt": "a fox" });
            body[field] = value;
            let r = text_to_image(body.to_string().as_bytes(), || 0);
            assert!(r.is_ok(), "{field}: {r:?}");
        }
    }

    #[test]
    fn each_bad_text_to_image_field_is_named() {
        let cases: [(&[u8], u16, &str); 16] = [
            (b"{", 400, "body"),
            (b"[]", 422, "body"),
            (br#"{}"#, 422, "prompt"),
            (br#"{"prompt":"  "}"#, 422, "prompt"),
            (br#"{"prompt":3}"#, 422, "prompt"),
            (br#"{"prompt":"x","steps":0}"#, 422, "steps"),
            (br#"{"prompt":"x","steps":1.5}"#, 422, "steps"),
            (br#"{"prompt":"x","guidance":30.5}"#, 422, "guidance"),
            (br#"{"prompt":"x","width":100}"#, 422, "width"),
            (br#"{"prompt":"x","height":4096}"#, 422, "height"),
            (br#"{"prompt":"x","batch":9}"#, 422, "batch"),
            (br#"{"prompt":"x","colour":"red"}"#, 422, "colour"),
            (br#"{"prompt":"x","style":null}"#, 422, "style"),
            (br#"{"prompt":"x","scheduler":"euler_a"}"#, 422, "scheduler"),
            (br#"{"prompt":"x","negative":"blur"}"#, 422, "negative"),
            (br#"{"prompt":"x","model_path":"/etc"}"#, 422, "model_path"),
        ];
        for (body, status, field) in cases {
            let err = text_to_image(body, || 0).unwrap_err();
            assert_eq!(
                (err.status, err.field.as_deref()),
                (status, Some(field)),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn labels_stay_in_the_contract() {
        assert_eq!(field_label("width"), "size");
        assert_eq!(field_label("steps"), "steps");
        assert_eq!(field_label("colour"), "other");
    }

    #[test]
    fn queries_are_decoded_and_checked() {
        let q = query("/x?format=OBJ&quality=high&a%20b=c+d").unwrap();
        assert_eq!(q.get("a b").map(String::as_str), Some("c d"));
        assert!(query("/x?a=%zz").is_err());
        assert!(query("/x?a=1&a=2").is_err());
        let mut q = query("/x?format=OBJ&quality=high").unwrap();
        let opts = image_to_3d_options(&q).unwrap();
        assert_eq!(
            (opts.format, opts.quality, opts.method),
            (ExportFormat::Obj, Quality::High, ImageTo3dMethod::Inflate)
        );
        let mut t = q.clone();
        t.insert("mc_resolution".into(), "64".into());
        assert_eq!(
            image_to_3d_options(&t).unwrap_err().field.as_deref(),
            Some("mc_resolution"),
            "TripoSR's parameters are refused for inflate"
        );
        t.insert("method".into(), "triposr".into());
        let opts = image_to_3d_options(&t).unwrap();
        assert_eq!(
            (opts.method, opts.triposr.mc_resolution),
            (ImageTo3dMethod::TripoSr, 64)
        );
        q.insert("colour".into(), "red".into());
        assert_eq!(
            image_to_3d_options(&q).unwrap_err().field.as_deref(),
            Some("colour")
        );
    }

    #[test]
    fn images_are_checked_by_content_and_size() {
        let ok = image(&png(8, 6), ImageLimits::default()).unwrap();
        assert_eq!((ok.extension, ok.width, ok.height), ("png", 8, 6));
        let big = image(
            &png(40, 10),
            ImageLimits {
                max_side_px: 32,
                max_pixels: 1 << 20,
            },
        )
        .unwrap_err();
        assert_eq!(big.status, 413);
        let mut truncated = png(64, 64);
        truncated.truncate(truncated.len() / 2);
        assert_eq!(
            image(&truncated, ImageLimits::default())
                .unwrap_err()
                .status,
            422
        );
        assert_eq!(
            image(b"GIF89a....", ImageLimits::default())
                .unwrap_err()
                .status,
            415
        );
    }
}
