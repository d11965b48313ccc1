//! Packing efficiency and speed on synthetic size mixes.
//!
//! Prints, per mix: mean patch fill and mean token fill of the packed batches (stream batches; the
//! end-of-stream flush is reported separately), the waste of naive pad-to-longest batching with the same
//! mean batch size measured in the same run, and packed batches per second.
//! Run: `cargo bench -p comp-pipeline --bench pack`.
#[path = "../tests/text/mixes.rs"]
mod mixes;

use std::time::Instant;

use comp_pipeline::pack::{PackConfig, Packer, balanced_token_budget, pad_to_longest_waste};
use comp_pipeline::{PackedBatch, ProcessedSample};
use mixes::Mix;

const N: usize = 20_000;

struct Run {
    stream: Vec<PackedBatch>,
    flushed: Vec<PackedBatch>,
    secs: f64,
    max_tokens: usize,
}

fn run(cfg: &PackConfig, samples: &[ProcessedSample]) -> Run {
    let mut packer = Packer::new(cfg.clone(), 1, 5).unwrap();
    let owned: Vec<ProcessedSample> = samples.to_vec();
    let t0 = Instant::now();
    let mut stream = Vec::new();
    for s in owned {
        if let Some(b) = packer.push(s).unwrap() {
            stream.push(b);
        }
    }
    let flushed = packer.flush();
    let secs = t0.elapsed().as_secs_f64();
    Run {
        stream,
        flushed,
        secs,
        max_tokens: packer.budgets().unwrap().max_tokens,
    }
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    if n == 0 { 0.0 } else { s / n as f64 }
}

fn report(label: &str, r: &Run) {
    let pf = mean(r.stream.iter().map(|b| b.fill.patch_fill()));
    let tf = mean(r.stream.iter().map(|b| b.fill.token_fill()));
    let min_pf = r
        .stream
        .iter()
        .map(|b| b.fill.patch_fill())
        .fold(1.0, f64::min);
    let min_tf = r
        .stream
        .iter()
        .map(|b| b.fill.token_fill())
        .fold(1.0, f64::min);
    let per_batch = mean(r.stream.iter().map(|b| b.num_samples() as f64));
    let n_batches = r.stream.len() + r.flushed.len();
    println!(
        "  {label:<34} max_tokens {:>5}  patch fill {:>6.2}%  token fill {:>6.2}%  (worst {:>5.1}% / {:>5.1}%)  \
         {:>5.2} samples/batch  flush: {} batches  {:>8.0} batches/s",
        r.max_tokens,
        100.0 * pf,
        100.0 * tf,
        100.0 * min_pf,
        100.0 * min_tf,
        per_batch,
        r.flushed.len(),
        n_batches as f64 / r.secs
    );
}

fn main() {
    for mix in [Mix::Demo, Mix::HeavyTailed] {
        let samples = mixes::samples(&mixes::shapes(mix, N, 7), 1);
        let sizes = mixes::sizes(&samples);
        let total_p: u64 = sizes.iter().map(|s| s.0 as u64).sum();
        let total_t: u64 = sizes.iter().map(|s| s.1 as u64).sum();
        println!(
            "{} mix: {N} samples, mean {:.0} patches, {:.0} tokens per sample",
            mix.name(),
            total_p as f64 / N as f64,
            total_t as f64 / N as f64
        );
        let default = PackConfig::default();
        let r = run(&default, &samples);
        report("default (auto token budget)", &r);
        let per_batch = mean(r.stream.iter().map(|b| b.num_samples() as f64)).round() as usize;
        let (wp, wt) = pad_to_longest_waste(&sizes, per_batch.max(1));
        let pw = 1.0 - mean(r.stream.iter().map(|b| b.fill.patch_fill()));
        let tw = 1.0 - mean(r.stream.iter().map(|b| b.fill.token_fill()));
        println!(
            "  naive pad-to-longest, batch {per_batch}: waste patches {:.1}%  tokens {:.1}%   \
             (packed: {:.2}% / {:.2}%; {:.0}x / {:.0}x less)",
            100.0 * wp,
            100.0 * wt,
            100.0 * pw,
            100.0 * tw,
            wp / pw.max(1e-9),
            wt / tw.max(1e-9)
        );
        let oracle = PackConfig {
            max_tokens: Some(balanced_token_budget(default.max_patches, total_p, total_t)),
            ..default.clone()
        };
        report(
            "token budget from whole-stream ratio",
            &run(&oracle, &samples),
        );
        for buffer_size in [64, 256] {
            let cfg = PackConfig {
                buffer_size,
                ..default.clone()
            };
            report(
                &format!("auto, buffer_size {buffer_size}"),
                &run(&cfg, &samples),
            );
        }
        let loose = PackConfig {
            max_tokens: Some(4096),
            ..default.clone()
        };
        report("max_tokens 4096 (patches bind)", &run(&loose, &samples));
    }
    assembly();
}

/// One thread's speed at copying chosen samples into batches (`PendingBatch::build`), with real
/// pixel buffers (Qwen2-VL's T=2 rows of 1176 f32): the rate a loader would be capped at if every
/// batch were assembled on one thread (ours runs assembly on its worker pool).
fn assembly() {
    const PATCH_DIM: usize = 1176;
    let samples = mixes::samples(&mixes::shapes(Mix::HeavyTailed, 600, 11), PATCH_DIM);
    let bytes: usize = samples.iter().map(|s| s.pixel_values.len() * 4).sum();
    let mut packer = Packer::new(PackConfig::default(), PATCH_DIM, 5).unwrap();
    let mut pending = Vec::new();
    for s in samples.iter().cloned() {
        pending.extend(packer.push_pending(s).unwrap());
    }
    pending.extend(packer.flush_pending());
    let images: usize = pending.iter().map(|b| b.len()).sum();
    let t0 = Instant::now();
    for b in pending {
        std::hint::black_box(b.build());
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "batch assembly on one thread (heavy-tailed mix, T=2 pixels, {:.1} MB per image): {:.0} images/s, {:.1} GB/s",
        bytes as f64 / 1e6 / samples.len() as f64,
        images as f64 / secs,
        bytes as f64 / 1e9 / secs
    );
}
