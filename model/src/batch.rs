//! `PackedBatch` (plain buffers from the loader) to tensors: the one place where the loader's layout
//! becomes the model's inputs.
//!
//! Beyond copying, this precomputes on the host what every step needs: the next-token targets (labels
//! are the tokens themselves; position `i` predicts `labels[i+1]` of the same sample), where the visual
//! tokens go, and the caption-only packed sequence for the alignment loss.
use comp_pipeline::{IGNORE_INDEX, PackedBatch};
use tch::{Device, Tensor};

use crate::error::{ModelError, Result};

#[derive(Debug)]
pub struct BatchTensors {
    /// `[total_patches, patch_dim]` f32, merge-window order per image.
    pub pixel_values: Tensor,
    pub grid_thw: Vec<[i64; 3]>,
    pub vision_cu_seqlens: Vec<i64>,
    /// `[total_tokens]` int64.
    pub input_ids: Tensor,
    /// `[total_tokens]` int64, restarting at 0 per sample.
    pub position_ids: Tensor,
    pub text_cu_seqlens: Vec<i64>,
    pub image_token_id: i64,
    /// Indices into `input_ids` of the image placeholders, in order (image 0's first).
    pub image_token_positions: Tensor,
    /// Placeholders per sample.
    pub image_tokens_per_sample: Vec<i64>,
    /// Rows whose *next* token is supervised, and that token: the decoding loss's inputs.
    pub target_positions: Tensor,
    pub targets: Tensor,
    /// The caption-only tokens of the samples with a non-empty caption, as their own packed sequence.
    pub caption_ids: Tensor,
    pub caption_position_ids: Tensor,
    pub caption_cu_seqlens: Vec<i64>,
    /// For each caption segment, its sample (= image) index.
    pub caption_samples: Vec<i64>,
}

fn idx(v: &[i64], device: Device) -> Tensor {
    Tensor::from_slice(v).to_device(device)
}

impl BatchTensors {
    pub fn from_packed(b: &PackedBatch, device: Device) -> Result<Self> {
        let bad = |m: String| Err(ModelError::Batch(m));
        let n_tok = b.input_ids.len();
        if b.labels.len() != n_tok || b.position_ids.len() != n_tok {
            return bad(format!(
                "input_ids ({n_tok}), labels ({}) and position_ids ({}) differ in length",
                b.labels.len(),
                b.position_ids.len()
            ));
        }
        let text_cu: Vec<i64> = b.text_cu_seqlens.iter().map(|&x| x as i64).collect();
        if text_cu.first() != Some(&0)
            || *text_cu.last().unwrap_or(&0) != n_tok as i64
            || text_cu.windows(2).any(|w| w[1] < w[0])
        {
            return bad(format!(
                "text_cu_seqlens {text_cu:?} does not delimit {n_tok} tokens"
            ));
        }
        let n_samples = text_cu.len() - 1;
        if b.caption_spans.len() != n_samples {
            return bad(format!(
                "{} caption spans for {n_samples} samples",
                b.caption_spans.len()
            ));
        }
        let vision_cu: Vec<i64> = b.vision_cu_seqlens.iter().map(|&x| x as i64).collect();
        let n_patches = *vision_cu.last().unwrap_or(&0);
        if b.patch_dim == 0 || b.pixel_values.len() != n_patches as usize * b.patch_dim {
            return bad(format!(
                "pixel_values has {} values, expected {n_patches} patches x {}",
                b.pixel_values.len(),
                b.patch_dim
            ));
        }
        if vision_cu.len() != b.image_grid_thw.len() + 1 {
            return bad(format!(
                "vision_cu_seqlens has {} entries for {} images",
                vision_cu.len(),
                b.image_grid_thw.len()
            ));
        }

        let (mut image_pos, mut per_sample) = (Vec::new(), vec![0i64; n_samples]);
        let (mut tpos, mut tgt) = (Vec::new(), Vec::new());
        let (mut cap_ids, mut cap_pos, mut cap_cu, mut cap_samples) =
            (Vec::new(), Vec::new(), vec![0i64], Vec::new());
        for s in 0..n_samples {
            let (a, e) = (text_cu[s] as usize, text_cu[s + 1] as usize);
            for i in a..e {
                if b.input_ids[i] == b.image_token_id {
                    image_pos.push(i as i64);
                    per_sample[s] += 1;
                }
                if i + 1 < e && b.labels[i + 1] != IGNORE_INDEX {
                    tpos.push(i as i64);
                    tgt.push(b.labels[i + 1]);
                }
            }
            let [cs, ce] = b.caption_spans[s];
            let (cs, ce) = (cs as usize, ce as usize);
            if cs > ce || cs < a || ce > e {
                return bad(format!(
                    "sample {s}: caption span [{cs}, {ce}) is outside its tokens [{a}, {e})"
                ));
            }
            if ce > cs {
                cap_ids.extend_from_slice(&b.input_ids[cs..ce]);
                cap_pos.extend(0..(ce - cs) as i64);
                cap_cu.push(cap_cu.last().unwrap() + (ce - cs) as i64);
                cap_samples.push(s as i64);
            }
        }
        let pixel_values = Tensor::from_slice(&b.pixel_values)
            .view([n_patches, b.patch_dim as i64])
            .to_device(device);
        Ok(Self {
            pixel_values,
            grid_thw: b.image_grid_thw.clone(),
            vision_cu_seqlens: vision_cu,
            input_ids: idx(&b.input_ids, device),
            position_ids: idx(&b.position_ids, device),
            text_cu_seqlens: text_cu,
            image_token_id: b.image_token_id,
            image_token_positions: idx(&image_pos, device),
            image_tokens_per_sample: per_sample,
            target_positions: idx(&tpos, device),
            targets: idx(&tgt, device),
            caption_ids: idx(&cap_ids, device),
            caption_position_ids: idx(&cap_pos, device),
            caption_cu_seqlens: cap_cu,
            caption_samples: cap_samples,
        })
    }

    pub fn num_images(&self) -> usize {
        self.grid_thw.len()
    }

    pub fn num_samples(&self) -> usize {
        self.text_cu_seqlens.len() - 1
    }

    /// Supervised next-token predictions in this batch.
    pub fn num_supervised(&self) -> i64 {
        self.targets.size()[0]
    }
}
