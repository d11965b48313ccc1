//! Evaluation of vision towers: frozen features at native resolution, read out by linear probes.
//!
//! The demo compares the stage-0 VFM (trained the ordinary way: fixed low square resolution, absolute
//! positions) with the CoMP-trained one on held-out demo images the training never saw. Both are probed
//! for the attributes the captions talk about (the first group's shape, colour and count) at each image's
//! native resolution — what CoMP claims to improve — and at the fixed square stage 0 trained on.
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use anyhow::{Context, Result};
use comp_datasets::demo::{DemoConfig, DemoRow, Split, generate_row};
use comp_model::CompModel;
use comp_pipeline::patchify::process_image;
use comp_pipeline::resize::{ImageConfig, ResizePolicy};
use tch::{Device, Tensor, nn};

use crate::train::stage::demo;
use crate::train::trainer::Trainer;

pub mod probe;

use probe::{ProbeConfig, ProbeResult, linear_probe};

/// Probe accuracies per (model, resolution and pooling, attribute).
#[derive(Debug, Clone, Default)]
pub struct DemoReport {
    pub rows: usize,
    /// (model, "resolution, pooling") -> attribute -> result
    pub results: BTreeMap<(String, String), BTreeMap<String, ProbeResult>>,
}

impl fmt::Display for DemoReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "[demo] linear probes on {} held-out images (test accuracy; majority-class baseline in brackets)",
            self.rows
        )?;
        let attrs: Vec<String> = self
            .results
            .values()
            .next()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        write!(f, "  {:<8} {:<24}", "vfm", "resolution, pooling")?;
        for a in &attrs {
            write!(f, " {a:>16}")?;
        }
        writeln!(f)?;
        for ((model, res), m) in &self.results {
            write!(f, "  {model:<8} {res:<24}")?;
            for a in &attrs {
                let r = &m[a];
                write!(
                    f,
                    " {:>7.1}% [{:>4.1}%]",
                    100.0 * r.test_accuracy,
                    100.0 * r.majority_baseline
                )?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

/// Reads one attribute of a demo scene as a class name.
type AttributeOf = fn(&DemoRow) -> String;

/// Attribute labels of a demo scene's first group.
fn labels(rows: &[DemoRow]) -> BTreeMap<String, (Vec<i64>, i64)> {
    let mut out = BTreeMap::new();
    let extract: [(&str, AttributeOf); 3] = [
        ("shape", |r| format!("{:?}", r.scene.groups[0].shape)),
        ("colour", |r| r.scene.groups[0].colour.clone()),
        ("count", |r| r.scene.groups[0].count.to_string()),
    ];
    for (name, f) in extract {
        let values: Vec<String> = rows.iter().map(f).collect();
        let mut classes: Vec<&String> = values.iter().collect();
        classes.sort();
        classes.dedup();
        let index: BTreeMap<&String, i64> = classes
            .iter()
            .enumerate()
            .map(|(i, c)| (*c, i as i64))
            .collect();
        let ids = values.iter().map(|v| index[v]).collect();
        out.insert(name.to_string(), (ids, classes.len() as i64));
    }
    out
}

/// Pooled ViT features `[n, 2D]` (mean and max over patches) of `rows` preprocessed with `image_cfg`, a few images per forward.
pub fn vfm_features(
    model: &CompModel,
    rows: &[DemoRow],
    image_cfg: &ImageConfig,
    rope: bool,
    device: Device,
) -> Result<Tensor> {
    let mut feats = Vec::new();
    for chunk in rows.chunks(16) {
        let mut pixels = Vec::new();
        let mut grids = Vec::new();
        for r in chunk {
            let img = process_image(&r.image, image_cfg)
                .with_context(|| format!("preprocessing {}", r.path))?;
            pixels.extend_from_slice(&img.pixel_values);
            grids.push(img.grid_thw);
        }
        let dim = comp_pipeline::patchify::patch_dim(image_cfg) as i64;
        let pv = Tensor::from_slice(&pixels)
            .reshape([-1, dim])
            .to_device(device);
        // Mean and max over the patches: the mean keeps global statistics (colour), the max keeps the
        // strongest local responses (edges and corners of shapes) that averaging washes out.
        for map in model.encode_images(&pv, &grids, rope)? {
            let map = map.to_device(Device::Cpu);
            let mean = map.mean_dim(0, false, tch::Kind::Float);
            let (max, _) = map.max_dim(0, false);
            feats.push(Tensor::cat(&[mean, max], 0).unsqueeze(0));
        }
    }
    Ok(Tensor::cat(&feats, 0))
}

/// Probe the stage-0 VFM (from its saved model) and the CoMP-trained one (in `comp`).
pub fn compare_demo_vfms(stage0_model: &Path, comp: &Trainer, n_rows: usize) -> Result<DemoReport> {
    let eval_cfg = DemoConfig {
        split: Split::Eval,
        rows: n_rows,
        ..Default::default()
    };
    let rows: Vec<DemoRow> = (0..n_rows)
        .map(|i| generate_row(&eval_cfg, i))
        .collect::<Result<_, _>>()?;
    let labels = labels(&rows);

    let vs0 = nn::VarStore::new(comp.device);
    let stage0 = CompModel::new(vs0.root(), &comp.model.cfg)?;
    comp_model::checkpoint::load_checkpoint(&vs0, stage0_model)?;

    let native = ImageConfig {
        max_pixels: demo::MAX_VISUAL_TOKENS as usize * 28 * 28,
        resize: ResizePolicy::Native,
        ..ImageConfig::default()
    };
    let square = ImageConfig {
        resize: ResizePolicy::FixedSquare {
            size: demo::STAGE0_SIDE,
        },
        ..native.clone()
    };
    let mut report = DemoReport {
        rows: n_rows,
        ..Default::default()
    };
    let settings: [(&str, &CompModel, bool); 2] =
        [("stage-0", &stage0, false), ("CoMP", &comp.model, true)];
    for (name, model, rope) in settings {
        for (res, cfg) in [("native", &native), ("fixed-square", &square)] {
            let both = vfm_features(model, &rows, cfg, rope, comp.device)?;
            let d = both.size()[1] / 2;
            for (pooling, x) in [("mean", both.narrow(1, 0, d)), ("mean+max", both)] {
                let mut per = BTreeMap::new();
                for (attr, (y, n_classes)) in &labels {
                    per.insert(
                        attr.clone(),
                        linear_probe(&x, y, *n_classes, &ProbeConfig::default())?,
                    );
                }
                report
                    .results
                    .insert((name.to_string(), format!("{res}, {pooling}")), per);
            }
        }
    }
    Ok(report)
}
