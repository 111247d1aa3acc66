//! A small, strict `multipart/form-data` parser (RFC 7578) for uploads held in
//! memory (the body size limit applies before parsing).

/// One form field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part<'a> {
    pub name: String,
    pub filename: Option<String>,
    pub content_type: Option<String>,
    pub data: &'a [u8],
}

/// Why a body is not valid multipart.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum MultipartError {
    #[error("the Content-Type has no multipart boundary")]
    NoBoundary,
    #[error("the body does not start with the multipart boundary")]
    NoFirstBoundary,
    #[error("a part has no end boundary; the upload may be truncated")]
    Unterminated,
    #[error("a part's headers are malformed")]
    BadHeaders,
    #[error("a part has no form-data name")]
    NoName,
    #[error("too many parts (at most {0})")]
    TooManyParts(usize),
}

/// At most this many parts; a form here has an image and a few options.
pub const MAX_PARTS: usize = 16;
const MAX_HEADER_BYTES: usize = 4096;

/// The boundary parameter of a `multipart/form-data` Content-Type value.
pub fn boundary(content_type: &str) -> Option<&str> {
    let mut params = content_type.split(';');
    let mime = params.next()?.trim();
    if !mime.eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    params
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| v.trim().trim_matches('"'))
        .filter(|b| !b.is_empty() && b.len() <= 70)
}

/// Splits `body` into parts.
pub fn parse<'a>(content_type: &str, body: &'a [u8]) -> Result<Vec<Part<'a>>, MultipartError> {
    let boundary = boundary(content_type).ok_or(MultipartError::NoBoundary)?;
    let delimiter = format!("--{boundary}");
    let delimiter = delimiter.as_bytes();
    let start = find(body, delimiter).ok_or(MultipartError::NoFirstBoundary)?;
    // Anything before the first delimiter is a preamble and is ignored.
    let mut rest = body.get(start + delimiter.len()..).unwrap_or_default();
    let mut parts = Vec::new();
    let next_delimiter = [b"\r\n".as_slice(), delimiter].concat();
    loop {
        if rest.starts_with(b"--") {
            return Ok(parts);
        }
        rest = rest
            .strip_prefix(b"\r\n")
            .ok_or(MultipartError::Unterminated)?;
        if parts.len() == MAX_PARTS {
            return Err(MultipartError::TooManyParts(MAX_PARTS));
        }
        let header_end = find(rest, b"\r\n\r\n").ok_or(MultipartError::BadHeaders)?;
        if header_end > MAX_HEADER_BYTES {
            return Err(MultipartError::BadHeaders);
        }
        // The slices below stay in bounds: `find` returned positions inside them.
        let headers =
            std::str::from_utf8(&rest[..header_end]).map_err(|_| MultipartError::BadHeaders)?;
        let content = &rest[header_end + 4..];
        let end = find(content, &next_delimiter).ok_or(MultipartError::Unterminated)?;
        let mut part = part_headers(headers)?;
        part.data = &content[..end];
        parts.push(part);
        rest = &content[end + next_delimiter.len()..];
    }
}

fn part_headers(headers: &str) -> Result<Part<'static>, MultipartError> {
    let mut name = None;
    let mut filename = None;
    let mut content_type = None;
    for line in headers.split("\r\n").filter(|l| !l.is_empty()) {
        let (key, value) = line.split_once(':').ok_or(MultipartError::BadHeaders)?;
        let key = key.trim();
        if key.eq_ignore_ascii_case("content-disposition") {
            let mut params = value.split(';');
            let kind = params.next().unwrap_or("").trim();
            if !kind.eq_ignore_ascii_case("form-data") {
                return Err(MultipartError::BadHeaders);
            }
            for param in params {
                let Some((k, v)) = param.split_once('=') else {
                    continue;
                };
                let v = v.trim().trim_matches('"').to_owned();
                match k.trim().to_ascii_lowercase().as_str() {
                    "name" => name = Some(v),
                    "filename" => filename = Some(v),
                    _ => {}
                }
            }
        } else if key.eq_ignore_ascii_case("content-type") {
            content_type = Some(value.trim().to_owned());
        }
    }
    Ok(Part {
        name: name
            .filter(|n| !n.is_empty())
            .ok_or(MultipartError::NoName)?,
        filename,
        content_type,
        data: &[],
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CT: &str = "multipart/form-data; boundary=XyZ";

    #[test]
    fn parses_a_file_and_a_text_field() {
        let body = b"preamble\r\n--XyZ\r\nContent-Disposition: form-data; name=\"image\"; filename=\"cat.png\"\r\nContent-Type: image/png\r\n\r\n\x89PNG\r\n--XyZ\r\nContent-Disposition: form-data; name=\"format\"\r\n\r\nobj\r\n--XyZ--\r\n";
        let parts = parse(CT, body).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].name, "image");
        assert_eq!(parts[0].filename.as_deref(), Some("cat.png"));
        assert_eq!(parts[0].content_type.as_deref(), Some("image/png"));
        assert_eq!(parts[0].data, b"\x89PNG");
        assert_eq!(parts[1].name, "format");
        assert_eq!(parts[1].data, b"obj");
    }

    #[test]
    fn truncated_and_malformed_bodies_are_errors() {
        let truncated = b"--XyZ\r\nContent-Disposition: form-data; name=\"image\"\r\n\r\nabc";
        assert_eq!(parse(CT, truncated), Err(MultipartError::Unterminated));
        assert_eq!(
            parse("multipart/form-data", b"--XyZ--"),
            Err(MultipartError::NoBoundary)
        );
        assert_eq!(
            parse(CT, b"nothing here"),
            Err(MultipartError::NoFirstBoundary)
        );
        let nameless = b"--XyZ\r\nContent-Disposition: form-data\r\n\r\nabc\r\n--XyZ--";
        assert_eq!(parse(CT, nameless), Err(MultipartError::NoName));
    }

    #[test]
    fn quoted_boundaries_are_accepted() {
        assert_eq!(
            boundary("multipart/form-data; charset=utf-8; boundary=\"a b\""),
            Some("a b")
        );
        assert_eq!(boundary("application/json; boundary=x"), None);
    }
}
