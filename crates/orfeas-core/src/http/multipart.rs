//! `multipart/form-data` (RFC 7578) uploads, parsed by `multer` from a body
//! already read under the body size limit.

use std::convert::Infallible;

use axum::body::Bytes;
use futures_util::FutureExt as _;

/// One form field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part {
    pub name: String,
    pub filename: Option<String>,
    pub content_type: Option<String>,
    pub data: Bytes,
}

/// Why a body is not valid multipart.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum MultipartError {
    #[error("the Content-Type has no multipart boundary")]
    NoBoundary,
    #[error("the form is malformed ({0})")]
    Malformed(String),
    #[error("a part has no form-data name")]
    NoName,
    #[error("too many parts (at most {0})")]
    TooManyParts(usize),
}

/// At most this many parts; a form here has an image and a few options.
pub const MAX_PARTS: usize = 16;

/// The boundary parameter of a `multipart/form-data` Content-Type value.
pub fn boundary(content_type: &str) -> Option<String> {
    multer::parse_boundary(content_type)
        .ok()
        .filter(|b| !b.is_empty() && b.len() <= 70)
}

/// Splits `body` into parts.
pub fn parse(content_type: &str, body: Bytes) -> Result<Vec<Part>, MultipartError> {
    let boundary = boundary(content_type).ok_or(MultipartError::NoBoundary)?;
    let stream = futures_util::stream::iter([Ok::<Bytes, Infallible>(body)]);
    let mut form = multer::Multipart::new(stream, boundary);
    let parts = async move {
        let mut parts = Vec::new();
        while let Some(field) = form.next_field().await.map_err(malformed)? {
            if parts.len() == MAX_PARTS {
                return Err(MultipartError::TooManyParts(MAX_PARTS));
            }
            let name = field
                .name()
                .filter(|n| !n.is_empty())
                .ok_or(MultipartError::NoName)?
                .to_owned();
            let filename = field.file_name().map(str::to_owned);
            let content_type = field.content_type().map(|m| m.to_string());
            let data = field.bytes().await.map_err(malformed)?;
            parts.push(Part {
                name,
                filename,
                content_type,
                data,
            });
        }
        Ok(parts)
    };
    // The whole body is one ready chunk, so parsing never waits: polled once,
    // the future is done.
    parts.now_or_never().unwrap_or_else(|| {
        Err(MultipartError::Malformed(
            "the parser stopped before the end of the body".to_owned(),
        ))
    })
}

fn malformed(err: multer::Error) -> MultipartError {
    match err {
        multer::Error::NoBoundary => MultipartError::NoBoundary,
        other => MultipartError::Malformed(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CT: &str = "multipart/form-data; boundary=XyZ";

    fn parts(body: &'static [u8]) -> Result<Vec<Part>, MultipartError> {
        parse(CT, Bytes::from_static(body))
    }

    #[test]
    fn parses_a_file_and_a_text_field() {
        let body = b"preamble\r\n--XyZ\r\nContent-Disposition: form-data; name=\"image\"; filename=\"cat.png\"\r\nContent-Type: image/png\r\n\r\n\x89PNG\r\n--XyZ\r\nContent-Disposition: form-data; name=\"format\"\r\n\r\nobj\r\n--XyZ--\r\n";
        let parts = parts(body).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].name, "image");
        assert_eq!(parts[0].filename.as_deref(), Some("cat.png"));
        assert_eq!(parts[0].content_type.as_deref(), Some("image/png"));
        assert_eq!(parts[0].data.as_ref(), b"\x89PNG");
        assert_eq!(parts[1].name, "format");
        assert_eq!(parts[1].data.as_ref(), b"obj");
    }

    #[test]
    fn truncated_and_malformed_bodies_are_errors() {
        let truncated = b"--XyZ\r\nContent-Disposition: form-data; name=\"image\"\r\n\r\nabc";
        assert!(matches!(
            parts(truncated),
            Err(MultipartError::Malformed(_))
        ));
        assert_eq!(
            parse("multipart/form-data", Bytes::from_static(b"--XyZ--")),
            Err(MultipartError::NoBoundary)
        );
        assert!(matches!(
            parts(b"nothing here"),
            Err(MultipartError::Malformed(_))
        ));
        let nameless = b"--XyZ\r\nContent-Disposition: form-data\r\n\r\nabc\r\n--XyZ--";
        assert_eq!(parts(nameless), Err(MultipartError::NoName));
    }

    #[test]
    fn too_many_parts_are_refused() {
        let mut body = Vec::new();
        for i in 0..=MAX_PARTS {
            body.extend_from_slice(
                format!("--XyZ\r\nContent-Disposition: form-data; name=\"f{i}\"\r\n\r\nx\r\n")
                    .as_bytes(),
            );
        }
        body.extend_from_slice(b"--XyZ--\r\n");
        assert_eq!(
            parse(CT, Bytes::from(body)),
            Err(MultipartError::TooManyParts(MAX_PARTS))
        );
    }

    #[test]
    fn quoted_boundaries_are_accepted() {
        assert_eq!(
            boundary("multipart/form-data; charset=utf-8; boundary=\"a b\"").as_deref(),
            Some("a b")
        );
        assert_eq!(boundary("application/json; boundary=x"), None);
    }
}
