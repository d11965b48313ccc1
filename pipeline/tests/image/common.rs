//! Shared helpers: fixture paths and the Python reference oracle (transformers' Qwen2-VL processor).
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn fixtures() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures"))
}

pub fn images_dir() -> PathBuf {
    fixtures().join("images")
}

/// Configs that exercise every resampling regime on the fixture photos: Qwen2-VL's defaults, a fixed
/// square, forced shrinking (antialiasing) and forced growing.
pub fn resize_configs() -> [comp_pipeline::ImageConfig; 4] {
    use comp_pipeline::{ImageConfig, ResizePolicy};
    let mut square = ImageConfig::clip();
    square.resize = ResizePolicy::FixedSquare { size: 392 };
    let shrink = ImageConfig {
        max_pixels: 200 * 200,
        ..ImageConfig::clip()
    };
    let grow = ImageConfig {
        min_pixels: 900 * 900,
        max_pixels: 1000 * 1000,
        ..ImageConfig::siglip()
    };
    [ImageConfig::qwen2_vl(), square, shrink, grow]
}

/// Fixture photos, sorted, optionally filtered by extension.
pub fn photos(ext: Option<&str>) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(images_dir())
        .expect("fixture images dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| ext.is_none_or(|x| p.extension().is_some_and(|e| e == x)))
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no fixture photos found in {}",
        images_dir().display()
    );
    files
}

fn helper() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/py/qwen2vl_reference.py"
    ))
}

/// Run the reference helper; panics with its stderr if it fails (Python + transformers are required).
pub fn run_helper(args: &[String]) {
    let python = std::env::var("COMP_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&python)
        .arg(helper())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    assert!(
        out.status.success(),
        "reference helper {:?} failed:\n{}",
        args,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One image's output from the reference processor.
pub struct Reference {
    pub file: PathBuf,
    pub grid_thw: [i64; 3],
    pub cols: usize,
    pub values: Vec<f32>,
}

/// Reference processor settings.
pub struct RefConfig {
    pub backend: &'static str,
    pub temporal_patch_size: usize,
    pub min_pixels: Option<usize>,
    pub max_pixels: Option<usize>,
}

pub fn reference(cfg: &RefConfig, files: &[PathBuf]) -> Vec<Reference> {
    let dir = tempfile::tempdir().expect("tempdir");
    let prefix = dir.path().join("ref");
    let mut args = vec![
        "process".to_string(),
        "--backend".into(),
        cfg.backend.into(),
        "--temporal-patch-size".into(),
        cfg.temporal_patch_size.to_string(),
        "--out".into(),
        prefix.display().to_string(),
    ];
    if let Some(m) = cfg.min_pixels {
        args.extend(["--min-pixels".into(), m.to_string()]);
    }
    if let Some(m) = cfg.max_pixels {
        args.extend(["--max-pixels".into(), m.to_string()]);
    }
    args.extend(files.iter().map(|f| f.display().to_string()));
    run_helper(&args);
    read_reference(&prefix)
}

fn read_reference(prefix: &Path) -> Vec<Reference> {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(prefix.with_extension("json")).unwrap()).unwrap();
    let bin = std::fs::read(prefix.with_extension("bin")).unwrap();
    let all: Vec<f32> = bin
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    index
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let g = e["grid_thw"].as_array().unwrap();
            let (offset, rows, cols) = (
                e["offset"].as_u64().unwrap() as usize,
                e["rows"].as_u64().unwrap() as usize,
                e["cols"].as_u64().unwrap() as usize,
            );
            Reference {
                file: PathBuf::from(e["file"].as_str().unwrap()),
                grid_thw: [
                    g[0].as_i64().unwrap(),
                    g[1].as_i64().unwrap(),
                    g[2].as_i64().unwrap(),
                ],
                cols,
                values: all[offset..offset + rows * cols].to_vec(),
            }
        })
        .collect()
}

/// Mean and max absolute difference.
pub fn abs_diff(a: &[f32], b: &[f32]) -> (f64, f64) {
    assert_eq!(a.len(), b.len());
    let mut sum = 0f64;
    let mut max = 0f64;
    for (x, y) in a.iter().zip(b) {
        let d = (*x as f64 - *y as f64).abs();
        sum += d;
        max = max.max(d);
    }
    (sum / a.len().max(1) as f64, max)
}
