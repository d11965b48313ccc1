//! The whole loader on generated demo shards: throughput flat out, and resident memory while a slow
//! consumer streams several times the data (it must stay flat and within the configured bounds).
//!
//! `cargo bench -p comp-pipeline --bench loader [-- ROWS]`
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use comp_datasets::demo::{DemoConfig, generate, generate_row};
use comp_pipeline::loader::{ASSEMBLING_BATCHES, Loader, LoaderConfig};
use comp_pipeline::patchify::patch_dim;
use comp_pipeline::tokenize::train_demo_tokenizer;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn main() {
    let rows: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1500);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let demo = DemoConfig {
        rows,
        shards: 4,
        row_groups_per_shard: 6,
        ..Default::default()
    };
    let t = Instant::now();
    let summary = generate(&data, &demo).unwrap();
    println!(
        "generated {} rows ({:.1} MB) in {:.1} s",
        summary.rows,
        summary.image_bytes as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    let captions: Vec<String> = (0..200)
        .map(|i| generate_row(&demo, i).unwrap().caption)
        .collect();
    let tokenizer = dir.path().join("tokenizer.json");
    train_demo_tokenizer(captions.iter(), 768, &tokenizer).unwrap();

    let mut cfg = LoaderConfig::default();
    cfg.dataset.sources = vec![data.display().to_string()];
    cfg.text.tokenizer = Some(tokenizer);
    cfg.image.max_pixels = 512 * 512;
    // BENCH_JPEG_VIA_RGB=1: decode JPEGs to RGB before resampling (`jpeg_planes = false`), to compare.
    cfg.image.jpeg_planes = std::env::var_os("BENCH_JPEG_VIA_RGB").is_none();
    // BENCH_TEMPORAL=2: Qwen2-VL's layout (two frames per patch) instead of CoMP's one.
    if let Some(t) = std::env::var("BENCH_TEMPORAL")
        .ok()
        .and_then(|t| t.parse().ok())
    {
        cfg.image.temporal_patch_size = t;
    }
    println!("temporal patch size: {}", cfg.image.temporal_patch_size);
    println!(
        "JPEG route: {}",
        if cfg.image.jpeg_planes {
            "Y/Cb/Cr planes (default)"
        } else {
            "RGB"
        }
    );

    println!("\nthroughput (flat out, one epoch):");
    let mut per_worker = Vec::new();
    for workers in [1, 2] {
        cfg.workers = workers;
        let start = Instant::now();
        let mut loader = Loader::start(cfg.clone(), None).unwrap();
        let (mut batches, mut pf, mut tf) = (0usize, 0.0, 0.0);
        for b in &mut loader {
            let b = b.unwrap();
            batches += 1;
            pf += b.batch.fill.patch_fill();
            tf += b.batch.fill.token_fill();
        }
        let s = start.elapsed().as_secs_f64();
        let m = loader.metrics();
        let images = m.samples_processed.load(Ordering::Relaxed) as f64;
        let patches = m.patches.load(Ordering::Relaxed) as f64;
        println!(
            "  {workers} worker(s): {:.0} images/s, {:.2} MP/s after resize, {:.0} patches/s; {batches} batches, fill patches {:.1}% tokens {:.1}%",
            images / s,
            patches * 196.0 / 1e6 / s,
            patches / s,
            100.0 * pf / batches as f64,
            100.0 * tf / batches as f64
        );
        per_worker.push(images / s);
    }
    println!(
        "  scaling 2 vs 1 worker: {:.2}x (2 cores, the consumer thread shares them)",
        per_worker[1] / per_worker[0]
    );

    // Memory: a consumer that takes one batch every 20 ms over several epochs (env BENCH_EPOCHS,
    // default 3), after stalling for a second.
    let epochs: u64 = std::env::var("BENCH_EPOCHS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    cfg.workers = 2;
    cfg.dataset.epochs = Some(epochs);
    let in_flight = 4 * cfg.workers;
    // Buffered samples hold one frame (patch_dim / T values per patch); batches hold all T.
    let (row, frame) = (
        patch_dim(&cfg.image) * 4,
        patch_dim(&cfg.image) / cfg.image.temporal_patch_size * 4,
    );
    let max_sample = cfg.image.max_pixels / 196 * frame;
    let bound = (cfg.pack.buffer_size + in_flight + 1) * max_sample // packer buffer + in flight
        + cfg.batch_queue * cfg.pack.max_patches * row // finished batches
        + (ASSEMBLING_BATCHES + 1) * cfg.pack.max_patches * (row + frame) // batches being assembled: samples and buffer
        + (cfg.dataset.shuffle_window + cfg.dataset.read_ahead) * (summary.image_bytes as usize / (4 * 6)); // row groups
    let base = rss_bytes();
    let mut loader = Loader::start(cfg.clone(), None).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let stalled = rss_bytes().saturating_sub(base);
    let (mut peak, mut samples, mut batches) = (stalled, Vec::new(), 0usize);
    for b in &mut loader {
        let _ = b.unwrap();
        batches += 1;
        std::thread::sleep(Duration::from_millis(20));
        let now = rss_bytes().saturating_sub(base);
        peak = peak.max(now);
        if batches % 20 == 0 {
            samples.push(now);
        }
    }
    let streamed = loader.metrics().bytes_read.load(Ordering::Relaxed);
    let mb = |b: u64| b as f64 / 1e6;
    println!(
        "\nmemory with a slow consumer ({epochs} epochs, {:.0} MB of encoded images streamed):",
        mb(streamed)
    );
    println!(
        "  growth after a 1 s stall with no consumer: {:.0} MB",
        mb(stalled)
    );
    println!(
        "  peak growth while streaming: {:.0} MB; worst-case bound from the config: {:.0} MB ({:.0}% of it)",
        mb(peak),
        mb(bound as u64),
        100.0 * peak as f64 / bound as f64
    );
    if samples.len() >= 4 {
        let q = samples.len() / 4;
        let first: f64 = samples[..q].iter().map(|&x| x as f64).sum::<f64>() / q as f64;
        let last: f64 = samples[samples.len() - q..]
            .iter()
            .map(|&x| x as f64)
            .sum::<f64>()
            / q as f64;
        println!(
            "  mean growth first quarter {:.0} MB, last quarter {:.0} MB (flat = no leak)",
            first / 1e6,
            last / 1e6
        );
        let series: Vec<String> = samples.iter().map(|&s| format!("{:.0}", mb(s))).collect();
        println!("  growth every 20 batches (MB): {}", series.join(" "));
    }
}
