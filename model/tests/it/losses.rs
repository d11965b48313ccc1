//! Loss properties: Sinkhorn marginals, stability near cosine 1, gradient isolation, ignore index.
use comp_model::loss::{
    alignment_loss, decoding_loss, l2_normalize, reference_closed_form, sinkhorn_log,
    word_prior_probs,
};
use comp_model::{BatchTensors, CompConfig, CompModel, ForwardOptions, LossConfig, Part};
use tch::{Device, Kind, Tensor, nn};

use crate::common::synthetic_batch;

const CPU: (Kind, Device) = (Kind::Float, Device::Cpu);

#[test]
fn sinkhorn_meets_both_marginals() {
    tch::manual_seed(0);
    let (b, k) = (8, 50);
    let scores = l2_normalize(&Tensor::randn([b, 16], CPU))
        .matmul(&l2_normalize(&Tensor::randn([k, 16], CPU)).tr());
    let prior =
        word_prior_probs(Some(&(Tensor::rand([k], CPU) + 0.1)), k, 0.0, Device::Cpu).unwrap();
    // eps large enough that the problem is well conditioned within a few hundred iterations
    let p = sinkhorn_log(&scores, &prior, 0.05, 500);
    let rows = p.sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
    let cols = p.sum_dim_intlist([0i64].as_slice(), false, Kind::Float);
    let row_err = (rows - 1.0).abs().max().double_value(&[]);
    let col_err = (cols - &prior * b as f64).abs().max().double_value(&[]);
    assert!(row_err < 1e-4, "row marginal off by {row_err}");
    assert!(col_err < 1e-4, "column marginal off by {col_err}");
    // the default 3 iterations end on the row step: unit mass per sample exactly
    let p3 = sinkhorn_log(&scores, &prior, 0.005, 3);
    let r3 = (p3.sum_dim_intlist([1i64].as_slice(), false, Kind::Float) - 1.0)
        .abs()
        .max()
        .double_value(&[]);
    assert!(r3 < 1e-5);
}

#[test]
fn no_overflow_with_cosines_near_one() {
    let k = 32;
    // F_t equal to a prototype: cosine exactly 1, exp(1/0.005) = exp(200) overflows f32
    let protos = l2_normalize(&Tensor::randn([k, 8], CPU));
    let f_t = protos.narrow(0, 0, 4).copy();
    let f_v = (&f_t + Tensor::randn([4, 8], CPU) * 1e-3).set_requires_grad(true);
    let prior = word_prior_probs(None, k, 1e-4, Device::Cpu).unwrap();
    for mode in [
        comp_model::AlignMode::SinkhornLog,
        comp_model::AlignMode::ReferenceClosedForm,
    ] {
        let cfg = LossConfig {
            mode,
            ..LossConfig::default()
        };
        let l = alignment_loss(&f_v, &f_t, &protos, &prior, &cfg);
        assert!(l.double_value(&[]).is_finite(), "{mode:?}: {l:?}");
        l.backward();
        assert!(f_v.grad().isfinite().all().int64_value(&[]) == 1);
    }
    let c_t = l2_normalize(&f_t).matmul(&protos.tr());
    let p = sinkhorn_log(&c_t, &prior, 0.005, 3);
    assert_eq!(p.isnan().any().int64_value(&[]), 0);
    let q = reference_closed_form(&c_t, &prior, 0.005);
    let rows = (q.sum_dim_intlist([1i64].as_slice(), false, Kind::Float) - 1.0)
        .abs()
        .max()
        .double_value(&[]);
    assert!(rows < 1e-5);
}

#[test]
fn alignment_gradient_reaches_only_vision_and_adapter() {
    tch::manual_seed(0);
    for tied in [true, false] {
        let mut cfg = CompConfig::tiny(64);
        cfg.llm.tie_word_embeddings = tied;
        let vs = nn::VarStore::new(Device::Cpu);
        let model = CompModel::new(vs.root(), &cfg).unwrap();
        let packed = synthetic_batch(&cfg, &[(4, 4), (2, 6), (4, 2)], 7);
        let batch = BatchTensors::from_packed(&packed, Device::Cpu).unwrap();
        let opts = ForwardOptions {
            alpha: 1.0,
            ..ForwardOptions::from_config(&cfg, Device::Cpu)
        };
        let out = model
            .forward(&batch, Some(&Tensor::ones([64], CPU)), &opts)
            .unwrap();
        out.align_loss.backward();
        let parts = model.parameters_by_part(&vs);
        let gsum = |part: Part| -> f64 {
            parts[&part]
                .iter()
                .map(|(_, t)| {
                    let g = t.grad();
                    if g.defined() {
                        g.abs().sum(Kind::Float).double_value(&[])
                    } else {
                        0.0
                    }
                })
                .sum()
        };
        assert!(gsum(Part::Vision) > 0.0 && gsum(Part::Adapter) > 0.0);
        assert_eq!(
            gsum(Part::Llm),
            0.0,
            "LLM / word prototypes got alignment gradient (tied = {tied})"
        );
    }
}

#[test]
fn decoding_loss_ignores_minus_100() {
    tch::manual_seed(0);
    let logits = Tensor::randn([5, 11], CPU);
    let targets = Tensor::from_slice(&[3i64, -100, 7, -100, 0]);
    let l = decoding_loss(&logits, &targets).double_value(&[]);
    let keep = Tensor::from_slice(&[0i64, 2, 4]);
    let manual = -logits
        .index_select(0, &keep)
        .log_softmax(-1, Kind::Float)
        .gather(1, &Tensor::from_slice(&[3i64, 7, 0]).unsqueeze(1), false)
        .mean(Kind::Float)
        .double_value(&[]);
    assert!((l - manual).abs() < 1e-6, "{l} vs {manual}");
    let none = decoding_loss(&logits.narrow(0, 0, 0), &targets.narrow(0, 0, 0));
    assert_eq!(none.double_value(&[]), 0.0);
}

#[test]
fn word_prior_pads_and_smooths() {
    let counts = Tensor::from_slice(&[3.0f32, 0.0, 1.0]);
    let p = word_prior_probs(Some(&counts), 5, 0.01, Device::Cpu).unwrap();
    assert!((p.sum(Kind::Float).double_value(&[]) - 1.0).abs() < 1e-6);
    assert!(p.min().double_value(&[]) > 0.0);
    assert!(word_prior_probs(Some(&Tensor::ones([6], CPU)), 5, 0.01, Device::Cpu).is_err());
    assert!(word_prior_probs(Some(&Tensor::zeros([5], CPU)), 5, 0.01, Device::Cpu).is_err());
}
