//! CLIP BPE tokenizer built from a model's `tokenizer/` folder.
//!
//! Diffusers folders ship `vocab.json` + `merges.txt` (and only sometimes a
//! `tokenizer.json`), so when `tokenizer.json` is absent the same pipeline is
//! assembled from those two files: NFC, whitespace collapse, lowercase, the CLIP
//! split regex, byte-level BPE with `</w>` word ends, BOS/EOS around the ids.

use std::path::Path;

use serde_json::{Value, json};

use crate::error::{Result, SdError};

/// Ids the CLIP text encoder expects.
pub const BOS_TOKEN: &str = "<|startoftext|>";
pub const EOS_TOKEN: &str = "<|endoftext|>";

/// A CLIP tokenizer that pads (or truncates) to `max_length` with the model's pad token.
pub struct ClipTokenizer {
    inner: tokenizers::Tokenizer,
    pad_id: u32,
    bos_id: u32,
    eos_id: u32,
    max_length: usize,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("pad_id", &self.pad_id)
            .field("max_length", &self.max_length)
            .finish()
    }
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| SdError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| SdError::Config {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// `pad_token` in tokenizer_config.json is either a string or an AddedToken object.
fn token_content(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    }
}

impl ClipTokenizer {
    /// Loads from a diffusers `tokenizer/` folder. The pad token comes from
    /// `tokenizer_config.json` (SD 2.x: `!`; SD 1.5: `<|endoftext|>`), default EOS.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let cfg_path = dir.join("tokenizer_config.json");
        let (pad_token, max_length) = if cfg_path.is_file() {
            let cfg = read_json(&cfg_path)?;
            let pad = cfg
                .get("pad_token")
                .and_then(token_content)
                .unwrap_or_else(|| EOS_TOKEN.to_owned());
            let max_len = cfg
                .get("model_max_length")
                .and_then(Value::as_u64)
                .filter(|&n| (2..=4096).contains(&n))
                .unwrap_or(77) as usize;
            (pad, max_len)
        } else {
            (EOS_TOKEN.to_owned(), 77)
        };
        let json_path = dir.join("tokenizer.json");
        let inner = if json_path.is_file() {
            tokenizers::Tokenizer::from_file(&json_path)
                .map_err(|e| SdError::Tokenizer(format!("{}: {e}", json_path.display())))?
        } else {
            let vocab_path = dir.join("vocab.json");
            let merges_path = dir.join("merges.txt");
            for p in [&vocab_path, &merges_path] {
                if !p.is_file() {
                    return Err(SdError::MissingPart {
                        dir: dir.to_path_buf(),
                        part: p
                            .file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default(),
                    });
                }
            }
            let vocab = read_json(&vocab_path)?;
            let merges =
                std::fs::read_to_string(&merges_path).map_err(|e| SdError::io(&merges_path, e))?;
            Self::build_from_parts(vocab, &merges, &pad_token)?
        };
        Self::new(inner, &pad_token, max_length)
    }

    /// A tokenizer from the contents of `vocab.json` and `merges.txt`.
    pub fn from_parts(
        vocab: Value,
        merges_txt: &str,
        pad_token: &str,
        max_length: usize,
    ) -> Result<Self> {
        let inner = Self::build_from_parts(vocab, merges_txt, pad_token)?;
        Self::new(inner, pad_token, max_length)
    }

    fn build_from_parts(
        vocab: Value,
        merges_txt: &str,
        pad_token: &str,
    ) -> Result<tokenizers::Tokenizer> {
        let merges: Vec<Value> = merges_txt
            .lines()
            .filter(|l| !l.starts_with("#version") && !l.trim().is_empty())
            .filter_map(|l| {
                let mut it = l.split(' ');
                Some(json!([it.next()?, it.next()?]))
            })
            .collect();
        let id_of = |tok: &str| vocab.get(tok).and_then(Value::as_u64);
        let mut added = Vec::new();
        for tok in [pad_token, BOS_TOKEN, EOS_TOKEN] {
            let id = id_of(tok)
                .ok_or_else(|| SdError::Tokenizer(format!("token {tok:?} is not in vocab.json")))?;
            if !added.iter().any(|a: &Value| a["content"] == tok) {
                added.push(
                    json!({"id": id, "content": tok, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": true}),
                );
            }
        }
        let (bos, eos) = (id_of(BOS_TOKEN), id_of(EOS_TOKEN));
        let spec = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": {"type": "Sequence", "normalizers": [
                {"type": "NFC"},
                {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "},
                {"type": "Lowercase"}]},
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex":
                    "<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+"},
                 "behavior": "Removed", "invert": true},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}]},
            "post_processor": {"type": "RobertaProcessing", "sep": [EOS_TOKEN, eos], "cls": [BOS_TOKEN, bos],
                "trim_offsets": false, "add_prefix_space": false},
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": EOS_TOKEN, "continuing_subword_prefix": "",
                "end_of_word_suffix": "</w>", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                "vocab": vocab, "merges": merges},
        });
        let text = spec.to_string();
        text.parse::<tokenizers::Tokenizer>().map_err(|e| {
            SdError::Tokenizer(format!(
                "building the CLIP tokenizer from vocab.json/merges.txt: {e}"
            ))
        })
    }

    fn new(inner: tokenizers::Tokenizer, pad_token: &str, max_length: usize) -> Result<Self> {
        let id = |t: &str| {
            inner.token_to_id(t).ok_or_else(|| {
                SdError::Tokenizer(format!("token {t:?} is missing from the vocabulary"))
            })
        };
        Ok(Self {
            pad_id: id(pad_token)?,
            bos_id: id(BOS_TOKEN)?,
            eos_id: id(EOS_TOKEN)?,
            inner,
            max_length,
        })
    }

    /// Ids between BOS and EOS, neither truncated nor padded.
    pub fn encode_unpadded(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| SdError::Tokenizer(e.to_string()))?;
        let mut ids = Vec::with_capacity(enc.get_ids().len() + 2);
        ids.push(self.bos_id);
        ids.extend_from_slice(enc.get_ids());
        ids.push(self.eos_id);
        Ok(ids)
    }

    /// What the text encoder gets: exactly `max_length` ids, long prompts cut
    /// to BOS + (max_length - 2) tokens + EOS, short ones padded with the pad token.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = self.encode_unpadded(text)?;
        if ids.len() > self.max_length {
            ids.truncate(self.max_length.saturating_sub(1));
            ids.push(self.eos_id);
        }
        ids.resize(self.max_length, self.pad_id);
        Ok(ids)
    }

    /// Whether `text` is longer than the encoder sees (the UI warns about the cut).
    pub fn is_truncated(&self, text: &str) -> Result<bool> {
        Ok(self.encode_unpadded(text)?.len() > self.max_length)
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    pub fn max_length(&self) -> usize {
        self.max_length
    }
}
