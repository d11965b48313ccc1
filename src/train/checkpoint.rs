//! Atomic, self-validating training checkpoints with rotation.
//!
//! Layout inside a run directory:
//! ```text
//! checkpoints/step-00000123/model.safetensors   all VarStore tensors by name
//!                          /optim.safetensors   AdamW moments and step counts
//!                          /state.json          TrainState + byte length and CRC-32 of each file above
//! ```
//! A checkpoint is written into `step-00000123.tmp/`, every file is fsynced, `state.json` last, then the
//! directory is renamed and the parent fsynced. A crash at any point leaves either a `.tmp` directory
//! (ignored and removed later) or a complete checkpoint. Because disks and copies can still damage a
//! finished checkpoint, loading re-checks every file's length and checksum, newest first, and falls back
//! to the previous checkpoint with a warning naming the bad one. The last `keep` checkpoints are kept so
//! that a fallback exists.
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use serde::{Deserialize, Serialize};
use tch::nn::VarStore;
use tch::{Device, Tensor};

use super::optim::AdamW;

const MODEL_FILE: &str = "model.safetensors";
const OPTIM_FILE: &str = "optim.safetensors";
const STATE_FILE: &str = "state.json";
const FORMAT_VERSION: u32 = 1;

/// Where training stands; everything needed to continue besides the tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Index into the run's list of stages.
    pub stage_index: usize,
    pub stage_name: String,
    /// Optimiser steps completed in the current stage (also the schedule position).
    pub step_in_stage: u64,
    /// Optimiser steps completed over all stages; names the checkpoint.
    pub global_step: u64,
    /// Steps skipped for non-finite loss or gradients so far.
    pub skipped_steps: u64,
    /// The run's seed.
    pub seed: u64,
    /// Any RNG state the trainer needs beyond the seed (opaque to this module).
    pub rng: serde_json::Value,
    /// The loader's resumable state (opaque to this module).
    pub loader: serde_json::Value,
    /// Hash of the run's configuration, to refuse resuming with a different config.
    pub config_hash: String,
}

/// Length and CRC-32 of one file of a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    pub bytes: u64,
    pub crc32: u32,
}

#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    format_version: u32,
    #[serde(flatten)]
    state: TrainState,
    files: BTreeMap<String, FileDigest>,
}

/// What to save: borrowed model, optimiser and state.
pub struct CheckpointData<'a> {
    pub vs: &'a VarStore,
    pub optim: &'a AdamW,
    pub state: &'a TrainState,
}

/// A checkpoint that passed validation.
#[derive(Debug, Clone)]
pub struct LoadedCheckpoint {
    pub dir: PathBuf,
    pub state: TrainState,
}

impl LoadedCheckpoint {
    /// Copies the saved tensors into `vs` by name. Names must match exactly (no missing, no extra) and
    /// shapes must agree; dtype and device follow the VarStore.
    pub fn restore_model(&self, vs: &mut VarStore) -> Result<()> {
        let path = self.dir.join(MODEL_FILE);
        let saved: BTreeMap<String, Tensor> = Tensor::read_safetensors(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .into_iter()
            .collect();
        let vars = vs.variables();
        let missing: Vec<&String> = vars.keys().filter(|n| !saved.contains_key(*n)).collect();
        let extra: Vec<&String> = saved.keys().filter(|n| !vars.contains_key(*n)).collect();
        ensure!(
            missing.is_empty() && extra.is_empty(),
            "{}: tensor names differ from the model: missing {missing:?}, unexpected {extra:?}",
            path.display()
        );
        for (name, var) in &vars {
            let src = &saved[name];
            ensure!(
                src.size() == var.size(),
                "{}: {name} has shape {:?}, the model expects {:?}",
                path.display(),
                src.size(),
                var.size()
            );
        }
        tch::no_grad(|| {
            for (name, var) in vars {
                let mut var = var;
                var.copy_(&saved[&name].to_device(var.device()).to_kind(var.kind()));
            }
        });
        Ok(())
    }

    /// Restores the optimiser state (the optimiser must already hold the stage's parameter groups).
    pub fn restore_optimizer(&self, optim: &mut AdamW) -> Result<()> {
        optim.load(&self.dir.join(OPTIM_FILE))
    }
}

pub struct Checkpointer {
    dir: PathBuf,
    keep: usize,
}

fn step_dir_name(step: u64) -> String {
    format!("step-{step:08}")
}

/// The step of a finished checkpoint directory name (`step-00000123`), `None` for anything else.
fn parse_step(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("step-")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn digest_file(path: &Path) -> Result<FileDigest> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok(FileDigest {
        bytes,
        crc32: hasher.finalize(),
    })
}

fn fsync_path(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("fsync {}", path.display()))
}

/// Checks one finished checkpoint directory and returns its state.
fn validate(dir: &Path, step: u64) -> Result<TrainState> {
    let text = fs::read_to_string(dir.join(STATE_FILE)).context("reading state.json")?;
    let file: StateFile = serde_json::from_str(&text).context("parsing state.json")?;
    ensure!(
        file.format_version == FORMAT_VERSION,
        "unknown checkpoint format {}",
        file.format_version
    );
    ensure!(
        file.state.global_step == step,
        "state.json says global step {}",
        file.state.global_step
    );
    for required in [MODEL_FILE, OPTIM_FILE] {
        ensure!(
            file.files.contains_key(required),
            "state.json does not list {required}"
        );
    }
    for (name, expected) in &file.files {
        let got = digest_file(&dir.join(name))?;
        ensure!(
            got.bytes == expected.bytes,
            "{name} is {} bytes, expected {}",
            got.bytes,
            expected.bytes
        );
        ensure!(got.crc32 == expected.crc32, "{name} checksum mismatch");
    }
    Ok(file.state)
}

impl Checkpointer {
    /// Checkpoints live in `run_dir/checkpoints/`; the newest `keep` (at least 1) are kept.
    pub fn new(run_dir: &Path, keep: usize) -> Result<Self> {
        let dir = run_dir.join("checkpoints");
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let cp = Checkpointer {
            dir,
            keep: keep.max(1),
        };
        cp.remove_partial()?;
        Ok(cp)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Finished checkpoint directories, newest first (unvalidated).
    pub fn list(&self) -> Result<Vec<(u64, PathBuf)>> {
        let mut out = Vec::new();
        for entry in
            fs::read_dir(&self.dir).with_context(|| format!("listing {}", self.dir.display()))?
        {
            let entry = entry?;
            let step = entry.file_name().to_str().and_then(parse_step);
            if let (Some(step), true) = (step, entry.file_type()?.is_dir()) {
                out.push((step, entry.path()));
            }
        }
        out.sort_by_key(|(step, _)| std::cmp::Reverse(*step));
        Ok(out)
    }

    /// Removes `.tmp` directories left by a save that never finished.
    fn remove_partial(&self) -> Result<()> {
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            if name.to_string_lossy().ends_with(".tmp") && entry.file_type()?.is_dir() {
                tracing::info!("removing unfinished checkpoint {}", entry.path().display());
                fs::remove_dir_all(entry.path())
                    .with_context(|| format!("removing {}", entry.path().display()))?;
            }
        }
        Ok(())
    }

    /// Writes a checkpoint atomically and rotates old ones; returns its directory.
    pub fn save(&self, data: &CheckpointData) -> Result<PathBuf> {
        let name = step_dir_name(data.state.global_step);
        let tmp = self.dir.join(format!("{name}.tmp"));
        let fin = self.dir.join(&name);
        if tmp.exists() {
            fs::remove_dir_all(&tmp)?;
        }
        fs::create_dir(&tmp).with_context(|| format!("creating {}", tmp.display()))?;

        let mut vars: Vec<(String, Tensor)> = data
            .vs
            .variables()
            .into_iter()
            .map(|(n, t)| (n, t.detach().to_device(Device::Cpu).contiguous()))
            .collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        Tensor::write_safetensors(&vars, tmp.join(MODEL_FILE))
            .context("writing model.safetensors")?;
        data.optim.save(&tmp.join(OPTIM_FILE))?;

        let mut files = BTreeMap::new();
        for f in [MODEL_FILE, OPTIM_FILE] {
            let path = tmp.join(f);
            fsync_path(&path)?;
            files.insert(f.to_string(), digest_file(&path)?);
        }
        let state = StateFile {
            format_version: FORMAT_VERSION,
            state: data.state.clone(),
            files,
        };
        let mut out = File::create(tmp.join(STATE_FILE))?;
        out.write_all(serde_json::to_string_pretty(&state)?.as_bytes())?;
        out.sync_all()?;
        drop(out);
        fsync_path(&tmp)?;

        if fin.exists() {
            // Re-saving the same step (e.g. right after a resume): the new one replaces it.
            fs::remove_dir_all(&fin).with_context(|| format!("replacing {}", fin.display()))?;
        }
        fs::rename(&tmp, &fin)
            .with_context(|| format!("renaming {} to {}", tmp.display(), fin.display()))?;
        fsync_path(&self.dir)?;
        self.rotate()?;
        Ok(fin)
    }

    fn rotate(&self) -> Result<()> {
        for (_, dir) in self.list()?.into_iter().skip(self.keep) {
            fs::remove_dir_all(&dir)
                .with_context(|| format!("removing old checkpoint {}", dir.display()))?;
        }
        Ok(())
    }

    /// The newest checkpoint whose files all match their recorded lengths and checksums. Damaged ones
    /// are skipped with a warning (and left in place for inspection). `None` when there is no usable
    /// checkpoint.
    pub fn load_latest(&self) -> Result<Option<LoadedCheckpoint>> {
        self.remove_partial()?;
        let mut damaged = 0usize;
        for (step, dir) in self.list()? {
            match validate(&dir, step) {
                Ok(state) => return Ok(Some(LoadedCheckpoint { dir, state })),
                Err(err) => {
                    tracing::warn!(
                        "checkpoint {} is damaged ({err:#}); falling back to an older one",
                        dir.display()
                    );
                    damaged += 1;
                }
            }
        }
        if damaged > 0 {
            tracing::warn!(
                "no usable checkpoint in {}: all {} are damaged",
                self.dir.display(),
                damaged
            );
        }
        Ok(None)
    }
}

/// [`Checkpointer::load_latest`] for a run directory without keeping a checkpointer around.
#[cfg(test)]
pub fn latest_good(run_dir: &Path) -> Result<Option<LoadedCheckpoint>> {
    Checkpointer::new(run_dir, usize::MAX)?.load_latest()
}

#[cfg(test)]
#[path = "checkpoint_tests.rs"]
mod tests;
