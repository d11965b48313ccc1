//! The other subcommands a new user meets first: `doctor`, `data bench`, `preprocess`.
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use crate::common::*;

#[test]
fn doctor_passes() {
    let (stdout, _) = run_ok(comp().arg("doctor"));
    assert!(stdout.contains("libtorch"), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("check ") && l.contains("PASS")),
        "{stdout}"
    );
    assert!(!stdout.contains("FAIL"), "{stdout}");
}

#[test]
fn data_bench_skips_bad_rows_and_lists_the_reasons() {
    let file = repo().join("tests/fixtures/bad/mixed_good_and_bad.parquet");
    let (stdout, _) = run_ok(comp().args(["data", "bench"]).arg(&file));
    // 20 rows: 12 good images, 8 bad rows with known reasons.
    let images = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("images"))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no images line in\n{stdout}"));
    assert_eq!(images, "12", "{stdout}");
    assert!(stdout.contains("skipped       8 samples"), "{stdout}");
    let counts: BTreeMap<&str, &str> = stdout
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            match (w.next(), w.next(), w.next()) {
                (Some(reason), Some(n), None) if n.parse::<u64>().is_ok() => Some((reason, n)),
                _ => None,
            }
        })
        .collect();
    for (reason, n) in [
        ("empty_caption", "1"),
        ("empty_image", "1"),
        ("null_caption", "1"),
        ("null_image", "1"),
        ("truncated", "2"),
        ("unknown_format", "2"),
    ] {
        assert_eq!(counts.get(reason), Some(&n), "{reason} in\n{stdout}");
    }
    let examples: Vec<&str> = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("e.g."))
        .collect();
    assert_eq!(examples.len(), 8, "{stdout}");
    assert!(
        examples
            .iter()
            .all(|l| l.contains("mixed_good_and_bad.parquet:")),
        "every example names shard:row\n{stdout}"
    );
}

/// What `comp preprocess` wrote, with its shapes checked against each other.
struct Preprocessed {
    grids: Vec<[i64; 3]>,
    sample_ids: Vec<i64>,
    pixel_values: RawTensor,
}

fn preprocess(data: &Path, out: &Path, limit: Option<usize>) -> Preprocessed {
    let mut cmd = comp();
    cmd.arg("preprocess")
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out)
        .args(["--no-shuffle", "--temporal-patch-size", "2"]);
    if let Some(n) = limit {
        cmd.args(["--limit", &n.to_string()]);
    }
    run_ok(&mut cmd);
    let t = load_safetensors(out);
    let grid = &t["image_grid_thw"];
    assert_eq!(grid.shape.len(), 2);
    assert_eq!(grid.shape[1], 3);
    let grids: Vec<[i64; 3]> = as_i64(grid)
        .chunks_exact(3)
        .map(|c| [c[0], c[1], c[2]])
        .collect();
    for g in &grids {
        // A still image is one temporal patch; merge windows are 2x2.
        assert!(
            g[0] == 1 && g[1] > 0 && g[2] > 0 && g[1] % 2 == 0 && g[2] % 2 == 0,
            "{g:?}"
        );
    }
    let pv = &t["pixel_values"];
    let patches: i64 = grids.iter().map(|g| g.iter().product::<i64>()).sum();
    // C * T * P * P = 3 * 2 * 14 * 14.
    assert_eq!(pv.shape, vec![patches as usize, 1176], "pixel_values");
    assert_eq!(pv.dtype, "F32");
    let cu = as_i64(&t["vision_cu_seqlens"]);
    let mut expect = vec![0];
    for g in &grids {
        expect.push(expect.last().unwrap() + g.iter().product::<i64>());
    }
    assert_eq!(cu, expect, "vision_cu_seqlens are the running patch counts");
    let ids = &t["sample_ids"];
    assert_eq!(ids.shape, vec![grids.len(), 2]);
    Preprocessed {
        grids,
        sample_ids: as_i64(ids),
        pixel_values: pv.clone(),
    }
}

/// Runs transformers' `Qwen2VLImageProcessor` on the first rows of the parquet file (EXIF orientation
/// applied, as our loader does) and compares with what we wrote. `None` without python3/transformers.
const HF_SCRIPT: &str = r#"
import io, json, sys
import numpy as np
import pyarrow.parquet as pq
from PIL import Image, ImageOps
from safetensors.numpy import load_file
from transformers import Qwen2VLImageProcessor

parquet, ours_path = sys.argv[1], sys.argv[2]
ours = load_file(ours_path)
n = ours["image_grid_thw"].shape[0]
rows = pq.read_table(parquet).to_pylist()[:n]
images = [ImageOps.exif_transpose(Image.open(io.BytesIO(r["image"]["bytes"]))).convert("RGB") for r in rows]
out = Qwen2VLImageProcessor()(images=images, return_tensors="np")
pv = out["pixel_values"]
same = pv.shape == ours["pixel_values"].shape
print(json.dumps({
    "grid": out["image_grid_thw"].tolist(),
    "mean_abs_diff": float(np.abs(pv - ours["pixel_values"]).mean()) if same else None,
}))
"#;

fn python_has(modules: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {modules}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn preprocess_writes_consistent_qwen2_vl_tensors_that_match_transformers() {
    let tmp = tempfile::tempdir().unwrap();
    let data = repo().join("tests/fixtures/hf_style.parquet");
    let four = preprocess(&data, &tmp.path().join("four.safetensors"), Some(4));
    assert_eq!(four.grids.len(), 4);
    // File order: shard 0, rows 0..3.
    assert_eq!(four.sample_ids, vec![0, 0, 0, 1, 0, 2, 0, 3]);

    let out = tmp.path().join("all.safetensors");
    let all = preprocess(&data, &out, None);
    assert_eq!(all.grids.len(), 64, "every fixture row is a good image");
    let rows: Vec<i64> = all.sample_ids.chunks_exact(2).map(|c| c[1]).collect();
    assert_eq!(rows, (0..64).collect::<Vec<_>>());
    assert_eq!(&all.grids[..4], &four.grids[..], "--limit takes a prefix");
    assert_eq!(
        &all.pixel_values.data[..four.pixel_values.data.len()],
        &four.pixel_values.data[..],
        "the same images give the same pixels"
    );
    let distinct: std::collections::BTreeSet<_> = all.grids.iter().collect();
    assert!(distinct.len() > 10, "the fixture covers many sizes");

    if !python_has("numpy, pyarrow, PIL, safetensors, transformers") {
        eprintln!(
            "python3 with transformers not available: skipping the comparison with transformers"
        );
        return;
    }
    let o = Command::new("python3")
        .args(["-c", HF_SCRIPT])
        .arg(&data)
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "transformers comparison failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let hf: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap();
    let hf_grids: Vec<[i64; 3]> = serde_json::from_value(hf["grid"].clone()).unwrap();
    for (i, (ours, theirs)) in all.grids.iter().zip(&hf_grids).enumerate() {
        assert_eq!(ours, theirs, "image_grid_thw of row {i}");
    }
    assert_eq!(all.grids.len(), hf_grids.len());
    // Same layout and normalisation; only the resampling filters differ slightly.
    let diff = hf["mean_abs_diff"]
        .as_f64()
        .expect("same pixel_values shape");
    assert!(diff < 0.02, "mean |ours - transformers| = {diff}");
}
