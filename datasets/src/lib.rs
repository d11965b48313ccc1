//! Streaming, resumable, partitioned reading of image-caption pairs from Parquet shards.
//!
//! The data side of CoMP, usable on its own by any trainer: point a [`DatasetConfig`] at files,
//! directories or globs of Parquet shards in the Hugging Face layout (`image: struct<bytes, path>`) or the
//! img2dataset layout (`jpg: binary`), and [`Dataset::stream`] yields `(id, image bytes, caption)` with a
//! [`Cursor`] after every sample. The design follows from what breaks in other loaders:
//!
//! - footers are opened lazily while the plan walks forward ([`planner`]), so thousands of shards start
//!   streaming at once;
//! - the unit of work is a (shard, row group); units are partitioned across ranks and workers by a pure
//!   function of the seed and epoch ([`plan`]), disjoint and complete;
//! - a cursor is a handful of integers; resuming re-reads at most one shuffle window ([`cursor`]);
//! - bad rows and bad files become [`Item::Skipped`] with a reason and never stop the stream (unless
//!   `strict`), while "nothing usable at all" is an error rather than an endless loop.
//!
//! [`demo`] generates synthetic shards of coloured-shape scenes with accurate captions.
use serde::{Deserialize, Serialize};

pub mod cursor;
pub mod dataset;
pub mod demo;
pub mod error;
pub mod inspect;
pub mod item;
pub mod plan;
mod planner;
pub mod reader;
pub mod schema;
pub mod source;

pub use cursor::Cursor;
pub use dataset::{Dataset, DatasetConfig};
pub use error::DatasetError;
pub use item::{Item, Skip, SkipReason};
pub use reader::{ShardSummary, read_shard_summary};
pub use schema::{ColumnMapping, ImageLayout, ResolvedColumns};

/// Stable identity of a sample: the shard's index in the sorted shard list and the row within the shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SampleId {
    pub shard: u32,
    pub row: u64,
}

impl std::fmt::Display for SampleId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.shard, self.row)
    }
}

/// One image-caption pair as stored: undecoded image bytes and the caption text.
#[derive(Debug, Clone)]
pub struct RawSample {
    pub id: SampleId,
    pub image: bytes::Bytes,
    pub caption: String,
}

/// Thread counts across the project: `0` means every core this process may use, anything else is
/// taken as given (the loader's workers, `make-demo-data`, the CLI's `--workers`/`--threads`).
pub fn threads_or_all_cores(n: usize) -> usize {
    match n {
        0 => available_cores(),
        n => n,
    }
}

/// Cores this process may use (1 if the platform cannot tell).
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
