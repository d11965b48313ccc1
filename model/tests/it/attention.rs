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

#[test]
fn temporal_patch_rows_of_a_still_equal_single_frame_rows() {
    tch::manual_seed(0);
    let cfg1 = VisionConfig::tiny();
    let cfg2 = VisionConfig {
        temporal_patch_size: 2,
        ..cfg1.clone()
    };
    let vs = nn::VarStore::new(Device::Cpu);
    let tower1 = VisionTower::new(vs.root(), &cfg1).unwrap();
    let vs2 = nn::VarStore::new(Device::Cpu);
    let tower2 = VisionTower::new(vs2.root(), &cfg2).unwrap();
    tch::no_grad(|| {
        let mut d2 = vs2.variables();
        for (name, t) in vs.variables() {
            d2.get_mut(&name).unwrap().copy_(&t);
        }
    });
    let n = 16;
    let x = Tensor::randn([n, cfg1.patch_dim()], (Kind::Float, Device::Cpu));
    // Qwen2-VL row layout: per channel, T copies of the P*P patch
    let pp = cfg1.patch_size * cfg1.patch_size;
    let x2 = x.view([n, 3, 1, pp]).repeat([1, 1, 2, 1]).view([n, -1]);
    let a = tower1.forward(&x, &[[1, 4, 4]], true, Kind::Float).unwrap();
    let b = tower2
        .forward(&x2, &[[1, 4, 4]], true, Kind::Float)
        .unwrap();
    assert!(max_abs_diff(&a, &b) < 1e-5);
}

#[test]
fn raster_compat_and_bilinear_change_only_positions() {
    tch::manual_seed(0);
    let base = VisionConfig::tiny();
    let vs = nn::VarStore::new(Device::Cpu);
    let tower = VisionTower::new(vs.root(), &base).unwrap();
    // the interpolated table at the base grid is the table itself; bilinear differs off-grid
    let at_base = tower.interpolated_positions(base.base_grid, base.base_grid);
    let table = &vs.variables()["embeddings.position_embedding.weight"];
    assert_eq!(max_abs_diff(&at_base, table), 0.0);
    let vs_b = nn::VarStore::new(Device::Cpu);
    let bil = VisionTower::new(
        vs_b.root(),
        &VisionConfig {
            pos_interp: comp_model::PosInterp::Bilinear,
            ..base.clone()
        },
    )
    .unwrap();
    tch::no_grad(|| {
        vs_b.variables()
            .get_mut("embeddings.position_embedding.weight")
            .unwrap()
            .copy_(table)
    });
    let d = max_abs_diff(
        &bil.interpolated_positions(6, 10),
        &tower.interpolated_positions(6, 10),
    );
    assert!(d > 1e-4, "bilinear and bicubic should differ");
    // raster compatibility: same tower, positions added without the window reordering
    let vs_c = nn::VarStore::new(Device::Cpu);
    let compat = VisionTower::new(
        vs_c.root(),
        &VisionConfig {
            raster_pos_compat: true,
            ..base.clone()
        },
    )
    .unwrap();
    tch::no_grad(|| {
        let mut dc = vs_c.variables();
        for (name, t) in vs.variables() {
            dc.get_mut(&name).unwrap().copy_(&t);
        }
    });
    let x = Tensor::randn([24, base.patch_dim()], (Kind::Float, Device::Cpu));
    let a = tower.forward(&x, &[[1, 4, 6]], false, Kind::Float).unwrap();
    let b = compat
        .forward(&x, &[[1, 4, 6]], false, Kind::Float)
        .unwrap();
    assert!(
        max_abs_diff(&a, &b) > 1e-4,
        "raster-order positions must differ from window-order ones"
    );
}
