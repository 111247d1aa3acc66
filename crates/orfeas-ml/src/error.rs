//! The one error type of the text→image pipeline, model registry and downloads.

use std::path::PathBuf;

/// Everything that can go wrong between a prompt and a PNG. Messages say what to do next.
#[derive(Debug, thiserror::Error)]
pub enum SdError {
    #[error(
        "unknown model '{name}'; known models: {known}; or pass --model-dir with a diffusers-format folder"
    )]
    UnknownModel { name: String, known: String },
    #[error(
        "model '{name}' is not installed (searched: {searched}); run `orfeas models download {name}`"
    )]
    ModelNotFound { name: String, searched: String },
    #[error(
        "model folder {dir} is missing {part}; re-download it with `orfeas models download NAME` or point --model-path at a complete model folder"
    )]
    MissingPart { dir: PathBuf, part: String },
    #[error(
        "weights file {path} is corrupt or truncated ({reason}); delete it and download the model again"
    )]
    CorruptWeights { path: PathBuf, reason: String },
    #[error("cannot read config {path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("invalid parameter {field}: {reason}")]
    InvalidParams { field: &'static str, reason: String },
    #[error("tokenizer error: {0}")]
    Tokenizer(String),
    #[error(
        "the model does not fit in {device} memory ({detail}); try a smaller size, batch 1, tiled VAE decode, or --device cpu"
    )]
    OutOfMemory { device: String, detail: String },
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("generation cancelled")]
    Cancelled,
    #[error("cannot access {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "download failed: {0}; check the network connection and run the command again (it resumes)"
    )]
    Download(String),
    #[error(
        "device '{0}' is not available in this build; rebuild with the matching cargo feature (cuda or metal) or use --device cpu"
    )]
    DeviceUnavailable(String),
    #[error(transparent)]
    Write(#[from] orfeas_core::paths::PathError),
}

impl SdError {
    /// A bounded label for metrics and job failures.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::UnknownModel { .. } | Self::InvalidParams { .. } => "invalid_parameter",
            Self::ModelNotFound { .. } | Self::MissingPart { .. } => "model_missing",
            Self::CorruptWeights { .. } | Self::Config { .. } | Self::Tokenizer(_) => {
                "model_corrupt"
            }
            Self::OutOfMemory { .. } => "out_of_memory",
            Self::Cancelled => "cancelled",
            Self::Io { .. } | Self::Write(_) => "io",
            Self::Download(_) => "download",
            Self::DeviceUnavailable(_) => "device",
            Self::Candle(_) => "internal",
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidParams {
            field,
            reason: reason.into(),
        }
    }
}

impl From<orfeas_core::request::RequestError> for SdError {
    fn from(e: orfeas_core::request::RequestError) -> SdError {
        SdError::InvalidParams {
            field: e.field,
            reason: e.message,
        }
    }
}

pub type Result<T, E = SdError> = std::result::Result<T, E>;
