//! Errors of the model crate: one enum, precise variants, no `anyhow`.
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ModelError {
    #[error("invalid model config: {0}")]
    Config(String),
    #[error("batch does not fit the model: {0}")]
    Batch(String),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: String,
        source: serde_json::Error,
    },
    #[error("checkpoint {dir} does not match the model:\n{report}")]
    CheckpointMismatch { dir: String, report: String },
    #[error("checkpoint {dir}: {reason}")]
    Checkpoint { dir: String, reason: String },
}

pub type Result<T> = std::result::Result<T, ModelError>;
