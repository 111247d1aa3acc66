//! Test fixtures kept small in git. A model folder may hold only the rows of
//! its CLIP token embeddings that its tests use, in
//! `text_encoder*/token_embedding.rows.safetensors` (tensors `ids`, I64, and
//! `rows`, F32 `ids × hidden`). [`complete_model_dir`] writes the whole folder
//! elsewhere with the full embedding: those rows, zeros for the rest, in the
//! shard the folder's `model.safetensors.index.json` names. An embedding lookup
//! reads only the rows of the ids it is given, so every output for prompts whose
//! tokens are kept is exactly that of the original weights.

use std::path::Path;

use anyhow::{Context as _, anyhow};
use candle_core::{Device, Tensor};

/// The partial embedding inside a text encoder folder.
pub const ROWS_FILE: &str = "token_embedding.rows.safetensors";
const EMBEDDING: &str = "text_model.embeddings.token_embedding.weight";
/// The text encoder folders a model may have (SDXL has two).
const ENCODERS: [&str; 2] = ["text_encoder", "text_encoder_2"];
/// The BPE files a tokenizer folder may leave out (see [`complete_model_dir_with_vocab`]).
const VOCAB_FILES: [&str; 2] = ["vocab.json", "merges.txt"];

/// Copies the model folder `src` to `dst` (created), completing partial token
/// embeddings where `src` has them; a complete folder is copied as it is.
pub fn complete_model_dir(src: &Path, dst: &Path) -> anyhow::Result<()> {
    complete_model_dir_with_vocab(src, dst, None)
}

/// As [`complete_model_dir`], and copies `vocab.json` and `merges.txt` from
/// `vocab_dir` into every `tokenizer*/` folder that lacks them (the SDXL
/// fixture shares the SD fixture's 3 MB BPE files instead of holding copies).
pub fn complete_model_dir_with_vocab(
    src: &Path,
    dst: &Path,
    vocab_dir: Option<&Path>,
) -> anyhow::Result<()> {
    copy_tree(src, dst)?;
    for encoder in ENCODERS {
        complete_embedding(&src.join(encoder), &dst.join(encoder))?;
    }
    let Some(vocab_dir) = vocab_dir else {
        return Ok(());
    };
    for entry in std::fs::read_dir(dst)? {
        let dir = entry?.path();
        let is_tokenizer = dir
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("tokenizer"));
        if !is_tokenizer || !dir.is_dir() || dir.join("tokenizer.json").is_file() {
            continue;
        }
        for file in VOCAB_FILES {
            if !dir.join(file).is_file() {
                std::fs::copy(vocab_dir.join(file), dir.join(file))
                    .with_context(|| format!("cannot copy {file} from {}", vocab_dir.display()))?;
            }
        }
    }
    Ok(())
}

/// Writes the full token embedding of one encoder folder into the shard its
/// `model.safetensors.index.json` names, if `src` holds only some rows.
fn complete_embedding(src: &Path, dst: &Path) -> anyhow::Result<()> {
    let rows_path = src.join(ROWS_FILE);
    if !rows_path.is_file() {
        return Ok(());
    }
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json"))?)?;
    let vocab = config["vocab_size"]
        .as_u64()
        .ok_or_else(|| anyhow!("{}/config.json has no vocab_size", src.display()))?
        as usize;
    let hidden = config["hidden_size"]
        .as_u64()
        .ok_or_else(|| anyhow!("{}/config.json has no hidden_size", src.display()))?
        as usize;
    let tensor = full_embedding(&rows_path, vocab, hidden)?;

    let index: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        src.join("model.safetensors.index.json"),
    )?)?;
    let shard = index["weight_map"][EMBEDDING]
        .as_str()
        .ok_or_else(|| anyhow!("the index in {} does not place {EMBEDDING}", src.display()))?;
    let out = dst.join(shard);
    candle_core::safetensors::save(
        &std::collections::HashMap::from([(EMBEDDING, tensor)]),
        &out,
    )
    .with_context(|| format!("cannot write {}", out.display()))?;
    Ok(())
}

/// The full (vocab × hidden) table: the rows of `rows_path` (tensors `ids`
/// and `rows`) at their ids, zeros elsewhere.
fn full_embedding(rows_path: &Path, vocab: usize, hidden: usize) -> anyhow::Result<Tensor> {
    let tensors = candle_core::safetensors::load(rows_path, &Device::Cpu)
        .with_context(|| format!("cannot read {}", rows_path.display()))?;
    let get = |name: &str| {
        tensors
            .get(name)
            .ok_or_else(|| anyhow!("{} has no tensor {name}", rows_path.display()))
    };
    let ids: Vec<i64> = get("ids")?.to_vec1()?;
    let rows = get("rows")?;
    let (count, width) = rows.dims2()?;
    anyhow::ensure!(
        count == ids.len() && width == hidden,
        "{}: {count} rows of {width} for {} ids of width {hidden}",
        rows_path.display(),
        ids.len()
    );
    let rows: Vec<f32> = rows.flatten_all()?.to_vec1()?;
    let mut full = vec![0f32; vocab * hidden];
    for (row, &id) in rows.chunks_exact(hidden).zip(&ids) {
        let id = usize::try_from(id).ok().filter(|&i| i < vocab);
        let id = id.ok_or_else(|| anyhow!("token id outside the vocabulary of {vocab}"))?;
        full[id * hidden..(id + 1) * hidden].copy_from_slice(row);
    }
    Ok(Tensor::from_vec(full, (vocab, hidden), &Device::Cpu)?)
}

/// Copies `src` into `dst`, leaving out partial-embedding files.
fn copy_tree(src: &Path, dst: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dst).with_context(|| format!("cannot create {}", dst.display()))?;
    for entry in std::fs::read_dir(src).with_context(|| format!("cannot read {}", src.display()))? {
        let path = entry?.path();
        let target = dst.join(path.file_name().unwrap_or_default());
        if path.file_name().is_some_and(|n| n == ROWS_FILE) {
            continue;
        }
        if path.is_dir() {
            copy_tree(&path, &target)?;
        } else {
            std::fs::copy(&path, &target)
                .with_context(|| format!("cannot copy {}", path.display()))?;
        }
    }
    Ok(())
}

/// Writes the single-file checkpoint a sharded fixture folder stands for: every
/// tensor of the shards its `model.safetensors.index.json` lists, plus each full
/// token embedding its metadata names (rebuilt from the rows file it names).
pub fn complete_single_file(src: &Path, dst_file: &Path) -> anyhow::Result<()> {
    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(src.join("model.safetensors.index.json"))
            .with_context(|| format!("cannot read the index in {}", src.display()))?,
    )?;
    let mut shards: Vec<&str> = index["weight_map"]
        .as_object()
        .ok_or_else(|| anyhow!("the index has no weight_map"))?
        .values()
        .filter_map(|v| v.as_str())
        .collect();
    shards.sort_unstable();
    shards.dedup();
    let mut all = std::collections::HashMap::new();
    for shard in shards {
        all.extend(candle_core::safetensors::load(
            src.join(shard),
            &Device::Cpu,
        )?);
    }
    // One embedding (`token_embedding`) or several (`token_embeddings`).
    let meta = &index["metadata"];
    let specs: Vec<&serde_json::Value> = match meta["token_embeddings"].as_array() {
        Some(list) => list.iter().collect(),
        None if meta["token_embedding"].is_object() => vec![&meta["token_embedding"]],
        None => Vec::new(),
    };
    for spec in specs {
        let name = spec["tensor"]
            .as_str()
            .ok_or_else(|| anyhow!("a token embedding entry has no tensor name"))?;
        let dims: Vec<usize> = spec["shape"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|d| d.as_u64().map(|d| d as usize))
                    .collect()
            })
            .unwrap_or_default();
        let [vocab, hidden] = dims[..] else {
            anyhow::bail!("the token embedding shape {dims:?} of {name} is not 2-D");
        };
        let rows_file = spec["rows_file"].as_str().unwrap_or(ROWS_FILE);
        all.insert(
            name.to_owned(),
            full_embedding(&src.join(rows_file), vocab, hidden)?,
        );
    }
    if let Some(parent) = dst_file.parent() {
        std::fs::create_dir_all(parent)?;
    }
    candle_core::safetensors::save(&all, dst_file)
        .with_context(|| format!("cannot write {}", dst_file.display()))?;
    Ok(())
}
