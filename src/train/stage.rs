//! Training stages: what trains, how fast, at which resolution, and with which loss.
//!
//! CoMP trains in stages (comp-method.md §6): a warm-up that trains only the adapter, continual
//! pre-training of everything at native resolution, and instruction tuning without the alignment loss.
//! A stage is plain data ([`StageConfig`]) so that a TOML file, the CLI and the presets all describe
//! stages the same way; every field has a default, so a TOML stage only names what differs.
//!
//! A part is trainable exactly when it has a learning rate (`lr = { adapter = 1e-3 }` trains only the
//! adapter); there is no separate "frozen" flag that could disagree with it.
use anyhow::{Result, bail, ensure};
use serde::{Deserialize, Serialize};

/// The three trainable parts of the CoMP harness (the model crate's own grouping of its parameters):
/// their names (`vision`, `adapter`, `llm`) are the parameter-group names, the learning-rate columns in
/// `metrics.jsonl` and the config keys.
pub use comp_model::Part;

/// Peak learning rate per part; `None` freezes the part for the stage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PartLrs {
    pub vision: Option<f64>,
    pub adapter: Option<f64>,
    pub llm: Option<f64>,
}

impl PartLrs {
    pub fn get(&self, part: Part) -> Option<f64> {
        match part {
            Part::Vision => self.vision,
            Part::Adapter => self.adapter,
            Part::Llm => self.llm,
        }
    }
}

/// How images are sized for a stage.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "policy", rename_all = "snake_case", deny_unknown_fields)]
pub enum Resolution {
    /// Every image resized to `side x side` pixels (a multiple of 28), like ordinary VFM training.
    FixedSquare { side: u32 },
    /// Native aspect ratio and size (Qwen2-VL smart resize), capped at `max_visual_tokens` LLM tokens
    /// per image (after the 2x2 merge, i.e. patches / 4).
    Native { max_visual_tokens: u32 },
}

impl Default for Resolution {
    fn default() -> Self {
        Resolution::Native {
            max_visual_tokens: 3000,
        }
    }
}

/// How long a stage runs. Exactly one of `steps` / `epochs` is set (`validate` checks).
///
/// Steps are optimiser steps (after gradient accumulation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StageConfig {
    /// Shown in progress bars, metrics and plots.
    pub name: String,
    /// Learning rate per trainable part; parts without one are frozen.
    pub lr: PartLrs,
    /// Optimiser steps in the stage. Default: unset (the stage runs `epochs`).
    pub steps: Option<u64>,
    /// Passes over the data. Default: 1 (the paper's "one epoch per stage") when `steps` is unset.
    pub epochs: Option<u32>,
    /// Share of the stage's steps spent in linear warm-up. Default 0.03.
    pub warmup_ratio: f64,
    /// Cosine decay ends at `min_lr_ratio * lr`. Default 0.
    pub min_lr_ratio: f64,
    /// Decoupled AdamW weight decay for matrices (biases, norms and 1-D params never decay). Default 0.
    pub weight_decay: f64,
    /// Global gradient-norm clip; 0 disables clipping (the norm is still measured). Default 1.0.
    pub grad_clip: f64,
    /// Micro-batches summed per optimiser step. Default 1.
    pub grad_accumulation: u32,
    /// Image sizing. Default: native, at most 3000 visual tokens.
    pub resolution: Resolution,
    /// 2D RoPE in the ViT on (C-RoPE) or off (absolute positions only). Default true.
    pub rope: bool,
    /// Weight of the alignment loss; 0 turns it off (L = L_dec). Default 0.05.
    pub alpha: f64,
}

impl Default for StageConfig {
    fn default() -> Self {
        StageConfig {
            name: "stage".to_string(),
            lr: PartLrs::default(),
            steps: None,
            epochs: None,
            warmup_ratio: 0.03,
            min_lr_ratio: 0.0,
            weight_decay: 0.0,
            grad_clip: 1.0,
            grad_accumulation: 1,
            resolution: Resolution::default(),
            rope: true,
            alpha: 0.05,
        }
    }
}

/// A stage's length once defaults are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageLength {
    Steps(u64),
    Epochs(u32),
}

impl StageConfig {
    /// Trainable parts with their peak learning rates, in [`Part::ALL`] order.
    pub fn trainable(&self) -> Vec<(Part, f64)> {
        Part::ALL
            .iter()
            .filter_map(|&p| self.lr.get(p).map(|lr| (p, lr)))
            .collect()
    }

    #[cfg(test)]
    pub fn trains(&self, part: Part) -> bool {
        self.lr.get(part).is_some()
    }

    /// Whether the alignment loss is computed at all in this stage.
    pub fn align(&self) -> bool {
        self.alpha > 0.0
    }

    pub fn length(&self) -> StageLength {
        match (self.steps, self.epochs) {
            (Some(s), _) => StageLength::Steps(s),
            (None, Some(e)) => StageLength::Epochs(e),
            (None, None) => StageLength::Epochs(1),
        }
    }

    /// Checks the stage for values that would make training meaningless or crash later.
    pub fn validate(&self) -> Result<()> {
        let name = &self.name;
        ensure!(
            !self.trainable().is_empty(),
            "stage {name:?}: no part has a learning rate, nothing would train"
        );
        for (part, lr) in self.trainable() {
            ensure!(
                lr.is_finite() && lr > 0.0,
                "stage {name:?}: lr for {} must be > 0, got {lr}",
                part.prefix()
            );
        }
        if self.steps.is_some() && self.epochs.is_some() {
            bail!("stage {name:?}: set either steps or epochs, not both");
        }
        ensure!(
            self.steps != Some(0) && self.epochs != Some(0),
            "stage {name:?}: length must be > 0"
        );
        ensure!(
            (0.0..1.0).contains(&self.warmup_ratio),
            "stage {name:?}: warmup_ratio must be in [0, 1)"
        );
        ensure!(
            (0.0..=1.0).contains(&self.min_lr_ratio),
            "stage {name:?}: min_lr_ratio must be in [0, 1]"
        );
        ensure!(
            self.weight_decay >= 0.0,
            "stage {name:?}: weight_decay must be >= 0"
        );
        ensure!(
            self.grad_clip >= 0.0,
            "stage {name:?}: grad_clip must be >= 0 (0 disables)"
        );
        ensure!(
            self.grad_accumulation >= 1,
            "stage {name:?}: grad_accumulation must be >= 1"
        );
        ensure!(
            self.alpha >= 0.0 && self.alpha.is_finite(),
            "stage {name:?}: alpha must be >= 0"
        );
        match self.resolution {
            Resolution::FixedSquare { side } => {
                ensure!(
                    side > 0 && side % 28 == 0,
                    "stage {name:?}: fixed_square side {side} must be a positive multiple of 28"
                )
            }
            Resolution::Native { max_visual_tokens } => {
                ensure!(
                    max_visual_tokens > 0,
                    "stage {name:?}: max_visual_tokens must be > 0"
                )
            }
        }
        Ok(())
    }
}

/// The paper's stages 1-3 (comp-method.md §6): one epoch each, cosine with 3% warm-up, clip 1.0,
/// weight decay 0. Stage 2's initial fixed-1036 phase is not modelled; it runs at native resolution.
pub fn comp_stages() -> Vec<StageConfig> {
    vec![
        StageConfig {
            name: "stage1-warmup".into(),
            lr: PartLrs {
                adapter: Some(1e-3),
                ..Default::default()
            },
            resolution: Resolution::FixedSquare { side: 392 },
            rope: false,
            alpha: 0.05,
            ..Default::default()
        },
        StageConfig {
            name: "stage2-continual-pretraining".into(),
            lr: PartLrs {
                vision: Some(1e-4),
                adapter: Some(5e-3),
                llm: Some(2e-5),
            },
            resolution: Resolution::Native {
                max_visual_tokens: 3000,
            },
            alpha: 0.05,
            ..Default::default()
        },
        StageConfig {
            name: "stage3-instruction-tuning".into(),
            lr: PartLrs {
                vision: Some(2e-5),
                adapter: Some(1e-5),
                llm: Some(1e-5),
            },
            resolution: Resolution::Native {
                max_visual_tokens: 3000,
            },
            alpha: 0.0,
            ..Default::default()
        },
    ]
}

/// Step counts of the built-in demo (about 10 minutes on 2 CPU cores in total). Tune here.
pub mod demo {
    pub const STAGE0_STEPS: u64 = 1200;
    pub const STAGE1_STEPS: u64 = 200;
    pub const STAGE2_STEPS: u64 = 1200;
    pub const STAGE3_STEPS: u64 = 200;
    /// Stage 0's low fixed resolution (8x8 patches of 14 px).
    pub const STAGE0_SIDE: u32 = 112;
    /// Stage 1's fixed resolution, the demo's stand-in for the paper's 392.
    pub const STAGE1_SIDE: u32 = 112;
    /// Visual-token cap for the native-resolution demo stages.
    pub const MAX_VISUAL_TOKENS: u32 = 256;
}

/// "Stage 0" of the demo: trains a tiny VFM (with adapter and LLM, since the demo has no pre-trained
/// checkpoint) the way ordinary VFMs are trained — fixed low square resolution, absolute positions only,
/// no alignment loss — standing in for an off-the-shelf checkpoint that CoMP then continues.
pub fn demo_stage0() -> StageConfig {
    StageConfig {
        name: "stage0-vfm-pretraining".into(),
        lr: PartLrs {
            vision: Some(1e-3),
            adapter: Some(1e-3),
            llm: Some(1e-3),
        },
        steps: Some(demo::STAGE0_STEPS),
        warmup_ratio: 0.05,
        resolution: Resolution::FixedSquare {
            side: demo::STAGE0_SIDE,
        },
        rope: false,
        alpha: 0.0,
        ..Default::default()
    }
}

/// CoMP stages 1-3 scaled down for the demo: the paper's structure (what trains, resolution, RoPE,
/// alignment) with step counts from [`demo`] and learning rates raised for tiny models trained briefly,
/// keeping the paper's ordering (adapter fastest in stages 1-2, everything slow in stage 3).
pub fn demo_stages() -> Vec<StageConfig> {
    let native = Resolution::Native {
        max_visual_tokens: demo::MAX_VISUAL_TOKENS,
    };
    vec![
        StageConfig {
            name: "stage1-warmup".into(),
            lr: PartLrs {
                adapter: Some(2e-3),
                ..Default::default()
            },
            steps: Some(demo::STAGE1_STEPS),
            resolution: Resolution::FixedSquare {
                side: demo::STAGE1_SIDE,
            },
            rope: false,
            alpha: 0.05,
            ..Default::default()
        },
        StageConfig {
            name: "stage2-continual-pretraining".into(),
            lr: PartLrs {
                vision: Some(5e-4),
                adapter: Some(2e-3),
                llm: Some(2e-4),
            },
            steps: Some(demo::STAGE2_STEPS),
            resolution: native,
            alpha: 0.05,
            ..Default::default()
        },
        StageConfig {
            name: "stage3-instruction-tuning".into(),
            lr: PartLrs {
                vision: Some(1e-4),
                adapter: Some(1e-4),
                llm: Some(1e-4),
            },
            steps: Some(demo::STAGE3_STEPS),
            resolution: native,
            alpha: 0.0,
            ..Default::default()
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Stages {
        stages: Vec<StageConfig>,
    }

    #[test]
    fn presets_match_the_paper_and_validate() {
        let s = comp_stages();
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].trainable(), vec![(Part::Adapter, 1e-3)]);
        assert!(!s[0].rope && s[0].align());
        assert_eq!(s[0].resolution, Resolution::FixedSquare { side: 392 });
        assert_eq!(
            s[1].trainable(),
            vec![
                (Part::Vision, 1e-4),
                (Part::Adapter, 5e-3),
                (Part::Llm, 2e-5)
            ]
        );
        assert_eq!(
            s[1].resolution,
            Resolution::Native {
                max_visual_tokens: 3000
            }
        );
        assert!(s[1].rope && s[1].align());
        assert_eq!(
            s[2].trainable(),
            vec![
                (Part::Vision, 2e-5),
                (Part::Adapter, 1e-5),
                (Part::Llm, 1e-5)
            ]
        );
        assert!(!s[2].align());
        for st in &s {
            assert_eq!(st.length(), StageLength::Epochs(1));
            assert_eq!(
                (st.warmup_ratio, st.grad_clip, st.weight_decay),
                (0.03, 1.0, 0.0)
            );
        }
        let demo: Vec<_> = std::iter::once(demo_stage0())
            .chain(demo_stages())
            .collect();
        for st in s.iter().chain(&demo) {
            st.validate().unwrap();
        }
        assert!(Part::ALL.iter().all(|&p| demo[0].trains(p)) && !demo[0].rope && !demo[0].align());
        assert!(matches!(demo[0].length(), StageLength::Steps(n) if n == demo::STAGE0_STEPS));
    }

    #[test]
    fn toml_uses_defaults_for_missing_fields_and_round_trips() {
        let text = r#"
            [[stages]]
            name = "warm"
            lr = { adapter = 1e-3 }
            steps = 10
            rope = false
            resolution = { policy = "fixed_square", side = 392 }

            [[stages]]
            name = "all"
            lr = { vision = 1e-4, adapter = 5e-3, llm = 2e-5 }
            resolution = { policy = "native", max_visual_tokens = 1000 }
        "#;
        let parsed: Stages = toml::from_str(text).unwrap();
        let [warm, all] = &parsed.stages[..] else {
            panic!("two stages expected")
        };
        assert_eq!(warm.trainable(), vec![(Part::Adapter, 1e-3)]);
        assert_eq!(warm.length(), StageLength::Steps(10));
        assert_eq!(warm.grad_clip, 1.0);
        assert_eq!(all.length(), StageLength::Epochs(1));
        assert_eq!(
            all.resolution,
            Resolution::Native {
                max_visual_tokens: 1000
            }
        );
        let back: StageConfig = toml::from_str(&toml::to_string(warm).unwrap()).unwrap();
        assert_eq!(&back, warm);
        assert!(
            toml::from_str::<Stages>("[[stages]]\nlr = { adapterr = 1.0 }").is_err(),
            "typos are rejected"
        );
    }

    #[test]
    fn validate_rejects_bad_stages() {
        let ok = demo_stages()[0].clone();
        let bad = [
            StageConfig {
                lr: PartLrs::default(),
                ..ok.clone()
            },
            StageConfig {
                steps: Some(5),
                epochs: Some(1),
                ..ok.clone()
            },
            StageConfig {
                steps: Some(0),
                ..ok.clone()
            },
            StageConfig {
                resolution: Resolution::FixedSquare { side: 100 },
                ..ok.clone()
            },
            StageConfig {
                grad_accumulation: 0,
                ..ok.clone()
            },
            StageConfig {
                lr: PartLrs {
                    llm: Some(-1.0),
                    ..Default::default()
                },
                ..ok.clone()
            },
        ];
        for b in bad {
            assert!(b.validate().is_err(), "{b:?} should be rejected");
        }
    }
}
