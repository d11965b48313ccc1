//! `PackedBatch`: the contract between the loader and any model.
//!
//! Plain Rust buffers, no tensor library types, laid out like Hugging Face Qwen2-VL's processor output so
//! the same batch can feed our tch model or another multimodal LLM. Image `i` belongs to sample `i`
//! (CoMP pairs one image with one caption).
use comp_datasets::SampleId;
use serde::{Deserialize, Serialize};

/// Label value for positions that are not supervised (prompt, template, image placeholders).
pub const IGNORE_INDEX: i64 = -100;

/// One packed, variable-length batch. Nothing is padded: budgets are upper bounds and [`FillStats`]
/// reports how much of each budget the batch uses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PackedBatch {
    /// `[total_patches, patch_dim]`, row-major; each image's patches in 2x2 merge-window order.
    pub pixel_values: Vec<f32>,
    /// `C * T * P * P` (3 * 1 * 14 * 14 = 588 for CoMP; 1176 with Qwen2-VL's temporal patch size 2).
    pub patch_dim: usize,
    /// `[n_images]` of `(t, h, w)` in patches.
    pub image_grid_thw: Vec<[i64; 3]>,
    /// `[n_images + 1]`: `[0, cumsum(t*h*w)]`, delimiting each image's rows of `pixel_values`.
    pub vision_cu_seqlens: Vec<i32>,
    /// `[total_tokens]`: all samples' token sequences, concatenated.
    pub input_ids: Vec<i64>,
    /// `[total_tokens]`: the target for each position's *own* token (shift happens in the loss), or
    /// [`IGNORE_INDEX`] where not supervised.
    pub labels: Vec<i64>,
    /// `[total_tokens]`: restart at 0 for every sample.
    pub position_ids: Vec<i64>,
    /// `[n_samples + 1]`: delimits each sample's tokens in `input_ids`.
    pub text_cu_seqlens: Vec<i32>,
    /// The placeholder id; sample `i` holds exactly `t*h*w / merge_size²` of them for image `i`.
    pub image_token_id: i64,
    /// Per sample, `[start, end)` into `input_ids` of the caption tokens alone (no template, no end token):
    /// the text side of the alignment loss.
    pub caption_spans: Vec<[u32; 2]>,
    /// Per sample, its stable id (shard, row) for resume and audit.
    pub sample_ids: Vec<SampleId>,
    pub fill: FillStats,
}

/// How full a batch is relative to its budgets (1.0 = no wasted slot).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct FillStats {
    pub patches: usize,
    pub patch_budget: usize,
    pub tokens: usize,
    pub token_budget: usize,
    pub images: usize,
    pub image_budget: usize,
}

impl FillStats {
    pub fn patch_fill(&self) -> f64 {
        ratio(self.patches, self.patch_budget)
    }
    pub fn token_fill(&self) -> f64 {
        ratio(self.tokens, self.token_budget)
    }
}

fn ratio(used: usize, budget: usize) -> f64 {
    if budget == 0 {
        0.0
    } else {
        used as f64 / budget as f64
    }
}

impl PackedBatch {
    pub fn num_samples(&self) -> usize {
        self.sample_ids.len()
    }
    pub fn num_patches(&self) -> usize {
        *self.vision_cu_seqlens.last().unwrap_or(&0) as usize
    }
    pub fn num_tokens(&self) -> usize {
        self.input_ids.len()
    }
}

/// One fully processed sample, ready to be packed: the unit the packer moves around.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessedSample {
    pub id: SampleId,
    /// `[t*h*w, patch_dim]`, merge-window order.
    pub pixel_values: Vec<f32>,
    pub grid_thw: [i64; 3],
    pub input_ids: Vec<i64>,
    pub labels: Vec<i64>,
    /// `[start, end)` of the caption tokens within `input_ids`.
    pub caption_span: [u32; 2],
}

impl ProcessedSample {
    pub fn num_patches(&self) -> usize {
        (self.grid_thw[0] * self.grid_thw[1] * self.grid_thw[2]) as usize
    }
    pub fn num_tokens(&self) -> usize {
        self.input_ids.len()
    }
}

/// The budgets a batch is packed under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budgets {
    pub max_patches: usize,
    pub max_tokens: usize,
    pub max_images: usize,
}

impl PackedBatch {
    /// Concatenate samples (in the given order) into one batch. Budgets are only recorded for the fill
    /// statistics here; the packer is what keeps batches within them.
    pub fn from_samples(
        samples: Vec<ProcessedSample>,
        patch_dim: usize,
        image_token_id: i64,
        budgets: Budgets,
    ) -> Self {
        Self::from_frames(samples, patch_dim, 1, image_token_id, budgets)
    }

    /// [`from_samples`](Self::from_samples) for samples that store a still image's frame once:
    /// their rows hold `patch_dim / frames` values (`C * P * P`), and each channel's `P * P` block is
    /// written `frames` times here, giving the `[C, T, P, P]` rows of `patch_dim` values that
    /// patchifying with `temporal_patch_size = frames` gives. The loader keeps samples this way: half
    /// the memory per buffered sample at T = 2, and the copy happens in the assembly that copies
    /// anyway.
    pub fn from_frames(
        samples: Vec<ProcessedSample>,
        patch_dim: usize,
        frames: usize,
        image_token_id: i64,
        budgets: Budgets,
    ) -> Self {
        // One frame needs no layout; repeated ones need whole [C, T, P, P] rows.
        assert!(frames == 1 || (frames > 1 && patch_dim.is_multiple_of(3 * frames)));
        let frame_dim = patch_dim / frames;
        let total_patches: usize = samples.iter().map(ProcessedSample::num_patches).sum();
        let total_tokens: usize = samples.iter().map(ProcessedSample::num_tokens).sum();
        let mut b = PackedBatch {
            pixel_values: Vec::with_capacity(total_patches * patch_dim),
            patch_dim,
            image_grid_thw: Vec::with_capacity(samples.len()),
            vision_cu_seqlens: vec![0],
            input_ids: Vec::with_capacity(total_tokens),
            labels: Vec::with_capacity(total_tokens),
            position_ids: Vec::with_capacity(total_tokens),
            text_cu_seqlens: vec![0],
            image_token_id,
            caption_spans: Vec::with_capacity(samples.len()),
            sample_ids: Vec::with_capacity(samples.len()),
            fill: FillStats {
                patches: total_patches,
                patch_budget: budgets.max_patches,
                tokens: total_tokens,
                token_budget: budgets.max_tokens,
                images: samples.len(),
                image_budget: budgets.max_images,
            },
        };
        for s in samples {
            debug_assert_eq!(s.pixel_values.len(), s.num_patches() * frame_dim);
            let offset = b.input_ids.len() as u32;
            if frames == 1 {
                b.pixel_values.extend_from_slice(&s.pixel_values);
            } else {
                for block in s.pixel_values.chunks_exact(frame_dim / 3) {
                    for _ in 0..frames {
                        b.pixel_values.extend_from_slice(block);
                    }
                }
            }
            b.image_grid_thw.push(s.grid_thw);
            b.vision_cu_seqlens
                .push(b.vision_cu_seqlens.last().unwrap() + s.num_patches() as i32);
            b.position_ids.extend(0..s.input_ids.len() as i64);
            b.input_ids.extend_from_slice(&s.input_ids);
            b.labels.extend_from_slice(&s.labels);
            b.text_cu_seqlens.push(b.input_ids.len() as i32);
            b.caption_spans
                .push([offset + s.caption_span[0], offset + s.caption_span[1]]);
            b.sample_ids.push(s.id);
        }
        b
    }
}
