//! The resumable cursor: a few integers that pin down a position in one partition's stream.
//!
//! A cursor names a window (by epoch, window index and where the planner's walk stood when the window
//! began) and an offset inside that window. Resuming re-walks from that point and re-reads at most one
//! window's row groups, so restoring is O(1) in how far training got, and no footer before the window
//! needs to be opened. Skipped rows occupy positions like good rows, so skipping never shifts anything.
use serde::{Deserialize, Serialize};

/// Position in a partition's stream. `Cursor::default()` is the start of the stream.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct Cursor {
    /// Epoch number, starting at 0.
    pub epoch: u64,
    /// Index of the window among this partition's windows in the epoch.
    pub window: u64,
    /// Index into the epoch's shard order where the window's walk starts.
    pub shard_pos: u64,
    /// Index into that shard's row-group order where the window's walk starts.
    pub row_group_pos: u64,
    /// Global (all partitions) unit number at the window's start.
    pub unit: u64,
    /// Positions of the window already consumed.
    pub offset: u64,
    /// Fingerprint of the config the cursor was made under (0 = unchecked, as in `default()`).
    pub check: u64,
}

impl Cursor {
    /// The start of the window this cursor is in, at `offset`.
    pub(crate) fn at_offset(&self, offset: u64) -> Cursor {
        Cursor {
            offset,
            ..self.clone()
        }
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "epoch {} window {} (shard pos {}, row group pos {}, unit {}) offset {}",
            self.epoch, self.window, self.shard_pos, self.row_group_pos, self.unit, self.offset
        )
    }
}
