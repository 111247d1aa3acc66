//! Image decoding with limits: PNG, JPEG, WebP; everything else rejected clearly.
//!
//! Dimensions are read from the file header and checked before any pixel is
//! decoded, so a small file that declares 40000×40000 pixels (a decompression
//! bomb) is refused without allocating gigabytes.

use std::io::Cursor;
use std::path::{Path, PathBuf};

/// File extensions of the pictures we read (lowercase).
pub const PICTURE_EXTENSIONS: [&str; 4] = ["png", "jpg", "jpeg", "webp"];

/// The pictures (by extension, any case) directly in `folder`, sorted by name.
pub fn pictures_in(folder: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(folder)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| PICTURE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        })
        .collect();
    out.sort();
    Ok(out)
}

/// Limits on the images we accept.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ImageLimits {
    pub max_bytes: u64,
    pub max_width: u32,
    pub max_height: u32,
    pub max_pixels: u64,
    /// Smallest accepted width and height; below this there is no shape to inflate.
    pub min_side: u32,
}

impl Default for ImageLimits {
    fn default() -> Self {
        Self {
            max_bytes: 256 * 1024 * 1024,
            max_width: 16384,
            max_height: 16384,
            max_pixels: 64 * 1024 * 1024,
            min_side: 8,
        }
    }
}

/// Why an input image was refused.
#[derive(Debug, thiserror::Error)]
pub enum ImageInputError {
    #[error("input image {path} does not exist; check the path")]
    NotFound { path: PathBuf },
    #[error("cannot read input image {path}: {source}; check that the file is readable")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the input image is empty (0 bytes); choose a PNG, JPEG or WebP image")]
    Empty,
    #[error("the input is {found}, which is not supported; convert it to PNG, JPEG or WebP")]
    UnsupportedFormat { found: String },
    #[error(
        "the input image is damaged or truncated ({detail}); re-export it as PNG, JPEG or WebP"
    )]
    Corrupt { detail: String },
    #[error(
        "the input image is too large ({detail}); the limit is {max_width}×{max_height} pixels, \
         {max_pixels} pixels in all and {max_bytes} bytes — scale it down first"
    )]
    TooLarge {
        detail: String,
        max_width: u32,
        max_height: u32,
        max_pixels: u64,
        max_bytes: u64,
    },
    #[error(
        "the input image is only {width}×{height} pixels; use an image at least {min_side}×{min_side}"
    )]
    TooSmall {
        width: u32,
        height: u32,
        min_side: u32,
    },
}

impl ImageInputError {
    /// A bounded label for metrics and history.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotFound { .. } => "not_found",
            Self::Read { .. } => "io",
            Self::Empty => "empty",
            Self::UnsupportedFormat { .. } => "unsupported_format",
            Self::Corrupt { .. } => "corrupt",
            Self::TooLarge { .. } => "too_large",
            Self::TooSmall { .. } => "too_small",
        }
    }
}

/// Decodes a PNG, JPEG or WebP image held in memory to RGBA8.
pub fn decode_image(
    bytes: &[u8],
    limits: &ImageLimits,
) -> Result<image::RgbaImage, ImageInputError> {
    if bytes.is_empty() {
        return Err(ImageInputError::Empty);
    }
    let too_large = |detail: String| ImageInputError::TooLarge {
        detail,
        max_width: limits.max_width,
        max_height: limits.max_height,
        max_pixels: limits.max_pixels,
        max_bytes: limits.max_bytes,
    };
    if bytes.len() as u64 > limits.max_bytes {
        return Err(too_large(format!("{} bytes", bytes.len())));
    }
    let format = match image::guess_format(bytes) {
        Ok(f @ (image::ImageFormat::Png | image::ImageFormat::Jpeg | image::ImageFormat::WebP)) => {
            f
        }
        Ok(other) => {
            return Err(ImageInputError::UnsupportedFormat {
                found: format!(
                    "a {} image",
                    other
                        .extensions_str()
                        .first()
                        .unwrap_or(&"?")
                        .to_uppercase()
                ),
            });
        }
        Err(_) => {
            return Err(ImageInputError::UnsupportedFormat {
                found: "not an image file (no PNG, JPEG or WebP signature)".to_owned(),
            });
        }
    };
    let corrupt = |e: image::ImageError| ImageInputError::Corrupt {
        detail: e.to_string(),
    };
    let (width, height) = image::ImageReader::with_format(Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(corrupt)?;
    if width > limits.max_width
        || height > limits.max_height
        || width as u64 * height as u64 > limits.max_pixels
    {
        return Err(too_large(format!("{width}×{height} pixels")));
    }
    if width < limits.min_side || height < limits.min_side {
        return Err(ImageInputError::TooSmall {
            width,
            height,
            min_side: limits.min_side,
        });
    }
    let mut reader = image::ImageReader::with_format(Cursor::new(bytes), format);
    let mut decode_limits = image::Limits::default();
    decode_limits.max_image_width = Some(limits.max_width);
    decode_limits.max_image_height = Some(limits.max_height);
    // RGBA8 of the largest accepted image plus the decoder's own buffers.
    decode_limits.max_alloc = Some(limits.max_pixels.saturating_mul(8));
    reader.limits(decode_limits);
    let decoded = reader.decode().map_err(|e| match e {
        image::ImageError::Limits(_) => too_large(format!("{width}×{height} pixels")),
        other => corrupt(other),
    })?;
    Ok(decoded.into_rgba8())
}

/// Reads and decodes an image file (see [`decode_image`]).
pub fn load_image(path: &Path, limits: &ImageLimits) -> Result<image::RgbaImage, ImageInputError> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ImageInputError::NotFound {
            path: path.to_path_buf(),
        },
        _ => ImageInputError::Read {
            path: path.to_path_buf(),
            source: e,
        },
    })?;
    if meta.is_dir() {
        return Err(ImageInputError::UnsupportedFormat {
            found: format!("a folder ({})", path.display()),
        });
    }
    if meta.len() > limits.max_bytes {
        return Err(ImageInputError::TooLarge {
            detail: format!("{} bytes", meta.len()),
            max_width: limits.max_width,
            max_height: limits.max_height,
            max_pixels: limits.max_pixels,
            max_bytes: limits.max_bytes,
        });
    }
    let bytes = std::fs::read(path).map_err(|e| ImageInputError::Read {
        path: path.to_path_buf(),
        source: e,
    })?;
    decode_image(&bytes, limits)
}
