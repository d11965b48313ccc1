//! `CompModel`: vision tower → adapter → Qwen2 LLM, and the CoMP training objective
//! `L = L_dec + alpha * L_align` on a packed batch.
//!
//! All parameters live in one `VarStore` under the prefixes `vision.`, `adapter.` and `llm.` (a
//! [`Part`] each), so the trainer groups and freezes by part, and checkpoints map to Hugging Face names
//! by prefix. Everything is device-generic; on CUDA pass `compute_kind: Kind::BFloat16` for bf16
//! compute over f32 master weights (see `layers`).
use std::collections::{HashMap, HashSet};

use tch::{Kind, Tensor, nn};

use crate::adapter::Adapter;
use crate::batch::BatchTensors;
use crate::config::CompConfig;
use crate::error::{ModelError, Result};
use crate::loss::{alignment_loss, decoding_loss, word_prior_probs};
use crate::qwen2::Qwen2ForCausalLM;
use crate::vision::VisionTower;

/// The three trainable parts (each has its own learning rate in the CoMP recipe). Their names are the
/// top-level prefixes of the `VarStore`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Part {
    Vision,
    Adapter,
    Llm,
}

impl Part {
    pub const ALL: [Part; 3] = [Part::Vision, Part::Adapter, Part::Llm];

    pub fn prefix(self) -> &'static str {
        match self {
            Part::Vision => "vision",
            Part::Adapter => "adapter",
            Part::Llm => "llm",
        }
    }

    /// The part a `VarStore` name belongs to.
    pub fn of(name: &str) -> Option<Part> {
        let head = name.split('.').next()?;
        Part::ALL.into_iter().find(|p| p.prefix() == head)
    }
}

/// Per-call switches of [`CompModel::forward`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ForwardOptions {
    /// 2D RoPE in the vision tower (off in stage 1).
    pub rope: bool,
    /// Weight of the alignment loss; 0 skips the text-side forward entirely (stage 3).
    pub alpha: f64,
    /// `false` runs without autograd (evaluation).
    pub train: bool,
    /// Activation dtype: `Kind::Float`, or `Kind::BFloat16` on CUDA.
    pub compute_kind: Kind,
}

impl ForwardOptions {
    /// Defaults from the config, bf16 compute on CUDA.
    pub fn from_config(cfg: &CompConfig, device: tch::Device) -> Self {
        Self {
            rope: cfg.vision.rope,
            alpha: cfg.loss.alpha,
            train: true,
            compute_kind: if device.is_cuda() {
                Kind::BFloat16
            } else {
                Kind::Float
            },
        }
    }
}

#[derive(Debug)]
pub struct LossOutput {
    /// `dec_loss + alpha * align_loss` (scalar f32).
    pub loss: Tensor,
    pub dec_loss: Tensor,
    /// 0 when `alpha == 0` or no sample has a caption.
    pub align_loss: Tensor,
    /// Supervised next-token predictions behind `dec_loss`.
    pub n_supervised: i64,
}

#[derive(Debug)]
pub struct CompModel {
    pub cfg: CompConfig,
    pub vision: VisionTower,
    pub adapter: Adapter,
    pub llm: Qwen2ForCausalLM,
    buffers: HashSet<String>,
}

impl CompModel {
    /// Build a fresh model under `root` (normally `vs.root()`).
    pub fn new(root: nn::Path, cfg: &CompConfig) -> Result<Self> {
        cfg.validate()?;
        let vision = VisionTower::new(&root / "vision", &cfg.vision)?;
        let adapter = Adapter::new(
            &root / "adapter",
            &cfg.adapter,
            cfg.vision.hidden_size,
            cfg.llm.hidden_size,
        );
        let llm = Qwen2ForCausalLM::new(&root / "llm", &cfg.llm);
        let buffers = vision.buffer_names().iter().cloned().collect();
        Ok(Self {
            cfg: cfg.clone(),
            vision,
            adapter,
            llm,
            buffers,
        })
    }

    /// Names of variables that are stored (for checkpoint round trips) but never trained.
    pub fn is_buffer(&self, name: &str) -> bool {
        self.buffers.contains(name)
    }

    /// Trainable parameters grouped by part, sorted by name.
    pub fn parameters_by_part(&self, vs: &nn::VarStore) -> HashMap<Part, Vec<(String, Tensor)>> {
        let mut out: HashMap<Part, Vec<(String, Tensor)>> = HashMap::new();
        for (name, t) in vs.variables() {
            if self.is_buffer(&name) {
                continue;
            }
            if let Some(part) = Part::of(&name) {
                out.entry(part).or_default().push((name, t));
            }
        }
        for v in out.values_mut() {
            v.sort_by(|a, b| a.0.cmp(&b.0));
        }
        out
    }

    /// The CoMP objective on one packed batch. `word_prior`: caption token counts `[<= vocab]`.
    pub fn forward(
        &self,
        batch: &BatchTensors,
        word_prior: Option<&Tensor>,
        opts: &ForwardOptions,
    ) -> Result<LossOutput> {
        if opts.train {
            self.forward_impl(batch, word_prior, opts)
        } else {
            tch::no_grad(|| self.forward_impl(batch, word_prior, opts))
        }
    }

    fn forward_impl(
        &self,
        b: &BatchTensors,
        word_prior: Option<&Tensor>,
        opts: &ForwardOptions,
    ) -> Result<LossOutput> {
        let kind = opts.compute_kind;
        let vis = self
            .vision
            .forward(&b.pixel_values, &b.grid_thw, opts.rope, kind)?;
        let vtok = self.adapter.forward(&vis);
        let per_image = self.tokens_per_image(&b.grid_thw);
        self.check_placeholders(b, &per_image)?;

        let emb = self.llm.embed(&b.input_ids, kind);
        let emb = emb.index_put(
            &[Some(&b.image_token_positions)],
            &vtok.to_kind(kind),
            false,
        );
        let hidden = self
            .llm
            .forward_embeds(&emb, &b.position_ids, &b.text_cu_seqlens);
        let logits = self
            .llm
            .logits(&hidden.index_select(0, &b.target_positions));
        let dec_loss = decoding_loss(&logits, &b.targets);

        let device = b.pixel_values.device();
        let zero = Tensor::zeros([], (Kind::Float, device));
        let align_loss = if opts.alpha != 0.0 && !b.caption_samples.is_empty() {
            let f_v_all = segment_mean(&vtok, &per_image);
            let rows = Tensor::from_slice(&b.caption_samples).to_device(device);
            let f_v = f_v_all.index_select(0, &rows);
            let f_t = tch::no_grad(|| self.caption_features(b, kind));
            let vocab = self.cfg.llm.vocab_size;
            let prior = word_prior_probs(word_prior, vocab, self.cfg.loss.prior_smoothing, device)?;
            alignment_loss(
                &f_v,
                &f_t,
                self.llm.lm_head_weight(),
                &prior,
                &self.cfg.loss,
            )
        } else {
            zero
        };
        let loss = &dec_loss + &align_loss * opts.alpha;
        Ok(LossOutput {
            loss,
            dec_loss,
            align_loss,
            n_supervised: b.num_supervised(),
        })
    }

    /// F_t before normalisation: each caption alone through the LLM, final-norm states mean-pooled.
    fn caption_features(&self, b: &BatchTensors, kind: Kind) -> Tensor {
        let emb = self.llm.embed(&b.caption_ids, kind);
        let h = self
            .llm
            .forward_embeds(&emb, &b.caption_position_ids, &b.caption_cu_seqlens);
        let lens: Vec<i64> = b
            .caption_cu_seqlens
            .windows(2)
            .map(|w| w[1] - w[0])
            .collect();
        segment_mean(&h, &lens)
    }

    fn tokens_per_image(&self, grid_thw: &[[i64; 3]]) -> Vec<i64> {
        let w = self.adapter.window();
        grid_thw.iter().map(|g| g[0] * g[1] * g[2] / w).collect()
    }

    fn check_placeholders(&self, b: &BatchTensors, per_image: &[i64]) -> Result<()> {
        let total: i64 = per_image.iter().sum();
        let found = b.image_token_positions.size()[0];
        if total != found {
            return Err(ModelError::Batch(format!(
                "the images yield {total} visual tokens but input_ids holds {found} placeholders (id {})",
                b.image_token_id
            )));
        }
        if per_image.len() == b.image_tokens_per_sample.len() {
            for (s, (&want, &got)) in per_image.iter().zip(&b.image_tokens_per_sample).enumerate() {
                if want != got {
                    return Err(ModelError::Batch(format!(
                        "sample {s}: its image yields {want} visual tokens but it holds {got} placeholders"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Per image, its ViT features `[t*h*w, D]` in raster (row-major) order per frame; f32, no grad.
    pub fn encode_images(
        &self,
        pixel_values: &Tensor,
        grid_thw: &[[i64; 3]],
        rope: bool,
    ) -> Result<Vec<Tensor>> {
        self.vision.encode_raster(pixel_values, grid_thw, rope)
    }

    /// Per image, the mean of its ViT features (the adapter's input): `[n_images, D]` for probes.
    pub fn image_embeddings(
        &self,
        pixel_values: &Tensor,
        grid_thw: &[[i64; 3]],
        rope: bool,
    ) -> Result<Tensor> {
        tch::no_grad(|| {
            let x = self
                .vision
                .forward(pixel_values, grid_thw, rope, Kind::Float)?;
            let lens: Vec<i64> = grid_thw.iter().map(|g| g[0] * g[1] * g[2]).collect();
            Ok(segment_mean(&x, &lens))
        })
    }
}

/// Mean of consecutive row segments of lengths `lens` (all > 0): `[Σ lens, D]` to `[len(lens), D]` f32.
pub fn segment_mean(x: &Tensor, lens: &[i64]) -> Tensor {
    let device = x.device();
    let seg: Vec<i64> = lens
        .iter()
        .enumerate()
        .flat_map(|(i, &l)| std::iter::repeat_n(i as i64, l as usize))
        .collect();
    let seg = Tensor::from_slice(&seg).to_device(device);
    let d = x.size()[1];
    let sums = Tensor::zeros([lens.len() as i64, d], (Kind::Float, device)).index_add(
        0,
        &seg,
        &x.to_kind(Kind::Float),
    );
    let counts: Vec<f32> = lens.iter().map(|&l| l.max(1) as f32).collect();
    sums / Tensor::from_slice(&counts).to_device(device).unsqueeze(1)
}
