//! PyTorch `.ckpt` / `.pt` files (the zip layout `torch.save` writes since
//! torch 1.6) read without running any of their code.
//!
//! A checkpoint's `data.pkl` is a pickle program; a normal unpickler imports
//! and calls whatever globals it names, so a malicious file can run anything.
//! This one interprets the opcodes itself and knows only the globals a state
//! dict needs: `torch._utils._rebuild_tensor_v2` (and `_rebuild_parameter`,
//! which only wraps a tensor), `collections.OrderedDict` and the
//! `torch.*Storage` types, each turned into plain data here. Any other global
//! (`os.system`, `builtins.exec`, …) stops the read with an error naming it;
//! nothing is ever called. Tensor bytes come from the zip's `data/<key>` entries.

mod pickle;

use std::collections::HashMap;
use std::io::{Read, Seek};
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::error::{Result, SdError};
use pickle::{PResult, TensorRef};

/// The tensors of a `.ckpt` file (on the CPU, in their stored dtypes), read
/// without running any code: see the module docs.
pub fn read_state_dict(path: &Path) -> Result<HashMap<String, Tensor>> {
    let file = std::fs::File::open(path).map_err(|e| SdError::io(path, e))?;
    read_state_dict_from(std::io::BufReader::new(file), path)
}

/// [`read_state_dict`] from any seekable reader; `path` names it in errors.
pub fn read_state_dict_from<R: Read + Seek>(
    mut reader: R,
    path: &Path,
) -> Result<HashMap<String, Tensor>> {
    let corrupt = |reason: String| SdError::CorruptWeights {
        path: path.to_path_buf(),
        reason,
    };
    let mut magic = [0u8; 2];
    reader
        .read_exact(&mut magic)
        .map_err(|_| corrupt("the file is too short to be a checkpoint".into()))?;
    if &magic != b"PK" {
        return Err(corrupt(
            "not a zip-format PyTorch checkpoint (files from torch < 1.6 use an older layout); \
             re-save it with a current torch.save or convert it to .safetensors"
                .into(),
        ));
    }
    reader
        .seek(std::io::SeekFrom::Start(0))
        .map_err(|e| SdError::io(path, e))?;
    let mut zip =
        zip::ZipArchive::new(reader).map_err(|e| corrupt(format!("unreadable zip: {e}")))?;
    let pkl_name = zip
        .file_names()
        .filter_map(|n| n.ok())
        .find(|n| n.ends_with("data.pkl") && n.matches('/').count() <= 1)
        .map(|n| n.into_owned())
        .ok_or_else(|| corrupt("no data.pkl inside: not a torch.save checkpoint".into()))?;
    let prefix = pkl_name.trim_end_matches("data.pkl").to_owned();
    let read_entry = |zip: &mut zip::ZipArchive<R>, name: &str| -> Result<Vec<u8>> {
        let mut entry = zip
            .by_name(name)
            .map_err(|e| corrupt(format!("cannot open {name} inside: {e}")))?;
        // The declared size is only a hint (a hostile file may lie); the read stops at the real end.
        let hint = usize::try_from(entry.size()).unwrap_or(0).min(256 << 20);
        let mut bytes = Vec::with_capacity(hint);
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| corrupt(format!("cannot read {name} inside: {e}")))?;
        Ok(bytes)
    };
    let byteorder = format!("{prefix}byteorder");
    if zip.index_for_name(&byteorder).is_some() && read_entry(&mut zip, &byteorder)? != b"little" {
        return Err(corrupt(
            "tensors are stored big-endian; re-save the checkpoint on a little-endian machine"
                .into(),
        ));
    }
    let pickle = read_entry(&mut zip, &pkl_name)?;
    let entries = pickle::state_dict_tensors(&pickle).map_err(corrupt)?;

    // One storage in memory at a time: its tensors are copied out, then it is dropped.
    let mut by_storage: Vec<(String, Vec<(String, TensorRef)>)> = Vec::new();
    for (name, t) in entries {
        match by_storage.iter_mut().find(|(k, _)| *k == t.storage.key) {
            Some((_, list)) => list.push((name, t)),
            None => by_storage.push((t.storage.key.clone(), vec![(name, t)])),
        }
    }
    let mut out = HashMap::new();
    for (key, tensors) in by_storage {
        let bytes = read_entry(&mut zip, &format!("{prefix}data/{key}"))?;
        for (name, t) in tensors {
            let tensor =
                materialize(&t, &bytes).map_err(|e| corrupt(format!("tensor {name}: {e}")))?;
            out.insert(name, tensor);
        }
    }
    Ok(out)
}

/// Copies a strided view out of its storage bytes into a contiguous CPU tensor.
fn materialize(t: &TensorRef, storage: &[u8]) -> PResult<Tensor> {
    let dtype = t.storage.kind.dtype();
    let es = dtype.size_in_bytes();
    let have = storage.len() / es;
    if have < t.storage.numel {
        return Err(format!(
            "its storage holds {have} elements, the pickle says {}",
            t.storage.numel
        ));
    }
    let numel: usize = t.size.iter().product();
    let raw = if numel == 0 {
        Vec::new()
    } else {
        let last = t
            .size
            .iter()
            .zip(&t.stride)
            .try_fold(t.offset, |acc, (&n, &s)| {
                acc.checked_add((n - 1).checked_mul(s)?)
            })
            .filter(|&l| l < t.storage.numel)
            .ok_or_else(|| "its view reaches past the end of its storage".to_owned())?;
        let contiguous = t
            .size
            .iter()
            .zip(&t.stride)
            .rev()
            .try_fold(1usize, |expect, (&n, &s)| {
                (n == 1 || s == expect).then_some(expect * n)
            })
            .is_some();
        if contiguous {
            storage[t.offset * es..(last + 1) * es].to_vec()
        } else {
            let mut raw = Vec::with_capacity(numel * es);
            let mut index = vec![0usize; t.size.len()];
            for _ in 0..numel {
                let at = t.offset
                    + index
                        .iter()
                        .zip(&t.stride)
                        .map(|(i, s)| i * s)
                        .sum::<usize>();
                raw.extend_from_slice(&storage[at * es..(at + 1) * es]);
                for d in (0..index.len()).rev() {
                    index[d] += 1;
                    if index[d] < t.size[d] {
                        break;
                    }
                    index[d] = 0;
                }
            }
            raw
        }
    };
    Tensor::from_raw_buffer(&raw, dtype, &t.size, &Device::Cpu).map_err(|e| e.to_string())
}
