//! Packed attention equals per-segment attention; a packed vision batch equals each image alone.
use comp_model::attention::{packed_attention, per_segment_attention};
use comp_model::{VisionConfig, vision::VisionTower};
use tch::{Device, Kind, Tensor, nn};

use crate::common::max_abs_diff;

#[test]
fn packed_equals_per_segment() {
    tch::manual_seed(0);
    // unsorted, repeated and empty segments
    let lens = [5i64, 9, 5, 0, 3, 9, 5];
    let mut cu = vec![0i64];
    for l in lens {
        cu.push(cu.last().unwrap() + l);
    }
    let n = *cu.last().unwrap();
    for (h, h_kv, causal) in [(4, 4, false), (4, 2, true), (6, 1, true)] {
        let q = Tensor::randn([n, h, 8], (Kind::Float, Device::Cpu));
        let k = Tensor::randn([n, h_kv, 8], (Kind::Float, Device::Cpu));
        let v = Tensor::randn([n, h_kv, 8], (Kind::Float, Device::Cpu));
        let a = packed_attention(&q, &k, &v, &cu, causal);
        let b = per_segment_attention(&q, &k, &v, &cu, causal);
        assert!(max_abs_diff(&a, &b) < 1e-5);
    }
}

#[test]
fn packed_vision_batch_equals_each_image_alone() {
    tch::manual_seed(0);
    let cfg = VisionConfig::tiny();
    let vs = nn::VarStore::new(Device::Cpu);
    let tower = VisionTower::new(vs.root(), &cfg).unwrap();
    let grids = [[1i64, 4, 6], [1, 2, 2], [1, 4, 6], [2, 2, 4]];
    let rows: Vec<Tensor> = grids
        .iter()
        .map(|g| {
            Tensor::randn(
                [g[0] * g[1] * g[2], cfg.patch_dim()],
                (Kind::Float, Device::Cpu),
            )
        })
        .collect();
    let packed = tower
        .forward(&Tensor::cat(&rows, 0), &grids, true, Kind::Float)
        .unwrap();
    let mut start = 0;
    for (g, x) in grids.iter().zip(&rows) {
        let alone = tower.forward(x, &[*g], true, Kind::Float).unwrap();
        let n = alone.size()[0];
        assert!(max_abs_diff(&packed.narrow(0, start, n), &alone) < 1e-5);
        start += n;
    }
}
