//! Across ranks and workers the partition is disjoint and complete, every epoch, for any seed.
use std::collections::BTreeSet;

use comp_datasets::{DatasetConfig, SampleId};

use crate::common::{Key, collect, fixture};

fn ids(keys: &[Key]) -> Vec<SampleId> {
    keys.iter()
        .map(|k| match k {
            Key::Sample { id, .. } | Key::Skip { id, .. } => *id,
            Key::Err(e) => panic!("unexpected error {e}"),
        })
        .collect()
}

pub fn check_partition(sources: &[String], epochs: u64) {
    let base = DatasetConfig {
        sources: sources.to_vec(),
        shuffle: true,
        shuffle_window: 3,
        epochs: Some(epochs),
        ..DatasetConfig::default()
    };
    let everything: BTreeSet<SampleId> = ids(&collect(DatasetConfig {
        epochs: Some(1),
        shuffle: false,
        ..base.clone()
    }))
    .into_iter()
    .collect();
    assert!(!everything.is_empty());
    for (world_size, num_workers) in [(1, 1), (2, 1), (1, 3), (2, 2), (3, 2), (4, 4)] {
        for seed in [0, 7, 1234] {
            let mut per_epoch = vec![Vec::new(); epochs as usize];
            let mut skipped = Vec::new();
            for rank in 0..world_size {
                for worker in 0..num_workers {
                    let keys = collect(DatasetConfig {
                        seed,
                        rank,
                        world_size,
                        worker,
                        num_workers,
                        ..base.clone()
                    });
                    for k in keys {
                        match k {
                            Key::Sample { id, at, .. } => per_epoch[at.epoch as usize].push(id),
                            Key::Skip { id, .. } => skipped.push(id),
                            Key::Err(e) => panic!("unexpected error {e}"),
                        }
                    }
                }
            }
            let ctx = format!("world {world_size} workers {num_workers} seed {seed}");
            // Skips carry no epoch: each skipped id must appear exactly once per epoch.
            let skip_set: BTreeSet<SampleId> = skipped.iter().copied().collect();
            assert_eq!(
                skipped.len(),
                skip_set.len() * epochs as usize,
                "{ctx}: skips once per epoch"
            );
            for (e, got) in per_epoch.iter().enumerate() {
                let set: BTreeSet<SampleId> = got.iter().copied().collect();
                assert_eq!(set.len(), got.len(), "disjoint: {ctx} epoch {e}");
                let all: BTreeSet<SampleId> = set.union(&skip_set).copied().collect();
                assert!(set.is_disjoint(&skip_set), "{ctx} epoch {e}");
                assert_eq!(all, everything, "complete: {ctx} epoch {e}");
            }
        }
    }
}

#[test]
fn fixtures_partition_disjoint_and_complete() {
    let sources: Vec<String> = [
        "hf_style.parquet",
        "raw_bytes.parquet",
        "bad/mixed_good_and_bad.parquet",
    ]
    .iter()
    .map(|f| fixture(f))
    .collect();
    check_partition(&sources, 2);
}

#[test]
fn shuffle_changes_order_per_epoch_and_seed_but_not_per_read_ahead() {
    let cfg = |seed, read_ahead| DatasetConfig {
        sources: vec![fixture("hf_style.parquet"), fixture("raw_bytes.parquet")],
        seed,
        read_ahead,
        epochs: Some(2),
        ..DatasetConfig::default()
    };
    let a = ids(&collect(cfg(1, 1)));
    let b = ids(&collect(cfg(1, 8)));
    let c = ids(&collect(cfg(2, 4)));
    assert_eq!(a, b, "order does not depend on read-ahead");
    assert_ne!(a, c, "order depends on the seed");
    assert_ne!(a[..128], a[128..], "each epoch is shuffled differently");
    let sorted: BTreeSet<_> = a[..128].iter().collect();
    assert_eq!(sorted.len(), 128);
}
