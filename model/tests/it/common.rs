//! Shared helpers: the Python reference runner and a synthetic packed batch.
use std::collections::HashMap;
use std::path::Path;

use comp_datasets::SampleId;
use comp_model::CompConfig;
use comp_pipeline::{Budgets, IGNORE_INDEX, PackedBatch, ProcessedSample};
use tch::Tensor;

/// Run `tests/py/reference.py KIND DIR` into a fresh temp dir.
pub fn reference(kind: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/reference.py");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .arg(kind)
        .arg(dir.path())
        .output()
        .expect("python3 must be on PATH for parity tests");
    assert!(
        out.status.success(),
        "reference.py {kind} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

pub fn load_io(dir: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(dir.join("io.safetensors"))
        .unwrap()
        .into_iter()
        .collect()
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shape mismatch");
    (a - b).abs().max().double_value(&[])
}

pub const IMAGE_TOKEN: i64 = 5;

/// A packed batch of `grids.len()` samples: `[1, <img>*n, caption..., 2]`, captions of varying length,
/// labels on caption and end token. Deterministic in `seed`.
pub fn synthetic_batch(cfg: &CompConfig, grids: &[(i64, i64)], seed: i64) -> PackedBatch {
    tch::manual_seed(seed);
    let patch_dim = cfg.vision.patch_dim() as usize;
    let vocab = cfg.llm.vocab_size;
    let samples = grids
        .iter()
        .enumerate()
        .map(|(i, &(h, w))| {
            let n = (h * w) as usize;
            let pixel_values: Vec<f32> = Vec::try_from(Tensor::randn(
                [(n * patch_dim) as i64],
                tch::kind::FLOAT_CPU,
            ))
            .unwrap();
            let n_img = n / 4;
            let cap_len = 3 + i % 4;
            let caption: Vec<i64> = Vec::try_from(Tensor::randint_low(
                10,
                vocab,
                [cap_len as i64],
                tch::kind::INT64_CPU,
            ))
            .unwrap();
            let mut input_ids = vec![1i64];
            input_ids.extend(std::iter::repeat_n(IMAGE_TOKEN, n_img));
            let cap_start = input_ids.len();
            input_ids.extend(&caption);
            let cap_end = input_ids.len();
            input_ids.push(2);
            let labels: Vec<i64> = input_ids
                .iter()
                .enumerate()
                .map(|(j, &t)| if j >= cap_start { t } else { IGNORE_INDEX })
                .collect();
            ProcessedSample {
                id: SampleId {
                    shard: 0,
                    row: i as u64,
                },
                pixel_values,
                grid_thw: [1, h, w],
                input_ids,
                labels,
                caption_span: [cap_start as u32, cap_end as u32],
            }
        })
        .collect();
    PackedBatch::from_samples(
        samples,
        patch_dim,
        IMAGE_TOKEN,
        Budgets {
            max_patches: 4096,
            max_tokens: 4096,
            max_images: 64,
        },
    )
}
