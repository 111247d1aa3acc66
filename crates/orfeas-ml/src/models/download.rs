//! Plain-HTTPS downloads of a known model: resumable through `.part` files and
//! HTTP Range, checked against the server's size and SHA-256, renamed into place.
//!
//! The endpoint is `https://huggingface.co` unless `HF_ENDPOINT` says otherwise
//! (mirrors, and the local server the tests use).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::KnownModel;
use crate::error::{Result, SdError};

/// What a download progress callback hears.
#[derive(Debug, Clone)]
pub struct DownloadProgress {
    pub file: String,
    pub file_index: usize,
    pub file_count: usize,
    pub done_bytes: u64,
    /// Known once the server answered.
    pub total_bytes: Option<u64>,
}

fn default_endpoint() -> String {
    std::env::var("HF_ENDPOINT")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "https://huggingface.co".into())
        .trim_end_matches('/')
        .to_owned()
}

/// Size and SHA-256 the hub states for an LFS file (`x-linked-size`,
/// `x-linked-etag` on the un-followed redirect); absent for small git files.
fn probe(url: &str) -> (Option<u64>, Option<String>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .max_redirects(0)
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let Ok(resp) = agent.head(url).call() else {
        return (None, None);
    };
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.trim_matches('"').to_owned())
    };
    let size = header("x-linked-size").and_then(|s| s.parse().ok());
    let sha = header("x-linked-etag")
        .filter(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()));
    (size, sha)
}

fn sha256_of(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(|e| SdError::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| SdError::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(buf.get(..n).unwrap_or(&[]));
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Downloads one file into `dest` via `dest.part`, resuming a previous partial download;
/// checks the size and, where the server publishes it, the SHA-256, then renames into place.
pub fn fetch_file(
    url: &str,
    dest: &Path,
    progress: &mut dyn FnMut(u64, Option<u64>),
    cancelled: &AtomicBool,
) -> Result<()> {
    let (linked_size, sha) = probe(url);
    let part = dest.with_extension(
        dest.extension()
            .map(|e| format!("{}.part", e.to_string_lossy()))
            .unwrap_or_else(|| "part".into()),
    );
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(|e| SdError::io(parent, e))?;
    }
    let mut have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    if linked_size.is_some_and(|s| have > s) {
        have = 0;
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(30)))
        .build()
        .into();
    let mut req = agent.get(url);
    if have > 0 {
        req = req.header("Range", format!("bytes={have}-"));
    }
    let resp = req
        .call()
        .map_err(|e| SdError::Download(format!("{url}: {e}")))?;
    let status = resp.status().as_u16();
    let append = match status {
        206 => true,
        200 => false,
        // The part file already holds the whole file.
        416 if have > 0 => true,
        _ => return Err(SdError::Download(format!("{url}: HTTP {status}"))),
    };
    let content_len: Option<u64> = resp
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse().ok());
    let start = if append { have } else { 0 };
    let total = linked_size.or(content_len.map(|c| c + start));
    if status != 416 {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(&part)
            .map_err(|e| SdError::io(&part, e))?;
        let mut reader = resp.into_body().into_reader();
        let mut buf = vec![0u8; 1 << 16];
        let mut done = start;
        loop {
            if cancelled.load(Ordering::Relaxed) {
                // The part file stays for the next run to resume.
                return Err(SdError::Cancelled);
            }
            let n = reader
                .read(&mut buf)
                .map_err(|e| SdError::Download(format!("{url}: {e}")))?;
            if n == 0 {
                break;
            }
            file.write_all(buf.get(..n).unwrap_or(&[]))
                .map_err(|e| SdError::io(&part, e))?;
            done += n as u64;
            progress(done, total);
        }
        file.sync_all().map_err(|e| SdError::io(&part, e))?;
    }
    let got = std::fs::metadata(&part)
        .map_err(|e| SdError::io(&part, e))?
        .len();
    if let Some(expected) = total
        && got != expected
    {
        return Err(SdError::Download(format!(
            "{url}: got {got} bytes, expected {expected}"
        )));
    }
    if let Some(expected) = sha {
        let actual = sha256_of(&part)?;
        if actual != expected {
            // A corrupt part file cannot be resumed; start over next time.
            let _ = std::fs::remove_file(&part);
            return Err(SdError::Download(format!(
                "{url}: SHA-256 {actual} does not match the published {expected}"
            )));
        }
    }
    std::fs::rename(&part, dest).map_err(|e| SdError::io(dest, e))?;
    Ok(())
}

/// Downloads every file of `model` into `root/NAME/` (default root:
/// `models::default_models_root()`) from `endpoint` (default `HF_ENDPOINT` or
/// the hub), skipping files already present. Only ever called on the user's request.
pub fn download(
    model: &KnownModel,
    root: Option<&Path>,
    endpoint: Option<&str>,
    progress: &mut dyn FnMut(&DownloadProgress),
    cancelled: &AtomicBool,
) -> Result<PathBuf> {
    let root = match root {
        Some(r) => r.to_path_buf(),
        None => super::default_models_root()?,
    };
    let dir = root.join(model.name);
    let base = endpoint.map_or_else(default_endpoint, |e| e.trim_end_matches('/').to_owned());
    let count = model.files.len();
    for (i, file) in model.files.iter().enumerate() {
        let dest = dir.join(file.path);
        if dest.is_file() {
            continue;
        }
        let url = format!("{base}/{}/resolve/main/{}", model.repo_id, file.path);
        let mut report = |done: u64, total: Option<u64>| {
            progress(&DownloadProgress {
                file: file.path.to_owned(),
                file_index: i,
                file_count: count,
                done_bytes: done,
                total_bytes: total,
            })
        };
        fetch_file(&url, &dest, &mut report, cancelled)?;
        if dest.extension().is_some_and(|e| e == "safetensors") {
            super::check_safetensors(&dest)?;
        }
    }
    Ok(dir)
}
