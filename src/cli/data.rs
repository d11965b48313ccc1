//! `comp make-demo-data` and `comp data ...`: thin wrappers over `comp_datasets`.
use std::path::PathBuf;

use super::common::ColumnArgs;
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use comp_datasets::demo::{DemoConfig, Split};

#[derive(Args)]
pub struct MakeDemoDataArgs {
    /// Output directory (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = DemoConfig::default().rows)]
    pub rows: usize,
    #[arg(long, default_value_t = DemoConfig::default().shards)]
    pub shards: usize,
    #[arg(long, default_value_t = DemoConfig::default().row_groups_per_shard)]
    pub row_groups: usize,
    #[arg(long, default_value_t = DemoConfig::default().seed)]
    pub seed: u64,
    /// `train` or `eval`; the splits never share an image.
    #[arg(long, default_value = "train")]
    pub split: Split,
    /// Largest image side in pixels (smallest is 32).
    #[arg(long, default_value_t = DemoConfig::default().max_side)]
    pub max_side: u32,
}

#[derive(Subcommand)]
pub enum DataCommand {
    /// Print shards, rows, row groups, the detected column mapping and a sample of images and captions.
    Inspect(InspectArgs),
    /// Run the whole loader flat out over the shards and print images/s, MP/s, patches/s, fill and skips.
    Bench(super::bench::BenchArgs),
}

#[derive(Args)]
pub struct InspectArgs {
    /// A Parquet file, a directory or a glob.
    pub path: String,
    #[command(flatten)]
    pub columns: ColumnArgs,
    /// How many rows to sample.
    #[arg(long, default_value_t = 8)]
    pub samples: usize,
}

pub fn make_demo_data(args: MakeDemoDataArgs) -> Result<()> {
    let cfg = DemoConfig {
        rows: args.rows,
        shards: args.shards,
        row_groups_per_shard: args.row_groups,
        seed: args.seed,
        split: args.split,
        max_side: args.max_side,
        ..DemoConfig::default()
    };
    let start = std::time::Instant::now();
    let summary = comp_datasets::demo::generate(&args.out, &cfg)
        .with_context(|| format!("generating demo data into {}", args.out.display()))?;
    println!(
        "wrote {} {} rows in {} shards ({:.1} MB of images) to {} in {:.1}s",
        summary.rows,
        cfg.split.name(),
        summary.files.len(),
        summary.image_bytes as f64 / 1e6,
        args.out.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

pub fn run(cmd: DataCommand) -> Result<()> {
    match cmd {
        DataCommand::Inspect(args) => inspect(args),
        DataCommand::Bench(args) => super::bench::run(args),
    }
}

fn inspect(args: InspectArgs) -> Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let report = rt.block_on(comp_datasets::inspect::inspect(
        &args.path,
        args.columns.mapping(),
        args.samples,
    ))?;
    let (mut rows, mut groups, mut bytes, mut bad) = (0u64, 0usize, 0u64, 0usize);
    println!("{} shard(s) under {}", report.shards.len(), args.path);
    for (path, summary) in &report.shards {
        match summary {
            Ok(s) => {
                rows += s.rows;
                groups += s.row_groups;
                bytes += s.file_bytes;
                println!(
                    "  {}: {} rows, {} row groups, {:.1} MB; {}",
                    path.display(),
                    s.rows,
                    s.row_groups,
                    s.file_bytes as f64 / 1e6,
                    s.columns
                );
            }
            Err(e) => {
                bad += 1;
                println!("  BAD {e}");
            }
        }
    }
    println!(
        "total: {rows} rows, {groups} row groups, {:.1} MB in {} usable shard(s), {bad} bad",
        bytes as f64 / 1e6,
        report.shards.len() - bad
    );
    if let Some(Ok(first)) = report.shards.iter().map(|(_, s)| s).find(|s| s.is_ok()) {
        println!("columns in file: {}", first.schema);
    }
    if !report.samples.is_empty() {
        println!("sample of {} rows:", report.samples.len());
    }
    for s in &report.samples {
        let image = match &s.image {
            Ok((w, h, fmt)) => format!("{w}x{h} {fmt}"),
            Err(e) => format!("unreadable header ({e})"),
        };
        println!(
            "  [{}] {image}, {} bytes: {:?}",
            s.id, s.image_bytes, s.caption
        );
    }
    for skip in &report.skips {
        println!("  {skip}");
    }
    anyhow::ensure!(
        bad < report.shards.len(),
        "no usable shard under {}",
        args.path
    );
    Ok(())
}
