//! The built-in demo: `comp train` with no arguments.
//!
//! 1. Generate the demo shards (coloured-shape scenes with accurate captions) unless present, train the
//!    demo tokenizer on their captions and count the word prior.
//! 2. "Stage 0": train a tiny VFM the way ordinary VFMs are trained (fixed low square resolution,
//!    absolute positions only) — the stand-in for an off-the-shelf checkpoint.
//! 3. CoMP stages 1–3 on top of it, at native resolution with C-RoPE and the alignment loss.
//! 4. Evaluate both VFMs on held-out images at their native resolution with linear probes.
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use comp_datasets::demo::{DemoConfig, Split, generate};
use comp_datasets::{Cursor, Dataset, DatasetConfig, Item};
use comp_model::CompConfig;
use comp_pipeline::tokenize::{
    CaptionTokenizer, DEMO_VOCAB_SIZE, TextConfig, train_demo_tokenizer,
};
use comp_pipeline::word_prior::WordPrior;
use futures::StreamExt;
use tch::Tensor;

use super::config::TrainConfig;
use super::stage::{demo_stage0, demo_stages};
use super::trainer::Trainer;

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub data_dir: PathBuf,
    pub run_dir: PathBuf,
    pub train_rows: usize,
    pub eval_rows: usize,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("demo-data"),
            run_dir: PathBuf::from("runs/demo"),
            train_rows: 4000,
            eval_rows: 600,
        }
    }
}

/// The demo's data: generated shards, tokenizer and word prior (made once, reused afterwards).
pub struct DemoData {
    pub train_dir: PathBuf,
    pub tokenizer: PathBuf,
    pub word_prior: PathBuf,
}

pub fn prepare_demo_data(dir: &Path, rows: usize) -> Result<DemoData> {
    let train_dir = dir.join("train");
    if !train_dir.join(".complete").exists() {
        println!(
            "[demo] generating {rows} image-caption pairs in {}",
            train_dir.display()
        );
        let t = std::time::Instant::now();
        let summary = generate(
            &train_dir,
            &DemoConfig {
                rows,
                split: Split::Train,
                ..Default::default()
            },
        )?;
        std::fs::write(train_dir.join(".complete"), "")?;
        println!(
            "[demo]   {} rows in {} shards, {:.1} MB of images, {:.1} s",
            summary.rows,
            summary.files.len(),
            summary.image_bytes as f64 / 1e6,
            t.elapsed().as_secs_f64()
        );
    }
    let tokenizer = dir.join("tokenizer.json");
    let word_prior = dir.join("word_prior.safetensors");
    if !tokenizer.exists() || !word_prior.exists() {
        let captions = read_captions(&train_dir.display().to_string())?;
        if !tokenizer.exists() {
            train_demo_tokenizer(captions.iter(), DEMO_VOCAB_SIZE, &tokenizer)?;
            println!(
                "[demo] trained a {DEMO_VOCAB_SIZE}-token byte-level BPE on {} captions",
                captions.len()
            );
        }
        let tok = CaptionTokenizer::from_file(
            &tokenizer,
            &TextConfig {
                tokenizer: Some(tokenizer.clone()),
                ..Default::default()
            },
        )?;
        let (prior, _empty) = WordPrior::from_captions(captions.iter(), &tok)?;
        prior.save(&word_prior)?;
    }
    Ok(DemoData {
        train_dir,
        tokenizer,
        word_prior,
    })
}

/// Every caption of a dataset, in file order (for the tokenizer and the word prior).
pub fn read_captions(source: &str) -> Result<Vec<String>> {
    let dataset = Dataset::open(DatasetConfig {
        sources: vec![source.to_string()],
        shuffle: false,
        ..Default::default()
    })?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut out = Vec::new();
        let mut stream = Box::pin(dataset.stream(Cursor::default()));
        while let Some(item) = stream.next().await {
            if let Item::Sample { sample, .. } = item? {
                out.push(sample.caption);
            }
        }
        Ok(out)
    })
}

/// The word prior a run uses: the configured file, or counted over the training captions and saved in
/// the run directory.
pub fn word_prior_for(cfg: &TrainConfig) -> Result<Tensor> {
    let path = match &cfg.word_prior {
        Some(p) => p.clone(),
        None => {
            let path = cfg.run_dir.join("word_prior.safetensors");
            if !path.exists() {
                let tok_path = cfg
                    .data
                    .text
                    .tokenizer
                    .clone()
                    .context("data.text.tokenizer is not set")?;
                let tok = CaptionTokenizer::from_file(&tok_path, &cfg.data.text)?;
                let mut captions = Vec::new();
                for src in &cfg.data.dataset.sources {
                    captions.extend(read_captions(src)?);
                }
                WordPrior::from_captions(captions.iter(), &tok)?
                    .0
                    .save(&path)?;
            }
            path
        }
    };
    let prior = WordPrior::load(&path)
        .with_context(|| format!("loading the word prior {}", path.display()))?;
    let counts: Vec<f64> = prior.counts.iter().map(|&c| c as f64).collect();
    Ok(Tensor::from_slice(&counts).to_kind(tch::Kind::Float))
}

/// The demo's training configuration for a list of stages; small enough for 2 CPU cores.
pub fn demo_config(data: &DemoData, run_dir: &Path, vocab: i64) -> TrainConfig {
    let mut cfg = TrainConfig {
        run_dir: run_dir.to_path_buf(),
        ..Default::default()
    };
    cfg.data.dataset.sources = vec![data.train_dir.display().to_string()];
    cfg.data.text.tokenizer = Some(data.tokenizer.clone());
    cfg.data.workers = 1;
    cfg.data.pack.max_patches = 1024;
    cfg.data.pack.max_images = 32;
    cfg.data.pack.buffer_size = 64;
    cfg.word_prior = Some(data.word_prior.clone());
    let mut model = CompConfig::tiny(vocab);
    // A little wider and deeper than the test-sized tower, still seconds per hundred steps on a CPU.
    model.vision.hidden_size = 96;
    model.vision.num_hidden_layers = 4;
    model.vision.intermediate_size = 384;
    cfg.model.config = model;
    cfg.threads = 1;
    cfg.checkpoint_every = 50;
    cfg
}

pub fn run_demo(opts: &DemoOptions) -> Result<()> {
    let data = prepare_demo_data(&opts.data_dir, opts.train_rows)?;
    let tok = CaptionTokenizer::from_file(
        &data.tokenizer,
        &TextConfig {
            tokenizer: Some(data.tokenizer.clone()),
            ..Default::default()
        },
    )?;
    let vocab = tok.vocab_size() as i64;
    let prior = word_prior_for(&TrainConfig {
        word_prior: Some(data.word_prior.clone()),
        ..Default::default()
    })?;

    // Stage 0: the ordinary VFM we start from.
    let stage0_dir = opts.run_dir.join("stage0");
    let mut cfg0 = demo_config(&data, &stage0_dir, vocab);
    cfg0.stages = vec![demo_stage0()];
    let stage0_model = stage0_dir.join("model.safetensors");
    if !stage0_model.exists() {
        write_snapshot(&cfg0)?;
        println!(
            "[demo] stage 0: pre-training a tiny VFM at a fixed low square resolution, absolute positions only"
        );
        let mut t0 = Trainer::new(cfg0.clone(), Some(prior.shallow_clone()))?;
        let s = t0.run(true)?;
        println!(
            "[demo]   {} steps, final loss {:.3}",
            s.global_steps, s.final_loss
        );
        t0.save_model(&stage0_model)?;
        t0.export_vfm(&stage0_dir.join("vfm"))?;
    }

    // CoMP stages 1-3 from the stage-0 weights.
    let comp_dir = opts.run_dir.join("comp");
    let mut cfg = demo_config(&data, &comp_dir, vocab);
    cfg.stages = demo_stages();
    cfg.model.init = Some(stage0_model.clone());
    write_snapshot(&cfg)?;
    println!("[demo] CoMP stages 1-3 at native resolution with C-RoPE and the alignment loss");
    let mut t = Trainer::new(cfg, Some(prior))?;
    let s = t.run(true)?;
    t.export_vfm(&comp_dir.join("vfm"))?;
    if s.final_loss.is_nan() {
        println!(
            "[demo]   already trained ({} steps; delete {} to train again)",
            s.global_steps,
            opts.run_dir.display()
        );
    } else {
        println!(
            "[demo]   {} steps, final loss {:.3}, data wait {:.2}% of step time, plot {}",
            s.global_steps,
            s.final_loss,
            100.0 * s.data_wait_share,
            comp_dir.join("loss_curves.png").display()
        );
    }

    let report = crate::eval::compare_demo_vfms(&stage0_model, &t, opts.eval_rows)?;
    println!("{report}");
    std::fs::write(opts.run_dir.join("eval.txt"), report.to_string())?;
    Ok(())
}

fn write_snapshot(cfg: &TrainConfig) -> Result<()> {
    std::fs::create_dir_all(&cfg.run_dir)?;
    std::fs::write(cfg.run_dir.join("config.toml"), cfg.to_toml()?)?;
    Ok(())
}
