//! The C-RoPE vision encoder (CoMP §2): a pre-norm ViT that takes native-resolution images as packed,
//! merge-window-ordered patch rows.
//!
//! Two families share the code and differ in names and details, so that Hugging Face checkpoints load by
//! prefix mapping alone (`vision.` + the HF name without its model prefix):
//! - SigLIP (`SiglipVisionModel`): `embeddings.patch_embedding` (a conv `[D, C, P, P]`),
//!   `embeddings.position_embedding.weight` `[G*G, D]`, `encoder.layers.{i}.{self_attn.{q,k,v,out}_proj,
//!   layer_norm1, layer_norm2, mlp.fc1, mlp.fc2}`, GELU-tanh, `post_layernorm` (CoMP drops it: kept as a
//!   non-trainable buffer unless `use_post_layernorm`), no pooling head.
//! - DINOv2 (`Dinov2Model`): `embeddings.patch_embeddings.projection`, `embeddings.position_embeddings`
//!   `[1, 1+G*G, D]` (row 0 is the CLS position), `encoder.layer.{i}.{attention.attention.{query,key,value},
//!   attention.output.dense, norm1, norm2, layer_scale1.lambda1, layer_scale2.lambda1, mlp.fc1, mlp.fc2}`,
//!   exact GELU, final `layernorm`. The CLS token is dropped (every token must belong to a 2x2 merge
//!   window); `cls_token`/`mask_token` are kept as buffers so exports stay loadable by transformers.
//!
//! Patch embedding is the conv written as a matmul over the patch row `[C*T*P*P]`. Rows with a temporal
//! patch size T > 1 (Qwen2-VL duplicates stills into 2 frames) are averaged over their T frames first,
//! which for a duplicated still equals the T = 1 row exactly and keeps 2D-conv checkpoints usable.
//!
//! The learned position table is resized per image to its `(h, w)` grid (bicubic or bilinear,
//! `align_corners = false`, no antialias, in f32) and laid out in merge-window order like the patches
//! (`raster_pos_compat` reproduces the reference code's raster-order addition instead).
use std::collections::HashMap;

use tch::{Kind, Tensor, nn};

use crate::attention::packed_attention;
use crate::config::{PosInterp, VisionConfig, VisionFamily};
use crate::error::{ModelError, Result};
use crate::layers::{Activation, INIT_STD, LayerNorm, Linear};
use crate::rope::{
    apply_rotary, merge_window_order, raster_from_window, vision_cos_sin, vision_position_ids,
};

#[derive(Debug)]
struct VisionLayer {
    ln1: LayerNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    ln2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    layer_scale: Option<(Tensor, Tensor)>,
    act: Activation,
    heads: i64,
}

impl VisionLayer {
    fn new(p: nn::Path, c: &VisionConfig) -> Self {
        let d = c.hidden_size;
        let eps = c.layer_norm_eps;
        let mlp = &p / "mlp";
        let (fc1, fc2) = (
            Linear::new(&mlp / "fc1", d, c.intermediate_size, true),
            Linear::new(&mlp / "fc2", c.intermediate_size, d, true),
        );
        match c.family {
            VisionFamily::Siglip => {
                let a = &p / "self_attn";
                Self {
                    ln1: LayerNorm::new(&p / "layer_norm1", d, eps),
                    q: Linear::new(&a / "q_proj", d, d, c.qkv_bias),
                    k: Linear::new(&a / "k_proj", d, d, c.qkv_bias),
                    v: Linear::new(&a / "v_proj", d, d, c.qkv_bias),
                    o: Linear::new(&a / "out_proj", d, d, true),
                    ln2: LayerNorm::new(&p / "layer_norm2", d, eps),
                    fc1,
                    fc2,
                    layer_scale: None,
                    act: Activation::GeluTanh,
                    heads: c.num_attention_heads,
                }
            }
            VisionFamily::Dinov2 => {
                let a = &p / "attention";
                let init = nn::Init::Const(c.layerscale_value);
                Self {
                    ln1: LayerNorm::new(&p / "norm1", d, eps),
                    q: Linear::new(&a / "attention" / "query", d, d, c.qkv_bias),
                    k: Linear::new(&a / "attention" / "key", d, d, c.qkv_bias),
                    v: Linear::new(&a / "attention" / "value", d, d, c.qkv_bias),
                    o: Linear::new(&a / "output" / "dense", d, d, true),
                    ln2: LayerNorm::new(&p / "norm2", d, eps),
                    fc1,
                    fc2,
                    layer_scale: Some((
                        (&p / "layer_scale1").var("lambda1", &[d], init),
                        (&p / "layer_scale2").var("lambda1", &[d], init),
                    )),
                    act: Activation::Gelu,
                    heads: c.num_attention_heads,
                }
            }
        }
    }

    fn forward(&self, x: &Tensor, cu_seqlens: &[i64], rope: Option<&(Tensor, Tensor)>) -> Tensor {
        let (n, d) = x.size2().expect("[N, D]");
        let h = self.ln1.forward(x);
        let shape = [n, self.heads, d / self.heads];
        let (mut q, mut k) = (
            self.q.forward(&h).view(shape),
            self.k.forward(&h).view(shape),
        );
        let v = self.v.forward(&h).view(shape);
        if let Some((cos, sin)) = rope {
            q = apply_rotary(&q, cos, sin);
            k = apply_rotary(&k, cos, sin);
        }
        let a = self
            .o
            .forward(&packed_attention(&q, &k, &v, cu_seqlens, false));
        // (not `*=`: an in-place op on a tensor autograd may still need)
        let a = match &self.layer_scale {
            Some((s1, _)) => a * s1.to_kind(x.kind()),
            None => a,
        };
        let x = x + a;
        let m = self
            .fc2
            .forward(&self.act.forward(&self.fc1.forward(&self.ln2.forward(&x))));
        let m = match &self.layer_scale {
            Some((_, s2)) => m * s2.to_kind(x.kind()),
            None => m,
        };
        x + m
    }
}

/// The vision tower. Output: `[total_patches, D]` in the input's merge-window order.
#[derive(Debug)]
pub struct VisionTower {
    cfg: VisionConfig,
    patch_weight: Tensor,
    patch_bias: Tensor,
    /// SigLIP `[G*G, D]`; DINOv2 `[1, 1 + G*G, D]`.
    position_table: Tensor,
    layers: Vec<VisionLayer>,
    final_norm: Option<LayerNorm>,
    buffers: Vec<String>,
}

impl VisionTower {
    /// `p` is the tower's root (`vision` in a `CompModel`).
    pub fn new(p: nn::Path, cfg: &VisionConfig) -> Result<Self> {
        cfg.validate()?;
        let (d, g) = (cfg.hidden_size, cfg.base_grid);
        let patch_shape = [d, cfg.num_channels, cfg.patch_size, cfg.patch_size];
        let init = nn::Init::Randn {
            mean: 0.0,
            stdev: INIT_STD,
        };
        let emb = &p / "embeddings";
        let mut buffers = Vec::new();
        let (patch_weight, patch_bias, position_table, layers_path, final_norm) = match cfg.family {
            VisionFamily::Siglip => {
                let pe = &emb / "patch_embedding";
                let post_path = &p / "post_layernorm";
                let post = if cfg.use_post_layernorm {
                    LayerNorm::new(post_path, d, cfg.layer_norm_eps)
                } else {
                    buffers.extend([post_path.path("weight"), post_path.path("bias")]);
                    LayerNorm::new_buffer(post_path, d, cfg.layer_norm_eps)
                };
                (
                    pe.var("weight", &patch_shape, init),
                    pe.var("bias", &[d], nn::Init::Const(0.0)),
                    (&emb / "position_embedding").var("weight", &[g * g, d], init),
                    &p / "encoder" / "layers",
                    cfg.use_post_layernorm.then_some(post),
                )
            }
            VisionFamily::Dinov2 => {
                let pe = &emb / "patch_embeddings" / "projection";
                let _cls = emb.zeros_no_train("cls_token", &[1, 1, d]);
                let _mask = emb.zeros_no_train("mask_token", &[1, d]);
                buffers.extend([emb.path("cls_token"), emb.path("mask_token")]);
                (
                    pe.var("weight", &patch_shape, init),
                    pe.var("bias", &[d], nn::Init::Const(0.0)),
                    emb.var("position_embeddings", &[1, 1 + g * g, d], init),
                    &p / "encoder" / "layer",
                    Some(LayerNorm::new(&p / "layernorm", d, cfg.layer_norm_eps)),
                )
            }
        };
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| VisionLayer::new(&layers_path / i, cfg))
            .collect();
        Ok(Self {
            cfg: cfg.clone(),
            patch_weight,
            patch_bias,
            position_table,
            layers,
            final_norm,
            buffers,
        })
    }

    /// Full `VarStore` names of stored-but-not-trained variables (DINOv2 CLS/mask tokens, SigLIP's
    /// unused `post_layernorm`).
    pub fn buffer_names(&self) -> &[String] {
        &self.buffers
    }

    pub fn config(&self) -> &VisionConfig {
        &self.cfg
    }

    /// Check `grid_thw` against the rows and the merge window; returns `cu_seqlens`.
    pub fn check_grid(&self, n_rows: i64, grid_thw: &[[i64; 3]]) -> Result<Vec<i64>> {
        let m = self.cfg.merge_size;
        let mut cu = vec![0i64];
        for (i, &[t, h, w]) in grid_thw.iter().enumerate() {
            if t < 1 || h < 1 || w < 1 || h % m != 0 || w % m != 0 {
                return Err(ModelError::Batch(format!(
                    "image {i}: grid (t={t}, h={h}, w={w}) must be positive with h, w multiples of {m}"
                )));
            }
            cu.push(cu.last().unwrap() + t * h * w);
        }
        if *cu.last().unwrap() != n_rows {
            return Err(ModelError::Batch(format!(
                "pixel_values has {n_rows} rows but image_grid_thw sums to {}",
                cu.last().unwrap()
            )));
        }
        Ok(cu)
    }

    /// The position table resized to `(h, w)`, `[h*w, D]` f32, in raster order.
    pub fn interpolated_positions(&self, h: i64, w: i64) -> Tensor {
        let (g, d) = (self.cfg.base_grid, self.cfg.hidden_size);
        let table = match self.cfg.family {
            VisionFamily::Siglip => self.position_table.shallow_clone(),
            VisionFamily::Dinov2 => self.position_table.narrow(1, 1, g * g).squeeze_dim(0),
        };
        if h == g && w == g {
            return table.to_kind(Kind::Float);
        }
        let grid = table
            .to_kind(Kind::Float)
            .view([1, g, g, d])
            .permute([0, 3, 1, 2]);
        let out = match self.cfg.pos_interp {
            PosInterp::Bicubic => grid.upsample_bicubic2d([h, w], false, None, None),
            PosInterp::Bilinear => grid.upsample_bilinear2d([h, w], false, None, None),
        };
        out.permute([0, 2, 3, 1]).reshape([h * w, d])
    }

    /// Position embeddings of a whole packed batch, `[N, D]` f32 in token order.
    fn position_embeddings(&self, grid_thw: &[[i64; 3]]) -> Tensor {
        let m = self.cfg.merge_size;
        let device = self.position_table.device();
        let mut cache: HashMap<(i64, i64), Tensor> = HashMap::new();
        let mut parts = Vec::with_capacity(grid_thw.len());
        for &[t, h, w] in grid_thw {
            let pos = cache.entry((h, w)).or_insert_with(|| {
                let raster = self.interpolated_positions(h, w);
                if self.cfg.raster_pos_compat {
                    raster
                } else {
                    let order = Tensor::from_slice(&merge_window_order(h, w, m)).to_device(device);
                    raster.index_select(0, &order)
                }
            });
            parts.push(if t == 1 {
                pos.shallow_clone()
            } else {
                pos.repeat([t, 1])
            });
        }
        Tensor::cat(&parts, 0)
    }

    /// Patch rows `[N, C*T*P*P]` to embeddings `[N, D]` (before positions).
    fn patch_embed(&self, pixel_values: &Tensor, kind: Kind) -> Result<Tensor> {
        let c = &self.cfg;
        let (n, width) = pixel_values.size2().map_err(|_| {
            ModelError::Batch("pixel_values must be 2-D [patches, patch_dim]".into())
        })?;
        if width != c.patch_dim() {
            return Err(ModelError::Batch(format!(
                "pixel_values rows have {width} values, the vision config expects C*T*P*P = {}",
                c.patch_dim()
            )));
        }
        let pp = c.patch_size * c.patch_size;
        let x = pixel_values.to_kind(kind);
        let x = if c.temporal_patch_size > 1 {
            x.view([n, c.num_channels, c.temporal_patch_size, pp])
                .mean_dim(2, false, kind)
                .view([n, -1])
        } else {
            x
        };
        let w = self.patch_weight.view([c.hidden_size, -1]).to_kind(kind);
        Ok(x.linear(&w, Some(&self.patch_bias.to_kind(kind))))
    }

    /// Encode a packed batch. `rope` switches 2D RoPE for this call; `kind` is the compute dtype.
    pub fn forward(
        &self,
        pixel_values: &Tensor,
        grid_thw: &[[i64; 3]],
        rope: bool,
        kind: Kind,
    ) -> Result<Tensor> {
        let cu = self.check_grid(pixel_values.size()[0], grid_thw)?;
        let mut x = self.patch_embed(pixel_values, kind)?
            + self.position_embeddings(grid_thw).to_kind(kind);
        let rope_tables = rope.then(|| {
            let (rows, cols) = vision_position_ids(grid_thw, self.cfg.merge_size);
            vision_cos_sin(
                &rows,
                &cols,
                self.cfg.head_dim(),
                self.cfg.rope_theta,
                x.device(),
            )
        });
        for layer in &self.layers {
            x = layer.forward(&x, &cu, rope_tables.as_ref());
        }
        if let Some(norm) = &self.final_norm {
            x = norm.forward(&x);
        }
        Ok(x)
    }

    /// Features per image, `[t*h*w, D]` f32 with each frame in raster (row-major) order: the layout
    /// users of an exported tower expect. No autograd.
    pub fn encode_raster(
        &self,
        pixel_values: &Tensor,
        grid_thw: &[[i64; 3]],
        rope: bool,
    ) -> Result<Vec<Tensor>> {
        tch::no_grad(|| {
            let x = self.forward(pixel_values, grid_thw, rope, Kind::Float)?;
            let device = x.device();
            let mut out = Vec::with_capacity(grid_thw.len());
            let mut start = 0;
            for &[t, h, w] in grid_thw {
                let inv = Tensor::from_slice(&raster_from_window(h, w, self.cfg.merge_size))
                    .to_device(device);
                let frames: Vec<Tensor> = (0..t)
                    .map(|f| x.narrow(0, start + f * h * w, h * w).index_select(0, &inv))
                    .collect();
                out.push(Tensor::cat(&frames, 0));
                start += t * h * w;
            }
            Ok(out)
        })
    }
}
