//! The loader: async stages joined by bounded channels, CPU work on a bounded worker pool.
//!
//! ```text
//!  datasets stream ──► ordered parallel map (decode+resize+patchify+tokenize on `workers` threads,
//!  (tokio task)         at most `in_flight` samples outstanding)
//!                  ──► packer (sequential, deterministic: chooses each batch's samples)
//!                  ──► batch assembly (copies into one buffer, on the same pool, in order,
//!                      at most `ASSEMBLING_BATCHES + 1` at once) ──► bounded batch queue ──► consumer
//! ```
//! Workers patchify a still image's frame once; with `temporal_patch_size` T > 1 the assembly writes
//! each frame T times ([`PackedBatch::from_frames`]), so buffered samples take 1/T of the memory and
//! workers skip the copies (at T = 2 the loader bench ran 1.19-1.25x the images/s with 2 workers).
//! Backpressure: when the consumer stops taking batches, the batch queue fills, the packer blocks on
//! `send`, the ordered map stops polling, and the dataset stream stops reading. Memory is therefore bounded
//! by `batch_queue` batches + `ASSEMBLING_BATCHES + 1` batches being assembled (each twice over: its
//! samples and its buffer) + `in_flight` samples + the packer's buffer + the dataset read-ahead.
//!
//! Determinism: the ordered map yields samples in dataset order whatever the worker count or timing, and
//! the packer is a pure function of its input order, so the batch stream depends only on config and seed.
//!
//! Resume: every batch carries the [`LoaderState`] *after* it. The state names the dataset cursor of the
//! oldest sample still buffered in the packer (or of the next unread sample) plus the ids read since
//! then that were already emitted. Restoring replays the stream from that cursor, drops those ids, and so
//! feeds a fresh packer exactly the samples the old one held, in the same order: the batch stream
//! continues as if never interrupted. (Ids name samples, so exactness assumes an epoch of this rank holds
//! more samples than the packer can keep waiting; otherwise one sample could sit in the buffer twice.)
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use comp_datasets::{Cursor, Dataset, DatasetConfig, Item, SampleId};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::batch::{Budgets, PackedBatch, ProcessedSample};
use crate::pack::{PackConfig, Packer, PendingBatch};
use crate::patchify::{patch_dim, process_image};
use crate::resize::ImageConfig;
use crate::tokenize::{CaptionTokenizer, TextConfig};

/// Everything the loader needs; every field has a documented default.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct LoaderConfig {
    pub dataset: DatasetConfig,
    pub image: ImageConfig,
    pub text: TextConfig,
    pub pack: PackConfig,
    /// CPU threads for decode/resize/patchify/tokenize (0 = available cores).
    pub workers: usize,
    /// Samples being processed at once (0 = 4 × workers).
    pub in_flight: usize,
    /// Finished batches waiting for the consumer.
    pub batch_queue: usize,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        Self {
            dataset: DatasetConfig::default(),
            image: ImageConfig::default(),
            text: TextConfig::default(),
            pack: PackConfig::default(),
            workers: 0,
            in_flight: 0,
            batch_queue: 4,
        }
    }
}

impl LoaderConfig {
    fn resolved_workers(&self) -> usize {
        comp_datasets::threads_or_all_cores(self.workers)
    }
    fn resolved_in_flight(&self) -> usize {
        if self.in_flight == 0 {
            4 * self.resolved_workers()
        } else {
            self.in_flight
        }
    }
}

/// Where to resume: see the module docs. Small: one cursor and at most a packer-buffer's worth of ids.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderState {
    pub replay_from: Cursor,
    pub already_emitted: Vec<SampleId>,
    pub batches_emitted: u64,
    /// Batches to drop after replaying (a cut in the middle of a group emitted at one point).
    pub discard_batches: u64,
    /// The packer's budgets once resolved (the token budget may be derived from the first samples).
    pub budgets: Option<Budgets>,
}

/// A batch and the loader state right after it.
#[derive(Debug, Clone)]
pub struct LoaderBatch {
    pub batch: PackedBatch,
    pub state: LoaderState,
}

#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error(transparent)]
    Dataset(#[from] comp_datasets::DatasetError),
    #[error("{source} (skipped: {skipped})")]
    DatasetAfterSkips {
        source: comp_datasets::DatasetError,
        skipped: String,
    },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("no usable sample: all {skipped} samples read so far were skipped ({reasons})")]
    NothingUsable { skipped: u64, reasons: String },
    #[error("loader config: {0}")]
    Config(String),
    #[error("the loader stopped unexpectedly (a stage panicked; see the message above)")]
    Crashed,
    #[error("loader worker pool stopped unexpectedly")]
    PoolGone,
}

/// Live counters, shared with the caller (progress bars, benchmarks, tests).
#[derive(Debug, Default)]
pub struct LoaderMetrics {
    pub samples_read: AtomicU64,
    pub bytes_read: AtomicU64,
    pub samples_processed: AtomicU64,
    pub patches: AtomicU64,
    pub tokens: AtomicU64,
    pub batches: AtomicU64,
    pub in_flight: AtomicUsize,
    pub batches_queued: AtomicUsize,
    pub truncated_captions: AtomicU64,
    skips: Mutex<BTreeMap<String, u64>>,
    /// Up to 100 skip messages (file, row, reason) for reporting.
    examples: Mutex<Vec<String>>,
}

impl LoaderMetrics {
    fn skip(&self, reason: &str, message: String) {
        *self
            .skips
            .lock()
            .unwrap()
            .entry(reason.to_string())
            .or_default() += 1;
        let mut ex = self.examples.lock().unwrap();
        if ex.len() < 100 {
            tracing::debug!("skipped: {message}");
            ex.push(message);
        }
    }
    /// Skips so far, by reason.
    pub fn skips(&self) -> BTreeMap<String, u64> {
        self.skips.lock().unwrap().clone()
    }
    pub fn total_skipped(&self) -> u64 {
        self.skips.lock().unwrap().values().sum()
    }
    /// The first skip messages, each naming the shard, the row and the reason.
    pub fn skip_examples(&self) -> Vec<String> {
        self.examples.lock().unwrap().clone()
    }
}

/// The running loader. Dropping it stops every stage.
pub struct Loader {
    rx: mpsc::Receiver<Result<LoaderBatch, LoaderError>>,
    /// Set when the stages ended normally (end of data or an error they reported).
    finished: Arc<std::sync::atomic::AtomicBool>,
    reported_crash: bool,
    metrics: Arc<LoaderMetrics>,
    started: Instant,
    // Kept last so the runtime (and the pool it feeds) shuts down after the receiver is gone.
    _pool: WorkerPool,
    _runtime: tokio::runtime::Runtime,
}

impl Loader {
    /// Start streaming from the beginning (`state = None`) or from a saved state.
    pub fn start(cfg: LoaderConfig, state: Option<LoaderState>) -> Result<Self, LoaderError> {
        let dataset = Dataset::open(cfg.dataset.clone())?;
        let path = cfg.text.tokenizer.as_ref().ok_or_else(|| {
            LoaderError::Tokenizer(
                "no tokenizer configured (set text.tokenizer to a tokenizer.json)".into(),
            )
        })?;
        let tokenizer = Arc::new(
            CaptionTokenizer::from_file(path, &cfg.text)
                .map_err(|e| LoaderError::Tokenizer(e.to_string()))?,
        );
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("comp-loader-io")
            .enable_all()
            .build()
            .expect("tokio runtime");
        let pool = WorkerPool::new(cfg.resolved_workers());
        let metrics = Arc::new(LoaderMetrics::default());
        let (tx, rx) = mpsc::channel(cfg.batch_queue.max(1));
        let state = state.unwrap_or_default();
        let job = Job {
            dataset,
            tokenizer,
            image: Arc::new(cfg.image.clone()),
            pack: cfg.pack.clone(),
            in_flight: cfg.resolved_in_flight(),
            pool: pool.sender(),
            metrics: metrics.clone(),
        };
        let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done = finished.clone();
        runtime.spawn(async move {
            if let Err(e) = job.run(state, tx.clone()).await {
                let _ = tx.send(Err(e)).await;
            }
            done.store(true, Ordering::Release);
        });
        Ok(Self {
            rx,
            finished,
            reported_crash: false,
            metrics,
            started: Instant::now(),
            _pool: pool,
            _runtime: runtime,
        })
    }

    /// The next batch, blocking the calling (non-async) thread. `None` at the end of the data.
    pub fn next_blocking(&mut self) -> Option<Result<LoaderBatch, LoaderError>> {
        let item = self.rx.blocking_recv();
        match item {
            Some(_) => {
                self.metrics.batches_queued.fetch_sub(1, Ordering::Relaxed);
                item
            }
            // The channel closed without the stages finishing: a stage panicked. Never let that pass
            // for the end of the data.
            None if !self.finished.load(Ordering::Acquire) && !self.reported_crash => {
                self.reported_crash = true;
                Some(Err(LoaderError::Crashed))
            }
            None => None,
        }
    }

    pub fn metrics(&self) -> &Arc<LoaderMetrics> {
        &self.metrics
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

impl Iterator for Loader {
    type Item = Result<LoaderBatch, LoaderError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_blocking()
    }
}

struct Job {
    dataset: Dataset,
    tokenizer: Arc<CaptionTokenizer>,
    image: Arc<ImageConfig>,
    pack: PackConfig,
    in_flight: usize,
    pool: crossbeam_channel::Sender<Task>,
    metrics: Arc<LoaderMetrics>,
}

/// A sample on its way through the ordered map.
enum Processed {
    Ready(Box<ProcessedSample>, Cursor),
    /// Skipped with (reason, message); the cursor keeps the replay bookkeeping exact.
    Skipped(String, String),
}

impl Job {
    async fn run(
        self,
        state: LoaderState,
        tx: mpsc::Sender<Result<LoaderBatch, LoaderError>>,
    ) -> Result<(), LoaderError> {
        let Job {
            dataset,
            tokenizer,
            image,
            pack,
            in_flight,
            pool,
            metrics,
        } = self;
        let shards: Arc<Vec<std::path::PathBuf>> = Arc::new(dataset.shards().to_vec());
        let shards_for_packer = shards.clone();
        let assembly_pool = pool.clone();
        let patch_dim = patch_dim(&image);
        // Workers patchify one frame; batch assembly repeats it `temporal_patch_size` times.
        let frames = image.temporal_patch_size;
        let image = Arc::new(ImageConfig {
            temporal_patch_size: 1,
            ..(*image).clone()
        });
        let image_token_id = tokenizer.image_token_id();
        let mut replay_skip: BTreeSet<SampleId> = state.already_emitted.iter().copied().collect();
        let merge = (image.merge_size * image.merge_size) as i64;

        let m = metrics.clone();
        let processed = dataset
            .stream(state.replay_from.clone())
            .filter_map(move |item| {
                // Samples the previous run already emitted are dropped before any work is spent on them.
                let keep = match &item {
                    Ok(Item::Sample { sample, .. }) => !replay_skip.remove(&sample.id),
                    _ => true,
                };
                futures::future::ready(keep.then_some(item))
            })
            .map(move |item| {
                let pool = pool.clone();
                let tokenizer = tokenizer.clone();
                let image = image.clone();
                let metrics = m.clone();
                let shards = shards.clone();
                async move {
                    let (sample, at) = match item? {
                        Item::Sample { sample, at } => (sample, at),
                        Item::Skipped(skip) => {
                            return Ok::<_, LoaderError>(Processed::Skipped(
                                skip.reason.as_str().to_string(),
                                skip.to_string(),
                            ));
                        }
                    };
                    metrics.samples_read.fetch_add(1, Ordering::Relaxed);
                    metrics
                        .bytes_read
                        .fetch_add(sample.image.len() as u64, Ordering::Relaxed);
                    metrics.in_flight.fetch_add(1, Ordering::Relaxed);
                    let (done_tx, done_rx) = oneshot::channel();
                    let task = Task {
                        run: Box::new(move || {
                            let id = sample.id;
                            let out = process_image(&sample.image, &image)
                                .map_err(|e| (e.reason().to_string(), e.to_string()))
                                .and_then(|img| {
                                    let n_image_tokens =
                                        (img.grid_thw.iter().product::<i64>() / merge) as usize;
                                    let text = tokenizer
                                        .encode(&sample.caption, n_image_tokens)
                                        .map_err(|e| ("caption".to_string(), e.to_string()))?;
                                    Ok((img, text))
                                });
                            let _ = done_tx.send((id, out));
                        }),
                    };
                    pool.send(task).map_err(|_| LoaderError::PoolGone)?;
                    let (id, out) = done_rx.await.map_err(|_| LoaderError::PoolGone)?;
                    metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
                    Ok(match out {
                        Ok((img, text)) => {
                            if text.truncated {
                                metrics.truncated_captions.fetch_add(1, Ordering::Relaxed);
                            }
                            Processed::Ready(
                                Box::new(ProcessedSample {
                                    id,
                                    pixel_values: img.pixel_values,
                                    grid_thw: img.grid_thw,
                                    input_ids: text.input_ids,
                                    labels: text.labels,
                                    caption_span: text.caption_span,
                                }),
                                at,
                            )
                        }
                        Err((reason, msg)) => {
                            Processed::Skipped(reason, format!("{}: {msg}", where_(&shards, id)))
                        }
                    })
                }
            })
            .buffered(in_flight);
        futures::pin_mut!(processed);

        // A resumed packer must use the budgets the original one derived, not derive new ones.
        let mut pack = pack;
        if let Some(b) = state.budgets {
            pack.max_tokens = Some(b.max_tokens);
        }
        let mut packer = Packer::new(pack, patch_dim, image_token_id)
            .and_then(|p| p.repeating_frames(frames))
            .map_err(|e| LoaderError::Config(e.to_string()))?;
        let mut tracker = ResumeTracker::new(state);
        let mut good = 0u64;
        // Batches being assembled on the pool, oldest first: they are sent in this order, so the
        // stream stays deterministic (see `enqueue` for the bound).
        let mut assembling: VecDeque<oneshot::Receiver<LoaderBatch>> = VecDeque::new();

        while let Some(p) = processed.next().await {
            let p = p.map_err(|e| match e {
                // Name what was skipped on the way to a dataset-level failure (e.g. every file bad).
                LoaderError::Dataset(source) if metrics.total_skipped() > 0 => {
                    LoaderError::DatasetAfterSkips {
                        source,
                        skipped: metrics.skip_examples().join("; "),
                    }
                }
                other => other,
            })?;
            let batches = match p {
                Processed::Skipped(reason, msg) => {
                    metrics.skip(&reason, msg);
                    if good == 0 && metrics.total_skipped() >= 1000 {
                        return Err(nothing_usable(&metrics));
                    }
                    continue;
                }
                Processed::Ready(sample, at) => {
                    good += 1;
                    metrics.samples_processed.fetch_add(1, Ordering::Relaxed);
                    metrics
                        .patches
                        .fetch_add(sample.num_patches() as u64, Ordering::Relaxed);
                    metrics
                        .tokens
                        .fetch_add(sample.num_tokens() as u64, Ordering::Relaxed);
                    let id = sample.id;
                    tracker.pulled(id, at);
                    match packer.push_pending(*sample) {
                        Ok(batch) => batch.into_iter().collect::<Vec<_>>(),
                        Err(rejected) => {
                            metrics.skip(
                                "too_large_for_budget",
                                format!("{}: {rejected}", where_(&shards_for_packer, id)),
                            );
                            continue;
                        }
                    }
                }
            };
            for (b, state) in tracker.emitted(batches, &packer.buffered_ids(), packer.budgets()) {
                if !enqueue(&mut assembling, &assembly_pool, b, state, &tx, &metrics).await? {
                    return Ok(()); // the consumer is gone
                }
            }
        }
        let batches = packer.flush_pending();
        for (b, state) in tracker.emitted(batches, &packer.buffered_ids(), packer.budgets()) {
            if !enqueue(&mut assembling, &assembly_pool, b, state, &tx, &metrics).await? {
                return Ok(());
            }
        }
        while !assembling.is_empty() {
            if !send_next(&mut assembling, &tx, &metrics).await? {
                return Ok(());
            }
        }
        if good == 0 && metrics.total_skipped() > 0 {
            return Err(nothing_usable(&metrics));
        }
        Ok(())
    }
}

/// Batches assembled on the pool at once, beyond the one being sent: enough to keep the copying off
/// the packer's path, few enough that memory stays bounded (see the module docs). Each holds its
/// samples and the batch being built from them until it is sent.
pub const ASSEMBLING_BATCHES: usize = 2;

/// Start assembling `batch` on the pool, then send the oldest batches until at most
/// `ASSEMBLING_BATCHES` remain outstanding; `false` when the consumer is gone.
async fn enqueue(
    assembling: &mut VecDeque<oneshot::Receiver<LoaderBatch>>,
    pool: &crossbeam_channel::Sender<Task>,
    batch: PendingBatch,
    state: LoaderState,
    tx: &mpsc::Sender<Result<LoaderBatch, LoaderError>>,
    metrics: &LoaderMetrics,
) -> Result<bool, LoaderError> {
    assembling.push_back(assemble(pool, batch, state)?);
    while assembling.len() > ASSEMBLING_BATCHES {
        if !send_next(assembling, tx, metrics).await? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Copy a chosen batch's samples into one [`PackedBatch`] on the worker pool: for a batch of
/// thousands of patches this is tens of megabytes, CPU work that does not belong on the async
/// executor and would cap a many-core loader at one thread's copying speed.
fn assemble(
    pool: &crossbeam_channel::Sender<Task>,
    batch: PendingBatch,
    state: LoaderState,
) -> Result<oneshot::Receiver<LoaderBatch>, LoaderError> {
    let (done_tx, done_rx) = oneshot::channel();
    let task = Task {
        run: Box::new(move || {
            let _ = done_tx.send(LoaderBatch {
                batch: batch.build(),
                state,
            });
        }),
    };
    pool.send(task).map_err(|_| LoaderError::PoolGone)?;
    Ok(done_rx)
}

/// Wait for the oldest batch being assembled and send it; `false` when the consumer is gone.
async fn send_next(
    assembling: &mut VecDeque<oneshot::Receiver<LoaderBatch>>,
    tx: &mpsc::Sender<Result<LoaderBatch, LoaderError>>,
    metrics: &LoaderMetrics,
) -> Result<bool, LoaderError> {
    let Some(next) = assembling.pop_front() else {
        return Ok(true);
    };
    let batch = next.await.map_err(|_| LoaderError::PoolGone)?;
    Ok(send(tx, metrics, batch).await)
}

/// `shard-path:row`, the way every data message names a sample.
fn where_(shards: &[std::path::PathBuf], id: SampleId) -> String {
    match shards.get(id.shard as usize) {
        Some(p) => format!("{}:{}", p.display(), id.row),
        None => format!("shard {}:{}", id.shard, id.row),
    }
}

fn nothing_usable(metrics: &LoaderMetrics) -> LoaderError {
    LoaderError::NothingUsable {
        skipped: metrics.total_skipped(),
        reasons: format!("{:?}", metrics.skips()),
    }
}

async fn send(
    tx: &mpsc::Sender<Result<LoaderBatch, LoaderError>>,
    metrics: &LoaderMetrics,
    b: LoaderBatch,
) -> bool {
    metrics.batches.fetch_add(1, Ordering::Relaxed);
    metrics.batches_queued.fetch_add(1, Ordering::Relaxed);
    tx.send(Ok(b)).await.is_ok()
}

/// Tracks, in dataset order, what the packer holds so that every emitted batch can carry its resume state.
struct ResumeTracker {
    /// Samples pulled since the anchor (the oldest buffered sample, or the last pulled one), in order,
    /// with their cursors. A sequence, not a map: in a multi-epoch stream the same id comes back.
    since_anchor: VecDeque<(SampleId, Cursor)>,
    /// The state after the previous emission, for batches emitted in the middle of a group.
    last: LoaderState,
}

impl ResumeTracker {
    fn new(state: LoaderState) -> Self {
        // Batches a resumed run must drop: they were emitted before the cut, in the same group.
        let last = LoaderState {
            discard_batches: state.discard_batches,
            ..state
        };
        Self {
            since_anchor: VecDeque::new(),
            last,
        }
    }

    fn pulled(&mut self, id: SampleId, at: Cursor) {
        self.since_anchor.push_back((id, at));
    }

    /// Attach states to a group of batches emitted at one point, dropping those a resume must skip.
    fn emitted<B>(
        &mut self,
        batches: Vec<B>,
        buffered: &[SampleId],
        budgets: Option<Budgets>,
    ) -> Vec<(B, LoaderState)> {
        if batches.is_empty() {
            return Vec::new();
        }
        let n = batches.len();
        let skip = std::mem::take(&mut self.last.discard_batches) as usize;
        let before = LoaderState {
            discard_batches: 0,
            ..self.last.clone()
        };
        let mut out = Vec::with_capacity(n);
        for (i, batch) in batches.into_iter().enumerate() {
            // Mid-group: replay from the state before the group and drop the batches already delivered.
            let state = LoaderState {
                discard_batches: (i + 1) as u64,
                ..before.clone()
            };
            out.push((batch, state));
        }
        let mut after = self.state_after(buffered, before.batches_emitted + n as u64);
        after.budgets = budgets;
        out.last_mut().expect("non-empty").1 = after.clone();
        self.last = after;
        out.into_iter().skip(skip).collect()
    }

    fn state_after(&mut self, buffered: &[SampleId], batches_emitted: u64) -> LoaderState {
        let anchor = match buffered.first() {
            Some(oldest) => *oldest,
            None => match self.since_anchor.back() {
                Some((last, _)) => *last,
                None => {
                    return LoaderState {
                        batches_emitted,
                        ..self.last.clone()
                    };
                }
            },
        };
        while self
            .since_anchor
            .front()
            .is_some_and(|(id, _)| *id != anchor)
        {
            self.since_anchor.pop_front();
        }
        let held: BTreeSet<SampleId> = buffered.iter().copied().collect();
        LoaderState {
            replay_from: self
                .since_anchor
                .front()
                .expect("the anchor was pulled")
                .1
                .clone(),
            already_emitted: self
                .since_anchor
                .iter()
                .map(|(id, _)| *id)
                .filter(|id| !held.contains(id))
                .collect(),
            batches_emitted,
            discard_batches: 0,
            budgets: None,
        }
    }
}

/// A unit of CPU work for the pool.
struct Task {
    run: Box<dyn FnOnce() + Send>,
}

/// A fixed set of OS threads for CPU-heavy work, so the async executor never decodes images.
struct WorkerPool {
    tx: Option<crossbeam_channel::Sender<Task>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl WorkerPool {
    fn new(n: usize) -> Self {
        // Bounded: the ordered map never has more than `in_flight` tasks outstanding anyway.
        let (tx, rx) = crossbeam_channel::unbounded::<Task>();
        let threads = (0..n.max(1))
            .map(|i| {
                let rx = rx.clone();
                std::thread::Builder::new()
                    .name(format!("comp-loader-cpu-{i}"))
                    .spawn(move || {
                        while let Ok(task) = rx.recv() {
                            (task.run)();
                        }
                    })
                    .expect("spawn loader worker")
            })
            .collect();
        Self {
            tx: Some(tx),
            threads,
        }
    }
    fn sender(&self) -> crossbeam_channel::Sender<Task> {
        self.tx.clone().expect("pool alive")
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        self.tx.take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
