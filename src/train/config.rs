//! `TrainConfig`: everything `comp train` needs, as one TOML file. The single source of defaults: the
//! CLI overrides a few fields, the demo builds on [`TrainConfig::demo`], and tests on both.
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use comp_model::CompConfig;
use comp_pipeline::loader::LoaderConfig;
use serde::{Deserialize, Serialize};

use super::stage::StageConfig;

/// Where the model's weights come from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSource {
    /// Architecture and loss settings. With checkpoints below, the vision/LLM sizes are read from them.
    pub config: CompConfig,
    /// A Hugging Face vision tower directory (SigLIP / DINOv2: `config.json` + `*.safetensors`).
    pub vision_checkpoint: Option<PathBuf>,
    /// A Hugging Face Qwen2 / Qwen2.5 directory.
    pub llm_checkpoint: Option<PathBuf>,
    /// One of our own `model.safetensors` (e.g. a previous run's checkpoint) to start from.
    pub init: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// CUDA device 0 when available, otherwise CPU.
    #[default]
    Auto,
    Cpu,
    Cuda,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Run directory: config snapshot, metrics.jsonl, loss_curves.png, checkpoints/, vfm/.
    pub run_dir: PathBuf,
    pub seed: u64,
    pub device: DeviceChoice,
    /// libtorch intra-op threads; 0 = the cores left after the loader's workers (at least 1).
    pub threads: usize,
    /// The streaming loader: data sources and columns, image sizing, tokenizer, packing budgets.
    /// Each stage overrides the image sizing with its own resolution policy.
    pub data: LoaderConfig,
    /// Caption token counts (the alignment loss's word prior, safetensors from `comp_pipeline`).
    /// Unset: counted over the training captions at start and saved in the run directory.
    pub word_prior: Option<PathBuf>,
    pub model: ModelSource,
    pub stages: Vec<StageConfig>,
    /// Save a checkpoint every this many optimiser steps (and at the end of every stage).
    pub checkpoint_every: u64,
    pub keep_checkpoints: usize,
    /// This many non-finite steps in a row stop the run.
    pub max_consecutive_bad_steps: u32,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            run_dir: PathBuf::from("runs/comp"),
            seed: 0,
            device: DeviceChoice::Auto,
            threads: 0,
            data: LoaderConfig::default(),
            word_prior: None,
            model: ModelSource::default(),
            stages: super::stage::comp_stages(),
            checkpoint_every: 100,
            keep_checkpoints: 3,
            max_consecutive_bad_steps: 5,
        }
    }
}

impl TrainConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing config {}", path.display()))
    }

    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self).context("serialising the config")
    }

    /// A stable fingerprint of everything that determines the batch and loss stream.
    pub fn hash(&self) -> String {
        // Where the run lives does not change what it computes (`--resume runs/x/` vs `runs/x`).
        let text = serde_json::to_string(&TrainConfig {
            run_dir: PathBuf::new(),
            ..self.clone()
        })
        .unwrap_or_default();
        let h = crate::util::fnv1a64(text.as_bytes());
        format!("{h:016x}")
    }
}
