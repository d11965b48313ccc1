//! `comp train`: with no arguments, the built-in demo end to end; otherwise a TOML-configured run.
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::train::config::TrainConfig;
use crate::train::demo::{DemoOptions, run_demo};
use crate::train::trainer::Trainer;

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// A TOML run configuration (see `configs/`). Without it (and without --resume) the demo runs.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Continue the run in this directory from its latest good checkpoint.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Override the run directory.
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Override the seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Override the device: auto, cpu or cuda.
    #[arg(long)]
    pub device: Option<String>,
    /// Override libtorch's intra-op threads.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Override the loader's worker threads.
    #[arg(long)]
    pub workers: Option<usize>,
    /// Override the steps of every stage (quick trials).
    #[arg(long)]
    pub steps: Option<u64>,
    /// Override how often a checkpoint is written (optimiser steps).
    #[arg(long)]
    pub checkpoint_every: Option<u64>,
    /// Print the default configuration (the paper's three stages) as TOML and exit: a starting point for
    /// `--config`.
    #[arg(long)]
    pub print_config: bool,
    /// Demo only: where the generated data, tokenizer and word prior live.
    #[arg(long, default_value = "demo-data")]
    pub demo_data: PathBuf,
}

pub fn run(args: TrainArgs) -> Result<()> {
    if args.print_config {
        print!("{}", TrainConfig::default().to_toml()?);
        return Ok(());
    }
    let config_path = match (&args.config, &args.resume) {
        (Some(c), _) => Some(c.clone()),
        (None, Some(run)) => Some(run.join("config.toml")),
        (None, None) => None,
    };
    let Some(config_path) = config_path else {
        let run_dir = args
            .run_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("runs/demo"));
        return run_demo(&DemoOptions {
            data_dir: args.demo_data.clone(),
            run_dir,
            ..Default::default()
        });
    };
    if !config_path.exists() {
        bail!(
            "no config at {} (a run directory holds the config.toml it was started with)",
            config_path.display()
        );
    }
    let mut cfg = TrainConfig::from_file(&config_path)?;
    apply_overrides(&mut cfg, &args)?;
    if let Some(run) = &args.resume {
        cfg.run_dir = run.clone();
    }
    std::fs::create_dir_all(&cfg.run_dir)
        .with_context(|| format!("creating {}", cfg.run_dir.display()))?;
    let snapshot = cfg.run_dir.join("config.toml");
    if args.resume.is_none() {
        std::fs::write(&snapshot, cfg.to_toml()?)
            .with_context(|| format!("writing {}", snapshot.display()))?;
    }
    let prior = crate::train::demo::word_prior_for(&cfg)?;
    let mut trainer = Trainer::new(cfg, Some(prior))?;
    let summary = trainer.run(args.resume.is_some())?;
    trainer.export_vfm(&summary.run_dir.join("vfm"))?;
    if summary.final_loss.is_nan() && args.resume.is_some() {
        println!(
            "{} was already complete ({} steps); nothing to do",
            summary.run_dir.display(),
            summary.global_steps
        );
        return Ok(());
    }
    println!(
        "done: {} steps ({} skipped), {} bad samples skipped, final loss {:.4}, data wait {:.2}% of step time; run directory {}",
        summary.global_steps,
        summary.skipped_steps,
        summary.data_skipped,
        summary.final_loss,
        100.0 * summary.data_wait_share,
        summary.run_dir.display()
    );
    Ok(())
}

fn apply_overrides(cfg: &mut TrainConfig, args: &TrainArgs) -> Result<()> {
    if let Some(d) = &args.run_dir {
        cfg.run_dir = d.clone();
    }
    if let Some(s) = args.seed {
        cfg.seed = s;
    }
    if let Some(d) = &args.device {
        cfg.device = match d.as_str() {
            "auto" => crate::train::config::DeviceChoice::Auto,
            "cpu" => crate::train::config::DeviceChoice::Cpu,
            "cuda" => crate::train::config::DeviceChoice::Cuda,
            other => bail!("--device {other}: expected auto, cpu or cuda"),
        };
    }
    if let Some(t) = args.threads {
        cfg.threads = t;
    }
    if let Some(w) = args.workers {
        cfg.data.workers = w;
    }
    if let Some(s) = args.steps {
        for st in &mut cfg.stages {
            st.steps = Some(s);
            st.epochs = None;
        }
    }
    if let Some(c) = args.checkpoint_every {
        cfg.checkpoint_every = c;
    }
    Ok(())
}
