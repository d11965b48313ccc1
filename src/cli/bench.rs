//! `comp data bench PATH`: the whole loader flat out over the shards, and what it achieved.
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;
use comp_pipeline::loader::{Loader, LoaderConfig};
use comp_pipeline::resize::ImageConfig;
use std::sync::atomic::Ordering;

use super::common::{ColumnArgs, ImageArgs};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// A Parquet file, a directory of shards or a glob.
    pub path: String,
    /// Loader CPU threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
    /// Passes over the data.
    #[arg(long, default_value_t = 1)]
    pub epochs: u64,
    /// A tokenizer.json (default: the built-in demo tokenizer).
    #[arg(long)]
    pub tokenizer: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub image: ImageArgs,
    #[command(flatten)]
    pub columns: ColumnArgs,
}

pub fn run(args: BenchArgs) -> Result<()> {
    let mut cfg = LoaderConfig::default();
    cfg.dataset.sources = vec![args.path.clone()];
    cfg.dataset.columns = args.columns.mapping();
    cfg.dataset.epochs = Some(args.epochs);
    cfg.image = args.image.to_config(ImageConfig::default())?;
    cfg.text.tokenizer = Some(match args.tokenizer {
        Some(p) => p,
        None => super::assets::default_tokenizer()?,
    });
    cfg.workers = comp_datasets::threads_or_all_cores(args.workers);
    let workers = cfg.workers;
    let mut loader = Loader::start(cfg, None)?;
    let metrics = loader.metrics().clone();
    let bar = super::progress_spinner("bench");
    let start = Instant::now();
    let (mut batches, mut patch_fill, mut token_fill) = (0u64, 0.0f64, 0.0f64);
    let mut last_draw = Instant::now();
    for b in &mut loader {
        let b = b?;
        batches += 1;
        patch_fill += b.batch.fill.patch_fill();
        token_fill += b.batch.fill.token_fill();
        if last_draw.elapsed() > Duration::from_millis(200) {
            last_draw = Instant::now();
            let s = start.elapsed().as_secs_f64();
            bar.set_message(format!(
                "{} images, {:.0} images/s, {batches} batches, {} skipped",
                metrics.samples_processed.load(Ordering::Relaxed),
                metrics.samples_processed.load(Ordering::Relaxed) as f64 / s,
                metrics.total_skipped()
            ));
        }
    }
    bar.finish_and_clear();
    let secs = loader.elapsed().as_secs_f64();
    let images = metrics.samples_processed.load(Ordering::Relaxed);
    let patches = metrics.patches.load(Ordering::Relaxed);
    let tokens = metrics.tokens.load(Ordering::Relaxed);
    let mb = metrics.bytes_read.load(Ordering::Relaxed) as f64 / 1e6;
    println!("data bench: {} ({workers} workers, {secs:.2} s)", args.path);
    println!(
        "  images        {images} ({:.1} images/s)",
        images as f64 / secs
    );
    println!("  encoded bytes {mb:.1} MB ({:.1} MB/s)", mb / secs);
    println!(
        "  pixels        {:.1} MP after resize ({:.2} MP/s)",
        patches as f64 * 196.0 / 1e6,
        patches as f64 * 196.0 / 1e6 / secs
    );
    println!(
        "  patches       {patches} ({:.0} patches/s)",
        patches as f64 / secs
    );
    println!(
        "  text tokens   {tokens} ({:.0} tokens/s)",
        tokens as f64 / secs
    );
    if batches > 0 {
        println!(
            "  batches       {batches}; mean fill: patches {:.1}%, tokens {:.1}%",
            100.0 * patch_fill / batches as f64,
            100.0 * token_fill / batches as f64
        );
    }
    let skips = metrics.skips();
    if skips.is_empty() {
        println!("  skipped       none");
    } else {
        println!("  skipped       {} samples:", metrics.total_skipped());
        for (reason, n) in &skips {
            println!("    {reason:<24} {n}");
        }
        for ex in metrics.skip_examples().iter().take(10) {
            println!("    e.g. {ex}");
        }
    }
    Ok(())
}
