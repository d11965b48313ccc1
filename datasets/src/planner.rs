//! The lazy planner: walks the epoch's shard order, opening footers only as it reaches them, and cuts
//! this partition's units into windows.
//!
//! The planner's whole state is the position of its walk (epoch, shard position, row-group position,
//! global unit number, window index), which is exactly what a [`Cursor`] stores, so resuming starts the
//! walk at the cursor's window without opening any earlier footer.
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};

use crate::dataset::Shared;
use crate::plan::{row_group_order, shard_order};
use crate::reader::{ShardMeta, open_shard};
use crate::{Cursor, DatasetError, SampleId, Skip, SkipReason};

/// One window of this partition: its start cursor, units and the bad files met while walking it.
#[derive(Debug)]
pub struct WindowPlan {
    /// Cursor of the window's first position (offset 0).
    pub start: Cursor,
    /// (shard, row group index in the file).
    pub units: Vec<(Arc<ShardMeta>, usize)>,
    /// Bad files met during the walk, reported after the window's rows (lenient mode).
    pub bad_files: Vec<Skip>,
    /// An error that ends the stream after this window (strict mode, or nothing usable at all).
    pub error: Option<DatasetError>,
}

/// A shard opened by the planner: its footer and its row-group order this epoch, or why it is unusable.
type OpenedShard = Result<(Arc<ShardMeta>, Vec<u32>), DatasetError>;

pub struct Planner {
    shared: Arc<Shared>,
    epoch: u64,
    window: u64,
    shard_pos: u64,
    row_group_pos: u64,
    unit: u64,
    order: Vec<u32>,
    order_epoch: Option<u64>,
    /// The shard at `shard_pos`, once opened, with its row-group order for this epoch.
    current: Option<(u64, OpenedShard)>,
    finished: bool,
}

impl Planner {
    pub fn new(shared: Arc<Shared>, from: &Cursor) -> Self {
        Planner {
            shared,
            epoch: from.epoch,
            window: from.window,
            shard_pos: from.shard_pos,
            row_group_pos: from.row_group_pos,
            unit: from.unit,
            order: Vec::new(),
            order_epoch: None,
            current: None,
            finished: false,
        }
    }

    pub fn finished(&self) -> bool {
        self.finished
    }

    fn cursor(&self) -> Cursor {
        Cursor {
            epoch: self.epoch,
            window: self.window,
            shard_pos: self.shard_pos,
            row_group_pos: self.row_group_pos,
            unit: self.unit,
            offset: 0,
            check: self.shared.check,
        }
    }

    /// Plan the next window; `None` when all epochs are done.
    pub async fn next_window(&mut self) -> Option<WindowPlan> {
        let shared = self.shared.clone();
        let cfg = &shared.cfg;
        let part = shared.partition;
        let n_shards = self.shared.shards.len() as u64;
        loop {
            if self.finished || cfg.epochs.is_some_and(|n| self.epoch >= n) {
                self.finished = true;
                return None;
            }
            if self.order_epoch != Some(self.epoch) {
                self.order = shard_order(n_shards as usize, cfg.shuffle, cfg.seed, self.epoch);
                self.order_epoch = Some(self.epoch);
            }
            let mut plan = WindowPlan {
                start: self.cursor(),
                units: Vec::new(),
                bad_files: Vec::new(),
                error: None,
            };
            let mut end_of_epoch = false;
            while plan.units.len() < cfg.shuffle_window {
                if self.shard_pos >= n_shards {
                    end_of_epoch = true;
                    break;
                }
                let shard = self.order[self.shard_pos as usize];
                if self
                    .current
                    .as_ref()
                    .is_none_or(|(pos, _)| *pos != self.shard_pos)
                {
                    let opened = open_shard(
                        shard,
                        self.shared.shards[shard as usize].clone(),
                        &cfg.columns,
                    )
                    .await
                    .map(|meta| {
                        let n = meta.row_group_rows.len();
                        let order = row_group_order(n, cfg.shuffle, cfg.seed, self.epoch, shard);
                        (meta, order)
                    });
                    self.current = Some((self.shard_pos, opened));
                }
                match &mut self.current.as_mut().unwrap().1 {
                    Err(_) if cfg.strict => {
                        let (_, err) = self.current.take().unwrap();
                        plan.error = err.err();
                        self.finished = true;
                        return Some(plan);
                    }
                    Err(e) => {
                        if shard as usize % part.parts == part.part {
                            warn_once(&self.shared.shards[shard as usize], e);
                            let reason = match e {
                                DatasetError::BadFile { reason, .. } => reason.clone(),
                                other => other.to_string(),
                            };
                            plan.bad_files.push(Skip {
                                id: SampleId { shard, row: 0 },
                                shard_path: self.shared.shards[shard as usize].clone(),
                                reason: SkipReason::BadFile(reason),
                            });
                        }
                        self.next_shard();
                    }
                    Ok((meta, rg_order)) => {
                        let Some(&rg) = rg_order.get(self.row_group_pos as usize) else {
                            self.next_shard();
                            continue;
                        };
                        if meta.row_group_rows[rg as usize] > 0 && part.owns(self.unit) {
                            plan.units.push((meta.clone(), rg as usize));
                        }
                        // Empty row groups are not units: they would be windows with nothing in them.
                        if meta.row_group_rows[rg as usize] > 0 {
                            self.unit += 1;
                        }
                        self.row_group_pos += 1;
                    }
                }
            }
            if end_of_epoch {
                let units = self.unit;
                if units == 0 {
                    plan.error = Some(DatasetError::NoUsableData {
                        shards: n_shards as usize,
                    });
                    self.finished = true;
                    return Some(plan);
                }
                if cfg.epochs.is_none() && units <= part.part as u64 {
                    plan.error = Some(DatasetError::EmptyPartition {
                        part: part.part,
                        parts: part.parts,
                        rank: cfg.rank,
                        worker: cfg.worker,
                        units,
                    });
                    self.finished = true;
                    return Some(plan);
                }
                self.epoch += 1;
                self.window = 0;
                self.shard_pos = 0;
                self.row_group_pos = 0;
                self.unit = 0;
                self.current = None;
            } else {
                self.window += 1;
            }
            if !plan.units.is_empty() || !plan.bad_files.is_empty() {
                return Some(plan);
            }
        }
    }

    fn next_shard(&mut self) {
        self.shard_pos += 1;
        self.row_group_pos = 0;
        self.current = None;
    }
}

/// Log an unreadable shard the first time this process meets it. Every epoch of every stage still
/// records the skip (the trainer's per-stage report counts them); repeating the same warning each
/// time would only bury other messages.
fn warn_once(path: &Path, err: &DatasetError) {
    static WARNED: LazyLock<Mutex<HashSet<PathBuf>>> = LazyLock::new(Default::default);
    let mut warned = WARNED.lock().unwrap_or_else(|p| p.into_inner());
    if warned.insert(path.to_path_buf()) {
        tracing::warn!("skipping shard: {err}");
    }
}
