//! Request validation: JSON bodies, query strings, uploaded images. Every
//! rejection is an [`ApiError`] with a stable code and the offending field.

use std::collections::BTreeMap;
use std::io::Cursor;

use serde::Serialize;
use serde_json::{Map, Value};

use super::Reply;

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
        if self.status == 413 {
            // The rest of an oversized body is not worth reading.
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

pub const MAX_PROMPT_CHARS: usize = 2000;
pub const STEPS_RANGE: (u64, u64) = (1, 150);
pub const GUIDANCE_RANGE: (f64, f64) = (0.0, 30.0);
pub const SIZE_RANGE: (u64, u64) = (64, 2048);
pub const BATCH_RANGE: (u64, u64) = (1, 8);
pub const MAX_SEED: u64 = u32::MAX as u64;

/// A validated `POST /api/text-to-image` body; absent fields are the model's defaults.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TextToImageBody {
    pub prompt: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub negative_prompt: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guidance: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduler: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub style: Option<String>,
}

const TEXT_TO_IMAGE_FIELDS: [&str; 11] = [
    "prompt",
    "negative_prompt",
    "model",
    "steps",
    "guidance",
    "seed",
    "width",
    "height",
    "batch",
    "scheduler",
    "style",
];

/// Parses and checks a text→image JSON body.
pub fn text_to_image(body: &[u8]) -> Result<TextToImageBody, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid(
            400,
            "invalid_json",
            "body",
            format!("the body is not valid JSON ({e}); send a JSON object"),
        )
    })?;
    let Value::Object(obj) = value else {
        return Err(ApiError::invalid(
            422,
            "invalid_type",
            "body",
            "the body must be a JSON object such as {\"prompt\": \"a red fox\"}",
        ));
    };
    if let Some(unknown) = obj
        .keys()
        .find(|k| !TEXT_TO_IMAGE_FIELDS.contains(&k.as_str()))
    {
        return Err(ApiError::invalid(
            422,
            "unknown_field",
            bounded_name(unknown),
            format!(
                "unknown field; allowed fields are {}",
                TEXT_TO_IMAGE_FIELDS.join(", ")
            ),
        ));
    }
    let prompt = string(&obj, "prompt", MAX_PROMPT_CHARS)?
        .ok_or_else(|| ApiError::invalid(422, "missing_field", "prompt", "a prompt is required"))?;
    if prompt.trim().is_empty() {
        return Err(ApiError::invalid(
            422,
            "out_of_range",
            "prompt",
            "the prompt must not be empty",
        ));
    }
    let model = string(&obj, "model", 128)?;
    if let Some(m) = &model
        && (m.is_empty()
            || !m
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c)))
    {
        return Err(ApiError::invalid(
            422,
            "invalid_value",
            "model",
            "model names use letters, digits and . _ - / only; see `orfeas models list`",
        ));
    }
    let scheduler = string(&obj, "scheduler", 64)?;
    if let Some(s) = &scheduler
        && (s.is_empty()
            || !s
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-+".contains(c)))
    {
        return Err(ApiError::invalid(
            422,
            "invalid_value",
            "scheduler",
            "scheduler names use letters, digits and _ - + only",
        ));
    }
    let style = string(&obj, "style", 32)?;
    if let Some(s) = &style
        && !crate::telemetry::metrics::STYLES.contains(&s.as_str())
    {
        return Err(ApiError::invalid(
            422,
            "invalid_value",
            "style",
            format!(
                "unknown style; use one of {}",
                crate::telemetry::metrics::STYLES.join(", ")
            ),
        ));
    }
    let size = |name| -> Result<Option<u32>, ApiError> {
        let v = integer(&obj, name, SIZE_RANGE)?;
        if let Some(v) = v
            && v % 8 != 0
        {
            return Err(ApiError::invalid(
                422,
                "out_of_range",
                name,
                "width and height must be multiples of 8",
            ));
        }
        Ok(v.map(|v| v as u32))
    };
    Ok(TextToImageBody {
        negative_prompt: string(&obj, "negative_prompt", MAX_PROMPT_CHARS)?,
        model,
        steps: integer(&obj, "steps", STEPS_RANGE)?.map(|v| v as u32),
        guidance: number(&obj, "guidance", GUIDANCE_RANGE)?,
        seed: integer(&obj, "seed", (0, MAX_SEED))?,
        width: size("width")?,
        height: size("height")?,
        batch: integer(&obj, "batch", BATCH_RANGE)?.map(|v| v as u32),
        scheduler,
        style,
        prompt,
    })
}

/// Field names echoed back are bounded so an error body never grows with input.
fn bounded_name(name: &str) -> &str {
    match name.char_indices().nth(64) {
        Some((i, _)) => &name[..i],
        None => name,
    }
}

fn string(
    obj: &Map<String, Value>,
    name: &str,
    max_chars: usize,
) -> Result<Option<String>, ApiError> {
    match obj.get(name) {
        None => Ok(None),
        Some(Value::String(s)) if s.chars().count() <= max_chars => Ok(Some(s.clone())),
        Some(Value::String(_)) => Err(ApiError::invalid(
            422,
            "too_long",
            name,
            format!("at most {max_chars} characters"),
        )),
        Some(_) => Err(ApiError::invalid(
            422,
            "invalid_type",
            name,
            "must be a string",
        )),
    }
}

fn integer(
    obj: &Map<String, Value>,
    name: &str,
    (lo, hi): (u64, u64),
) -> Result<Option<u64>, ApiError> {
    match obj.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(v) if (lo..=hi).contains(&v) => Ok(Some(v)),
            _ if n.is_u64() || n.is_i64() => Err(ApiError::invalid(
                422,
                "out_of_range",
                name,
                format!("must be between {lo} and {hi}"),
            )),
            _ => Err(ApiError::invalid(
                422,
                "invalid_type",
                name,
                "must be an integer",
            )),
        },
        Some(_) => Err(ApiError::invalid(
            422,
            "invalid_type",
            name,
            "must be an integer",
        )),
    }
}

fn number(
    obj: &Map<String, Value>,
    name: &str,
    (lo, hi): (f64, f64),
) -> Result<Option<f64>, ApiError> {
    match obj.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(v) if v >= lo && v <= hi => Ok(Some(v)),
            _ => Err(ApiError::invalid(
                422,
                "out_of_range",
                name,
                format!("must be between {lo} and {hi}"),
            )),
        },
        Some(_) => Err(ApiError::invalid(
            422,
            "invalid_type",
            name,
            "must be a number",
        )),
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
pub const IMAGE_TO_3D_PARAMS: [&str; 3] = ["format", "quality", "method"];

/// Options of `POST /api/image-to-3d` (query or multipart text fields).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageTo3dOptions {
    pub format: &'static str,
    pub quality: &'static str,
    pub method: &'static str,
}

pub fn image_to_3d_options(
    params: &BTreeMap<String, String>,
) -> Result<ImageTo3dOptions, ApiError> {
    only_known(params, &IMAGE_TO_3D_PARAMS)?;
    Ok(ImageTo3dOptions {
        format: query_choice(params, "format", &MESH_FORMATS)?.unwrap_or("glb"),
        quality: query_choice(params, "quality", &QUALITIES)?.unwrap_or("standard"),
        method: query_choice(params, "method", &METHODS)?.unwrap_or("inflate"),
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

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbaImage::from_pixel(w, h, image::Rgba([200, 10, 10, 255]));
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
        out
    }

    #[test]
    fn a_minimal_text_to_image_body_is_accepted() {
        let body = text_to_image(br#"{"prompt":"a red fox","steps":4,"width":512}"#).unwrap();
        assert_eq!(body.prompt, "a red fox");
        assert_eq!(body.steps, Some(4));
        assert_eq!(body.width, Some(512));
        assert_eq!(body.height, None);
    }

    #[test]
    fn each_bad_text_to_image_field_is_named() {
        let cases: [(&[u8], u16, &str); 13] = [
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
        ];
        for (body, status, field) in cases {
            let err = text_to_image(body).unwrap_err();
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
            ("obj", "high", "inflate")
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
