//! The training loop: stages in order, each with its trainable parts, optimiser, schedule and image
//! policy; the loader's state travels inside every checkpoint so `--resume` continues the exact stream.
//!
//! Exact resume on CPU follows from three facts: the batch stream is a pure function of (config, seed,
//! stage) and the saved loader state; the model has no randomness in its forward pass (no dropout); and
//! the optimiser state is saved bit for bit. So a run killed at any point and resumed from its latest
//! good checkpoint produces the same subsequent batches and losses as one that never stopped.
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use comp_model::{BatchTensors, CompModel, ForwardOptions};
use comp_pipeline::loader::{Loader, LoaderConfig, LoaderMetrics, LoaderState};
use comp_pipeline::resize::ResizePolicy;
use tch::{Device, Kind, Tensor, nn};

use super::checkpoint::{CheckpointData, Checkpointer, TrainState};
use super::config::{DeviceChoice, TrainConfig};
use super::metrics::{MetricsWriter, StageProgress, StepMetrics};
use super::optim::{AdamW, AdamWConfig, part_groups, set_trainable};
use super::schedule::WarmupCosine;
use super::stage::{Part, Resolution, StageConfig, StageLength};

/// What a finished run leaves behind.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub run_dir: PathBuf,
    pub global_steps: u64,
    pub skipped_steps: u64,
    pub data_wait_share: f64,
    pub final_loss: f64,
    /// Bad samples the loader skipped (all stages of this invocation; see the per-stage warnings).
    pub data_skipped: u64,
}

pub fn select_device(choice: DeviceChoice) -> Result<Device> {
    Ok(match choice {
        DeviceChoice::Cpu => Device::Cpu,
        DeviceChoice::Cuda => {
            if !tch::Cuda::is_available() {
                bail!("device = \"cuda\" but libtorch sees no CUDA device (run `comp doctor`)");
            }
            Device::Cuda(0)
        }
        DeviceChoice::Auto => Device::cuda_if_available(),
    })
}

/// The loader configuration a stage uses: its resolution policy and a per-stage shuffle seed.
pub fn stage_loader_config(
    cfg: &TrainConfig,
    stage_index: usize,
    stage: &StageConfig,
) -> LoaderConfig {
    let mut data = cfg.data.clone();
    data.dataset.seed = cfg.seed.wrapping_add(stage_index as u64 * 1_000_003);
    data.dataset.epochs = match stage.length() {
        StageLength::Epochs(n) => Some(n as u64),
        StageLength::Steps(_) => None,
    };
    match stage.resolution {
        Resolution::FixedSquare { side } => {
            data.image.resize = ResizePolicy::FixedSquare { size: side }
        }
        Resolution::Native { max_visual_tokens } => {
            data.image.resize = ResizePolicy::Native;
            let unit = (data.image.patch_size * data.image.merge_size).pow(2);
            data.image.max_pixels = data.image.max_pixels.min(max_visual_tokens as usize * unit);
            data.image.min_pixels = data.image.min_pixels.min(data.image.max_pixels);
        }
    }
    data
}

pub struct Trainer {
    pub cfg: TrainConfig,
    pub device: Device,
    pub vs: nn::VarStore,
    pub model: CompModel,
    word_prior: Option<Tensor>,
    checkpointer: Checkpointer,
    metrics: Option<MetricsWriter>,
    started: Instant,
}

impl Trainer {
    /// Build the model (fresh, or from the configured checkpoints) inside `cfg.run_dir`.
    pub fn new(cfg: TrainConfig, word_prior: Option<Tensor>) -> Result<Self> {
        std::fs::create_dir_all(&cfg.run_dir)
            .with_context(|| format!("creating {}", cfg.run_dir.display()))?;
        let device = select_device(cfg.device)?;
        let threads = if cfg.threads > 0 {
            cfg.threads
        } else {
            comp_datasets::available_cores()
                .saturating_sub(cfg.data.workers.max(1))
                .max(1)
        };
        tch::set_num_threads(threads as i32);
        tch::manual_seed(cfg.seed as i64);
        let vs = nn::VarStore::new(device);
        let mut model_cfg = cfg.model.config.clone();
        // Real checkpoints bring their own sizes; our C-RoPE settings stay as configured.
        if let Some(dir) = &cfg.model.vision_checkpoint {
            let hf = comp_model::checkpoint::vision_config_from_dir(dir)?;
            model_cfg.vision = comp_model::VisionConfig {
                pos_interp: model_cfg.vision.pos_interp,
                raster_pos_compat: model_cfg.vision.raster_pos_compat,
                rope: model_cfg.vision.rope,
                rope_theta: model_cfg.vision.rope_theta,
                merge_size: model_cfg.vision.merge_size,
                temporal_patch_size: model_cfg.vision.temporal_patch_size,
                ..hf
            };
        }
        if let Some(dir) = &cfg.model.llm_checkpoint {
            model_cfg.llm = comp_model::checkpoint::llm_config_from_dir(dir)?;
        }
        let model = CompModel::new(vs.root(), &model_cfg)?;
        let mut trainer = Self {
            checkpointer: Checkpointer::new(&cfg.run_dir, cfg.keep_checkpoints)?,
            metrics: None,
            started: Instant::now(),
            word_prior: word_prior.map(|t| t.to_device(device)),
            cfg,
            device,
            vs,
            model,
        };
        trainer.load_initial_weights()?;
        Ok(trainer)
    }

    fn load_initial_weights(&mut self) -> Result<()> {
        let src = self.cfg.model.clone();
        if let Some(dir) = &src.vision_checkpoint {
            let report =
                comp_model::checkpoint::load_hf_vision(&self.vs, &self.model.cfg.vision, dir)
                    .with_context(|| format!("loading the vision tower from {}", dir.display()))?;
            tracing::info!("vision tower from {}: {report:?}", dir.display());
        }
        if let Some(dir) = &src.llm_checkpoint {
            let report = comp_model::checkpoint::load_hf_llm(&self.vs, &self.model.cfg.llm, dir)
                .with_context(|| format!("loading the LLM from {}", dir.display()))?;
            tracing::info!("LLM from {}: {report:?}", dir.display());
        }
        if let Some(file) = &src.init {
            comp_model::checkpoint::load_checkpoint(&self.vs, file)
                .with_context(|| format!("loading initial weights from {}", file.display()))?;
        }
        Ok(())
    }

    /// Run every stage from the start, or from the latest good checkpoint when `resume` is set.
    pub fn run(&mut self, resume: bool) -> Result<RunSummary> {
        let mut state = TrainState {
            stage_index: 0,
            stage_name: String::new(),
            step_in_stage: 0,
            global_step: 0,
            skipped_steps: 0,
            seed: self.cfg.seed,
            rng: serde_json::Value::Null,
            loader: serde_json::Value::Null,
            config_hash: self.cfg.hash(),
        };
        let mut loader_state: Option<LoaderState> = None;
        let mut optim_restore = None;
        if resume {
            match self.checkpointer.load_latest()? {
                Some(ckpt) => {
                    ckpt.restore_model(&mut self.vs)?;
                    state = ckpt.state.clone();
                    if state.config_hash != self.cfg.hash() {
                        tracing::warn!(
                            "the run's config changed since the checkpoint was written; continuing anyway"
                        );
                    }
                    loader_state = serde_json::from_value(state.loader.clone()).ok();
                    self.metrics = Some(MetricsWriter::resume(
                        &self.metrics_path(),
                        state.global_step,
                    )?);
                    tracing::info!(
                        "resuming from {} (stage {} step {}, global step {})",
                        ckpt.dir.display(),
                        state.stage_name,
                        state.step_in_stage,
                        state.global_step
                    );
                    // A checkpoint written at the end of a stage points at the next stage, which has not
                    // started: like an uninterrupted run, it begins with a fresh optimiser (the saved one
                    // holds the previous stage's parameter groups) and a fresh loader.
                    if state.step_in_stage > 0 {
                        optim_restore = Some(ckpt);
                    }
                }
                None => tracing::info!(
                    "no checkpoint in {}: starting from scratch",
                    self.cfg.run_dir.display()
                ),
            }
        }
        if self.metrics.is_none() {
            // A fresh run starts a fresh log.
            let path = self.metrics_path();
            self.metrics = Some(MetricsWriter::resume(&path, state.global_step)?);
        }
        let stages = self.cfg.stages.clone();
        let mut wait = Duration::ZERO;
        let mut busy = Duration::ZERO;
        let mut final_loss = f64::NAN;
        let mut data_skipped = 0;
        for (index, stage) in stages.iter().enumerate().skip(state.stage_index) {
            if index > state.stage_index {
                state.stage_index = index;
                state.step_in_stage = 0;
                loader_state = None;
                optim_restore = None;
            }
            state.stage_name = stage.name.clone();
            let out = self.run_stage(
                index,
                stage,
                &mut state,
                loader_state.take(),
                optim_restore.take(),
            )?;
            wait += out.wait;
            busy += out.total;
            final_loss = out.last_loss;
            data_skipped += out.data_skipped;
        }
        super::plot::plot_from_metrics_file(
            &self.cfg.run_dir.join("metrics.jsonl"),
            &self.cfg.run_dir.join("loss_curves.png"),
        )?;
        Ok(RunSummary {
            run_dir: self.cfg.run_dir.clone(),
            global_steps: state.global_step,
            skipped_steps: state.skipped_steps,
            data_wait_share: if busy.is_zero() {
                0.0
            } else {
                wait.as_secs_f64() / busy.as_secs_f64()
            },
            final_loss,
            data_skipped,
        })
    }

    fn metrics_path(&self) -> PathBuf {
        self.cfg.run_dir.join("metrics.jsonl")
    }

    /// Save every model tensor (our names) to one safetensors file.
    pub fn save_model(&self, path: &Path) -> Result<()> {
        comp_model::checkpoint::save_checkpoint(&self.vs, path)
            .with_context(|| format!("saving {}", path.display()))
    }

    /// Write the vision tower with Hugging Face names plus its config (C-RoPE settings included).
    pub fn export_vfm(&self, dir: &Path) -> Result<()> {
        comp_model::checkpoint::export_vision(&self.vs, &self.model.cfg.vision, dir)
            .with_context(|| format!("exporting the vision tower to {}", dir.display()))
    }

    fn run_stage(
        &mut self,
        index: usize,
        stage: &StageConfig,
        state: &mut TrainState,
        loader_state: Option<LoaderState>,
        optim_restore: Option<super::checkpoint::LoadedCheckpoint>,
    ) -> Result<StageOutcome> {
        stage.validate()?;
        let by_part = self.model.parameters_by_part(&self.vs);
        let mut groups = Vec::new();
        for part in Part::ALL {
            let params: Vec<(String, Tensor)> = by_part
                .get(&part)
                .map(|v| {
                    v.iter()
                        .map(|(n, t)| (n.clone(), t.shallow_clone()))
                        .collect()
                })
                .unwrap_or_default();
            let lr = stage.lr.get(part);
            set_trainable(params.iter().map(|(_, t)| t), lr.is_some());
            if let Some(lr) = lr {
                groups.extend(part_groups(part.prefix(), params, lr, stage.weight_decay));
            }
        }
        let mut optim = AdamW::new(groups, AdamWConfig::default())?;
        if let Some(ckpt) = &optim_restore {
            ckpt.restore_optimizer(&mut optim)?;
        }
        let loader_cfg = stage_loader_config(&self.cfg, index, stage);
        let total_steps = match stage.length() {
            StageLength::Steps(n) => n,
            StageLength::Epochs(_) => estimate_epoch_steps(&loader_cfg, stage)?,
        };
        let schedule = WarmupCosine::for_stage(stage, total_steps);
        let mut loader = Loader::start(loader_cfg, loader_state.clone())?;
        let mut last_loader_state = loader_state.unwrap_or_default();
        let opts = ForwardOptions {
            rope: stage.rope,
            alpha: stage.alpha,
            ..ForwardOptions::from_config(&self.model.cfg, self.device)
        };
        let prior = if stage.alpha != 0.0 {
            self.word_prior.as_ref()
        } else {
            None
        };
        let progress = StageProgress::new(
            &stage.name,
            index,
            self.cfg.stages.len(),
            total_steps,
            state.step_in_stage,
            10,
        );
        let mut outcome = StageOutcome::default();
        let mut consecutive_bad = 0u32;
        let accumulation = stage.grad_accumulation.max(1);

        while state.step_in_stage < total_steps {
            let step_start = Instant::now();
            let mut step_wait = Duration::ZERO;
            let (mut loss_sum, mut dec_sum, mut align_sum) = (0.0, 0.0, 0.0);
            let (mut images, mut tokens, mut micro) = (0usize, 0usize, 0u32);
            while micro < accumulation {
                let t = Instant::now();
                let next = loader.next_blocking();
                step_wait += t.elapsed();
                let Some(batch) = next else { break };
                let batch = batch?;
                let tensors = BatchTensors::from_packed(&batch.batch, self.device)?;
                let out = self.model.forward(&tensors, prior, &opts)?;
                (&out.loss / accumulation as f64).backward();
                loss_sum += out.loss.double_value(&[]);
                dec_sum += out.dec_loss.double_value(&[]);
                align_sum += out.align_loss.double_value(&[]);
                images += batch.batch.num_samples();
                tokens += batch.batch.num_tokens();
                last_loader_state = batch.state;
                micro += 1;
            }
            if micro == 0 {
                tracing::info!(
                    "stage {}: the data ended after {} steps",
                    stage.name,
                    state.step_in_stage
                );
                break;
            }
            let n = micro as f64;
            // No alignment loss in this stage: logged as NaN (null), not as a zero that looks computed.
            let align = if stage.align() {
                align_sum / n
            } else {
                f64::NAN
            };
            let (loss, dec) = (loss_sum / n, dec_sum / n);
            let finite = loss.is_finite() && optim.grads_finite();
            let grad_norm = if finite {
                optim.clip_grad_norm(stage.grad_clip)
            } else {
                f64::NAN
            };
            let lr_factor = schedule.factor(state.step_in_stage);
            if finite && grad_norm.is_finite() {
                optim.step(|g| g.peak_lr * lr_factor);
                consecutive_bad = 0;
            } else {
                state.skipped_steps += 1;
                consecutive_bad += 1;
                tracing::warn!(
                    "stage {} step {}: non-finite loss or gradient (loss {loss}, grad norm {grad_norm}); step skipped",
                    stage.name,
                    state.step_in_stage
                );
                if consecutive_bad >= self.cfg.max_consecutive_bad_steps {
                    bail!(
                        "{consecutive_bad} non-finite steps in a row in stage {} at step {}: stopping. Lower the \
                         learning rates or check the data (the last good checkpoint is in {})",
                        stage.name,
                        state.step_in_stage,
                        self.checkpointer.dir().display()
                    );
                }
            }
            optim.zero_grad();
            state.step_in_stage += 1;
            state.global_step += 1;
            let elapsed = step_start.elapsed();
            outcome.wait += step_wait;
            outcome.total += elapsed;
            outcome.last_loss = loss;
            let record = StepMetrics {
                stage: stage.name.clone(),
                stage_index: index,
                step: state.step_in_stage,
                global_step: state.global_step,
                loss,
                dec_loss: dec,
                align_loss: align,
                lr: optim
                    .groups()
                    .iter()
                    .map(|g| (g.name.clone(), g.peak_lr * lr_factor))
                    .collect(),
                grad_norm,
                images_per_s: images as f64 / elapsed.as_secs_f64(),
                tokens_per_s: tokens as f64 / elapsed.as_secs_f64(),
                data_wait_share: step_wait.as_secs_f64() / elapsed.as_secs_f64(),
                skipped_steps: state.skipped_steps,
                time: self.started.elapsed().as_secs_f64(),
            };
            self.metrics
                .as_mut()
                .expect("opened in run()")
                .append(&record)?;
            progress.update(&record);
            let stage_done = state.step_in_stage >= total_steps;
            if stage_done
                || state
                    .step_in_stage
                    .is_multiple_of(self.cfg.checkpoint_every.max(1))
            {
                state.loader = serde_json::to_value(&last_loader_state)?;
                self.checkpointer.save(&CheckpointData {
                    vs: &self.vs,
                    optim: &optim,
                    state,
                })?;
                if state
                    .step_in_stage
                    .is_multiple_of(self.cfg.checkpoint_every.max(1) * 4)
                {
                    let _ = super::plot::plot_from_metrics_file(
                        &self.cfg.run_dir.join("metrics.jsonl"),
                        &self.cfg.run_dir.join("loss_curves.png"),
                    );
                }
            }
        }
        progress.finish();
        outcome.data_skipped = report_skips(&stage.name, loader.metrics());
        // The stage is complete: a resume from here starts the next stage with a fresh optimiser.
        state.stage_index = index + 1;
        state.step_in_stage = 0;
        state.loader = serde_json::Value::Null;
        self.checkpointer.save(&CheckpointData {
            vs: &self.vs,
            optim: &optim,
            state,
        })?;
        Ok(outcome)
    }
}

#[derive(Debug, Default)]
struct StageOutcome {
    wait: Duration,
    total: Duration,
    last_loss: f64,
    data_skipped: u64,
}

/// Warns once per stage about the samples the loader skipped: counts by reason and the first few
/// examples, each naming `shard:row` and the reason. Returns the number skipped.
fn report_skips(stage: &str, metrics: &LoaderMetrics) -> u64 {
    let skips = metrics.skips();
    let total: u64 = skips.values().sum();
    if total > 0 {
        let reasons: Vec<String> = skips.iter().map(|(r, n)| format!("{r} {n}")).collect();
        let examples = metrics.skip_examples();
        let shown: Vec<&str> = examples.iter().take(3).map(String::as_str).collect();
        tracing::warn!(
            "stage {stage}: skipped {total} bad samples ({}); e.g. {}",
            reasons.join(", "),
            shown.join("; ")
        );
    }
    total
}

/// Steps in an epoch-long stage: rows (from the shard footers) times epochs over the samples a batch holds
/// on average, which the budgets bound from above. The cosine schedule only needs its length.
fn estimate_epoch_steps(loader: &LoaderConfig, stage: &StageConfig) -> Result<u64> {
    let dataset = comp_datasets::Dataset::open(loader.dataset.clone())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut rows = 0u64;
    for shard in dataset.shards() {
        // Unreadable shards are the loader's to report; here they just hold no rows.
        rows += rt
            .block_on(comp_datasets::read_shard_summary(
                shard,
                &loader.dataset.columns,
            ))
            .map(|s| s.rows)
            .unwrap_or(0);
    }
    let epochs = match stage.length() {
        StageLength::Epochs(n) => n as u64,
        StageLength::Steps(n) => return Ok(n),
    };
    let per_batch = loader.pack.max_images.max(1) as u64 * stage.grad_accumulation.max(1) as u64;
    Ok((rows * epochs).div_ceil(per_batch).max(1) / loader.dataset.world_size.max(1) as u64)
}

#[allow(unused)]
fn kind_for(device: Device) -> Kind {
    if device.is_cuda() {
        Kind::BFloat16
    } else {
        Kind::Float
    }
}
