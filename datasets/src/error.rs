//! Errors of the datasets crate.
//!
//! Every data error names the file (and, where there is one, the row group or row) and the reason, so a
//! user reading a log line can go straight to the offending shard. Row-level problems are not errors at
//! all: they become [`crate::Skip`] items so the stream keeps going.
use std::path::PathBuf;

/// What can go wrong while discovering or reading shards.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("invalid dataset config: {0}")]
    Config(String),

    #[error("no Parquet shards found for source `{spec}`")]
    NoShards { spec: String },

    #[error("bad source `{spec}`: {reason}")]
    Source { spec: String, reason: String },

    #[error("{}: {reason}", path.display())]
    BadFile { path: PathBuf, reason: String },

    #[error("{}: row group {row_group}: {reason}", path.display())]
    BadRowGroup {
        path: PathBuf,
        row_group: usize,
        reason: String,
    },

    #[error(
        "no usable data: all {shards} shards are unreadable, have no usable columns or have zero rows"
    )]
    NoUsableData { shards: usize },

    #[error(
        "partition {part} of {parts} (rank {rank}, worker {worker}) gets no row groups: the dataset has only {units} (shard, row group) units; use fewer ranks/workers"
    )]
    EmptyPartition {
        part: usize,
        parts: usize,
        rank: usize,
        worker: usize,
        units: u64,
    },

    #[error(
        "cursor does not belong to this dataset/partition config (expected check {expected:#x}, cursor has {found:#x}); resume with the same shards, seed, shuffle, window and partition"
    )]
    CursorMismatch { expected: u64, found: u64 },

    #[error("reader task failed: {0}")]
    Task(String),
}
