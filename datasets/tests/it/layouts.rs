//! Layout detection and column overrides on pyarrow-written fixtures.
use comp_datasets::{ColumnMapping, ImageLayout, SampleId, read_shard_summary};

use crate::common::{Key, collect, config, fixture, python, runtime};

/// Image lengths and captions as pyarrow reads them, row by row.
fn reference(path: &str, image: &str, caption: &str, hf: bool) -> Vec<(usize, String)> {
    let get = if hf { "r[im]['bytes']" } else { "r[im]" };
    let script = format!(
        "import pyarrow.parquet as pq, json\nim, cap = {image:?}, {caption:?}\nt = pq.read_table({path:?}, columns=[im, cap])\nprint(json.dumps([[len({get}), r[cap]] for r in t.to_pylist()]))"
    );
    serde_json::from_str(&python(&script)).unwrap()
}

fn samples(keys: &[Key]) -> Vec<(usize, String)> {
    keys.iter()
        .map(|k| match k {
            Key::Sample {
                image_len, caption, ..
            } => (*image_len, caption.clone()),
            other => panic!("unexpected {other:?}"),
        })
        .collect()
}

#[test]
fn hf_struct_layout_matches_pyarrow() {
    let path = fixture("hf_style.parquet");
    let keys = collect(config(&[&path]));
    assert_eq!(keys.len(), 64);
    assert_eq!(samples(&keys), reference(&path, "image", "caption", true));
    let ids: Vec<SampleId> = keys.iter().filter_map(Key::sample_id).collect();
    assert_eq!(
        ids,
        (0..64)
            .map(|row| SampleId { shard: 0, row })
            .collect::<Vec<_>>()
    );
}

#[test]
fn raw_binary_layout_matches_pyarrow() {
    let path = fixture("raw_bytes.parquet");
    let keys = collect(config(&[&path]));
    assert_eq!(samples(&keys), reference(&path, "jpg", "txt", false));
    let summary = runtime()
        .block_on(read_shard_summary(path.as_ref(), &ColumnMapping::default()))
        .unwrap();
    assert_eq!((summary.rows, summary.row_groups), (64, 4));
    assert_eq!(summary.columns.image, "jpg");
    assert_eq!(summary.columns.caption, "txt");
    assert_eq!(summary.columns.layout, ImageLayout::Binary);
}

#[test]
fn explicit_mapping_reads_unusual_names() {
    let path = fixture("bad/wrong_columns.parquet");
    let mut cfg = config(&[&path]);
    cfg.columns = ColumnMapping {
        image: Some("picture".into()),
        caption: Some("alt".into()),
        layout: Some(ImageLayout::Binary),
    };
    let keys = collect(cfg);
    assert_eq!(samples(&keys), reference(&path, "picture", "alt", false));
}

#[test]
fn mismatched_layout_override_is_an_error_naming_the_file() {
    let path = fixture("hf_style.parquet");
    let mapping = ColumnMapping {
        layout: Some(ImageLayout::Binary),
        ..ColumnMapping::default()
    };
    let err = runtime()
        .block_on(read_shard_summary(path.as_ref(), &mapping))
        .unwrap_err()
        .to_string();
    assert!(err.contains("hf_style.parquet"), "{err}");
    assert!(err.contains("no image column"), "{err}");
}

#[test]
fn auto_detect_failure_lists_the_columns_found() {
    let path = fixture("bad/wrong_columns.parquet");
    let err = runtime()
        .block_on(read_shard_summary(path.as_ref(), &ColumnMapping::default()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("wrong_columns.parquet"), "{err}");
    assert!(err.contains("picture: Binary"), "{err}");
    assert!(err.contains("alt: Utf8"), "{err}");
}

#[test]
fn unknown_override_column_is_reported() {
    let path = fixture("raw_bytes.parquet");
    let mapping = ColumnMapping {
        caption: Some("nope".into()),
        ..ColumnMapping::default()
    };
    let err = runtime()
        .block_on(read_shard_summary(path.as_ref(), &mapping))
        .unwrap_err()
        .to_string();
    assert!(err.contains("caption column `nope` not found"), "{err}");
    assert!(err.contains("key: Utf8, jpg: Binary, txt: Utf8"), "{err}");
}

#[test]
fn shards_of_both_layouts_stream_together_with_stable_ids() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("hf_style.parquet"), dir.path().join("a.parquet")).unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::fs::copy(
        fixture("raw_bytes.parquet"),
        dir.path().join("sub/b.parquet"),
    )
    .unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not a shard").unwrap();
    let keys = collect(config(&[dir.path().to_str().unwrap()]));
    let ids: Vec<SampleId> = keys.iter().filter_map(Key::sample_id).collect();
    assert_eq!(ids.len(), 128);
    assert!(ids[..64].iter().all(|id| id.shard == 0));
    assert!(ids[64..].iter().all(|id| id.shard == 1));
    // A glob selects the same shard list.
    let glob = format!("{}/**/*.parquet", dir.path().display());
    let ds = comp_datasets::Dataset::open(config(&[&glob])).unwrap();
    assert_eq!(ds.shards().len(), 2);
}

#[test]
fn missing_source_is_an_error() {
    let err = comp_datasets::Dataset::open(config(&["/nonexistent/dir/*.parquet"]))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("/nonexistent/dir/*.parquet"), "{err}");
}
