//! Checkpoints: our own round trip, Hugging Face import errors, and exports that transformers loads.
use std::path::Path;

use comp_model::checkpoint::{
    export_vision, load_checkpoint, load_hf_vision, save_checkpoint, vision_config_from_dir,
};
use comp_model::rope::raster_from_window;
use comp_model::vision::VisionTower;
use comp_model::{CompConfig, CompModel, ModelError, VisionConfig, VisionFamily};
use tch::{Device, Kind, Tensor, nn};

use crate::common::{load_io, max_abs_diff, reference};

fn run_py(kind: &str, dir: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/reference.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(kind)
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn own_checkpoint_round_trip() {
    let cfg = CompConfig::tiny(64);
    tch::manual_seed(1);
    let vs_a = nn::VarStore::new(Device::Cpu);
    let _a = CompModel::new(vs_a.root(), &cfg).unwrap();
    tch::manual_seed(2);
    let vs_b = nn::VarStore::new(Device::Cpu);
    let _b = CompModel::new(vs_b.root(), &cfg).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ckpt.safetensors");
    save_checkpoint(&vs_a, &path).unwrap();
    let report = load_checkpoint(&vs_b, &path).unwrap();
    assert_eq!(report.loaded, vs_a.variables().len());
    let b = vs_b.variables();
    for (name, t) in vs_a.variables() {
        assert_eq!(max_abs_diff(&t, &b[&name]), 0.0, "{name}");
    }
}

#[test]
fn mismatched_checkpoint_lists_every_problem() {
    let dir = reference("siglip");
    let cfg = VisionConfig {
        hidden_size: 32,
        num_attention_heads: 4,
        ..vision_config_from_dir(dir.path()).unwrap()
    };
    let vs = nn::VarStore::new(Device::Cpu);
    let _t = VisionTower::new(vs.root() / "vision", &cfg).unwrap();
    let err = load_hf_vision(&vs, &cfg, dir.path()).unwrap_err();
    let ModelError::CheckpointMismatch { report, .. } = &err else {
        panic!("{err}")
    };
    assert!(report.contains("mis-shaped"), "{report}");
    assert!(
        report.contains(
            "embeddings.patch_embedding.weight: checkpoint [64, 3, 14, 14], model [32, 3, 14, 14]"
        ),
        "{report}"
    );

    let qwen = reference("qwen2");
    let cfg = vision_config_from_dir(dir.path()).unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let _t = VisionTower::new(vs.root() / "vision", &cfg).unwrap();
    let err = load_hf_vision(&vs, &cfg, qwen.path())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("missing")
            && err.contains("unexpected")
            && err.contains("model.embed_tokens.weight"),
        "{err}"
    );
}

#[test]
fn siglip_export_loads_in_transformers_and_matches() {
    tch::manual_seed(4);
    let cfg = VisionConfig {
        rope: false,
        ..VisionConfig::tiny()
    };
    let vs = nn::VarStore::new(Device::Cpu);
    let tower = VisionTower::new(vs.root() / "vision", &cfg).unwrap();
    let dir = tempfile::tempdir().unwrap();
    export_vision(&vs, &cfg, dir.path()).unwrap();
    assert_eq!(
        vision_config_from_dir(dir.path()).unwrap(),
        cfg,
        "C-RoPE settings survive the export"
    );
    run_py("load_export", dir.path());
    let io = load_io(dir.path());
    for i in 0..2 {
        let g: Vec<i64> = Vec::try_from(&io[&format!("grid.{i}")]).unwrap();
        let out = tch::no_grad(|| {
            tower
                .forward(
                    &io[&format!("patches.{i}")],
                    &[[g[0], g[1], g[2]]],
                    false,
                    Kind::Float,
                )
                .unwrap()
        });
        let ours = out.index_select(0, &Tensor::from_slice(&raster_from_window(g[1], g[2], 2)));
        assert!(max_abs_diff(&ours, &io[&format!("hidden.{i}")]) < 1e-4);
    }
}

#[test]
fn dinov2_imports_and_exports() {
    let dir = reference("dinov2");
    let cfg = vision_config_from_dir(dir.path()).unwrap();
    assert_eq!(cfg.family, VisionFamily::Dinov2);
    assert_eq!((cfg.base_grid, cfg.intermediate_size), (6, 128));
    let vs = nn::VarStore::new(Device::Cpu);
    let tower = VisionTower::new(vs.root() / "vision", &cfg).unwrap();
    let report = load_hf_vision(&vs, &cfg, dir.path()).unwrap();
    assert_eq!(report.loaded, vs.variables().len());
    let cls = &vs.variables()["vision.embeddings.cls_token"];
    assert!(
        cls.abs().sum(Kind::Float).double_value(&[]) > 0.0,
        "CLS token kept for export"
    );
    let x = Tensor::randn([2 * 4 * 6, cfg.patch_dim()], (Kind::Float, Device::Cpu));
    let y = tower
        .forward(&x, &[[1, 4, 6], [1, 6, 4]], true, Kind::Float)
        .unwrap();
    assert_eq!(y.size(), vec![48, cfg.hidden_size]);
    let out = tempfile::tempdir().unwrap();
    export_vision(&vs, &cfg, out.path()).unwrap();
    run_py("load_export", out.path());
}
