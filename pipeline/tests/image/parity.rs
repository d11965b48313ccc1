//! Grid sizes and pixel values against transformers' Qwen2-VL image processor on the fixture photos.
use crate::common::{RefConfig, Reference, abs_diff, photos, reference};
use comp_pipeline::{ImageConfig, patch_dim, process_image};
use std::path::PathBuf;

/// Acceptance bound from the issue: mean absolute difference in normalised units.
const MAX_MEAN_ABS_DIFF: f64 = 0.02;

fn config_for(r: &RefConfig) -> ImageConfig {
    let mut cfg = ImageConfig::qwen2_vl();
    cfg.temporal_patch_size = r.temporal_patch_size;
    if let Some(m) = r.min_pixels {
        cfg.min_pixels = m;
    }
    if let Some(m) = r.max_pixels {
        cfg.max_pixels = m;
    }
    cfg
}

/// Compare every file; returns the worst mean difference seen.
pub fn check_against(r: &RefConfig, files: &[PathBuf]) -> f64 {
    let cfg = config_for(r);
    let refs: Vec<Reference> = reference(r, files);
    assert_eq!(refs.len(), files.len());
    let mut worst = 0f64;
    for want in &refs {
        let bytes = std::fs::read(&want.file).unwrap();
        let got =
            process_image(&bytes, &cfg).unwrap_or_else(|e| panic!("{}: {e}", want.file.display()));
        assert_eq!(
            got.grid_thw,
            want.grid_thw,
            "grid_thw of {}",
            want.file.display()
        );
        assert_eq!(
            patch_dim(&cfg),
            want.cols,
            "patch_dim of {}",
            want.file.display()
        );
        let (mean, max) = abs_diff(&got.pixel_values, &want.values);
        assert!(
            mean < MAX_MEAN_ABS_DIFF,
            "{} ({}): mean |diff| {mean:.4} (max {max:.3}) over the bound {MAX_MEAN_ABS_DIFF}",
            want.file.display(),
            r.backend
        );
        worst = worst.max(mean);
    }
    eprintln!(
        "{} backend, T={}, min={:?} max={:?}: {} files, worst mean |diff| {worst:.5}",
        r.backend,
        r.temporal_patch_size,
        r.min_pixels,
        r.max_pixels,
        files.len()
    );
    worst
}

#[test]
fn torchvision_backend_defaults_all_fixture_photos() {
    let r = RefConfig {
        backend: "torchvision",
        temporal_patch_size: 2,
        min_pixels: None,
        max_pixels: None,
    };
    check_against(&r, &photos(None));
}

#[test]
fn pil_backend_defaults_all_fixture_photos() {
    let r = RefConfig {
        backend: "pil",
        temporal_patch_size: 2,
        min_pixels: None,
        max_pixels: None,
    };
    check_against(&r, &photos(None));
}

#[test]
fn pil_backend_forced_shrinking() {
    // 512x512 fixtures must shrink to <= 64 merge windows' worth of pixels: antialiasing matters here.
    let r = RefConfig {
        backend: "pil",
        temporal_patch_size: 2,
        min_pixels: Some(28 * 28),
        max_pixels: Some(28 * 28 * 64),
    };
    check_against(&r, &photos(None));
}

#[test]
fn torchvision_backend_forced_shrinking_comp_temporal_1() {
    let r = RefConfig {
        backend: "torchvision",
        temporal_patch_size: 1,
        min_pixels: Some(28 * 28),
        max_pixels: Some(28 * 28 * 100),
    };
    check_against(&r, &photos(Some("jpg")));
}

#[test]
fn pil_backend_forced_growing() {
    let r = RefConfig {
        backend: "pil",
        temporal_patch_size: 1,
        min_pixels: Some(28 * 28 * 600),
        max_pixels: Some(28 * 28 * 1280),
    };
    check_against(&r, &photos(Some("png")));
}
