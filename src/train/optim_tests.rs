//! Tests of the AdamW optimiser: a hand-computed step, agreement with `torch.optim.AdamW`, clipping,
//! and bit-identical save → load → continue.
use super::*;

/// Deterministic pseudo-gradients that differ per step and element.
fn grad_values(n: usize, step: usize, salt: f64) -> Vec<f32> {
    (0..n)
        .map(|i| {
            ((i as f64 * 0.7 + step as f64 * 1.3 + salt).sin() * (1.0 + step as f64 * 0.5)) as f32
        })
        .collect()
}

/// Gives `param` the gradient `g` through autograd (loss = sum(param * g)).
fn set_grad(param: &Tensor, g: &[f32]) {
    let g = Tensor::from_slice(g)
        .reshape(param.size())
        .to_kind(param.kind());
    (param * g).sum(param.kind()).backward();
}

fn leaf(values: &[f32], shape: &[i64]) -> Tensor {
    Tensor::from_slice(values)
        .reshape(shape)
        .set_requires_grad(true)
}

struct Setup {
    optim: AdamW,
    w: Tensor,
    b: Tensor,
}

fn setup(w0: &Tensor, b0: &Tensor) -> Setup {
    let w = w0.detach().copy().set_requires_grad(true);
    let b = b0.detach().copy().set_requires_grad(true);
    let groups = vec![
        ParamGroup {
            name: "vision.decay".into(),
            peak_lr: 1e-2,
            weight_decay: 0.1,
            params: vec![("vision.w".into(), w.shallow_clone())],
        },
        ParamGroup {
            name: "vision.no_decay".into(),
            peak_lr: 5e-3,
            weight_decay: 0.0,
            params: vec![("vision.b".into(), b.shallow_clone())],
        },
    ];
    Setup {
        optim: AdamW::new(groups, AdamWConfig::default()).unwrap(),
        w,
        b,
    }
}

fn lr_factor(step: usize) -> f64 {
    [0.5, 1.0, 0.8, 0.3, 0.9, 0.1][step % 6]
}

fn run_steps(s: &mut Setup, steps: std::ops::Range<usize>) {
    for step in steps {
        s.optim.zero_grad();
        set_grad(&s.w, &grad_values(12, step, 0.0));
        set_grad(&s.b, &grad_values(4, step, 2.0));
        s.optim.step(|g| g.peak_lr * lr_factor(step));
    }
}

fn initial() -> (Tensor, Tensor) {
    let w: Vec<f32> = (0..12).map(|i| (i as f32 - 5.5) / 7.0).collect();
    (leaf(&w, &[3, 4]), leaf(&[0.1, -0.2, 0.3, 0.0], &[4]))
}

#[test]
fn one_step_matches_hand_computation() {
    let p = Tensor::from_slice(&[1.0f64, -2.0]).set_requires_grad(true);
    let group = ParamGroup {
        name: "g".into(),
        peak_lr: 0.1,
        weight_decay: 0.01,
        params: vec![("p".into(), p.shallow_clone())],
    };
    let mut opt = AdamW::new(vec![group], AdamWConfig::default()).unwrap();
    let grads = [[0.5f64, -0.25], [0.1, 0.4]];
    let (mut m, mut v, mut expect) = ([0.0f64; 2], [0.0f64; 2], [1.0f64, -2.0]);
    for (t, g) in grads.iter().enumerate() {
        let t = t as i32 + 1;
        opt.zero_grad();
        (&p * Tensor::from_slice(g)).sum(Kind::Double).backward();
        opt.step(|g| g.peak_lr);
        for i in 0..2 {
            expect[i] *= 1.0 - 0.1 * 0.01;
            m[i] = 0.9 * m[i] + 0.1 * g[i];
            v[i] = 0.999 * v[i] + 0.001 * g[i] * g[i];
            let m_hat = m[i] / (1.0 - 0.9f64.powi(t));
            let v_hat = v[i] / (1.0 - 0.999f64.powi(t));
            expect[i] -= 0.1 * m_hat / (v_hat.sqrt() + 1e-8);
        }
    }
    for (i, e) in expect.iter().enumerate() {
        let got = p.double_value(&[i as i64]);
        assert!(
            (got - e).abs() < 1e-12,
            "param {i}: got {got}, expected {e}"
        );
    }
    // First step moves each weight by ~lr (Adam's normalised step): a sanity check on the expectation.
    assert!((expect[0] - (1.0 - 0.001 - 0.1 - 0.1)).abs() < 0.05);
    assert_eq!(opt.steps_taken(), 2);
}

const TORCH_SCRIPT: &str = r#"
import json, sys, torch
d = json.load(sys.stdin)
w = torch.tensor(d["w"], dtype=torch.float32).reshape(3, 4).requires_grad_()
b = torch.tensor(d["b"], dtype=torch.float32).requires_grad_()
opt = torch.optim.AdamW([
    {"params": [w], "lr": 1e-2, "weight_decay": 0.1},
    {"params": [b], "lr": 5e-3, "weight_decay": 0.0},
], betas=(0.9, 0.999), eps=1e-8, foreach=False)
for step in d["steps"]:
    w.grad = torch.tensor(step["gw"], dtype=torch.float32).reshape(3, 4)
    b.grad = torch.tensor(step["gb"], dtype=torch.float32)
    opt.param_groups[0]["lr"] = 1e-2 * step["f"]
    opt.param_groups[1]["lr"] = 5e-3 * step["f"]
    opt.step()
json.dump({"w": w.detach().flatten().tolist(), "b": b.detach().tolist()}, sys.stdout)
"#;

fn values(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.detach().flatten(0, -1)).unwrap()
}

#[test]
fn matches_torch_optim_adamw() {
    use std::io::Write;
    let steps = 5;
    let (w0, b0) = initial();
    let input = serde_json::json!({
        "w": values(&w0),
        "b": values(&b0),
        "steps": (0..steps).map(|s| serde_json::json!({
            "gw": grad_values(12, s, 0.0), "gb": grad_values(4, s, 2.0), "f": lr_factor(s)
        })).collect::<Vec<_>>(),
    });
    let mut child = std::process::Command::new("python3")
        .args(["-c", TORCH_SCRIPT])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 (with torch, which libtorch comes from) must be installed");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "python failed");
    let reference: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    let mut s = setup(&w0, &b0);
    run_steps(&mut s, 0..steps);
    for (name, ours) in [("w", values(&s.w)), ("b", values(&s.b))] {
        let theirs: Vec<f32> = serde_json::from_value(reference[name].clone()).unwrap();
        for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            assert!(
                (a - b).abs() <= 1e-6 * (1.0 + b.abs()),
                "{name}[{i}]: ours {a}, torch {b}"
            );
        }
        assert_ne!(
            ours,
            values(if name == "w" { &w0 } else { &b0 }),
            "parameters moved"
        );
    }
}

#[test]
fn save_load_continue_is_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let (w0, b0) = initial();
    let mut straight = setup(&w0, &b0);
    run_steps(&mut straight, 0..6);

    let mut first = setup(&w0, &b0);
    run_steps(&mut first, 0..3);
    let path = dir.path().join("optim.safetensors");
    first.optim.save(&path).unwrap();
    let mut resumed = setup(&first.w, &first.b);
    resumed.optim.load(&path).unwrap();
    assert_eq!(resumed.optim.steps_taken(), 3);
    run_steps(&mut resumed, 3..6);

    assert!(resumed.w.equal(&straight.w) && resumed.b.equal(&straight.b));
    // Without the state the continuation differs: the test is sensitive to lost moments.
    let mut fresh = setup(&first.w, &first.b);
    run_steps(&mut fresh, 3..6);
    assert!(!fresh.w.equal(&straight.w));
}

#[test]
fn load_rejects_state_for_unknown_or_reshaped_params() {
    let dir = tempfile::tempdir().unwrap();
    let (w0, b0) = initial();
    let mut s = setup(&w0, &b0);
    run_steps(&mut s, 0..1);
    let path = dir.path().join("o.safetensors");
    s.optim.save(&path).unwrap();
    let other = leaf(&[0.0; 4], &[4]);
    let group = |name: &str, t: &Tensor| ParamGroup {
        name: "x".into(),
        peak_lr: 1.0,
        weight_decay: 0.0,
        params: vec![(name.into(), t.shallow_clone())],
    };
    let mut only_b = AdamW::new(vec![group("vision.b", &other)], AdamWConfig::default()).unwrap();
    let err = only_b.load(&path).unwrap_err().to_string();
    assert!(err.contains("vision.w"), "{err}");
    let wrong = leaf(&[0.0; 6], &[6]);
    let mut reshaped = AdamW::new(
        vec![group("vision.w", &wrong), group("vision.b", &other)],
        AdamWConfig::default(),
    )
    .unwrap();
    assert!(
        reshaped
            .load(&path)
            .unwrap_err()
            .to_string()
            .contains("shape")
    );
    assert!(
        AdamW::new(
            vec![group("a", &other), group("a", &wrong)],
            AdamWConfig::default()
        )
        .is_err(),
        "duplicate names"
    );
}

#[test]
fn clipping_scales_to_max_norm_and_reports_non_finite() {
    let (w0, b0) = initial();
    let s = setup(&w0, &b0);
    set_grad(&s.w, &[3.0; 12]);
    set_grad(&s.b, &[4.0; 4]);
    let expected = (12.0f64 * 9.0 + 4.0 * 16.0).sqrt();
    assert!((s.optim.grad_norm() - expected).abs() < 1e-9);
    let pre = s.optim.clip_grad_norm(1.0);
    assert!((pre - expected).abs() < 1e-9);
    assert!(
        (s.optim.grad_norm() - 1.0).abs() < 1e-5,
        "clipped to max norm"
    );
    assert!(s.optim.grads_finite());
    // Below the threshold nothing changes.
    let before = s.optim.grad_norm();
    s.optim.clip_grad_norm(10.0);
    assert_eq!(s.optim.grad_norm(), before);

    set_grad(&s.b, &[f32::NAN, 0.0, 0.0, 0.0]);
    assert!(!s.optim.grads_finite());
    assert!(s.optim.clip_grad_norm(1.0).is_nan());
    s.optim.zero_grad();
    assert_eq!(s.optim.grad_norm(), 0.0);
}

#[test]
fn groups_split_decay_and_freezing_stops_gradients() {
    let w = leaf(&[1.0; 6], &[2, 3]);
    let b = leaf(&[1.0; 3], &[3]);
    let ln = leaf(&[1.0; 6], &[2, 3]);
    let groups = part_groups(
        "adapter",
        vec![
            ("m.fc.weight".into(), w.shallow_clone()),
            ("m.fc.bias".into(), b.shallow_clone()),
            ("m.norm.weight".into(), ln.shallow_clone()),
        ],
        1e-3,
        0.05,
    );
    let summary: Vec<(&str, f64, usize)> = groups
        .iter()
        .map(|g| (g.name.as_str(), g.weight_decay, g.params.len()))
        .collect();
    assert_eq!(
        summary,
        vec![("adapter.decay", 0.05, 1), ("adapter.no_decay", 0.0, 2)]
    );

    set_grad(&w, &[1.0; 6]);
    set_trainable([&w], false);
    assert!(!w.requires_grad());
    assert_eq!(
        w.grad().abs().sum(Kind::Float).double_value(&[]),
        0.0,
        "stale gradient cleared"
    );
    set_trainable([&w], true);
    assert!(w.requires_grad());
}
