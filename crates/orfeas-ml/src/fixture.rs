//! Test fixtures kept small in git. A model folder may hold only the rows of
//! its CLIP token embedding that its tests use, in
//! `text_encoder/token_embedding.rows.safetensors` (tensors `ids`, I64, and
//! `rows`, F32 `ids × hidden`). [`complete_model_dir`] writes the whole folder
//! elsewhere with the full embedding: those rows, zeros for the rest, in the
//! shard the folder's `model.safetensors.index.json` names. An embedding lookup
//! reads only the rows of the ids it is given, so every output for prompts whose
//! tokens are kept is exactly that of the original weights.

use std::path::Path;

use anyhow::{Context as _, anyhow};
use candle_core::{Device, Tensor};

/// The partial embedding, relative to the model folder.
pub const ROWS_FILE: &str = "text_encoder/token_embedding.rows.safetensors";
const EMBEDDING: &str = "text_model.embeddings.token_embedding.weight";

/// Copies the model folder `src` to `dst` (created), completing a partial token
/// embedding if `src` has one; a complete folder is copied as it is.
pub fn complete_model_dir(src: &Path, dst: &Path) -> anyhow::Result<()> {
    copy_tree(src, dst, &src.join(ROWS_FILE))?;
    let rows_path = src.join(ROWS_FILE);
    if !rows_path.is_file() {
        return Ok(());
    }
    let tensors = candle_core::safetensors::load(&rows_path, &Device::Cpu)
        .with_context(|| format!("cannot read {}", rows_path.display()))?;
    let get = |name: &str| {
        tensors
            .get(name)
            .ok_or_else(|| anyhow!("{} has no tensor {name}", rows_path.display()))
    };
    let ids: Vec<i64> = get("ids")?.to_vec1()?;
    let rows = get("rows")?;
    let (count, hidden) = rows.dims2()?;
    anyhow::ensure!(
        count == ids.len(),
        "{}: ids and rows differ in length",
        rows_path.display()
    );
    let rows: Vec<f32> = rows.flatten_all()?.to_vec1()?;

    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        src.join("text_encoder/config.json"),
    )?)?;
    let vocab = config["vocab_size"]
        .as_u64()
        .ok_or_else(|| anyhow!("text_encoder/config.json has no vocab_size"))?
        as usize;
    let mut full = vec![0f32; vocab * hidden];
    for (row, &id) in rows.chunks_exact(hidden).zip(&ids) {
        let id = usize::try_from(id).ok().filter(|&i| i < vocab);
        let id = id.ok_or_else(|| anyhow!("token id outside the vocabulary of {vocab}"))?;
        full[id * hidden..(id + 1) * hidden].copy_from_slice(row);
    }

    let index: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        src.join("text_encoder/model.safetensors.index.json"),
    )?)?;
    let shard = index["weight_map"][EMBEDDING]
        .as_str()
        .ok_or_else(|| anyhow!("the text encoder index does not place {EMBEDDING}"))?;
    let tensor = Tensor::from_vec(full, (vocab, hidden), &Device::Cpu)?;
    let out = dst.join("text_encoder").join(shard);
    candle_core::safetensors::save(
        &std::collections::HashMap::from([(EMBEDDING, tensor)]),
        &out,
    )
    .with_context(|| format!("cannot write {}", out.display()))?;
    Ok(())
}

fn copy_tree(src: &Path, dst: &Path, skip: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dst).with_context(|| format!("cannot create {}", dst.display()))?;
    for entry in std::fs::read_dir(src).with_context(|| format!("cannot read {}", src.display()))? {
        let path = entry?.path();
        let target = dst.join(path.file_name().unwrap_or_default());
        if path == skip {
            continue;
        }
        if path.is_dir() {
            copy_tree(&path, &target, skip)?;
        } else {
            std::fs::copy(&path, &target)
                .with_context(|| format!("cannot copy {}", path.display()))?;
        }
    }
    Ok(())
}
