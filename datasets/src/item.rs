//! What the stream yields: good samples with their resume cursor, and skips with their reason.
use std::path::PathBuf;
use std::sync::Arc;

use crate::{Cursor, RawSample, SampleId};

/// One element of a dataset stream.
#[derive(Clone, Debug)]
pub enum Item {
    /// A usable sample. `at` resumes the stream at exactly this sample.
    Sample { sample: RawSample, at: Cursor },
    /// A row (or a whole file) that could not be used; counted by reason, never silently dropped.
    Skipped(Skip),
}

/// A row or file that was skipped, with enough context to find it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skip {
    /// For file-level skips (`BadFile`) `row` is 0.
    pub id: SampleId,
    pub shard_path: Arc<PathBuf>,
    pub reason: SkipReason,
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.reason {
            SkipReason::BadFile(why) => {
                write!(f, "{}: skipped file: {why}", self.shard_path.display())
            }
            reason => write!(
                f,
                "{}:{}: skipped row: {}",
                self.shard_path.display(),
                self.id.row,
                reason
            ),
        }
    }
}

/// Why a row or file was skipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// The image cell (or the `bytes` field of an HF image struct) is null.
    NullImage,
    /// The image bytes are present but empty.
    EmptyImage,
    NullCaption,
    /// Empty or whitespace-only caption.
    EmptyCaption,
    /// A binary caption column holds bytes that are not UTF-8.
    InvalidUtf8,
    /// The row's row group could not be decoded (corrupt page, invalid UTF-8 in a string column, ...).
    BadRowGroup(String),
    /// The whole file is unusable (not Parquet, truncated, no usable columns, zero rows).
    BadFile(String),
}

impl SkipReason {
    /// A stable name, for counting skips by reason in metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            SkipReason::NullImage => "null_image",
            SkipReason::EmptyImage => "empty_image",
            SkipReason::NullCaption => "null_caption",
            SkipReason::EmptyCaption => "empty_caption",
            SkipReason::InvalidUtf8 => "invalid_utf8",
            SkipReason::BadRowGroup(_) => "bad_row_group",
            SkipReason::BadFile(_) => "bad_file",
        }
    }
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SkipReason::BadRowGroup(why) | SkipReason::BadFile(why) => {
                write!(f, "{}: {why}", self.as_str())
            }
            other => f.write_str(other.as_str()),
        }
    }
}
