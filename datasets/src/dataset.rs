//! `Dataset`: the config, shard list and partition; `stream()` turns them into a resumable stream.
//!
//! The stream is a small state machine with three queues: planned windows (from the lazy planner in
//! [`crate::planner`]), row-group reads in flight (at most `read_ahead`, each a tokio task so decoding
//! runs in parallel) and items ready to emit. Items are emitted strictly by window position, so the order
//! never depends on which read finishes first. Memory is bounded by the planned windows' row groups:
//! about `shuffle_window + read_ahead` row groups of the image and caption columns.
use std::collections::VecDeque;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::stream::{FuturesOrdered, Stream, StreamExt};
use serde::{Deserialize, Serialize};

use crate::plan::{Partition, mix, window_rows};
use crate::planner::{Planner, WindowPlan};
use crate::reader::{RowOutcome, ShardMeta, read_row_group};
use crate::{ColumnMapping, Cursor, DatasetError, Item, RawSample, SampleId, Skip, SkipReason};

/// Everything that defines a stream; serialisable so it can live in a training config.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct DatasetConfig {
    /// Parquet files, directories (searched recursively for `*.parquet`) or glob patterns.
    pub sources: Vec<String>,
    pub columns: ColumnMapping,
    /// Shuffle shards and row groups per epoch, and rows within windows.
    pub shuffle: bool,
    pub seed: u64,
    /// Rows are shuffled within windows of this many consecutive row groups of this partition.
    pub shuffle_window: usize,
    /// Number of passes; `None` repeats forever.
    pub epochs: Option<u64>,
    pub rank: usize,
    pub world_size: usize,
    pub worker: usize,
    pub num_workers: usize,
    /// Row groups read concurrently ahead of the consumer.
    pub read_ahead: usize,
    /// `false`: a bad file is reported as a skip and the other files keep streaming. `true`: it ends the
    /// stream with an error.
    pub strict: bool,
}

impl Default for DatasetConfig {
    fn default() -> Self {
        DatasetConfig {
            sources: Vec::new(),
            columns: ColumnMapping::default(),
            shuffle: true,
            seed: 0,
            shuffle_window: 8,
            epochs: Some(1),
            rank: 0,
            world_size: 1,
            worker: 0,
            num_workers: 1,
            read_ahead: 4,
            strict: false,
        }
    }
}

pub(crate) struct Shared {
    pub cfg: DatasetConfig,
    pub shards: Vec<Arc<PathBuf>>,
    pub partition: Partition,
    pub check: u64,
}

/// A set of discovered shards plus how to walk them. Opening is cheap: no footer is read.
pub struct Dataset {
    shared: Arc<Shared>,
    paths: Vec<PathBuf>,
}

impl Dataset {
    pub fn open(cfg: DatasetConfig) -> Result<Dataset, DatasetError> {
        let partition = Partition::new(cfg.rank, cfg.world_size, cfg.worker, cfg.num_workers)
            .map_err(DatasetError::Config)?;
        if cfg.shuffle_window == 0 || cfg.read_ahead == 0 {
            return Err(DatasetError::Config(
                "shuffle_window and read_ahead must be at least 1".into(),
            ));
        }
        let paths = crate::source::discover(&cfg.sources)?;
        let check = mix(&[
            paths.len() as u64,
            cfg.seed,
            cfg.shuffle as u64,
            cfg.shuffle_window as u64,
            partition.part as u64,
            partition.parts as u64,
        ]) | 1;
        let shards = paths.iter().cloned().map(Arc::new).collect();
        Ok(Dataset {
            shared: Arc::new(Shared {
                cfg,
                shards,
                partition,
                check,
            }),
            paths,
        })
    }

    /// The sorted shard list; `SampleId::shard` indexes it.
    pub fn shards(&self) -> &[PathBuf] {
        &self.paths
    }

    pub fn config(&self) -> &DatasetConfig {
        &self.shared.cfg
    }

    pub fn partition(&self) -> Partition {
        self.shared.partition
    }

    /// Stream this partition's items starting at `from` (`Cursor::default()` = the beginning).
    ///
    /// Must be polled inside a tokio runtime (row groups are read on spawned tasks).
    pub fn stream(
        &self,
        from: Cursor,
    ) -> impl Stream<Item = Result<Item, DatasetError>> + Send + Unpin + 'static {
        let mut state = StreamState::new(self.shared.clone(), from.clone());
        if from.check != 0 && from.check != self.shared.check {
            state.out.push_back(Err(DatasetError::CursorMismatch {
                expected: self.shared.check,
                found: from.check,
            }));
            state.done = true;
        }
        // Boxed so callers can `.next()` it without pinning.
        Box::pin(futures::stream::unfold(state, |mut s| async move {
            let item = s.next().await?;
            Some((item, s))
        }))
    }
}

/// A spawned row-group read that is aborted if the stream is dropped.
struct Spawned(
    tokio::task::JoinHandle<Result<Vec<RowOutcome>, DatasetError>>,
    u64,
    usize,
);

impl Future for Spawned {
    type Output = (u64, usize, Result<Vec<RowOutcome>, DatasetError>);
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (seq, idx) = (self.1, self.2);
        Pin::new(&mut self.0).poll(cx).map(|r| {
            let r = r.unwrap_or_else(|e| Err(DatasetError::Task(e.to_string())));
            (seq, idx, r)
        })
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        self.0.abort();
    }
}

enum UnitState {
    NotNeeded,
    Pending,
    Ready(Vec<Option<RowOutcome>>),
    Failed {
        why: String,
        error: Option<DatasetError>,
    },
}

/// A planned window being read and emitted.
struct WindowRun {
    seq: u64,
    plan: WindowPlan,
    /// Prefix sums of the units' row counts (len = units + 1).
    starts: Vec<u64>,
    perm: Option<Vec<u32>>,
    next_pos: u64,
    units: Vec<UnitState>,
}

impl WindowRun {
    fn new(seq: u64, plan: WindowPlan, shared: &Shared, offset: u64) -> Self {
        let mut starts = vec![0u64];
        for (meta, rg) in &plan.units {
            starts.push(starts.last().unwrap() + meta.row_group_rows[*rg]);
        }
        let total = *starts.last().unwrap();
        let perm = window_rows(
            total as usize,
            shared.cfg.shuffle,
            shared.cfg.seed,
            plan.start.epoch,
            &shared.partition,
            plan.start.window,
        );
        let mut units: Vec<UnitState> = plan.units.iter().map(|_| UnitState::NotNeeded).collect();
        let offset = offset.min(total);
        for pos in offset..total {
            let flat = perm.as_ref().map_or(pos, |p| p[pos as usize] as u64);
            units[unit_of(&starts, flat)] = UnitState::Pending;
            if perm.is_none() {
                // Identity order: every later unit is needed too.
                let first = unit_of(&starts, flat);
                units[first..]
                    .iter_mut()
                    .for_each(|u| *u = UnitState::Pending);
                break;
            }
        }
        WindowRun {
            seq,
            plan,
            starts,
            perm,
            next_pos: offset,
            units,
        }
    }

    fn total(&self) -> u64 {
        *self.starts.last().unwrap()
    }
}

fn unit_of(starts: &[u64], flat: u64) -> usize {
    starts.partition_point(|&s| s <= flat) - 1
}

struct StreamState {
    shared: Arc<Shared>,
    planner: Planner,
    windows: VecDeque<WindowRun>,
    next_seq: u64,
    launch: VecDeque<(u64, usize)>,
    inflight: FuturesOrdered<Spawned>,
    out: VecDeque<Result<Item, DatasetError>>,
    resume_offset: Option<u64>,
    done: bool,
}

impl StreamState {
    fn new(shared: Arc<Shared>, from: Cursor) -> Self {
        StreamState {
            planner: Planner::new(shared.clone(), &from),
            shared,
            windows: VecDeque::new(),
            next_seq: 0,
            launch: VecDeque::new(),
            inflight: FuturesOrdered::new(),
            out: VecDeque::new(),
            resume_offset: Some(from.offset),
            done: false,
        }
    }

    async fn next(&mut self) -> Option<Result<Item, DatasetError>> {
        loop {
            if let Some(item) = self.out.pop_front() {
                return Some(item);
            }
            if self.done {
                return None;
            }
            if let Some(w) = self.windows.front_mut() {
                let finished = emit(w, &self.shared, &mut self.out);
                if finished {
                    self.windows.pop_front();
                }
                if finished || !self.out.is_empty() {
                    if self.out.iter().any(|r| r.is_err()) {
                        self.stop_after_error();
                    }
                    continue;
                }
            }
            self.fill_pipeline().await;
            if self.windows.is_empty() && self.planner.finished() {
                self.done = true;
                continue;
            }
            if self.inflight.is_empty() {
                // Newly planned windows without reads (only skips or an error) emit on the next turn.
                continue;
            }
            match self.inflight.next().await {
                Some((seq, idx, result)) => {
                    let w = self
                        .windows
                        .iter_mut()
                        .find(|w| w.seq == seq)
                        .expect("a read belongs to a queued window");
                    w.units[idx] = match result {
                        Ok(rows) => UnitState::Ready(rows.into_iter().map(Some).collect()),
                        Err(e) => UnitState::Failed {
                            why: e.to_string(),
                            error: Some(e),
                        },
                    };
                }
                None => {
                    unreachable!("the front window waits on a unit that is neither read nor queued")
                }
            }
        }
    }

    /// Keep up to `read_ahead` reads in flight, planning windows as needed.
    async fn fill_pipeline(&mut self) {
        let read_ahead = self.shared.cfg.read_ahead;
        let budget = self.shared.cfg.shuffle_window + read_ahead;
        while self.inflight.len() < read_ahead {
            if let Some((seq, idx)) = self.launch.pop_front() {
                let w = self.windows.iter().find(|w| w.seq == seq).unwrap();
                let (meta, rg): (Arc<ShardMeta>, usize) = w.plan.units[idx].clone();
                let handle = tokio::spawn(read_row_group(meta, rg));
                self.inflight.push_back(Spawned(handle, seq, idx));
                continue;
            }
            let queued: usize = self.windows.iter().map(|w| w.plan.units.len()).sum();
            if self.planner.finished() || (!self.windows.is_empty() && queued >= budget) {
                break;
            }
            let Some(plan) = self.planner.next_window().await else {
                break;
            };
            let offset = self.resume_offset.take().unwrap_or(0);
            let seq = self.next_seq;
            self.next_seq += 1;
            let run = WindowRun::new(seq, plan, &self.shared, offset);
            for (idx, u) in run.units.iter().enumerate() {
                if matches!(u, UnitState::Pending) {
                    self.launch.push_back((seq, idx));
                }
            }
            self.windows.push_back(run);
        }
    }

    fn stop_after_error(&mut self) {
        if let Some(i) = self.out.iter().position(|r| r.is_err()) {
            self.out.truncate(i + 1);
        }
        self.windows.clear();
        self.launch.clear();
        self.inflight = FuturesOrdered::new();
        self.done = true;
    }
}

/// Emit every ready position of `w` in order; returns true when the window is fully emitted.
fn emit(
    w: &mut WindowRun,
    shared: &Shared,
    out: &mut VecDeque<Result<Item, DatasetError>>,
) -> bool {
    let total = w.total();
    while w.next_pos < total {
        let pos = w.next_pos;
        let flat = w.perm.as_ref().map_or(pos, |p| p[pos as usize] as u64);
        let u = unit_of(&w.starts, flat);
        let row_in_group = (flat - w.starts[u]) as usize;
        let (meta, rg) = &w.plan.units[u];
        let id = SampleId {
            shard: meta.shard,
            row: meta.row_group_first[*rg] + row_in_group as u64,
        };
        let skip = |reason| {
            Item::Skipped(Skip {
                id,
                shard_path: meta.path.clone(),
                reason,
            })
        };
        match &mut w.units[u] {
            UnitState::Pending => return false,
            UnitState::NotNeeded => {
                unreachable!("positions at or after the resume offset are read")
            }
            UnitState::Failed { why, error } if shared.cfg.strict => {
                let e = error
                    .take()
                    .unwrap_or_else(|| DatasetError::Task(why.clone()));
                out.push_back(Err(e));
                return true;
            }
            UnitState::Failed { why, .. } => {
                out.push_back(Ok(skip(SkipReason::BadRowGroup(why.clone()))))
            }
            UnitState::Ready(rows) => match rows[row_in_group].take() {
                Some(RowOutcome::Good { image, caption }) => out.push_back(Ok(Item::Sample {
                    sample: RawSample { id, image, caption },
                    at: w.plan.start.at_offset(pos),
                })),
                Some(RowOutcome::Bad(reason)) => out.push_back(Ok(skip(reason))),
                None => unreachable!("each position is emitted once"),
            },
        }
        w.next_pos += 1;
    }
    for s in w.plan.bad_files.drain(..) {
        out.push_back(Ok(Item::Skipped(s)));
    }
    if let Some(e) = w.plan.error.take() {
        out.push_back(Err(e));
    }
    true
}
