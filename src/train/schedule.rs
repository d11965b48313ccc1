//! Learning-rate schedule: linear warm-up, then cosine decay to a floor (comp-method.md §6).
//!
//! The schedule is a pure function of the optimiser-step index within a stage, so resuming only needs
//! that index (saved in every checkpoint) and never any schedule state. It returns a factor in [0, 1]
//! that scales each parameter group's own peak learning rate, which is how per-part learning rates share
//! one schedule.
//!
//! Warm-up counts from step 0 as `(step + 1) / warmup_steps`, so the very first optimiser step already
//! moves the weights (Hugging Face's variant starts at exactly 0 and wastes a step).
use super::stage::StageConfig;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WarmupCosine {
    /// Optimiser steps in the stage.
    pub total_steps: u64,
    /// Steps of linear warm-up at the start (included in `total_steps`).
    pub warmup_steps: u64,
    /// The learning rate decays to `min_lr_ratio * peak`.
    pub min_lr_ratio: f64,
}

impl WarmupCosine {
    /// `warmup_steps = ceil(warmup_ratio * total_steps)`, at most `total_steps`.
    pub fn new(total_steps: u64, warmup_ratio: f64, min_lr_ratio: f64) -> Self {
        let warmup_steps =
            ((warmup_ratio.max(0.0) * total_steps as f64).ceil() as u64).min(total_steps);
        WarmupCosine {
            total_steps,
            warmup_steps,
            min_lr_ratio,
        }
    }

    /// The schedule of `stage` once its length in optimiser steps is known (for epoch-based stages the
    /// caller derives it from the data).
    pub fn for_stage(stage: &StageConfig, total_steps: u64) -> Self {
        Self::new(total_steps, stage.warmup_ratio, stage.min_lr_ratio)
    }

    /// Multiplier of the peak learning rate at optimiser step `step` (0-based). Steps past the end stay at
    /// the floor.
    pub fn factor(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return (step + 1) as f64 / self.warmup_steps as f64;
        }
        let decay_steps = self.total_steps.saturating_sub(self.warmup_steps);
        if decay_steps == 0 {
            return 1.0;
        }
        let progress = ((step - self.warmup_steps) as f64 / decay_steps as f64).min(1.0);
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cosine
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn warmup_is_linear_then_cosine_reaches_the_floor() {
        let s = WarmupCosine::new(100, 0.03, 0.0);
        assert_eq!(s.warmup_steps, 3);
        assert!(close(1e-3 * s.factor(0), 1e-3 / 3.0));
        assert!(close(1e-3 * s.factor(1), 2e-3 / 3.0));
        assert!(close(1e-3 * s.factor(2), 1e-3));
        assert!(close(s.factor(3), 1.0), "peak right after warm-up");
        // Halfway through the decay the cosine is at one half.
        assert!(close(
            s.factor(3 + 97 / 2) * 2.0,
            1.0 + (std::f64::consts::PI * 48.0 / 97.0).cos()
        ));
        assert!(s.factor(99) > 0.0 && s.factor(99) < 1e-3);
        assert!(close(s.factor(100), 0.0) && close(s.factor(1000), 0.0));
        let f: Vec<f64> = (3..100).map(|i| s.factor(i)).collect();
        assert!(
            f.windows(2).all(|w| w[1] < w[0]),
            "strictly decreasing after warm-up"
        );
    }

    #[test]
    fn floor_and_degenerate_lengths() {
        let s = WarmupCosine::new(10, 0.0, 0.1);
        assert_eq!(s.warmup_steps, 0);
        assert!(close(s.factor(0), 1.0));
        assert!(close(s.factor(10), 0.1));
        assert!((0..10).all(|i| s.factor(i) >= 0.1));
        // One-step stage: warm-up of one step at full rate.
        let one = WarmupCosine::new(1, 0.03, 0.0);
        assert_eq!(one.warmup_steps, 1);
        assert!(close(one.factor(0), 1.0));
        let stage = crate::train::stage::StageConfig {
            warmup_ratio: 0.5,
            ..Default::default()
        };
        assert_eq!(WarmupCosine::for_stage(&stage, 8).warmup_steps, 4);
    }
}
