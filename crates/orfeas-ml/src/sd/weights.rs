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

/// One tensor's entry in a safetensors header.
#[derive(serde::Deserialize)]
struct HeaderEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [u64; 2],
}

/// Reads every tensor of a safetensors file onto `device`, one tensor at a
/// time: peak memory is the tensors plus the largest one's bytes, not twice
/// the file (reading the whole file first made a 3.5 GB UNet cost 7 GB).
pub(crate) fn read_safetensors(
    path: &Path,
    device: &Device,
) -> Result<std::collections::HashMap<String, Tensor>> {
    use std::io::{Read, Seek, SeekFrom};
    let corrupt = |reason: String| SdError::CorruptWeights {
        path: path.to_path_buf(),
        reason,
    };
    let (mut file, header) = crate::models::read_safetensors_header(path)?;
    let mut entries = header
        .tensors
        .into_iter()
        .map(|(name, v)| {
            serde_json::from_value::<HeaderEntry>(v)
                .map(|e| (name.clone(), e))
                .map_err(|e| corrupt(format!("tensor {name}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    // In file order, so the reads are sequential.
    entries.sort_by_key(|(_, e)| e.data_offsets[0]);
    let data_start = header.data_start;
    // On the CPU the f32 tensors stay in the file's pages (no copy), where the
    // process allows it (`memory::MappedFile`).
    let mapped = if device.is_cpu() {
        usize::try_from(header.file_len)
            .ok()
            .and_then(|len| crate::memory::MappedFile::map(&file, len))
    } else {
        None
    };
    let mut bytes = Vec::new();
    let mut out = std::collections::HashMap::with_capacity(entries.len());
    for (name, e) in entries {
        let dtype = match e.dtype.as_str() {
            "F32" => DType::F32,
            "F16" => DType::F16,
            "BF16" => DType::BF16,
            "F64" => DType::F64,
            "I64" => DType::I64,
            "U32" => DType::U32,
            "U8" => DType::U8,
            other => {
                return Err(corrupt(format!(
                    "tensor {name}: dtype {other} is not supported"
                )));
            }
        };
        let [start, end] = e.data_offsets;
        let n_bytes = end
            .checked_sub(start)
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| n == e.shape.iter().product::<usize>() * dtype.size_in_bytes())
            .ok_or_else(|| {
                corrupt(format!(
                    "tensor {name}: offsets {start}..{end} do not hold shape {:?}",
                    e.shape
                ))
            })?;
        let at = usize::try_from(data_start + start).ok();
        if let (DType::F32, Some(map), Some(at)) = (dtype, &mapped, at)
            && let Some(v) = map.vec_f32(at, n_bytes / 4)
        {
            let t = Tensor::from_vec(v, e.shape.as_slice(), device)
                .map_err(|err| corrupt(format!("tensor {name}: {err}")))?;
            out.insert(name, t);
            continue;
        }
        bytes.resize(n_bytes, 0);
        file.seek(SeekFrom::Start(data_start + start))
            .and_then(|_| file.read_exact(&mut bytes))
            .map_err(|err| corrupt(format!("tensor {name}: {err}")))?;
        let t = Tensor::from_raw_buffer(&bytes, dtype, &e.shape, device)
            .map_err(|err| corrupt(format!("tensor {name}: {err}")))?;
        out.insert(name, t);
    }
    Ok(out)
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
