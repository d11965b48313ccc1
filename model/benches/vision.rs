//! Benchmark: forward+backward of our vision tower vs transformers' `SiglipVisionModel` (python3
//! subprocess, same sizes, same images, same thread count), and packed vs per-image attention.
//! Run: `cargo bench -p comp-model --bench vision`. Prints times and ratios (lower ratio = ours faster).
use std::path::Path;
use std::time::Instant;

use comp_model::attention::{packed_attention, per_segment_attention};
use comp_model::rope::merge_window_order;
use comp_model::vision::VisionTower;
use comp_model::{PosInterp, VisionConfig};
use tch::{Device, Kind, Tensor, nn};

const P: i64 = 14;

fn median_secs(iters: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..iters)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    t[t.len() / 2]
}

/// `[C, H, W]` image to merge-window-ordered patch rows (the pipeline's layout).
fn window_rows(img: &Tensor, h: i64, w: i64) -> Tensor {
    let rows = img
        .view([3, h, P, w, P])
        .permute([1, 3, 0, 2, 4])
        .reshape([h * w, 3 * P * P]);
    rows.index_select(0, &Tensor::from_slice(&merge_window_order(h, w, 2)))
}

fn tower_bench(threads: i32, iters: usize) {
    let cfg = VisionConfig {
        hidden_size: 384,
        num_hidden_layers: 6,
        num_attention_heads: 6,
        intermediate_size: 1536,
        base_grid: 16,
        pos_interp: PosInterp::Bicubic,
        ..VisionConfig::siglip_so400m()
    };
    let grids: [(i64, i64); 4] = [(16, 16), (20, 12), (12, 20), (8, 8)];
    tch::manual_seed(0);
    let images: Vec<Tensor> = grids
        .iter()
        .map(|&(h, w)| Tensor::randn([3, h * P, w * P], (Kind::Float, Device::Cpu)))
        .collect();
    let rows = Tensor::cat(
        &images
            .iter()
            .zip(&grids)
            .map(|(im, &(h, w))| window_rows(im, h, w))
            .collect::<Vec<_>>(),
        0,
    );
    let grid_thw: Vec<[i64; 3]> = grids.iter().map(|&(h, w)| [1, h, w]).collect();
    let vs = nn::VarStore::new(Device::Cpu);
    let tower = VisionTower::new(vs.root() / "vision", &cfg).unwrap();
    let step = |rope: bool| {
        vs.trainable_variables()
            .iter_mut()
            .for_each(|t| t.zero_grad());
        let out = tower.forward(&rows, &grid_thw, rope, Kind::Float).unwrap();
        out.pow_tensor_scalar(2).mean(Kind::Float).backward();
    };
    let ours = median_secs(iters, || step(false));
    let ours_rope = median_secs(iters, || step(true));

    let dir = tempfile::tempdir().unwrap();
    let hf_cfg = serde_json::json!({
        "hidden_size": cfg.hidden_size, "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads, "intermediate_size": cfg.intermediate_size,
        "image_size": cfg.base_grid * P, "patch_size": P, "layer_norm_eps": cfg.layer_norm_eps,
    });
    std::fs::write(dir.path().join("config.json"), hf_cfg.to_string()).unwrap();
    let named: Vec<(String, Tensor)> = images
        .iter()
        .enumerate()
        .map(|(i, t)| (format!("image.{i}"), t.shallow_clone()))
        .collect();
    Tensor::write_safetensors(&named, dir.path().join("images.safetensors")).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/siglip_hf.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(dir.path().join("config.json"))
        .arg(dir.path().join("images.safetensors"))
        .arg(threads.to_string())
        .arg(iters.to_string())
        .output()
        .expect("python3 with torch + transformers");
    let patches: i64 = grids.iter().map(|(h, w)| h * w).sum();
    println!(
        "vision tower fwd+bwd: D={} L={} heads={} mlp={}, {} images, {patches} patches, {threads} threads",
        cfg.hidden_size,
        cfg.num_hidden_layers,
        cfg.num_attention_heads,
        cfg.intermediate_size,
        grids.len()
    );
    println!("  ours (packed, RoPE off)     {:8.1} ms", ours * 1e3);
    println!("  ours (packed, RoPE on)      {:8.1} ms", ours_rope * 1e3);
    if !out.status.success() {
        println!(
            "  transformers baseline failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let hf = v["median_s"].as_f64().unwrap();
    println!(
        "  transformers SiglipVisionModel (per image, sdpa) {:8.1} ms",
        hf * 1e3
    );
    println!(
        "  ratio ours/transformers: {:.2}x (RoPE off), {:.2}x (RoPE on)",
        ours / hf,
        ours_rope / hf
    );
}

fn attention_bench(iters: usize) {
    tch::manual_seed(0);
    // a bucketed batch: many images, few distinct sizes
    let lens: Vec<i64> = (0..48).map(|i| [64i64, 144, 256, 64][i % 4]).collect();
    let mut cu = vec![0i64];
    for l in &lens {
        cu.push(cu.last().unwrap() + l);
    }
    let n = *cu.last().unwrap();
    let (h, d) = (6, 64);
    let mk = || Tensor::randn([n, h, d], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let (q, k, v) = (mk(), mk(), mk());
    // the forbidden baseline: one call over the whole sequence with a (Σn)×(Σn) block-diagonal mask
    let seg = Tensor::cat(
        &lens
            .iter()
            .enumerate()
            .map(|(i, &l)| Tensor::full([l], i as i64, (Kind::Int64, Device::Cpu)))
            .collect::<Vec<_>>(),
        0,
    );
    let mask = seg.unsqueeze(1).eq_tensor(&seg.unsqueeze(0));
    let t = |x: &Tensor| x.transpose(0, 1).unsqueeze(0);
    let variants: [&dyn Fn() -> Tensor; 3] = [
        &|| packed_attention(&q, &k, &v, &cu, false),
        &|| per_segment_attention(&q, &k, &v, &cu, false),
        &|| {
            Tensor::scaled_dot_product_attention(
                &t(&q),
                &t(&k),
                &t(&v),
                Some(&mask),
                0.0,
                false,
                None,
                false,
            )
        },
    ];
    // interleaved rounds so that load from other processes hits every variant alike
    let mut times = vec![Vec::new(); variants.len()];
    for round in 0..=iters {
        for (i, f) in variants.iter().enumerate() {
            let s = Instant::now();
            f().sum(Kind::Float).backward();
            if round > 0 {
                times[i].push(s.elapsed().as_secs_f64());
            }
        }
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let (packed, per_image, full) = (med(&mut times[0]), med(&mut times[1]), med(&mut times[2]));
    println!(
        "packed attention fwd+bwd: {} images ({} distinct sizes), {n} tokens, {h} heads x {d}",
        lens.len(),
        3
    );
    println!("  grouped packed (ours)       {:8.2} ms", packed * 1e3);
    println!(
        "  per-image loop              {:8.2} ms   ratio packed/per-image {:.2}x",
        per_image * 1e3,
        packed / per_image
    );
    println!(
        "  full masked (Σn)^2          {:8.2} ms   ratio packed/full {:.2}x",
        full * 1e3,
        packed / full
    );
}

fn main() {
    let threads = tch::get_num_threads();
    let iters = std::env::var("COMP_BENCH_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    // COMP_BENCH_ONLY=tower|attention runs one half
    let only = std::env::var("COMP_BENCH_ONLY").unwrap_or_default();
    if only != "attention" {
        tower_bench(threads, iters);
    }
    if only != "tower" {
        attention_bench(iters);
    }
}
