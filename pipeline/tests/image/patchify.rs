//! Patch layout against an independent index formula, and the end-to-end contract of `process_rgb`.
use comp_pipeline::patchify::patchify;
use comp_pipeline::{ImageConfig, ResizePolicy, patch_dim, process_rgb};
use image::RgbImage;

/// Pixel value that encodes its own position, so any layout error changes the output.
fn coded_image(h: u32, w: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            (x % 251) as u8,
            (y % 241) as u8,
            ((x * 7 + y * 3) % 256) as u8,
        ])
    })
}

/// The layout spelled out per output element: row `i` is patch `(bh, bw, mh, mw)` of the
/// `(gh/M, gw/M, M, M)` traversal; column `j` is `(c, t, r, col)`.
fn expected_value(img: &RgbImage, cfg: &ImageConfig, i: usize, j: usize) -> f32 {
    let (p, m, t) = (cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size);
    let gw = img.width() as usize / p;
    let windows_w = gw / m;
    let (window, in_window) = (i / (m * m), i % (m * m));
    let (bh, bw) = (window / windows_w, window % windows_w);
    let (mh, mw) = (in_window / m, in_window % m);
    let c = j / (t * p * p);
    let r = (j % (p * p)) / p;
    let col = j % p;
    let y = (bh * m + mh) * p + r;
    let x = (bw * m + mw) * p + col;
    let v = img.get_pixel(x as u32, y as u32).0[c] as f32;
    (v / 255.0 - cfg.image_mean[c]) / cfg.image_std[c]
}

#[test]
fn layout_matches_the_merge_window_formula() {
    for t in [1, 2] {
        let mut cfg = ImageConfig::siglip();
        cfg.temporal_patch_size = t;
        let img = coded_image(56, 84);
        let out = patchify(&img, &cfg).unwrap();
        assert_eq!(out.grid_thw, [1, 4, 6]);
        let dim = patch_dim(&cfg);
        assert_eq!(dim, 3 * t * 196);
        assert_eq!(out.pixel_values.len(), 24 * dim);
        for i in 0..24 {
            for j in 0..dim {
                let want = expected_value(&img, &cfg, i, j);
                assert!(
                    (out.pixel_values[i * dim + j] - want).abs() < 1e-6,
                    "T={t} row {i} col {j}"
                );
            }
        }
    }
}

#[test]
fn patchify_rejects_sizes_that_are_not_multiples_of_28() {
    let err = patchify(&coded_image(30, 56), &ImageConfig::default()).unwrap_err();
    assert_eq!(err.reason(), "resize");
}

#[test]
fn fixed_square_policy_gives_a_square_grid() {
    let mut cfg = ImageConfig::clip();
    cfg.resize = ResizePolicy::FixedSquare { size: 384 };
    let out = process_rgb(coded_image(300, 700), &cfg).unwrap();
    assert_eq!(out.grid_thw, [1, 28, 28]);
    assert_eq!(out.num_patches(), 784);
    assert_eq!(out.pixel_values.len(), 784 * 588);
}

#[test]
fn native_policy_keeps_the_aspect_ratio_and_rejects_extreme_strips() {
    let cfg = ImageConfig::clip();
    let out = process_rgb(coded_image(280, 560), &cfg).unwrap();
    assert_eq!(out.grid_thw, [1, 20, 40]);
    assert!(out.pixel_values.iter().all(|v| v.is_finite()));
    let err = process_rgb(coded_image(1, 300), &cfg).unwrap_err();
    assert_eq!(err.reason(), "aspect_ratio");
}

#[test]
fn config_round_trips_through_json_with_defaults_filled_in() {
    let cfg: ImageConfig = serde_json::from_str(r#"{"temporal_patch_size": 2}"#).unwrap();
    assert_eq!(cfg, ImageConfig::qwen2_vl());
    let fixed = ImageConfig {
        resize: ResizePolicy::FixedSquare { size: 384 },
        ..ImageConfig::siglip()
    };
    let back: ImageConfig = serde_json::from_str(&serde_json::to_string(&fixed).unwrap()).unwrap();
    assert_eq!(back, fixed);
}

/// The loader resamples inside the fused band kernel; `resample` (fast_image_resize, PIL's bicubic) +
/// `patchify` is the independent reference. Every fixture photo at its native target, forced to
/// shrink (a 392 square, and at most 200x200 pixels) and forced to grow. Both round to 8 bits after
/// each pass, but in the opposite pass order (PIL's horizontal-first vs the kernel's vertical-first);
/// the bicubic's negative lobes can carry a one-step intermediate difference into a second step, so
/// the bound is two steps, and under 1% of values may differ at all.
#[test]
fn fused_resampling_equals_resize_then_patchify_on_the_fixture_photos() {
    use comp_pipeline::decode;
    use comp_pipeline::resize::resample;
    let configs = super::common::resize_configs();
    let (mut compared, mut differing, mut worst) = (0usize, 0usize, 0f32);
    for path in super::common::photos(None) {
        let bytes = std::fs::read(&path).unwrap();
        for cfg in &configs {
            let img = decode(&bytes, cfg).unwrap();
            let (h, w) = cfg.target_size(img.height(), img.width()).unwrap();
            let want = patchify(&resample(img.clone(), h, w).unwrap(), cfg).unwrap();
            let got = process_rgb(img, cfg).unwrap();
            assert_eq!(got.grid_thw, want.grid_thw, "{}", path.display());
            // One 8-bit step in normalised units for this config's smallest std.
            let step = 1.0 / (255.0 * cfg.image_std.iter().cloned().fold(f32::MAX, f32::min));
            for (a, b) in got.pixel_values.iter().zip(&want.pixel_values) {
                let d = (a - b).abs();
                worst = worst.max(d / step);
                differing += (d > 1e-5) as usize;
            }
            compared += got.pixel_values.len();
        }
    }
    let share = differing as f64 / compared as f64;
    eprintln!(
        "fused vs resize+patchify: {compared} values, {share:.5} differ, worst {worst:.3} steps"
    );
    assert!(worst <= 2.001, "worst difference {worst} steps");
    assert!(share < 0.01, "{share} of values differ");
}

#[test]
fn two_frames_are_the_first_frame_twice() {
    // The loader relies on this: it patchifies one frame and repeats it during batch assembly.
    for path in super::common::photos(None).into_iter().step_by(5) {
        let bytes = std::fs::read(&path).unwrap();
        let one = comp_pipeline::process_image(&bytes, &ImageConfig::clip()).unwrap();
        let two = comp_pipeline::process_image(&bytes, &ImageConfig::qwen2_vl()).unwrap();
        assert_eq!(one.grid_thw, two.grid_thw);
        let expanded: Vec<f32> = one
            .pixel_values
            .chunks_exact(196)
            .flat_map(|block| block.iter().chain(block))
            .copied()
            .collect();
        assert!(expanded == two.pixel_values, "{}", path.display());
    }
}
