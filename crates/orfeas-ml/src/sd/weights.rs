//! Weight I/O shared by every model: safetensors files (single or sharded),
//! read with their header checked first, into a `VarBuilder`, and the errors
//! that name the damaged or mismatched file.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::error::{Result, SdError};

/// A part of a model folder that is not there.
pub(crate) fn missing(dir: &Path, part: String) -> SdError {
    SdError::MissingPart {
        dir: dir.parent().map(Path::to_path_buf).unwrap_or_default(),
        part: format!(
            "{}/{part}",
            dir.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        ),
    }
}

/// The weight files of one component: the first of `names` present in `dir`,
/// either as one file or sharded with a `NAME.index.json` (HF layout).
pub fn weight_files(dir: &Path, names: &[&str]) -> Result<Vec<PathBuf>> {
    for name in names {
        let single = dir.join(name);
        if single.is_file() {
            return Ok(vec![single]);
        }
        let index = dir.join(format!("{name}.index.json"));
        if index.is_file() {
            let json: serde_json::Value = crate::sd::read_config(&index)?;
            let map = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| SdError::Config {
                    path: index.clone(),
                    reason: "no weight_map object".into(),
                })?;
            let mut files: Vec<PathBuf> = Vec::new();
            for shard in map.values().filter_map(|v| v.as_str()) {
                let p = dir.join(shard);
                if !p.is_file() {
                    return Err(missing(dir, shard.to_owned()));
                }
                if !files.contains(&p) {
                    files.push(p);
                }
            }
            files.sort();
            return Ok(files);
        }
    }
    Err(missing(
        dir,
        names.first().copied().unwrap_or("weights").to_owned(),
    ))
}

/// Reads one safetensors file (header checked first) onto `device`, reporting
/// damage as `CorruptWeights`.
pub(crate) fn read_safetensors(
    path: &Path,
    device: &Device,
) -> Result<std::collections::HashMap<String, Tensor>> {
    crate::models::check_safetensors(path)?;
    // Read into memory rather than mmap: this crate forbids `unsafe`, and the
    // copy is small next to the model's run time.
    let bytes = std::fs::read(path).map_err(|e| SdError::io(path, e))?;
    candle_core::safetensors::load_buffer(&bytes, device).map_err(|e| SdError::CorruptWeights {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Reads safetensors files into a VarBuilder in `dtype`, reporting damage as `CorruptWeights`.
pub fn load_weights(
    files: &[PathBuf],
    dtype: DType,
    device: &Device,
) -> Result<VarBuilder<'static>> {
    let mut all = std::collections::HashMap::new();
    for path in files {
        for (name, t) in read_safetensors(path, device)? {
            // Convert once here so f32 checkpoints do not sit on the GPU twice.
            let t = if t.dtype().is_float() {
                t.to_dtype(dtype)?
            } else {
                t
            };
            all.insert(name, t);
        }
    }
    Ok(VarBuilder::from_tensors(all, dtype, device))
}

/// Turns tensor-lookup failures while building a model from `path` into a
/// damaged or mismatched weights file whose reason starts with `what`.
pub(crate) fn mismatch_err(path: &Path, what: String) -> impl Fn(SdError) -> SdError + use<> {
    let path = path.to_path_buf();
    move |e| match e {
        SdError::Candle(c) => SdError::CorruptWeights {
            path: path.clone(),
            reason: format!("{what}: {c}"),
        },
        other => other,
    }
}

/// [`mismatch_err`] for a model built from its config and `files`.
pub(crate) fn weights_err(files: &[PathBuf]) -> impl Fn(SdError) -> SdError + use<> {
    mismatch_err(
        files.first().map(PathBuf::as_path).unwrap_or(Path::new("")),
        "does not match its config".to_owned(),
    )
}
