//! AdamW with parameter groups, global gradient-norm clipping and savable state.
//!
//! We own the optimiser because tch's built-in one cannot export its moment buffers, and exact resume
//! (issue 5) needs them. The update follows `torch.optim.AdamW` (single-tensor path) operation for
//! operation — decoupled weight decay, then the moment updates, then the bias-corrected step — so
//! results match PyTorch to float rounding, and a save → load → continue run is bit-identical to an
//! uninterrupted one on CPU.
//!
//! Parameter groups are how per-part learning rates and weight-decay exemptions are expressed: typically
//! one `decay` and one `no_decay` group per trainable part ([`part_groups`]). Frozen parts are simply
//! not in the optimiser, and their tensors get `requires_grad = false` ([`set_trainable`]) so autograd
//! does not even compute their gradients.
//!
//! Gradient accumulation belongs to the caller: run `backward` on each micro-batch (loss divided by the
//! number of micro-batches) without calling [`AdamW::zero_grad`] in between, then clip, step, zero.
//!
//! Everything runs on the parameters' own device; state tensors are created next to their parameter
//! and moved back there on load, so the same code serves CPU and CUDA.
use std::collections::{HashMap, HashSet};
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use tch::{Device, Kind, Tensor};

/// One set of parameters sharing a peak learning rate and weight decay.
#[derive(Debug)]
pub struct ParamGroup {
    /// E.g. `adapter.decay`; used for logging learning rates.
    pub name: String,
    /// The schedule's factor multiplies this.
    pub peak_lr: f64,
    /// Decoupled weight decay (`p -= lr * wd * p`).
    pub weight_decay: f64,
    /// (unique name, tensor); the name keys the optimiser state in checkpoints.
    pub params: Vec<(String, Tensor)>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

/// Per-parameter moments; `step` is per parameter (as in PyTorch) so a parameter that first receives a
/// gradient late still gets a correct bias correction.
#[derive(Debug)]
struct ParamState {
    step: i64,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

#[derive(Debug)]
pub struct AdamW {
    config: AdamWConfig,
    groups: Vec<ParamGroup>,
    state: HashMap<String, ParamState>,
    steps_taken: u64,
}

const STEPS_TAKEN_KEY: &str = "__steps_taken__";

/// Biases, norm weights and every tensor with at most one dimension are exempt from weight decay.
pub fn is_no_decay(name: &str, tensor: &Tensor) -> bool {
    let lower = name.to_ascii_lowercase();
    tensor.dim() <= 1 || lower.ends_with("bias") || lower.contains("norm") || lower.contains(".ln")
}

/// Splits one model part's parameters into `{part}.decay` and `{part}.no_decay` groups (empty groups
/// are dropped).
pub fn part_groups(
    part: &str,
    params: Vec<(String, Tensor)>,
    peak_lr: f64,
    weight_decay: f64,
) -> Vec<ParamGroup> {
    let (no_decay, decay): (Vec<_>, Vec<_>) =
        params.into_iter().partition(|(n, t)| is_no_decay(n, t));
    [
        (format!("{part}.decay"), weight_decay, decay),
        (format!("{part}.no_decay"), 0.0, no_decay),
    ]
    .into_iter()
    .filter(|(_, _, p)| !p.is_empty())
    .map(|(name, weight_decay, params)| ParamGroup {
        name,
        peak_lr,
        weight_decay,
        params,
    })
    .collect()
}

/// Turns gradient tracking on or off; freezing also zeroes any gradient left from an earlier stage.
pub fn set_trainable<'a>(tensors: impl IntoIterator<Item = &'a Tensor>, trainable: bool) {
    for t in tensors {
        if !trainable {
            let mut g = t.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
        let _ = t.set_requires_grad(trainable);
    }
}

impl AdamW {
    pub fn new(groups: Vec<ParamGroup>, config: AdamWConfig) -> Result<Self> {
        let mut seen = HashSet::new();
        for g in &groups {
            ensure!(
                g.peak_lr.is_finite() && g.peak_lr >= 0.0,
                "group {}: bad learning rate {}",
                g.name,
                g.peak_lr
            );
            for (name, t) in &g.params {
                ensure!(
                    seen.insert(name.clone()),
                    "parameter {name} appears in more than one group"
                );
                ensure!(
                    t.is_floating_point(),
                    "parameter {name} is not floating point"
                );
            }
        }
        Ok(AdamW {
            config,
            groups,
            state: HashMap::new(),
            steps_taken: 0,
        })
    }

    pub fn groups(&self) -> &[ParamGroup] {
        &self.groups
    }

    /// Optimiser steps applied so far (skipped steps not counted).
    #[cfg(test)]
    pub fn steps_taken(&self) -> u64 {
        self.steps_taken
    }

    fn params(&self) -> impl Iterator<Item = &(String, Tensor)> {
        self.groups.iter().flat_map(|g| g.params.iter())
    }

    fn grads(&self) -> Vec<Tensor> {
        self.params()
            .map(|(_, p)| p.grad())
            .filter(|g| g.defined())
            .collect()
    }

    pub fn zero_grad(&self) {
        for mut g in self.grads() {
            let _ = g.zero_();
        }
    }

    /// Global L2 norm of all gradients, computed in f64; NaN or infinite when any gradient is.
    pub fn grad_norm(&self) -> f64 {
        let grads = self.grads();
        let Some(first) = grads.first() else {
            return 0.0;
        };
        let device = first.device();
        let norms: Vec<Tensor> = grads
            .iter()
            .map(|g| g.norm_scalaropt_dtype(2.0, Kind::Double).to_device(device))
            .collect();
        Tensor::stack(&norms, 0).norm().double_value(&[])
    }

    /// True when every gradient is finite (cheap enough to call every step).
    pub fn grads_finite(&self) -> bool {
        self.grad_norm().is_finite()
    }

    /// Clips the global gradient norm to `max_norm` (PyTorch's `clip_grad_norm_` rule,
    /// `coef = max_norm / (norm + 1e-6)` when below 1) and returns the norm before clipping.
    /// `max_norm <= 0` only measures. A non-finite norm is returned as is and the gradients are left
    /// untouched: the caller should skip the step.
    pub fn clip_grad_norm(&self, max_norm: f64) -> f64 {
        let norm = self.grad_norm();
        if norm.is_finite() && max_norm > 0.0 {
            let coef = max_norm / (norm + 1e-6);
            if coef < 1.0 {
                for mut g in self.grads() {
                    let _ = g.g_mul_scalar_(coef);
                }
            }
        }
        norm
    }

    /// One AdamW update of every parameter that has a gradient, with the learning rate that
    /// `lr_for_group` returns for each group (typically `group.peak_lr * schedule.factor(step)`).
    pub fn step(&mut self, mut lr_for_group: impl FnMut(&ParamGroup) -> f64) {
        let AdamWConfig { beta1, beta2, eps } = self.config;
        tch::no_grad(|| {
            for group in &self.groups {
                let lr = lr_for_group(group);
                for (name, param) in &group.params {
                    let grad = param.grad();
                    if !grad.defined() {
                        continue;
                    }
                    let st = self
                        .state
                        .entry(name.clone())
                        .or_insert_with(|| ParamState {
                            step: 0,
                            exp_avg: param.zeros_like(),
                            exp_avg_sq: param.zeros_like(),
                        });
                    st.step += 1;
                    let mut p = param.shallow_clone();
                    if group.weight_decay != 0.0 {
                        let _ = p.g_mul_scalar_(1.0 - lr * group.weight_decay);
                    }
                    let _ = st.exp_avg.lerp_(&grad, 1.0 - beta1);
                    let _ = st.exp_avg_sq.g_mul_scalar_(beta2);
                    let _ = st.exp_avg_sq.g_add_(&(&grad * (1.0 - beta2) * &grad));
                    let bias_correction1 = 1.0 - beta1.powi(st.step as i32);
                    let bias_correction2_sqrt = (1.0 - beta2.powi(st.step as i32)).sqrt();
                    let step_size = lr / bias_correction1;
                    let denom = (st.exp_avg_sq.sqrt() / bias_correction2_sqrt) + eps;
                    let _ = p.g_add_(&(&st.exp_avg * (-step_size) / denom));
                }
            }
        });
        self.steps_taken += 1;
    }

    /// The state as named tensors (on CPU, contiguous): `{param}/exp_avg`, `{param}/exp_avg_sq`,
    /// `{param}/step`, plus the global step count.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut names: Vec<&String> = self.state.keys().collect();
        names.sort();
        let mut out = vec![(
            STEPS_TAKEN_KEY.to_string(),
            Tensor::from_slice(&[self.steps_taken as i64]),
        )];
        for name in names {
            let st = &self.state[name];
            let cpu = |t: &Tensor| t.to_device(Device::Cpu).contiguous();
            out.push((format!("{name}/exp_avg"), cpu(&st.exp_avg)));
            out.push((format!("{name}/exp_avg_sq"), cpu(&st.exp_avg_sq)));
            out.push((format!("{name}/step"), Tensor::from_slice(&[st.step])));
        }
        out
    }

    /// Restores state written by [`AdamW::state_tensors`]. Every saved parameter must exist in this
    /// optimiser with the same shape; parameters without saved state start fresh (they had no
    /// gradient yet).
    pub fn load_state_tensors(&mut self, tensors: Vec<(String, Tensor)>) -> Result<()> {
        let params: HashMap<&str, &Tensor> = self.params().map(|(n, t)| (n.as_str(), t)).collect();
        let mut parts: HashMap<String, [Option<Tensor>; 3]> = HashMap::new();
        let mut steps_taken = None;
        for (key, t) in tensors {
            if key == STEPS_TAKEN_KEY {
                steps_taken = Some(t.int64_value(&[0]) as u64);
                continue;
            }
            let Some((name, field)) = key.rsplit_once('/') else {
                bail!("unexpected optimiser state key {key}")
            };
            let slot = match field {
                "exp_avg" => 0,
                "exp_avg_sq" => 1,
                "step" => 2,
                _ => bail!("unexpected optimiser state key {key}"),
            };
            parts.entry(name.to_string()).or_default()[slot] = Some(t);
        }
        let mut state = HashMap::new();
        for (name, [avg, avg_sq, step]) in parts {
            let param = params.get(name.as_str()).with_context(|| {
                format!("optimiser state has parameter {name}, which this stage's optimiser does not train")
            })?;
            let (Some(avg), Some(avg_sq), Some(step)) = (avg, avg_sq, step) else {
                bail!("optimiser state for {name} is incomplete")
            };
            for t in [&avg, &avg_sq] {
                ensure!(
                    t.size() == param.size(),
                    "optimiser state for {name} has shape {:?}, parameter has {:?}",
                    t.size(),
                    param.size()
                );
            }
            let place = |t: Tensor| t.to_device(param.device()).to_kind(param.kind());
            state.insert(
                name,
                ParamState {
                    step: step.int64_value(&[0]),
                    exp_avg: place(avg),
                    exp_avg_sq: place(avg_sq),
                },
            );
        }
        self.steps_taken = steps_taken.context("optimiser state lacks the step count")?;
        self.state = state;
        Ok(())
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        Tensor::write_safetensors(&self.state_tensors(), path)
            .with_context(|| format!("writing optimiser state to {}", path.display()))
    }

    pub fn load(&mut self, path: &Path) -> Result<()> {
        let tensors = Tensor::read_safetensors(path)
            .with_context(|| format!("reading optimiser state from {}", path.display()))?;
        self.load_state_tensors(tensors)
    }
}

#[cfg(test)]
#[path = "optim_tests.rs"]
mod tests;
