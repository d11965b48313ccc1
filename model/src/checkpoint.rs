//! Checkpoints: Hugging Face safetensors in (SigLIP, DINOv2, Qwen2), our own full checkpoints in and
//! out, and the trained vision tower out with Hugging Face names plus its `config.json`.
//!
//! Because our `VarStore` names mirror Hugging Face's under a part prefix (see `vision`, `qwen2`),
//! loading is name mapping: strip the checkpoint's model prefix, add ours, copy by name with a shape
//! check. Anything that does not line up is collected and reported at once (missing, unexpected,
//! mis-shaped), rather than failing on the first tensor. Known extras that CoMP drops (SigLIP's text
//! tower and pooling head, a tied `lm_head`, rotary `inv_freq` buffers) are skipped silently.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use tch::{Tensor, nn};

use crate::config::{LlmConfig, VisionConfig, VisionFamily};
use crate::error::{ModelError, Result};

/// What a load did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct LoadReport {
    /// Tensors copied into the model.
    pub loaded: usize,
    /// Checkpoint tensors deliberately not used.
    pub skipped: Vec<String>,
}

/// How one checkpoint name maps onto ours.
enum Mapping {
    To(String),
    Skip,
    Unexpected,
}

/// Read `dir/config.json`.
pub fn read_config(dir: &Path) -> Result<serde_json::Value> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|source| ModelError::Io {
        path: path.display().to_string(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| ModelError::Json {
        path: path.display().to_string(),
        source,
    })
}

/// The safetensors files of a checkpoint directory: the shards of `model.safetensors.index.json`, or
/// `model.safetensors`, or else every `*.safetensors` (sorted).
pub fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|source| ModelError::Io {
            path: index.display().to_string(),
            source,
        })?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|source| ModelError::Json {
                path: index.display().to_string(),
                source,
            })?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| ModelError::Checkpoint {
                dir: dir.display().to_string(),
                reason: "model.safetensors.index.json has no weight_map".into(),
            })?;
        let files: BTreeSet<&str> = map.values().filter_map(|f| f.as_str()).collect();
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let rd = std::fs::read_dir(dir).map_err(|source| ModelError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(ModelError::Checkpoint {
            dir: dir.display().to_string(),
            reason: "no *.safetensors file".into(),
        });
    }
    Ok(files)
}

/// Every tensor of a checkpoint directory, by name.
pub fn read_tensors(dir: &Path) -> Result<Vec<(String, Tensor)>> {
    let mut out = Vec::new();
    for f in safetensors_files(dir)? {
        out.extend(Tensor::read_safetensors(&f)?);
    }
    Ok(out)
}

fn map_vision(name: &str, family: VisionFamily) -> Mapping {
    match family {
        VisionFamily::Siglip => {
            // Hub checkpoints (`SiglipModel`) prefix `vision_model.`; transformers 5 saves a bare
            // `SiglipVisionModel` without it.
            if name.starts_with("text_model.") || name.starts_with("logit_") {
                return Mapping::Skip;
            }
            let rest = name.strip_prefix("vision_model.").unwrap_or(name);
            if rest.starts_with("head.") || rest.ends_with("embeddings.position_ids") {
                return Mapping::Skip;
            }
            if ["embeddings.", "encoder.", "post_layernorm."]
                .iter()
                .any(|p| rest.starts_with(p))
            {
                Mapping::To(format!("vision.{rest}"))
            } else {
                Mapping::Unexpected
            }
        }
        VisionFamily::Dinov2 => {
            let rest = name.strip_prefix("dinov2.").unwrap_or(name);
            if rest.starts_with("classifier.") || rest.starts_with("pooler.") {
                return Mapping::Skip;
            }
            Mapping::To(format!("vision.{rest}"))
        }
    }
}

fn map_llm(name: &str, cfg: &LlmConfig) -> Mapping {
    if name.ends_with("rotary_emb.inv_freq") {
        return Mapping::Skip;
    }
    if name == "lm_head.weight" && cfg.tie_word_embeddings {
        return Mapping::Skip;
    }
    if name.starts_with("model.") || name == "lm_head.weight" {
        Mapping::To(format!("llm.{name}"))
    } else {
        Mapping::Unexpected
    }
}

/// Copy mapped tensors into the variables of `vs` whose names start with `prefix`; all variables under
/// the prefix must be covered, with matching shapes.
fn load_mapped(
    vs: &nn::VarStore,
    prefix: &str,
    tensors: Vec<(String, Tensor)>,
    map: impl Fn(&str) -> Mapping,
    dir: &Path,
) -> Result<LoadReport> {
    let vars: BTreeMap<String, Tensor> = vs
        .variables()
        .into_iter()
        .filter(|(n, _)| n.starts_with(prefix))
        .collect();
    let mut report = LoadReport::default();
    let (mut unexpected, mut misshaped, mut filled) = (Vec::new(), Vec::new(), BTreeSet::new());
    let mut pending = Vec::new();
    for (name, t) in tensors {
        match map(&name) {
            Mapping::Skip => report.skipped.push(name),
            Mapping::Unexpected => unexpected.push(name),
            Mapping::To(ours) => match vars.get(&ours) {
                None => unexpected.push(name),
                Some(v) if v.size() != t.size() => misshaped.push(format!(
                    "{name}: checkpoint {:?}, model {:?}",
                    t.size(),
                    v.size()
                )),
                Some(v) => {
                    filled.insert(ours.clone());
                    pending.push((v.shallow_clone(), t));
                }
            },
        }
    }
    let missing: Vec<&String> = vars.keys().filter(|n| !filled.contains(*n)).collect();
    if !missing.is_empty() || !unexpected.is_empty() || !misshaped.is_empty() {
        let mut r = String::new();
        for (title, list) in [
            (
                "missing (in the model, not in the checkpoint)",
                missing.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            ),
            (
                "unexpected (in the checkpoint, not in the model)",
                unexpected,
            ),
            ("mis-shaped", misshaped),
        ] {
            if !list.is_empty() {
                r.push_str(&format!("  {title}: {}\n", list.len()));
                for n in list.iter().take(40) {
                    r.push_str(&format!("    {n}\n"));
                }
                if list.len() > 40 {
                    r.push_str(&format!("    ... and {} more\n", list.len() - 40));
                }
            }
        }
        return Err(ModelError::CheckpointMismatch {
            dir: dir.display().to_string(),
            report: r,
        });
    }
    tch::no_grad(|| {
        for (mut v, t) in pending {
            v.copy_(&t.to_device(v.device()).to_kind(v.kind()));
        }
    });
    report.loaded = filled.len();
    Ok(report)
}

/// Load a Hugging Face SigLIP (`SiglipVisionModel` or `SiglipModel`) or DINOv2 (`Dinov2Model`)
/// checkpoint into the `vision.` variables of `vs`.
pub fn load_hf_vision(vs: &nn::VarStore, cfg: &VisionConfig, dir: &Path) -> Result<LoadReport> {
    let family = cfg.family;
    load_mapped(
        vs,
        "vision.",
        read_tensors(dir)?,
        |n| map_vision(n, family),
        dir,
    )
}

/// Load a Hugging Face `Qwen2ForCausalLM` checkpoint into the `llm.` variables of `vs`.
pub fn load_hf_llm(vs: &nn::VarStore, cfg: &LlmConfig, dir: &Path) -> Result<LoadReport> {
    load_mapped(vs, "llm.", read_tensors(dir)?, |n| map_llm(n, cfg), dir)
}

/// Save every variable of `vs` (all parts, buffers included) to one safetensors file.
pub fn save_checkpoint(vs: &nn::VarStore, path: &Path) -> Result<()> {
    let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    Tensor::write_safetensors(&named, path)?;
    Ok(())
}

/// Load a file written by [`save_checkpoint`]; every variable must be present with its shape.
pub fn load_checkpoint(vs: &nn::VarStore, path: &Path) -> Result<LoadReport> {
    let tensors = Tensor::read_safetensors(path)?;
    load_mapped(vs, "", tensors, |n| Mapping::To(n.to_string()), path)
}

/// The Hugging Face `config.json` of an exported tower; the full `VisionConfig` rides along under
/// `comp` (C-RoPE switch and theta, interpolation mode, raster compatibility, merge size).
pub fn hf_vision_config(cfg: &VisionConfig) -> serde_json::Value {
    let comp = serde_json::to_value(cfg).expect("VisionConfig serialises");
    let image_size = cfg.base_grid * cfg.patch_size;
    match cfg.family {
        VisionFamily::Siglip => serde_json::json!({
            "architectures": ["SiglipVisionModel"],
            "model_type": "siglip_vision_model",
            "hidden_size": cfg.hidden_size,
            "intermediate_size": cfg.intermediate_size,
            "num_hidden_layers": cfg.num_hidden_layers,
            "num_attention_heads": cfg.num_attention_heads,
            "num_channels": cfg.num_channels,
            "image_size": image_size,
            "patch_size": cfg.patch_size,
            "hidden_act": "gelu_pytorch_tanh",
            "vision_use_head": false,
            "layer_norm_eps": cfg.layer_norm_eps,
            "attention_dropout": 0.0,
            "torch_dtype": "float32",
            "comp": comp,
        }),
        VisionFamily::Dinov2 => serde_json::json!({
            "architectures": ["Dinov2Model"],
            "model_type": "dinov2",
            "hidden_size": cfg.hidden_size,
            // transformers validates mlp_ratio as an int (every released DINOv2 uses 4)
            "mlp_ratio": cfg.intermediate_size / cfg.hidden_size,
            "num_hidden_layers": cfg.num_hidden_layers,
            "num_attention_heads": cfg.num_attention_heads,
            "num_channels": cfg.num_channels,
            "image_size": image_size,
            "patch_size": cfg.patch_size,
            "hidden_act": "gelu",
            "layer_norm_eps": cfg.layer_norm_eps,
            "layerscale_value": cfg.layerscale_value,
            "qkv_bias": cfg.qkv_bias,
            "use_swiglu_ffn": false,
            "torch_dtype": "float32",
            "comp": comp,
        }),
    }
}

/// Export the vision tower: `dir/model.safetensors` with Hugging Face names (loadable by
/// `SiglipVisionModel` / `Dinov2Model`) and `dir/config.json`.
pub fn export_vision(vs: &nn::VarStore, cfg: &VisionConfig, dir: &Path) -> Result<()> {
    if cfg.family == VisionFamily::Dinov2 && cfg.intermediate_size % cfg.hidden_size != 0 {
        return Err(ModelError::Config(format!(
            "DINOv2 export needs intermediate_size ({}) to be a multiple of hidden_size ({}): transformers stores an integer mlp_ratio",
            cfg.intermediate_size, cfg.hidden_size
        )));
    }
    std::fs::create_dir_all(dir).map_err(|source| ModelError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    let hf_prefix = match cfg.family {
        VisionFamily::Siglip => "vision_model.",
        VisionFamily::Dinov2 => "",
    };
    let mut named: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter_map(|(n, t)| {
            n.strip_prefix("vision.").map(|rest| {
                (
                    format!("{hf_prefix}{rest}"),
                    t.detach().to_device(tch::Device::Cpu).contiguous(),
                )
            })
        })
        .collect();
    if named.is_empty() {
        return Err(ModelError::Checkpoint {
            dir: dir.display().to_string(),
            reason: "the VarStore has no vision.* variables".into(),
        });
    }
    named.sort_by(|a, b| a.0.cmp(&b.0));
    Tensor::write_safetensors(&named, dir.join("model.safetensors"))?;
    let cfg_path = dir.join("config.json");
    let text = serde_json::to_string_pretty(&hf_vision_config(cfg)).expect("json");
    std::fs::write(&cfg_path, text).map_err(|source| ModelError::Io {
        path: cfg_path.display().to_string(),
        source,
    })
}

/// Read a vision tower's config from a Hugging Face (or exported) checkpoint directory.
pub fn vision_config_from_dir(dir: &Path) -> Result<VisionConfig> {
    VisionConfig::from_hf_config(&read_config(dir)?)
}

/// Read a Qwen2 LLM's config from a Hugging Face checkpoint directory.
pub fn llm_config_from_dir(dir: &Path) -> Result<LlmConfig> {
    LlmConfig::from_hf_config(&read_config(dir)?)
}
