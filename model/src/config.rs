//! Configuration of the CoMP model: the single source of defaults.
//!
//! Each part has its own struct so a real checkpoint's `config.json` maps onto it (`LlmConfig`
//! deserialises a Hugging Face Qwen2 `config.json` directly; `VisionConfig::from_hf_config` reads SigLIP
//! and DINOv2 ones). Presets name the sizes the paper uses; `tiny()` is for tests and demos.
use serde::{Deserialize, Serialize};

use crate::error::ModelError;

/// Which pre-trained vision family the tower mirrors (layer layout and checkpoint names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VisionFamily {
    /// SigLIP: LayerNorm, GELU-tanh MLP, no CLS, pooling head dropped.
    Siglip,
    /// DINOv2: LayerScale, exact GELU, final LayerNorm; its CLS token is dropped.
    Dinov2,
}

/// How the base-grid position table is resized to each image's patch grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PosInterp {
    Bicubic,
    Bilinear,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VisionConfig {
    pub family: VisionFamily,
    pub hidden_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub intermediate_size: i64,
    pub num_channels: i64,
    pub patch_size: i64,
    /// Temporal patch size of the incoming rows (1 for CoMP, 2 for Qwen2-VL-style rows).
    pub temporal_patch_size: i64,
    /// Side of the learned position table's square grid (27 SigLIP-So400M, 37 DINOv2-L).
    pub base_grid: i64,
    pub pos_interp: PosInterp,
    /// Add the position table in raster order to merge-window-ordered tokens, as the public reference
    /// code does (a mismatch; only for checkpoints trained that way).
    pub raster_pos_compat: bool,
    /// Default for 2D RoPE; `ForwardOptions::rope` switches it per call (stage 1 trains without).
    pub rope: bool,
    pub rope_theta: f64,
    pub layer_norm_eps: f64,
    /// DINOv2 LayerScale initial value (only used for fresh towers).
    pub layerscale_value: f64,
    /// Apply SigLIP's `post_layernorm` (CoMP drops it; kept loadable for parity with transformers).
    pub use_post_layernorm: bool,
    pub qkv_bias: bool,
    /// Merge window side used for token order (2).
    pub merge_size: i64,
}

impl Default for VisionConfig {
    fn default() -> Self {
        Self::siglip_so400m()
    }
}

impl VisionConfig {
    /// SigLIP-So400M/14 at 384 px (27x27 base grid).
    pub fn siglip_so400m() -> Self {
        Self {
            family: VisionFamily::Siglip,
            hidden_size: 1152,
            num_hidden_layers: 27,
            num_attention_heads: 16,
            intermediate_size: 4304,
            num_channels: 3,
            patch_size: 14,
            temporal_patch_size: 1,
            base_grid: 27,
            pos_interp: PosInterp::Bicubic,
            raster_pos_compat: false,
            rope: true,
            rope_theta: 10000.0,
            layer_norm_eps: 1e-6,
            layerscale_value: 1.0,
            use_post_layernorm: false,
            qkv_bias: true,
            merge_size: 2,
        }
    }

    /// DINOv2-L/14 (37x37 base grid).
    pub fn dinov2_large() -> Self {
        Self {
            family: VisionFamily::Dinov2,
            hidden_size: 1024,
            num_hidden_layers: 24,
            num_attention_heads: 16,
            intermediate_size: 4096,
            base_grid: 37,
            layerscale_value: 1.0,
            ..Self::siglip_so400m()
        }
    }

    /// A small SigLIP-style tower for tests and the demo.
    pub fn tiny() -> Self {
        Self {
            hidden_size: 64,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            intermediate_size: 128,
            base_grid: 8,
            ..Self::siglip_so400m()
        }
    }

    pub fn head_dim(&self) -> i64 {
        self.hidden_size / self.num_attention_heads
    }

    /// `C * T * P * P`: the width of one `pixel_values` row.
    pub fn patch_dim(&self) -> i64 {
        self.num_channels * self.temporal_patch_size * self.patch_size * self.patch_size
    }

    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |m: String| Err(ModelError::Config(m));
        if self.hidden_size % self.num_attention_heads != 0 {
            return bad(format!(
                "vision hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.head_dim() % 4 != 0 {
            return bad(format!(
                "vision head_dim {} must be a multiple of 4 for 2D RoPE",
                self.head_dim()
            ));
        }
        if self.temporal_patch_size < 1 || self.base_grid < 1 || self.merge_size < 1 {
            return bad("vision temporal_patch_size, base_grid and merge_size must be >= 1".into());
        }
        Ok(())
    }

    /// Read a Hugging Face `config.json` value of a `SiglipVisionModel`, a `SiglipModel` (its
    /// `vision_config`) or a `Dinov2Model`. C-RoPE settings come from a `comp` object when present (our
    /// own exports), otherwise the defaults.
    pub fn from_hf_config(v: &serde_json::Value) -> Result<Self, ModelError> {
        let model_type = v.get("model_type").and_then(|m| m.as_str()).unwrap_or("");
        if model_type == "siglip" {
            let vc = v.get("vision_config").ok_or_else(|| {
                ModelError::Config("siglip config.json without vision_config".into())
            })?;
            return Self::from_hf_config(vc).map(|mut c| {
                c.family = VisionFamily::Siglip;
                c
            });
        }
        let int = |k: &str, d: i64| v.get(k).and_then(|x| x.as_i64()).unwrap_or(d);
        let float = |k: &str, d: f64| v.get(k).and_then(|x| x.as_f64()).unwrap_or(d);
        let mut c = if model_type == "dinov2" {
            if v.get("use_swiglu_ffn")
                .and_then(|x| x.as_bool())
                .unwrap_or(false)
            {
                return Err(ModelError::Config(
                    "DINOv2 with use_swiglu_ffn is not supported".into(),
                ));
            }
            let hidden = int("hidden_size", 768);
            let mlp_ratio = float("mlp_ratio", 4.0);
            Self {
                family: VisionFamily::Dinov2,
                hidden_size: hidden,
                num_hidden_layers: int("num_hidden_layers", 12),
                num_attention_heads: int("num_attention_heads", 12),
                intermediate_size: (hidden as f64 * mlp_ratio) as i64,
                num_channels: int("num_channels", 3),
                patch_size: int("patch_size", 14),
                base_grid: int("image_size", 518) / int("patch_size", 14),
                layer_norm_eps: float("layer_norm_eps", 1e-6),
                layerscale_value: float("layerscale_value", 1.0),
                qkv_bias: v.get("qkv_bias").and_then(|x| x.as_bool()).unwrap_or(true),
                ..Self::dinov2_large()
            }
        } else if model_type.starts_with("siglip") || model_type.is_empty() {
            Self {
                family: VisionFamily::Siglip,
                hidden_size: int("hidden_size", 768),
                num_hidden_layers: int("num_hidden_layers", 12),
                num_attention_heads: int("num_attention_heads", 12),
                intermediate_size: int("intermediate_size", 3072),
                num_channels: int("num_channels", 3),
                patch_size: int("patch_size", 16),
                base_grid: int("image_size", 224) / int("patch_size", 16),
                layer_norm_eps: float("layer_norm_eps", 1e-6),
                ..Self::siglip_so400m()
            }
        } else {
            return Err(ModelError::Config(format!(
                "unsupported vision model_type `{model_type}`"
            )));
        };
        if let Some(comp) = v.get("comp") {
            let ours: Self = serde_json::from_value(comp.clone()).map_err(|e| {
                ModelError::Config(format!("bad `comp` section in config.json: {e}"))
            })?;
            c = Self {
                family: c.family,
                ..ours
            };
        }
        c.validate()?;
        Ok(c)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AdapterConfig {
    pub merge_size: i64,
    pub layer_norm_eps: f64,
}

impl Default for AdapterConfig {
    fn default() -> Self {
        Self {
            merge_size: 2,
            layer_norm_eps: 1e-6,
        }
    }
}

/// A Qwen2 / Qwen2.5 decoder; field names are those of the Hugging Face `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LlmConfig {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub num_key_value_heads: i64,
    pub intermediate_size: i64,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    pub tie_word_embeddings: bool,
}

impl Default for LlmConfig {
    fn default() -> Self {
        Self::qwen2_5_0_5b()
    }
}

impl LlmConfig {
    /// Qwen2.5-0.5B(-Instruct), the paper's LLM.
    pub fn qwen2_5_0_5b() -> Self {
        Self {
            vocab_size: 151936,
            hidden_size: 896,
            num_hidden_layers: 24,
            num_attention_heads: 14,
            num_key_value_heads: 2,
            intermediate_size: 4864,
            rope_theta: 1_000_000.0,
            rms_norm_eps: 1e-6,
            tie_word_embeddings: true,
        }
    }

    pub fn tiny(vocab_size: i64) -> Self {
        Self {
            vocab_size,
            hidden_size: 128,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            intermediate_size: 256,
            rope_theta: 10000.0,
            rms_norm_eps: 1e-6,
            tie_word_embeddings: true,
        }
    }

    pub fn head_dim(&self) -> i64 {
        self.hidden_size / self.num_attention_heads
    }

    /// Parse a Hugging Face Qwen2 `config.json` (unknown fields are ignored; `rope_theta` may also sit
    /// in `rope_parameters`, as transformers 5 writes it).
    pub fn from_hf_config(v: &serde_json::Value) -> Result<Self, ModelError> {
        let mut c: Self = serde_json::from_value(v.clone())
            .map_err(|e| ModelError::Config(format!("bad Qwen2 config.json: {e}")))?;
        if v.get("rope_theta").is_none()
            && let Some(t) = v
                .pointer("/rope_parameters/rope_theta")
                .and_then(|x| x.as_f64())
        {
            c.rope_theta = t;
        }
        c.validate()?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<(), ModelError> {
        if self.hidden_size % self.num_attention_heads != 0
            || self.num_attention_heads % self.num_key_value_heads != 0
            || self.head_dim() % 2 != 0
        {
            return Err(ModelError::Config(format!(
                "LLM heads do not divide: hidden {} heads {} kv heads {}",
                self.hidden_size, self.num_attention_heads, self.num_key_value_heads
            )));
        }
        Ok(())
    }
}

/// How the alignment target p_t is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlignMode {
    /// Sinkhorn-Knopp in the log domain (the specification).
    SinkhornLog,
    /// The reference code's `softmax(C_t/eps + 3 log u')`, `u' = softmax(u_W / 0.05)`.
    ReferenceClosedForm,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LossConfig {
    pub alpha: f64,
    pub sinkhorn_eps: f64,
    pub tau: f64,
    pub sinkhorn_iters: usize,
    pub mode: AlignMode,
    /// Weight of a uniform distribution mixed into the word prior so that words never seen in the
    /// captions keep a finite log-prior.
    pub prior_smoothing: f64,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            alpha: 0.05,
            sinkhorn_eps: 0.005,
            tau: 0.005,
            sinkhorn_iters: 3,
            mode: AlignMode::SinkhornLog,
            prior_smoothing: 1e-4,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct CompConfig {
    pub vision: VisionConfig,
    pub adapter: AdapterConfig,
    pub llm: LlmConfig,
    pub loss: LossConfig,
}

impl CompConfig {
    /// The paper's pairing: SigLIP-So400M/14 + Qwen2.5-0.5B.
    pub fn siglip_qwen2_5_0_5b() -> Self {
        Self::default()
    }

    /// Tiny model for tests and the demo; `vocab_size` comes from the tokenizer.
    pub fn tiny(vocab_size: i64) -> Self {
        Self {
            vision: VisionConfig::tiny(),
            adapter: AdapterConfig::default(),
            llm: LlmConfig::tiny(vocab_size),
            loss: LossConfig::default(),
        }
    }

    pub fn validate(&self) -> Result<(), ModelError> {
        self.vision.validate()?;
        self.llm.validate()?;
        if self.adapter.merge_size != self.vision.merge_size {
            return Err(ModelError::Config(format!(
                "adapter merge_size {} differs from the vision token order's merge_size {}",
                self.adapter.merge_size, self.vision.merge_size
            )));
        }
        Ok(())
    }
}
