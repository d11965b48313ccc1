//! The LLM: a Qwen2 / Qwen2.5 decoder (`Qwen2ForCausalLM`), operating on packed text sequences.
//!
//! Token embedding, blocks of (RMSNorm → grouped-query attention with 1D RoPE, q/k/v biases, causal
//! within each packed sample → RMSNorm → SwiGLU MLP), final RMSNorm, LM head (tied to the embedding when
//! `tie_word_embeddings`). Parameter names are Hugging Face's under `llm.` (`llm.model.layers.0.
//! self_attn.q_proj.weight`, `llm.lm_head.weight`), so loading a checkpoint is a prefix away.
use tch::{Kind, Tensor, nn};

use crate::attention::packed_attention;
use crate::config::LlmConfig;
use crate::layers::{INIT_STD, Linear, RmsNorm};
use crate::rope::{apply_rotary, text_cos_sin};

#[derive(Debug)]
struct Qwen2Layer {
    input_layernorm: RmsNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    post_attention_layernorm: RmsNorm,
    gate: Linear,
    up: Linear,
    down: Linear,
    heads: i64,
    kv_heads: i64,
}

impl Qwen2Layer {
    fn new(p: nn::Path, c: &LlmConfig) -> Self {
        let (d, hd) = (c.hidden_size, c.head_dim());
        let a = &p / "self_attn";
        let m = &p / "mlp";
        Self {
            input_layernorm: RmsNorm::new(&p / "input_layernorm", d, c.rms_norm_eps),
            q: Linear::new(&a / "q_proj", d, c.num_attention_heads * hd, true),
            k: Linear::new(&a / "k_proj", d, c.num_key_value_heads * hd, true),
            v: Linear::new(&a / "v_proj", d, c.num_key_value_heads * hd, true),
            o: Linear::new(&a / "o_proj", c.num_attention_heads * hd, d, false),
            post_attention_layernorm: RmsNorm::new(
                &p / "post_attention_layernorm",
                d,
                c.rms_norm_eps,
            ),
            gate: Linear::new(&m / "gate_proj", d, c.intermediate_size, false),
            up: Linear::new(&m / "up_proj", d, c.intermediate_size, false),
            down: Linear::new(&m / "down_proj", c.intermediate_size, d, false),
            heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads,
        }
    }

    fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, cu_seqlens: &[i64]) -> Tensor {
        let n = x.size()[0];
        let h = self.input_layernorm.forward(x);
        let q = self.q.forward(&h).view([n, self.heads, -1]);
        let k = self.k.forward(&h).view([n, self.kv_heads, -1]);
        let v = self.v.forward(&h).view([n, self.kv_heads, -1]);
        let (q, k) = (apply_rotary(&q, cos, sin), apply_rotary(&k, cos, sin));
        let x = x + self
            .o
            .forward(&packed_attention(&q, &k, &v, cu_seqlens, true));
        let h = self.post_attention_layernorm.forward(&x);
        let mlp = self
            .down
            .forward(&(self.gate.forward(&h).silu() * self.up.forward(&h)));
        x + mlp
    }
}

#[derive(Debug)]
pub struct Qwen2ForCausalLM {
    cfg: LlmConfig,
    embed_tokens: Tensor,
    layers: Vec<Qwen2Layer>,
    norm: RmsNorm,
    lm_head: Option<Linear>,
}

impl Qwen2ForCausalLM {
    /// `p` is the LLM's root (`llm` in a `CompModel`).
    pub fn new(p: nn::Path, cfg: &LlmConfig) -> Self {
        let model = &p / "model";
        let embed_tokens = (&model / "embed_tokens").var(
            "weight",
            &[cfg.vocab_size, cfg.hidden_size],
            nn::Init::Randn {
                mean: 0.0,
                stdev: INIT_STD,
            },
        );
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Qwen2Layer::new(&model / "layers" / i, cfg))
            .collect();
        let norm = RmsNorm::new(&model / "norm", cfg.hidden_size, cfg.rms_norm_eps);
        let lm_head = (!cfg.tie_word_embeddings)
            .then(|| Linear::new(&p / "lm_head", cfg.hidden_size, cfg.vocab_size, false));
        Self {
            cfg: cfg.clone(),
            embed_tokens,
            layers,
            norm,
            lm_head,
        }
    }

    pub fn config(&self) -> &LlmConfig {
        &self.cfg
    }

    /// `[n]` token ids to `[n, D]` embeddings in the compute dtype.
    pub fn embed(&self, input_ids: &Tensor, kind: Kind) -> Tensor {
        Tensor::embedding(&self.embed_tokens, input_ids, -1, false, false).to_kind(kind)
    }

    /// Packed causal decoder over `[n, D]` embeddings: positions restart per sample (`position_ids`),
    /// attention stays inside each `cu_seqlens` segment. Returns the final-norm hidden states `[n, D]`.
    pub fn forward_embeds(
        &self,
        embeds: &Tensor,
        position_ids: &Tensor,
        cu_seqlens: &[i64],
    ) -> Tensor {
        let (cos, sin) = text_cos_sin(position_ids, self.cfg.head_dim(), self.cfg.rope_theta);
        let mut x = embeds.shallow_clone();
        for layer in &self.layers {
            x = layer.forward(&x, &cos, &sin, cu_seqlens);
        }
        self.norm.forward(&x)
    }

    /// The LM-head matrix `[vocab, D]` (the embedding when tied): the alignment loss's word prototypes.
    pub fn lm_head_weight(&self) -> &Tensor {
        self.lm_head
            .as_ref()
            .map_or(&self.embed_tokens, |l| &l.weight)
    }

    /// Logits `[.., vocab]` of final-norm hidden states, in the hidden states' dtype.
    pub fn logits(&self, hidden: &Tensor) -> Tensor {
        hidden.matmul(&self.lm_head_weight().to_kind(hidden.kind()).tr())
    }
}
