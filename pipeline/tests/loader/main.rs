//! The whole loader: Parquet shards in, packed batches out.
//!
//! Determinism across worker counts, exact resume at many cut points, bad data skipped with reasons
//! while every good sample arrives, and backpressure bounding how far the stages run ahead.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::Ordering;
use std::time::Duration;

use comp_datasets::SampleId;
use comp_datasets::demo::{DemoConfig, generate};
use comp_pipeline::PackedBatch;
use comp_pipeline::loader::{ASSEMBLING_BATCHES, Loader, LoaderConfig, LoaderState};
use comp_pipeline::tokenize::train_demo_tokenizer;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures");

struct Demo {
    _dir: tempfile::TempDir,
    data: PathBuf,
    tokenizer: PathBuf,
}

/// Small demo shards and a tokenizer trained on their captions, made once per test binary.
fn demo() -> &'static Demo {
    static DEMO: OnceLock<Demo> = OnceLock::new();
    DEMO.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let cfg = DemoConfig {
            rows: 160,
            shards: 3,
            row_groups_per_shard: 4,
            max_side: 256,
            ..Default::default()
        };
        let rows: Vec<_> = (0..cfg.rows)
            .map(|i| comp_datasets::demo::generate_row(&cfg, i).unwrap().caption)
            .collect();
        generate(&data, &cfg).unwrap();
        let tokenizer = dir.path().join("tokenizer.json");
        train_demo_tokenizer(rows.iter(), 512, &tokenizer).unwrap();
        Demo {
            _dir: dir,
            data,
            tokenizer,
        }
    })
}

fn config(data: &Path, tokenizer: &Path, workers: usize) -> LoaderConfig {
    let mut cfg = LoaderConfig::default();
    cfg.dataset.sources = vec![data.display().to_string()];
    cfg.dataset.shuffle = true;
    cfg.dataset.seed = 7;
    cfg.dataset.shuffle_window = 2;
    cfg.text.tokenizer = Some(tokenizer.to_path_buf());
    cfg.image.max_pixels = 128 * 128;
    cfg.pack.max_patches = 512;
    cfg.pack.max_images = 16;
    cfg.pack.buffer_size = 12;
    cfg.workers = workers;
    cfg.batch_queue = 2;
    cfg
}

fn collect(cfg: LoaderConfig, state: Option<LoaderState>) -> Vec<(PackedBatch, LoaderState)> {
    Loader::start(cfg, state)
        .unwrap()
        .map(|b| b.unwrap())
        .map(|b| (b.batch, b.state))
        .collect()
}

fn ids(batches: &[(PackedBatch, LoaderState)]) -> Vec<Vec<SampleId>> {
    batches.iter().map(|(b, _)| b.sample_ids.clone()).collect()
}

#[test]
fn same_batches_with_1_2_and_4_workers() {
    let d = demo();
    let one = collect(config(&d.data, &d.tokenizer, 1), None);
    assert!(one.len() > 5, "only {} batches", one.len());
    let all: BTreeSet<SampleId> = one
        .iter()
        .flat_map(|(b, _)| b.sample_ids.iter().copied())
        .collect();
    assert_eq!(all.len(), 160, "every demo sample arrives exactly once");
    for workers in [2, 4] {
        let other = collect(config(&d.data, &d.tokenizer, workers), None);
        assert_eq!(
            ids(&one),
            ids(&other),
            "batch composition differs with {workers} workers"
        );
        for ((a, _), (b, _)) in one.iter().zip(&other) {
            assert_eq!(a, b, "batch contents differ with {workers} workers");
        }
    }
}

#[test]
fn resume_from_any_batch_equals_the_uninterrupted_stream() {
    let d = demo();
    let full = collect(config(&d.data, &d.tokenizer, 2), None);
    for cut in 0..full.len() {
        let state = full[cut].1.clone();
        // The state must survive serialisation (it is stored inside training checkpoints).
        let state: LoaderState =
            serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap();
        let resumed = collect(config(&d.data, &d.tokenizer, 2), Some(state));
        assert_eq!(
            ids(&resumed),
            ids(&full[cut + 1..]),
            "resume after batch {cut} diverged"
        );
        for ((a, _), (b, _)) in resumed.iter().zip(&full[cut + 1..]) {
            assert_eq!(a, b, "resume after batch {cut}: contents differ");
        }
    }
}

#[test]
fn resume_across_epochs_equals_the_uninterrupted_stream() {
    let d = demo();
    let mut cfg = config(&d.data, &d.tokenizer, 2);
    cfg.dataset.epochs = Some(2);
    let full = collect(cfg.clone(), None);
    let per_epoch: usize = 160;
    assert_eq!(
        full.iter().map(|(b, _)| b.num_samples()).sum::<usize>(),
        2 * per_epoch
    );
    for cut in (0..full.len()).step_by(3) {
        let resumed = collect(cfg.clone(), Some(full[cut].1.clone()));
        assert_eq!(
            ids(&resumed),
            ids(&full[cut + 1..]),
            "resume after batch {cut} diverged"
        );
    }
}

#[test]
fn bad_rows_are_skipped_with_reasons_and_every_good_row_arrives() {
    let d = demo();
    let mut cfg = config(
        Path::new(&format!("{FIXTURES}/bad/mixed_good_and_bad.parquet")),
        &d.tokenizer,
        2,
    );
    cfg.image.max_pixels = 256 * 256;
    cfg.pack.max_patches = 2048;
    cfg.pack.buffer_size = 4;
    let mut loader = Loader::start(cfg, None).unwrap();
    let mut got = BTreeSet::new();
    for b in &mut loader {
        got.extend(b.unwrap().batch.sample_ids.iter().map(|id| id.row));
    }
    // Rows 6-13 are bad (see tests/fixtures/bad); every other row is a good image with a caption.
    let good: BTreeSet<u64> = (0..20).filter(|r| !(6..=13).contains(r)).collect();
    assert_eq!(got, good);
    let skips = loader.metrics().skips();
    assert_eq!(skips.get("empty_image"), Some(&1), "{skips:?}");
    assert_eq!(skips.get("null_image"), Some(&1), "{skips:?}");
    assert_eq!(skips.get("null_caption"), Some(&1), "{skips:?}");
    assert_eq!(skips.get("empty_caption"), Some(&1), "{skips:?}");
    assert_eq!(skips.get("unknown_format"), Some(&2), "{skips:?}");
    assert_eq!(skips.get("truncated"), Some(&2), "{skips:?}");
    let examples = loader.metrics().skip_examples();
    assert!(
        examples
            .iter()
            .all(|e| e.contains("mixed_good_and_bad.parquet")),
        "{examples:?}"
    );
}

#[test]
fn a_stalled_consumer_stops_the_stages_upstream() {
    let d = demo();
    let cfg = config(&d.data, &d.tokenizer, 2);
    let bound = cfg.batch_queue * cfg.pack.max_images // batches waiting
        + ASSEMBLING_BATCHES * cfg.pack.max_images // batches being assembled
        + cfg.pack.buffer_size // the packer's buffer
        + 4 * cfg.workers // in flight
        + 1; // the sample being pushed
    let loader = Loader::start(cfg, None).unwrap();
    let metrics = loader.metrics().clone();
    // Take nothing: the stages fill their queues and must then stop.
    let mut last = u64::MAX;
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(40));
        let now = metrics.samples_processed.load(Ordering::Relaxed);
        if now == last {
            break;
        }
        last = now;
    }
    let processed = metrics.samples_processed.load(Ordering::Relaxed) as usize;
    assert!(
        processed < 160,
        "the loader ran through all data without a consumer"
    );
    assert!(
        processed <= bound,
        "{processed} samples processed with a stalled consumer (bound {bound})"
    );
    drop(loader);
}

#[test]
fn a_missing_tokenizer_and_a_dataset_of_only_bad_files_are_clear_errors() {
    let d = demo();
    let mut cfg = config(&d.data, &d.tokenizer, 1);
    cfg.text.tokenizer = None;
    let err = Loader::start(cfg, None)
        .err()
        .expect("no tokenizer must fail")
        .to_string();
    assert!(err.contains("tokenizer"), "{err}");

    let cfg = config(
        Path::new(&format!("{FIXTURES}/bad/not_parquet.parquet")),
        &d.tokenizer,
        1,
    );
    let result: Vec<_> = match Loader::start(cfg, None) {
        Err(e) => vec![Err(e)],
        Ok(l) => l.collect(),
    };
    let err = result
        .into_iter()
        .find_map(|r| r.err())
        .expect("an all-bad dataset must end in an error");
    assert!(err.to_string().contains("not_parquet.parquet"), "{err}");
}

/// Workers patchify one frame and batch assembly writes it `temporal_patch_size` times: a T = 2 stream
/// is the T = 1 stream with each channel's 14x14 block repeated (`process_image` at T = 2 is the same
/// expansion of its T = 1 output: `tests/image` checks that).
#[test]
fn temporal_patch_size_2_repeats_each_frame_of_the_t1_stream() {
    let d = demo();
    let one = collect(config(&d.data, &d.tokenizer, 2), None);
    let mut cfg = config(&d.data, &d.tokenizer, 2);
    cfg.image.temporal_patch_size = 2;
    let two = collect(cfg, None);
    assert_eq!(ids(&one), ids(&two));
    for ((a, _), (b, _)) in one.iter().zip(&two) {
        assert_eq!((a.patch_dim, b.patch_dim), (588, 1176));
        assert_eq!(a.image_grid_thw, b.image_grid_thw);
        let expanded: Vec<f32> = a
            .pixel_values
            .chunks_exact(196)
            .flat_map(|block| block.iter().chain(block))
            .copied()
            .collect();
        assert!(expanded == b.pixel_values, "batch {:?}", b.sample_ids);
    }
}
