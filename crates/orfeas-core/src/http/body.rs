//! Request bodies read under a byte limit and a time limit, and files
//! streamed out as response bodies.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::HeaderMap;
use http_body_util::{BodyExt as _, LengthLimitError, Limited};

use super::validate::ApiError;

/// Bytes read from a result file per body chunk.
const FILE_CHUNK_BYTES: usize = 64 * 1024;

/// The whole body, at most `limit` bytes, arriving within `timeout`.
///
/// A declared `Content-Length` above the limit is refused before anything is
/// read, so a hostile length costs nothing; a chunked body is cut off as
/// soon as it passes the limit. Either way the answer is 413 `body_too_large`.
pub(super) async fn read(
    headers: &HeaderMap,
    body: Body,
    limit: u64,
    timeout: Duration,
) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::invalid(
            413,
            "body_too_large",
            "body",
            format!("the body is larger than the {limit}-byte limit"),
        )
    };
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let limited = Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
    match tokio::time::timeout(timeout, limited.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(err)) if err.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Ok(Err(_)) => Err(ApiError::invalid(
            400,
            "incomplete_body",
            "body",
            "the body could not be read completely; send it again",
        )),
        Err(_) => Err(ApiError::new(
            408,
            "body_timeout",
            format!(
                "the body did not arrive within {} s; send it faster or in a smaller piece",
                timeout.as_secs()
            ),
        )),
    }
}

/// A response body that streams `file` from disk in chunks.
pub(super) fn file_body(file: std::fs::File) -> Body {
    let file = tokio::fs::File::from_std(file);
    let chunks = futures_util::stream::unfold(Some(file), |file| async move {
        use tokio::io::AsyncReadExt as _;
        let mut file = file?;
        let mut buf = vec![0u8; FILE_CHUNK_BYTES];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), Some(file)))
            }
            // The error ends the body; the client sees a cut-off download.
            Err(err) => Some((Err(err), None)),
        }
    });
    Body::from_stream(chunks)
}
