//! `smart_resize` equals transformers' own function over a dense grid and random large sizes.
use crate::common::run_helper;
use comp_pipeline::{ImageConfig, ResizePolicy, smart_resize};

#[test]
fn equals_transformers_over_dense_and_random_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("smart_resize.json");
    // Dense 1..=300 squared for five (min, max) pairs, 20k random sizes up to 20000, half-way points.
    run_helper(&[
        "smart-resize".into(),
        "--out".into(),
        out.display().to_string(),
    ]);
    let rows: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert!(
        rows.len() > 400_000,
        "reference grid unexpectedly small: {}",
        rows.len()
    );
    let (mut checked, mut aspect) = (0usize, 0usize);
    for row in &rows {
        let r = row.as_array().unwrap();
        let n = |i: usize| r[i].as_u64().unwrap();
        let (h, w, lo, hi) = (n(0) as u32, n(1) as u32, n(2), n(3));
        let got = smart_resize(h, w, 28, lo, hi, 200.0);
        if r[4].is_string() {
            let err = got.expect_err("transformers rejected this size");
            assert_eq!(err.reason(), "aspect_ratio", "{h}x{w}");
            aspect += 1;
        } else {
            let want = (n(4) as u32, n(5) as u32);
            assert_eq!(
                got.unwrap(),
                want,
                "smart_resize({h}, {w}, min={lo}, max={hi})"
            );
        }
        checked += 1;
    }
    assert!(
        aspect > 100,
        "the grid must exercise the aspect-ratio rejection ({aspect})"
    );
    eprintln!(
        "smart_resize: {checked} sizes equal transformers ({aspect} aspect-ratio rejections)"
    );
}

#[test]
fn outputs_are_multiples_of_factor_and_within_bounds() {
    for h in (1..4000).step_by(37) {
        for w in (1..4000).step_by(41) {
            let Ok((oh, ow)) = smart_resize(h, w, 28, 56 * 56, 28 * 28 * 1280, 200.0) else {
                continue;
            };
            assert!(
                oh % 28 == 0 && ow % 28 == 0 && oh >= 28 && ow >= 28,
                "{h}x{w} -> {oh}x{ow}"
            );
            assert!(
                (oh as u64 * ow as u64) <= 28 * 28 * 1280,
                "{h}x{w} -> {oh}x{ow}"
            );
        }
    }
}

#[test]
fn degenerate_inputs_are_rejected_with_reasons() {
    assert_eq!(
        smart_resize(0, 10, 28, 3136, 1_003_520, 200.0)
            .unwrap_err()
            .reason(),
        "too_small"
    );
    assert_eq!(
        smart_resize(10, 0, 28, 3136, 1_003_520, 200.0)
            .unwrap_err()
            .reason(),
        "too_small"
    );
    // min_pixels = 0 lets a side round to 0 in transformers; we refuse instead of emitting an empty grid.
    assert_eq!(
        smart_resize(10, 100, 28, 0, 1_003_520, 200.0)
            .unwrap_err()
            .reason(),
        "too_small"
    );
    assert_eq!(
        smart_resize(1, 201, 28, 3136, 1_003_520, 200.0)
            .unwrap_err()
            .reason(),
        "aspect_ratio"
    );
    assert!(smart_resize(1, 200, 28, 3136, 1_003_520, 200.0).is_ok());
}

#[test]
fn fixed_square_policy_rounds_to_28() {
    let mut cfg = ImageConfig::clip();
    cfg.resize = ResizePolicy::FixedSquare { size: 384 };
    assert_eq!(cfg.target_size(300, 1000).unwrap(), (392, 392));
    cfg.resize = ResizePolicy::FixedSquare { size: 1024 };
    assert_eq!(cfg.target_size(5, 7).unwrap(), (1036, 1036));
    cfg.resize = ResizePolicy::FixedSquare { size: 3 };
    assert_eq!(cfg.target_size(50, 70).unwrap(), (28, 28));
}
