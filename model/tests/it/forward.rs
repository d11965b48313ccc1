//! `CompModel::forward` on synthetic packed batches: runs, backprops, checks its inputs.
use comp_model::{BatchTensors, CompConfig, CompModel, ForwardOptions, Part};
use tch::{Device, Kind, Tensor, nn};

use crate::common::{IMAGE_TOKEN, synthetic_batch};

fn tiny() -> (nn::VarStore, CompModel, CompConfig) {
    tch::manual_seed(0);
    let cfg = CompConfig::tiny(64);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = CompModel::new(vs.root(), &cfg).unwrap();
    (vs, model, cfg)
}

#[test]
fn forward_runs_and_backprops_into_every_part() {
    let (vs, model, cfg) = tiny();
    let packed = synthetic_batch(&cfg, &[(4, 6), (2, 2), (6, 4), (4, 4)], 1);
    let batch = BatchTensors::from_packed(&packed, Device::Cpu).unwrap();
    let opts = ForwardOptions {
        alpha: 0.05,
        ..ForwardOptions::from_config(&cfg, Device::Cpu)
    };
    let word_prior = Tensor::arange(64, (Kind::Float, Device::Cpu));
    let out = model.forward(&batch, Some(&word_prior), &opts).unwrap();
    let (dec, align) = (
        out.dec_loss.double_value(&[]),
        out.align_loss.double_value(&[]),
    );
    assert!(dec.is_finite() && dec > 0.0, "dec {dec}");
    assert!(align.is_finite() && align > 0.0, "align {align}");
    // caption (3..6 tokens) + end token per sample are supervised
    let expected: i64 = (0..4).map(|i| 3 + i % 4 + 1).sum();
    assert_eq!(out.n_supervised, expected);
    let total = out.loss.double_value(&[]);
    assert!((total - (dec + 0.05 * align)).abs() < 1e-5);
    out.loss.backward();
    let parts = model.parameters_by_part(&vs);
    for part in Part::ALL {
        let params = &parts[&part];
        assert!(!params.is_empty());
        let gsum: f64 = params
            .iter()
            .map(|(_, t)| t.grad().abs().sum(Kind::Float).double_value(&[]))
            .sum();
        assert!(gsum > 0.0, "{part:?} got no gradient");
    }
}

#[test]
fn parameters_are_grouped_by_prefix_and_buffers_excluded() {
    let (vs, model, _) = tiny();
    let parts = model.parameters_by_part(&vs);
    let n: usize = parts.values().map(Vec::len).sum();
    let buffers = vs.variables().keys().filter(|k| model.is_buffer(k)).count();
    assert_eq!(
        buffers, 2,
        "SigLIP post_layernorm weight+bias are buffers when unused"
    );
    assert_eq!(n + buffers, vs.variables().len());
    for (part, params) in &parts {
        assert!(
            params
                .iter()
                .all(|(name, _)| name.starts_with(&format!("{}.", part.prefix())))
        );
    }
    assert!(
        parts[&Part::Vision]
            .iter()
            .any(|(n, _)| n == "vision.encoder.layers.0.self_attn.q_proj.weight")
    );
    assert!(
        parts[&Part::Llm]
            .iter()
            .any(|(n, _)| n == "llm.model.layers.1.mlp.gate_proj.weight")
    );
    assert!(
        parts[&Part::Adapter]
            .iter()
            .any(|(n, _)| n == "adapter.mlp.0.weight")
    );
}

#[test]
fn alpha_zero_and_eval_mode() {
    let (_vs, model, cfg) = tiny();
    let packed = synthetic_batch(&cfg, &[(2, 4), (4, 2)], 2);
    let batch = BatchTensors::from_packed(&packed, Device::Cpu).unwrap();
    let opts = ForwardOptions {
        alpha: 0.0,
        train: false,
        ..ForwardOptions::from_config(&cfg, Device::Cpu)
    };
    let out = model.forward(&batch, None, &opts).unwrap();
    assert_eq!(out.align_loss.double_value(&[]), 0.0);
    assert!(
        !out.loss.requires_grad(),
        "eval forward must not build a graph"
    );
    assert!((out.loss.double_value(&[]) - out.dec_loss.double_value(&[])).abs() < 1e-7);
}

#[test]
fn placeholder_count_mismatch_is_a_clear_error() {
    let (_vs, model, cfg) = tiny();
    let mut packed = synthetic_batch(&cfg, &[(4, 4)], 3);
    let pos = packed
        .input_ids
        .iter()
        .position(|&t| t == IMAGE_TOKEN)
        .unwrap();
    packed.input_ids[pos] = 7;
    let batch = BatchTensors::from_packed(&packed, Device::Cpu).unwrap();
    let err = model
        .forward(
            &batch,
            None,
            &ForwardOptions::from_config(&cfg, Device::Cpu),
        )
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("4 visual tokens") && msg.contains("3 placeholders"),
        "{msg}"
    );
}

#[test]
fn decoding_targets_shift_within_samples() {
    let (_vs, _model, cfg) = tiny();
    let packed = synthetic_batch(&cfg, &[(2, 2), (2, 2)], 4);
    let b = BatchTensors::from_packed(&packed, Device::Cpu).unwrap();
    let pos: Vec<i64> = Vec::try_from(&b.target_positions).unwrap();
    let tgt: Vec<i64> = Vec::try_from(&b.targets).unwrap();
    for (&p, &t) in pos.iter().zip(&tgt) {
        assert_eq!(packed.labels[p as usize + 1], t);
        // never predict across the sample boundary
        let s = packed
            .text_cu_seqlens
            .iter()
            .position(|&c| c as i64 > p)
            .unwrap();
        assert!(p + 1 < packed.text_cu_seqlens[s] as i64);
    }
    assert_eq!(b.caption_samples, vec![0, 1]);
}

#[test]
fn encode_images_returns_raster_order_features() {
    let (_vs, model, cfg) = tiny();
    let packed = synthetic_batch(&cfg, &[(4, 6), (2, 2)], 5);
    let b = BatchTensors::from_packed(&packed, Device::Cpu).unwrap();
    let feats = model
        .encode_images(&b.pixel_values, &b.grid_thw, true)
        .unwrap();
    assert_eq!(feats.len(), 2);
    assert_eq!(feats[0].size(), vec![24, cfg.vision.hidden_size]);
    let window = model
        .vision
        .forward(&b.pixel_values, &b.grid_thw, true, Kind::Float)
        .unwrap();
    // raster index 7 = (row 1, col 1) is window index 3 (the 4th patch of the first window)
    let d = (feats[0].get(7) - window.get(3))
        .abs()
        .max()
        .double_value(&[]);
    assert!(d < 1e-6);
    let pooled = model
        .image_embeddings(&b.pixel_values, &b.grid_thw, true)
        .unwrap();
    assert_eq!(pooled.size(), vec![2, cfg.vision.hidden_size]);
}

#[test]
fn bf16_compute_keeps_f32_master_weights() {
    let (vs, model, cfg) = tiny();
    let packed = synthetic_batch(&cfg, &[(4, 4), (2, 6)], 6);
    let batch = BatchTensors::from_packed(&packed, Device::Cpu).unwrap();
    let opts = ForwardOptions {
        compute_kind: Kind::BFloat16,
        alpha: 0.05,
        ..ForwardOptions::from_config(&cfg, Device::Cpu)
    };
    let out = model.forward(&batch, None, &opts).unwrap();
    assert_eq!(out.loss.kind(), Kind::Float);
    let (bf, f32_loss) = (
        out.dec_loss.double_value(&[]),
        model
            .forward(
                &batch,
                None,
                &ForwardOptions {
                    compute_kind: Kind::Float,
                    ..opts
                },
            )
            .unwrap()
            .dec_loss
            .double_value(&[]),
    );
    assert!(
        (bf - f32_loss).abs() < 0.05 * f32_loss,
        "bf16 {bf} vs f32 {f32_loss}"
    );
    out.loss.backward();
    let w = &vs.variables()["vision.encoder.layers.0.self_attn.q_proj.weight"];
    assert_eq!(w.kind(), Kind::Float);
    assert_eq!(w.grad().kind(), Kind::Float);
    assert_eq!(w.grad().isfinite().all().int64_value(&[]), 1);
}
