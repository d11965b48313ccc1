//! The adapter (CoMP §3, Qwen2-VL's `PatchMerger`): LayerNorm per ViT token, concatenate the
//! `merge_size²` tokens of each window (consecutive thanks to the merge-window order), then
//! Linear(4D, 4D) → exact GELU → Linear(4D, D_llm). Names mirror Qwen2-VL's `visual.merger`
//! (`ln_q`, `mlp.0`, `mlp.2`).
use tch::{Tensor, nn};

use crate::config::AdapterConfig;
use crate::layers::{Activation, LayerNorm, Linear};

#[derive(Debug)]
pub struct Adapter {
    ln_q: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    window: i64,
}

impl Adapter {
    pub fn new(p: nn::Path, cfg: &AdapterConfig, vision_hidden: i64, llm_hidden: i64) -> Self {
        let window = cfg.merge_size * cfg.merge_size;
        let merged = vision_hidden * window;
        let mlp = &p / "mlp";
        Self {
            ln_q: LayerNorm::new(&p / "ln_q", vision_hidden, cfg.layer_norm_eps),
            fc1: Linear::new(&mlp / 0, merged, merged, true),
            fc2: Linear::new(&mlp / 2, merged, llm_hidden, true),
            window,
        }
    }

    /// Tokens per LLM token (`merge_size²`).
    pub fn window(&self) -> i64 {
        self.window
    }

    /// `[N, D]` ViT tokens (merge-window order) to `[N / window, D_llm]` LLM tokens.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let d = x.size()[1];
        let h = self.ln_q.forward(x).reshape([-1, d * self.window]);
        self.fc2
            .forward(&Activation::Gelu.forward(&self.fc1.forward(&h)))
    }
}
