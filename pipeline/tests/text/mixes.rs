//! Synthetic sample-size mixes for packing tests and the packing bench (shared via `#[path]`).
//!
//! Sizes go through the real `smart_resize` with Qwen2-VL's default pixel bounds, so patch counts are
//! the ones the loader produces; token counts follow the CoMP template: `patches/4` placeholders,
//! the caption, and 3 template tokens.
#![allow(dead_code)]

use comp_datasets::SampleId;
use comp_pipeline::ProcessedSample;
use comp_pipeline::resize::smart_resize;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub const MIN_PIXELS: u64 = 56 * 56;
pub const MAX_PIXELS: u64 = 28 * 28 * 1280;
/// `<|vision_start|>`, `<|vision_end|>`, `<|endoftext|>`.
pub const TEMPLATE_TOKENS: usize = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mix {
    /// Sides uniform in 32..=1024 px, captions 10..=40 tokens (the built-in demo data).
    Demo,
    /// Log-normal sides (median 384 px, sigma 0.9) and aspect ratios (images up to
    /// Qwen2-VL's `max_pixels`), captions 10..=40 tokens.
    HeavyTailed,
}

impl Mix {
    pub fn name(self) -> &'static str {
        match self {
            Mix::Demo => "demo-like",
            Mix::HeavyTailed => "heavy-tailed",
        }
    }
}

/// `(grid_thw, caption_tokens)` per sample.
pub fn shapes(mix: Mix, n: usize, seed: u64) -> Vec<([i64; 3], usize)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let (h, w, cap) = match mix {
                Mix::Demo => (
                    rng.random_range(32..=1024u32),
                    rng.random_range(32..=1024u32),
                    rng.random_range(10..=40usize),
                ),
                Mix::HeavyTailed => {
                    let h = (384f64.ln() + 0.9 * normal(&mut rng)).exp();
                    let w = h * (0.5 * normal(&mut rng)).exp();
                    (
                        h.clamp(8.0, 20000.0) as u32,
                        w.clamp(8.0, 20000.0) as u32,
                        rng.random_range(10..=40usize),
                    )
                }
            };
            let (rh, rw) = smart_resize(h, w, 28, MIN_PIXELS, MAX_PIXELS, 200.0).unwrap();
            ([1, rh as i64 / 14, rw as i64 / 14], cap)
        })
        .collect()
}

fn normal(rng: &mut impl Rng) -> f64 {
    // Box-Muller; u1 in (0, 1] so the log is finite.
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Samples with `patch_dim` values per patch (tests use 1 to keep memory small); pixel values and ids
/// encode the sample index so tests can check nothing is lost, duplicated or mixed up.
pub fn samples(shapes: &[([i64; 3], usize)], patch_dim: usize) -> Vec<ProcessedSample> {
    shapes
        .iter()
        .enumerate()
        .map(|(i, &(grid, cap))| {
            let patches = (grid[0] * grid[1] * grid[2]) as usize;
            let n_image = patches / 4;
            let mut input_ids = vec![1i64];
            input_ids.extend(std::iter::repeat_n(5, n_image));
            input_ids.push(2);
            let start = input_ids.len() as u32;
            input_ids.extend((0..cap).map(|k| 10 + (i + k) as i64 % 500));
            let end = input_ids.len() as u32;
            input_ids.push(0);
            let mut labels = vec![-100; input_ids.len()];
            labels[start as usize..=end as usize].copy_from_slice(&input_ids[start as usize..]);
            ProcessedSample {
                id: SampleId {
                    shard: (i / 1000) as u32,
                    row: i as u64,
                },
                pixel_values: vec![i as f32; patches * patch_dim],
                grid_thw: grid,
                input_ids,
                labels,
                caption_span: [start, end],
            }
        })
        .collect()
}

/// `(patches, tokens)` of each sample.
pub fn sizes(samples: &[ProcessedSample]) -> Vec<(usize, usize)> {
    samples
        .iter()
        .map(|s| (s.num_patches(), s.num_tokens()))
        .collect()
}
