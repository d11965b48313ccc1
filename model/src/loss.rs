//! The two CoMP losses (§5): text decoding cross-entropy and the Sinkhorn alignment loss.
//!
//! The alignment target p_t is an optimal-transport assignment of each caption to the K "word
//! prototypes" (L2-normalised LM-head rows) whose word marginal follows the prior u_W (caption token
//! frequencies) and whose per-sample mass is 1. Sinkhorn-Knopp runs in the log domain: with eps = 0.005
//! the kernel exp(C/eps) overflows f32 once a cosine passes ~0.44, which the reference code's direct
//! exponentiation does. Everything here is f32.
use tch::{Kind, Tensor};

use crate::config::{AlignMode, LossConfig};
use crate::error::{ModelError, Result};

/// Mean next-token cross-entropy over supervised rows: `logits: [M, V]`, `targets: [M]`.
/// With no supervised row the loss is 0 (still attached to the graph through `logits`).
pub fn decoding_loss(logits: &Tensor, targets: &Tensor) -> Tensor {
    if targets.size()[0] == 0 {
        return logits.sum(Kind::Float) * 0.0;
    }
    logits
        .to_kind(Kind::Float)
        .log_softmax(-1, Kind::Float)
        .g_nll_loss::<Tensor>(targets, None, tch::Reduction::Mean, -100)
}

/// Rows scaled to unit L2 norm.
pub fn l2_normalize(x: &Tensor) -> Tensor {
    let x = x.to_kind(Kind::Float);
    let n = x
        .linalg_norm(2.0, [-1i64].as_slice(), true, Kind::Float)
        .clamp_min(1e-12);
    x / n
}

/// The word prior as probabilities `[vocab]`: counts (any non-negative scale) normalised, zero-padded
/// up to `vocab` (LM heads are often padded beyond the tokenizer), mixed with `smoothing` of a uniform
/// distribution so unseen words keep a finite log-prior. `None` gives the uniform prior.
pub fn word_prior_probs(
    counts: Option<&Tensor>,
    vocab: i64,
    smoothing: f64,
    device: tch::Device,
) -> Result<Tensor> {
    let uniform = Tensor::full([vocab], 1.0 / vocab as f64, (Kind::Float, device));
    let Some(c) = counts else { return Ok(uniform) };
    let c = c.to_device(device).to_kind(Kind::Float).flatten(0, -1);
    let n = c.size()[0];
    if n > vocab {
        return Err(ModelError::Batch(format!(
            "word prior has {n} entries, the LM head only {vocab} words"
        )));
    }
    let min = c.min().double_value(&[]);
    let total = c.sum(Kind::Float).double_value(&[]);
    let valid = min >= 0.0 && total > 0.0 && total.is_finite();
    if !valid {
        return Err(ModelError::Batch(
            "word prior must be non-negative, finite and not all zero".into(),
        ));
    }
    let c = if n < vocab {
        Tensor::cat(&[c, Tensor::zeros([vocab - n], (Kind::Float, device))], 0)
    } else {
        c
    };
    Ok((c / total) * (1.0 - smoothing) + uniform * smoothing)
}

/// Sinkhorn-Knopp in the log domain on the kernel `exp(scores / eps)`: alternately rescale columns so
/// the word marginal is `B * prior` and rows so each sample's mass is 1 (rows last, so they are exact).
/// `scores: [B, K]`, `prior: [K]` probabilities. Returns the plan `[B, K]`.
pub fn sinkhorn_log(scores: &Tensor, prior: &Tensor, eps: f64, iters: usize) -> Tensor {
    let b = scores.size()[0] as f64;
    let log_col = (prior.to_kind(Kind::Float).log() + b.ln()).unsqueeze(0);
    let mut log_q = scores.to_kind(Kind::Float) / eps;
    for _ in 0..iters {
        log_q = &log_q - log_q.logsumexp([0i64].as_slice(), true) + &log_col;
        log_q = &log_q - log_q.logsumexp([1i64].as_slice(), true);
    }
    if iters == 0 {
        log_q = &log_q - log_q.logsumexp([1i64].as_slice(), true);
    }
    log_q.exp()
}

/// The reference code's closed form: `softmax(C_t/eps + 3 log u')`, `u' = softmax(prior / 0.05)` where
/// `prior` is the normalised word frequency.
pub fn reference_closed_form(scores: &Tensor, prior: &Tensor, eps: f64) -> Tensor {
    let u = (prior.to_kind(Kind::Float) / 0.05).log_softmax(0, Kind::Float);
    (scores.to_kind(Kind::Float) / eps + u.unsqueeze(0) * 3.0).softmax(1, Kind::Float)
}

/// `L_align = -(1/B) Σ_b Σ_k p_t log softmax(C_v / tau)`.
/// `f_v: [B, D]` (carries the gradient), `f_t: [B, D]` and `prototypes: [K, D]` are detached here.
pub fn alignment_loss(
    f_v: &Tensor,
    f_t: &Tensor,
    prototypes: &Tensor,
    prior: &Tensor,
    cfg: &LossConfig,
) -> Tensor {
    let w = l2_normalize(&prototypes.detach());
    let c_v = l2_normalize(f_v).matmul(&w.tr());
    let p_t = tch::no_grad(|| {
        let c_t = l2_normalize(&f_t.detach()).matmul(&w.tr());
        match cfg.mode {
            AlignMode::SinkhornLog => {
                sinkhorn_log(&c_t, prior, cfg.sinkhorn_eps, cfg.sinkhorn_iters)
            }
            AlignMode::ReferenceClosedForm => reference_closed_form(&c_t, prior, cfg.sinkhorn_eps),
        }
    });
    let log_p_v = (c_v / cfg.tau).log_softmax(1, Kind::Float);
    -(p_t * log_p_v)
        .sum_dim_intlist([1i64].as_slice(), false, Kind::Float)
        .mean(Kind::Float)
}
