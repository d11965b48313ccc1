//! Bucketing and packing: variable-size samples into batches under fixed budgets.
//!
//! A batch is bounded by three budgets ([`Budgets`]): ViT patches, LLM text tokens, and images. Nothing
//! is padded; what a batch leaves unused of a budget is waste, reported per batch in [`FillStats`].
//! The goal is little waste in *both* patches and tokens. A sample of `p` patches brings about `p/4`
//! image tokens plus its caption and template, so small images are token-heavy and large ones
//! patch-heavy; a batch can fill both budgets only by mixing the two kinds in the right proportion. Over
//! a whole stream, both fills can be high only when the token budget matches the stream's
//! tokens-per-patch ratio, which is why `max_tokens` may be left to [`balanced_token_budget`].
//!
//! **How a batch is chosen.** The packer holds a bounded buffer of samples in arrival order. When it is
//! full, one batch is cut from it:
//! 1. the oldest sample seeds the batch (so no sample waits for more than `buffer_size` batches);
//! 2. greedy: repeatedly add the fitting sample whose (patches, tokens) vector points most along what the
//!    batch still lacks (largest dot product with the remaining budget, both normalised by the budget),
//!    i.e. fill whichever budget is further from full while the other keeps up;
//! 3. repair: swap one chosen sample for one or two unchosen ones while that raises the smaller of the
//!    two fills — this closes the last few percent that greedy leaves.
//!
//! "Bucketing by patch count" is the candidate index of that search: the buffer is kept sorted into
//! patch-count buckets (boundaries in [`PackConfig::bucket_boundaries`]), and the search skips whole
//! buckets whose smallest member cannot fit what is left.
//!
//! **Determinism and resume.** All arithmetic is on integers and ties go to the earliest arrival, so the
//! output depends only on the input order. Batches are cut only at two points: when a push makes the
//! buffer full, and at [`Packer::flush`]. Between cuts the packer's state is exactly the buffered samples
//! in arrival order ([`Packer::buffered_ids`]) plus the resolved budgets ([`Packer::budgets`]). A fresh
//! packer built with those budgets and fed the buffered samples and then the rest of the stream emits
//! exactly the batches the uninterrupted packer would have.
use serde::{Deserialize, Serialize};

use crate::batch::{Budgets, PackedBatch, ProcessedSample};
use comp_datasets::SampleId;

/// Packing configuration; the single source of the packing defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PackConfig {
    /// ViT patches per batch (sum of `t*h*w`). 5120 = Qwen2-VL's default `max_pixels` / 14²: the largest
    /// image the default resize produces fits alone, so none is refused.
    pub max_patches: usize,
    /// Text tokens per batch (image placeholders included). `None`: derived once, when the buffer
    /// first fills, from the buffered samples' tokens-per-patch ratio ([`balanced_token_budget`]), but
    /// at least a full patch budget's placeholders plus the longest text seen (so a large image with a
    /// long caption is not refused); read it back with [`Packer::budgets`] and save it for resume.
    pub max_tokens: Option<usize>,
    pub max_images: usize,
    /// Samples held before a batch is cut; bounds the packer's memory (each sample carries its pixels).
    pub buffer_size: usize,
    /// Ascending patch counts splitting the buffer into buckets for the candidate search.
    pub bucket_boundaries: Vec<usize>,
}

impl Default for PackConfig {
    fn default() -> Self {
        PackConfig {
            max_patches: 5120,
            max_tokens: None,
            max_images: 64,
            buffer_size: 128,
            bucket_boundaries: vec![64, 256, 576, 1024, 1600, 2304, 3136],
        }
    }
}

/// Why a sample or configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PackError {
    /// The sample alone is larger than a budget: the caller skips it and counts it.
    #[error(
        "sample {id:?} does not fit any batch: {patches} patches, {tokens} tokens (budgets: {budgets:?})"
    )]
    Oversized {
        id: SampleId,
        patches: usize,
        tokens: usize,
        budgets: Budgets,
    },
    #[error("sample {id:?} has {len} pixel values, expected {patches} patches x {patch_dim}")]
    PatchDim {
        id: SampleId,
        len: usize,
        patches: usize,
        patch_dim: usize,
    },
    #[error("invalid packing config: {0}")]
    Config(String),
}

/// The token budget that makes a stream with these totals fill patches and tokens equally:
/// `ceil(max_patches * total_tokens / total_patches)`.
pub fn balanced_token_budget(max_patches: usize, total_patches: u64, total_tokens: u64) -> usize {
    if total_patches == 0 {
        return max_patches;
    }
    (max_patches as u128 * total_tokens as u128).div_ceil(total_patches as u128) as usize
}

/// Waste of naive batching for comparison: consecutive groups of `batch_size` samples, each padded to
/// the longest in its group. `sizes` are `(patches, tokens)` per sample; returns
/// `(patch_waste, token_waste)` as fractions of the padded slots.
pub fn pad_to_longest_waste(sizes: &[(usize, usize)], batch_size: usize) -> (f64, f64) {
    let (mut used_p, mut slots_p, mut used_t, mut slots_t) = (0u64, 0u64, 0u64, 0u64);
    for group in sizes.chunks(batch_size.max(1)) {
        let max_p = group.iter().map(|s| s.0).max().unwrap_or(0) as u64;
        let max_t = group.iter().map(|s| s.1).max().unwrap_or(0) as u64;
        used_p += group.iter().map(|s| s.0 as u64).sum::<u64>();
        used_t += group.iter().map(|s| s.1 as u64).sum::<u64>();
        slots_p += max_p * group.len() as u64;
        slots_t += max_t * group.len() as u64;
    }
    let waste = |u: u64, s: u64| {
        if s == 0 {
            0.0
        } else {
            1.0 - u as f64 / s as f64
        }
    };
    (waste(used_p, slots_p), waste(used_t, slots_t))
}

struct Entry {
    sample: ProcessedSample,
    patches: u64,
    tokens: u64,
}

/// Deterministic online packer; see the module docs for the algorithm and the resume contract.
pub struct Packer {
    cfg: PackConfig,
    budgets: Option<Budgets>,
    patch_dim: usize,
    /// Frames each sample stores once and batches repeat (see [`Packer::repeating_frames`]).
    frames: usize,
    image_token_id: i64,
    /// Arrival order.
    buffer: Vec<Entry>,
}

impl Packer {
    /// `patch_dim` is `C*T*P*P` of every sample's `pixel_values`; `image_token_id` is recorded in batches.
    pub fn new(cfg: PackConfig, patch_dim: usize, image_token_id: i64) -> Result<Self, PackError> {
        if cfg.max_patches == 0 || cfg.max_images == 0 || cfg.buffer_size == 0 {
            return Err(PackError::Config(
                "max_patches, max_images and buffer_size must be positive".into(),
            ));
        }
        if cfg.max_tokens == Some(0) {
            return Err(PackError::Config("max_tokens must be positive".into()));
        }
        if !cfg.bucket_boundaries.windows(2).all(|w| w[0] < w[1]) {
            return Err(PackError::Config(
                "bucket_boundaries must be strictly ascending".into(),
            ));
        }
        let budgets = cfg.max_tokens.map(|max_tokens| Budgets {
            max_patches: cfg.max_patches,
            max_tokens,
            max_images: cfg.max_images,
        });
        Ok(Packer {
            buffer: Vec::with_capacity(cfg.buffer_size),
            cfg,
            budgets,
            patch_dim,
            frames: 1,
            image_token_id,
        })
    }

    /// Take samples that store a still image's frame once (rows of `patch_dim / frames` values, as
    /// patchifying with `temporal_patch_size = 1` gives) and build batches of `patch_dim`-value rows
    /// with each frame repeated `frames` times (see [`PackedBatch::from_frames`]).
    pub fn repeating_frames(mut self, frames: usize) -> Result<Self, PackError> {
        if frames == 0 || (frames > 1 && !self.patch_dim.is_multiple_of(3 * frames)) {
            return Err(PackError::Config(format!(
                "patch_dim {} is not 3 channels x {frames} frames",
                self.patch_dim
            )));
        }
        self.frames = frames;
        Ok(self)
    }

    /// The budgets in force; `None` until an automatic token budget has been derived.
    pub fn budgets(&self) -> Option<Budgets> {
        self.budgets
    }

    /// The configuration with the derived token budget filled in: what a resumed packer is built from.
    pub fn resolved_config(&self) -> PackConfig {
        PackConfig {
            max_tokens: self.budgets.map(|b| b.max_tokens).or(self.cfg.max_tokens),
            ..self.cfg.clone()
        }
    }

    pub fn config(&self) -> &PackConfig {
        &self.cfg
    }

    /// Ids of the buffered samples in arrival order: with [`Packer::budgets`], the packer's whole state.
    pub fn buffered_ids(&self) -> Vec<SampleId> {
        self.buffer.iter().map(|e| e.sample.id).collect()
    }

    pub fn buffered_len(&self) -> usize {
        self.buffer.len()
    }

    /// Add a sample; returns a batch when this push filled the buffer. A sample that can never fit is
    /// refused with [`PackError::Oversized`] and not buffered (the stream goes on).
    pub fn push(&mut self, sample: ProcessedSample) -> Result<Option<PackedBatch>, PackError> {
        Ok(self.push_pending(sample)?.map(PendingBatch::build))
    }

    /// End of stream: pack everything still buffered.
    pub fn flush(&mut self) -> Vec<PackedBatch> {
        self.flush_pending()
            .into_iter()
            .map(PendingBatch::build)
            .collect()
    }

    /// [`push`](Self::push), but the batch is returned unassembled: the caller decides where the
    /// copying into one batch happens (the loader runs it on its worker pool).
    pub fn push_pending(
        &mut self,
        sample: ProcessedSample,
    ) -> Result<Option<PendingBatch>, PackError> {
        let patches = sample.num_patches();
        let row = self.patch_dim / self.frames;
        if sample.pixel_values.len() != patches * row {
            return Err(PackError::PatchDim {
                id: sample.id,
                len: sample.pixel_values.len(),
                patches,
                patch_dim: row,
            });
        }
        let tokens = sample.num_tokens();
        let limit = self.budgets.unwrap_or(Budgets {
            max_patches: self.cfg.max_patches,
            max_tokens: usize::MAX,
            max_images: self.cfg.max_images,
        });
        if patches > limit.max_patches || tokens > limit.max_tokens {
            return Err(PackError::Oversized {
                id: sample.id,
                patches,
                tokens,
                budgets: limit,
            });
        }
        self.buffer.push(Entry {
            sample,
            patches: patches as u64,
            tokens: tokens as u64,
        });
        if self.buffer.len() < self.cfg.buffer_size {
            return Ok(None);
        }
        let budgets = self.resolve_budgets();
        Ok(Some(self.cut(budgets)))
    }

    /// [`flush`](Self::flush), with the batches unassembled.
    pub fn flush_pending(&mut self) -> Vec<PendingBatch> {
        if self.buffer.is_empty() {
            return Vec::new();
        }
        let budgets = self.resolve_budgets();
        let mut out = Vec::new();
        while !self.buffer.is_empty() {
            out.push(self.cut(budgets));
        }
        out
    }

    fn resolve_budgets(&mut self) -> Budgets {
        if let Some(b) = self.budgets {
            return b;
        }
        let total_p: u64 = self.buffer.iter().map(|e| e.patches).sum();
        let total_t: u64 = self.buffer.iter().map(|e| e.tokens).sum();
        // Floor: a sample with a full patch budget and the longest text seen so far must still fit, so
        // the derived budget never refuses an image the patch budget accepts (nor any buffered sample).
        let id = self.image_token_id;
        let placeholders =
            |e: &Entry| e.sample.input_ids.iter().filter(|&&t| t == id).count() as u64;
        let total_placeholders: u64 = self.buffer.iter().map(placeholders).sum();
        let max_text = self.buffer.iter().map(|e| e.tokens - placeholders(e)).max();
        let max_sample = self.buffer.iter().map(|e| e.tokens).max();
        let max_image_tokens =
            balanced_token_budget(self.cfg.max_patches, total_p, total_placeholders);
        let floor = (max_image_tokens + max_text.unwrap_or(0) as usize)
            .max(max_sample.unwrap_or(1) as usize);
        let b = Budgets {
            max_patches: self.cfg.max_patches,
            max_tokens: balanced_token_budget(self.cfg.max_patches, total_p, total_t).max(floor),
            max_images: self.cfg.max_images,
        };
        self.budgets = Some(b);
        b
    }

    /// Cut one batch out of the buffer (which must be non-empty).
    fn cut(&mut self, budgets: Budgets) -> PendingBatch {
        let sizes: Vec<(u64, u64)> = self.buffer.iter().map(|e| (e.patches, e.tokens)).collect();
        let mut chosen = select(&sizes, &self.cfg.bucket_boundaries, budgets);
        chosen.sort_unstable();
        let mut samples = Vec::with_capacity(chosen.len());
        for &i in chosen.iter().rev() {
            samples.push(self.buffer.remove(i).sample);
        }
        samples.reverse();
        PendingBatch {
            samples,
            patch_dim: self.patch_dim,
            frames: self.frames,
            image_token_id: self.image_token_id,
            budgets,
        }
    }
}

/// A batch the packer has chosen but not yet assembled: its samples in batch order and the budgets it
/// was cut under. Choosing is cheap and sequential; [`build`](Self::build) copies every sample's
/// pixels and tokens into the batch's buffers, which is worth running off the packer's thread.
#[derive(Debug)]
pub struct PendingBatch {
    samples: Vec<ProcessedSample>,
    patch_dim: usize,
    frames: usize,
    image_token_id: i64,
    budgets: Budgets,
}

impl PendingBatch {
    /// Number of samples in the batch.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether the batch has no samples (never true for a batch the packer cut).
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Concatenate the samples into one [`PackedBatch`].
    pub fn build(self) -> PackedBatch {
        PackedBatch::from_frames(
            self.samples,
            self.patch_dim,
            self.frames,
            self.image_token_id,
            self.budgets,
        )
    }
}

/// Running sums of a candidate batch.
#[derive(Clone, Copy)]
struct Load {
    p: u64,
    t: u64,
    n: usize,
}

/// Choose buffer indices for one batch: seed with index 0 (the oldest), greedy fill, then repair.
fn select(sizes: &[(u64, u64)], boundaries: &[usize], b: Budgets) -> Vec<usize> {
    let (bp, bt, bn) = (b.max_patches as u64, b.max_tokens as u64, b.max_images);
    let fits = |l: Load, (p, t): (u64, u64)| l.p + p <= bp && l.t + t <= bt && l.n < bn;
    // Buckets: indices grouped by patch count, largest bucket first, arrival order inside.
    let bucket_of = |p: u64| boundaries.partition_point(|&x| (x as u64) < p);
    let mut buckets: Vec<Vec<usize>> = vec![Vec::new(); boundaries.len() + 1];
    for (i, &(p, _)) in sizes.iter().enumerate().skip(1) {
        buckets[bucket_of(p)].push(i);
    }
    let lower = |k: usize| {
        if k == 0 {
            0
        } else {
            boundaries[k - 1] as u64 + 1
        }
    };

    let mut taken = vec![false; sizes.len()];
    taken[0] = true;
    let mut chosen = vec![0usize];
    let mut load = Load {
        p: sizes[0].0,
        t: sizes[0].1,
        n: 1,
    };
    // Greedy: maximise dot((p/bp, t/bt), (rem_p/bp, rem_t/bt)), scaled by bp²·bt² to stay integral.
    loop {
        let (rem_p, rem_t) = (bp - load.p, bt - load.t);
        let mut best: Option<(u128, usize)> = None;
        for (k, bucket) in buckets.iter().enumerate().rev() {
            if lower(k) > rem_p {
                continue;
            }
            for &i in bucket {
                if taken[i] || !fits(load, sizes[i]) {
                    continue;
                }
                let (p, t) = sizes[i];
                let score = (p as u128 * rem_p as u128) * (bt as u128 * bt as u128)
                    + (t as u128 * rem_t as u128) * (bp as u128 * bp as u128);
                if best.is_none_or(|(s, j)| score > s || (score == s && i < j)) {
                    best = Some((score, i));
                }
            }
        }
        let Some((_, i)) = best else { break };
        taken[i] = true;
        chosen.push(i);
        load = load.plus(sizes[i]);
    }
    repair(sizes, &mut taken, &mut chosen, &mut load, b);
    chosen
}

/// Quality of a load: the smaller normalised fill first, then the sum (cross-multiplied, integral).
fn quality(l: Load, bp: u64, bt: u64) -> (u128, u128) {
    let fp = l.p as u128 * bt as u128;
    let ft = l.t as u128 * bp as u128;
    (fp.min(ft), fp + ft)
}

/// A candidate change to a batch: drop the sample at `drop` (a position in `chosen`), add `add`.
struct Move {
    quality: (u128, u128),
    drop: Option<usize>,
    add: (usize, Option<usize>),
}

impl Load {
    fn plus(self, (p, t): (u64, u64)) -> Load {
        Load {
            p: self.p + p,
            t: self.t + t,
            n: self.n + 1,
        }
    }
    fn minus(self, (p, t): (u64, u64)) -> Load {
        Load {
            p: self.p - p,
            t: self.t - t,
            n: self.n - 1,
        }
    }
}

/// Improve a greedy batch by 1-for-1 and 1-for-2 swaps (never touching the seed at position 0), and by
/// adding any sample that still fits, while the batch's quality strictly rises. Bounded rounds keep the
/// cost at O(rounds · batch · buffer²) integer operations.
fn repair(
    sizes: &[(u64, u64)],
    taken: &mut [bool],
    chosen: &mut Vec<usize>,
    load: &mut Load,
    b: Budgets,
) {
    const MAX_ROUNDS: usize = 8;
    let (bp, bt, bn) = (b.max_patches as u64, b.max_tokens as u64, b.max_images);
    let within = |l: Load| l.p <= bp && l.t <= bt && l.n <= bn;
    for _ in 0..MAX_ROUNDS {
        let current = quality(*load, bp, bt);
        let mut best: Option<Move> = None;
        let mut consider = |l: Load, drop: Option<usize>, add: (usize, Option<usize>)| {
            let q = quality(l, bp, bt);
            if q > current && best.as_ref().is_none_or(|m| q > m.quality) {
                best = Some(Move {
                    quality: q,
                    drop,
                    add,
                });
            }
        };
        let free: Vec<usize> = (0..sizes.len()).filter(|&i| !taken[i]).collect();
        for &y in &free {
            let l = load.plus(sizes[y]);
            if within(l) {
                consider(l, None, (y, None));
            }
        }
        for (pos, &x) in chosen.iter().enumerate().skip(1) {
            let base = load.minus(sizes[x]);
            for (a, &y) in free.iter().enumerate() {
                let l1 = base.plus(sizes[y]);
                if !within(l1) {
                    continue;
                }
                consider(l1, Some(pos), (y, None));
                for &z in &free[a + 1..] {
                    let l2 = l1.plus(sizes[z]);
                    if within(l2) {
                        consider(l2, Some(pos), (y, Some(z)));
                    }
                }
            }
        }
        let Some(m) = best else { return };
        if let Some(pos) = m.drop {
            let x = chosen.swap_remove(pos);
            taken[x] = false;
            *load = load.minus(sizes[x]);
        }
        for i in std::iter::once(m.add.0).chain(m.add.1) {
            taken[i] = true;
            chosen.push(i);
            *load = load.plus(sizes[i]);
        }
    }
}
