//! Resuming from the `at` cursor of any sample yields exactly the rest of the uninterrupted stream.
use comp_datasets::{Cursor, Dataset, DatasetConfig, Item};
use futures::StreamExt;

use crate::common::{Key, fixture, key, runtime};

pub fn check_resume(sources: &[String], shuffle: bool, shuffle_window: usize, stride: usize) {
    let cfg = DatasetConfig {
        sources: sources.to_vec(),
        shuffle,
        shuffle_window,
        seed: 42,
        epochs: Some(2),
        read_ahead: 3,
        ..DatasetConfig::default()
    };
    let ds = Dataset::open(cfg).unwrap();
    let rt = runtime();
    let full: Vec<Key> = rt.block_on(ds.stream(Cursor::default()).map(key).collect());
    assert!(full.iter().all(|k| !matches!(k, Key::Err(_))));
    let mut checked = 0;
    for (i, k) in full.iter().enumerate() {
        let Key::Sample { at, .. } = k else { continue };
        if i % stride != 0 {
            continue;
        }
        // The cursor survives a round trip through JSON, as it would through a checkpoint.
        let at: Cursor = serde_json::from_str(&serde_json::to_string(at).unwrap()).unwrap();
        let resumed: Vec<Key> = rt.block_on(ds.stream(at).map(key).collect());
        assert_eq!(
            resumed,
            full[i..],
            "resume at item {i} (shuffle {shuffle}, window {shuffle_window})"
        );
        checked += 1;
    }
    assert!(checked > 10);
}

fn fixtures() -> Vec<String> {
    [
        "hf_style.parquet",
        "bad/mixed_good_and_bad.parquet",
        "bad/zero_rows.parquet",
        "raw_bytes.parquet",
    ]
    .iter()
    .map(|f| fixture(f))
    .collect()
}

#[test]
fn resume_at_every_sample_without_shuffle() {
    check_resume(&fixtures(), false, 3, 1);
}

#[test]
fn resume_at_every_sample_with_shuffle() {
    check_resume(&fixtures(), true, 3, 1);
}

#[test]
fn resume_with_single_unit_windows() {
    check_resume(&fixtures(), true, 1, 1);
}

#[test]
fn resume_in_a_later_partition() {
    let cfg = DatasetConfig {
        sources: fixtures(),
        seed: 3,
        epochs: Some(2),
        rank: 1,
        world_size: 2,
        worker: 1,
        num_workers: 2,
        ..DatasetConfig::default()
    };
    let ds = Dataset::open(cfg).unwrap();
    let rt = runtime();
    let full: Vec<Key> = rt.block_on(ds.stream(Cursor::default()).map(key).collect());
    for (i, k) in full.iter().enumerate() {
        if let Key::Sample { at, .. } = k {
            let resumed: Vec<Key> = rt.block_on(ds.stream(at.clone()).map(key).collect());
            assert_eq!(resumed, full[i..]);
        }
    }
}

#[test]
fn cursor_from_another_config_is_rejected() {
    let mk = |seed| {
        Dataset::open(DatasetConfig {
            sources: vec![fixture("hf_style.parquet")],
            seed,
            ..DatasetConfig::default()
        })
        .unwrap()
    };
    let rt = runtime();
    let first = rt.block_on(async { mk(1).stream(Cursor::default()).next().await });
    let Some(Ok(Item::Sample { at, .. })) = first else {
        panic!("expected a sample")
    };
    let other: Vec<Key> = rt.block_on(mk(2).stream(at).map(key).collect());
    assert_eq!(other.len(), 1);
    assert!(matches!(&other[0], Key::Err(e) if e.contains("cursor does not belong")));
}

#[test]
fn streams_repeat_forever_without_an_epoch_limit() {
    let ds = Dataset::open(DatasetConfig {
        sources: vec![fixture("raw_bytes.parquet")],
        epochs: None,
        ..DatasetConfig::default()
    })
    .unwrap();
    let keys: Vec<Key> = runtime().block_on(
        ds.stream(Cursor::default())
            .take(64 * 5 + 1)
            .map(key)
            .collect(),
    );
    assert_eq!(keys.len(), 64 * 5 + 1);
    let Key::Sample { at, .. } = keys.last().unwrap() else {
        panic!()
    };
    assert_eq!(at.epoch, 5);
}
