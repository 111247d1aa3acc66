//! Stable Diffusion on candle, as separate stages: tokenize → encode text →
//! denoise (UNet + scheduler + CFG) → decode (VAE). `pipeline` ties them together.

pub mod attention;
pub mod clip;
pub mod noise;
pub mod pipeline;
pub mod resnet;
pub mod schedulers;
pub mod single_file;
pub mod taesd;
pub mod tokenizer;
pub mod unet;
pub mod vae;
pub mod weights;

use std::path::Path;

use crate::error::{Result, SdError};

/// Reads and parses a JSON config file, naming the file on failure.
pub(crate) fn read_config<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            SdError::MissingPart {
                dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
                part: path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            }
        } else {
            SdError::io(path, e)
        }
    })?;
    serde_json::from_str(&text).map_err(|e| SdError::Config {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}
