//! `comp encode`: native-resolution features from the vision tower a training run exported.
use std::path::Path;

use crate::common::*;

fn tensor_f32(st: &safetensors::SafeTensors, name: &str) -> (Vec<usize>, Vec<f32>) {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    let v = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (t.shape().to_vec(), v)
}

fn tensor_i64(st: &safetensors::SafeTensors, name: &str) -> Vec<i64> {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    t.data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

fn encode(vfm: &Path, images: &[&str], out: &Path) -> Vec<u8> {
    let fixtures = repo().join("tests/fixtures/images");
    let mut cmd = comp();
    cmd.args(["encode", "--cpu", "--max-pixels", "50176", "--vision"])
        .arg(vfm)
        .arg("--images");
    for i in images {
        cmd.arg(fixtures.join(i));
    }
    run_ok(cmd.arg("--out").arg(out));
    std::fs::read(out).unwrap()
}

#[test]
fn encode_writes_raster_feature_maps_of_the_exported_tower() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    make_demo_data(&data, 24);
    let run = dir.path().join("run");
    let mut cfg = tiny_config(&data, &run);
    set_stage_steps(&mut cfg, &[1, 1, 1]);
    run_ok(&mut train_cmd(&write_config(
        &cfg,
        &dir.path().join("c.toml"),
    )));
    let vfm = run.join("vfm");
    let hidden = {
        let text = std::fs::read_to_string(vfm.join("config.json")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["hidden_size"]
            .as_u64()
            .expect("hidden_size in the exported config") as usize
    };

    let a = encode(
        &vfm,
        &["camera.jpg", "page.png", "camera_exif6.jpg"],
        &dir.path().join("a.safetensors"),
    );
    let a = safetensors::SafeTensors::deserialize(&a).unwrap();
    for i in 0..3 {
        let grid = tensor_i64(&a, &format!("grid.{i}"));
        let (shape, values) = tensor_f32(&a, &format!("features.{i}"));
        assert_eq!(grid[0], 1, "a still image has one frame");
        assert_eq!(
            shape,
            vec![(grid[1] * grid[2]) as usize, hidden],
            "image {i}: [h*w, D]"
        );
        assert!(values.iter().all(|x| x.is_finite()));
        assert!(
            grid[1] % 2 == 0 && grid[2] % 2 == 0,
            "grids are multiples of the 2x2 merge window"
        );
    }
    // EXIF orientation is applied: the rotated file has the upright file's grid.
    assert_eq!(tensor_i64(&a, "grid.0"), tensor_i64(&a, "grid.2"));

    // Features do not depend on which other images share the call (attention stays within an image).
    let b = encode(&vfm, &["page.png"], &dir.path().join("b.safetensors"));
    let b = safetensors::SafeTensors::deserialize(&b).unwrap();
    let (_, alone) = tensor_f32(&b, "features.0");
    let (_, together) = tensor_f32(&a, "features.1");
    let max_diff = alone
        .iter()
        .zip(&together)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(
        max_diff < 1e-4,
        "page.png encoded alone vs with others: max diff {max_diff}"
    );
}
