//! Where files live (data, config, cache; `ORFEAS_DATA_DIR` overrides) and atomic writes.

use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Errors from locating directories or writing files atomically.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("cannot determine a home directory for the data folder; set ORFEAS_DATA_DIR")]
    NoHome,
    #[error("output directory {dir} does not exist; create it or choose another output path")]
    MissingDir { dir: PathBuf },
    #[error("cannot write {path}: {source}; check that the folder exists and is writable")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The app's data directory (history database, outputs). `ORFEAS_DATA_DIR` overrides.
pub fn data_dir() -> Result<PathBuf, PathError> {
    if let Some(dir) = std::env::var_os("ORFEAS_DATA_DIR") {
        return Ok(PathBuf::from(dir));
    }
    directories::ProjectDirs::from("org", "orfeas", "orfeas-studio")
        .map(|dirs| dirs.data_dir().to_path_buf())
        .ok_or(PathError::NoHome)
}

/// Where generated files go by default.
pub fn outputs_dir() -> Result<PathBuf, PathError> {
    Ok(data_dir()?.join("outputs"))
}

/// Writes `path` atomically: the bytes go to a temporary file in the same
/// directory, which is synced and then renamed over `path`. A failure leaves
/// no partial file behind (the temporary file is removed on drop).
pub fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>,
) -> Result<(), PathError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(PathError::MissingDir { dir });
    }
    let err = |source| PathError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".orfeas-")
        .suffix(".tmp")
        .tempfile_in(&dir)
        .map_err(err)?;
    {
        let mut buf = std::io::BufWriter::new(tmp.as_file_mut());
        write(&mut buf).map_err(err)?;
        buf.flush().map_err(err)?;
    }
    tmp.as_file().sync_all().map_err(err)?;
    tmp.persist(path).map_err(|e| err(e.error))?;
    Ok(())
}

/// Convenience for writing a whole byte buffer atomically.
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<(), PathError> {
    write_atomic(path, |w| w.write_all(bytes))
}
