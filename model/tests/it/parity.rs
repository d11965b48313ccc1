//! Parity with Hugging Face transformers (f32, tiny random models written by `tests/py/reference.py`).
use comp_model::checkpoint::{
    llm_config_from_dir, load_hf_llm, load_hf_vision, vision_config_from_dir,
};
use comp_model::qwen2::Qwen2ForCausalLM;
use comp_model::rope::{apply_rotary, raster_from_window, vision_cos_sin, vision_position_ids};
use comp_model::vision::VisionTower;
use tch::{Device, Kind, Tensor, nn};

use crate::common::{load_io, max_abs_diff, reference};

#[test]
fn siglip_tower_matches_transformers_with_rope_off() {
    let dir = reference("siglip");
    let io = load_io(dir.path());
    for post_ln in [false, true] {
        let mut cfg = vision_config_from_dir(dir.path()).unwrap();
        assert_eq!(
            (cfg.hidden_size, cfg.base_grid, cfg.patch_size),
            (64, 8, 14)
        );
        cfg.use_post_layernorm = post_ln;
        let vs = nn::VarStore::new(Device::Cpu);
        let tower = VisionTower::new(vs.root() / "vision", &cfg).unwrap();
        let report = load_hf_vision(&vs, &cfg, dir.path()).unwrap();
        assert!(
            report.skipped.iter().all(|n| n.contains("head.")),
            "{:?}",
            report.skipped
        );
        let n_images = io.keys().filter(|k| k.starts_with("grid.")).count();
        let grids: Vec<[i64; 3]> = (0..n_images)
            .map(|i| {
                <[i64; 3]>::try_from(Vec::<i64>::try_from(&io[&format!("grid.{i}")]).unwrap())
                    .unwrap()
            })
            .collect();
        let rows: Vec<&Tensor> = (0..n_images)
            .map(|i| &io[&format!("patches.{i}")])
            .collect();
        // all images in one packed call; compare each after reordering to raster
        let out = tch::no_grad(|| {
            tower
                .forward(&Tensor::cat(&rows, 0), &grids, false, Kind::Float)
                .unwrap()
        });
        let mut start = 0;
        for (i, &[_, h, w]) in grids.iter().enumerate() {
            let inv = Tensor::from_slice(&raster_from_window(h, w, 2));
            let ours = out.narrow(0, start, h * w).index_select(0, &inv);
            let want = &io[&format!("{}.{i}", if post_ln { "last" } else { "hidden" })];
            let d = max_abs_diff(&ours, want);
            assert!(
                d < 1e-4,
                "image {i} ({h}x{w}) post_ln={post_ln}: max diff {d}"
            );
            start += h * w;
        }
    }
}

#[test]
fn qwen2_logits_match_transformers() {
    let dir = reference("qwen2");
    let io = load_io(dir.path());
    let cfg = llm_config_from_dir(dir.path()).unwrap();
    assert!(!cfg.tie_word_embeddings);
    let vs = nn::VarStore::new(Device::Cpu);
    let llm = Qwen2ForCausalLM::new(vs.root() / "llm", &cfg);
    load_hf_llm(&vs, &cfg, dir.path()).unwrap();
    let n = io.keys().filter(|k| k.starts_with("ids.")).count();
    let ids: Vec<&Tensor> = (0..n).map(|i| &io[&format!("ids.{i}")]).collect();
    let lens: Vec<i64> = ids.iter().map(|t| t.size()[0]).collect();
    let mut cu = vec![0i64];
    for l in &lens {
        cu.push(cu.last().unwrap() + l);
    }
    let pos = Tensor::cat(
        &lens
            .iter()
            .map(|&l| Tensor::arange(l, (Kind::Int64, Device::Cpu)))
            .collect::<Vec<_>>(),
        0,
    );
    // packed: positions restart per sample, attention stays within each
    let logits = tch::no_grad(|| {
        let h = llm.forward_embeds(&llm.embed(&Tensor::cat(&ids, 0), Kind::Float), &pos, &cu);
        llm.logits(&h)
    });
    for i in 0..n {
        let d = max_abs_diff(
            &logits.narrow(0, cu[i], lens[i]),
            &io[&format!("logits.{i}")],
        );
        assert!(d < 1e-4, "sequence {i}: max diff {d}");
    }
}

#[test]
fn vision_rope_matches_qwen2_vl() {
    let dir = reference("rope");
    let io = load_io(dir.path());
    let g: Vec<i64> = Vec::try_from(&io["grid"].flatten(0, -1)).unwrap();
    let grids: Vec<[i64; 3]> = g.chunks(3).map(|c| [c[0], c[1], c[2]]).collect();
    let (rows, cols) = vision_position_ids(&grids, 2);
    let (cos, sin) = vision_cos_sin(&rows, &cols, 32, 10000.0, Device::Cpu);
    assert!(max_abs_diff(&cos, &io["cos"]) < 1e-5);
    assert!(max_abs_diff(&sin, &io["sin"]) < 1e-5);
    assert!(max_abs_diff(&apply_rotary(&io["q"], &cos, &sin), &io["q_rot"]) < 1e-5);
    assert!(max_abs_diff(&apply_rotary(&io["k"], &cos, &sin), &io["k_rot"]) < 1e-5);
}
