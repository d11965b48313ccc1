//! Bad rows are skipped with their reason; bad files are reported and skipped (or fatal when strict);
//! nothing usable at all is an error, never an endless loop.
use comp_datasets::SampleId;

use crate::common::{Key, collect, config, fixture, python};

const BAD_FILES: &[(&str, &str)] = &[
    ("bad/not_parquet.parquet", "not a readable Parquet file"),
    ("bad/truncated.parquet", "not a readable Parquet file"),
    ("bad/wrong_columns.parquet", "no image column"),
    ("bad/zero_rows.parquet", "zero rows"),
];

fn skips(keys: &[Key]) -> Vec<(u64, String)> {
    keys.iter()
        .filter_map(|k| match k {
            Key::Skip { id, reason } => Some((id.row, reason.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn every_good_row_of_the_mixed_file_arrives_and_bad_rows_are_skipped_by_reason() {
    for shuffle in [false, true] {
        let mut cfg = config(&[&fixture("bad/mixed_good_and_bad.parquet")]);
        cfg.shuffle = shuffle;
        let keys = collect(cfg);
        assert_eq!(keys.len(), 20, "every row is accounted for");
        let mut good: Vec<u64> = keys
            .iter()
            .filter_map(|k| k.sample_id())
            .map(|id| id.row)
            .collect();
        good.sort();
        let want: Vec<u64> = (0..6).chain(7..11).chain(14..20).collect();
        assert_eq!(
            good, want,
            "rows 7-10 carry broken image bytes: decoding is the pipeline's job"
        );
        let mut s = skips(&keys);
        s.sort();
        assert_eq!(
            s,
            vec![
                (6, "empty_image".to_string()),
                (11, "null_image".to_string()),
                (12, "null_caption".to_string()),
                (13, "empty_caption".to_string()),
            ]
        );
    }
}

#[test]
fn each_bad_file_is_reported_and_the_good_files_keep_streaming() {
    for (bad, _) in BAD_FILES {
        let good = fixture("hf_style.parquet");
        let bad_path = fixture(bad);
        let keys = collect(config(&[&good, &bad_path]));
        let samples = keys.iter().filter(|k| k.sample_id().is_some()).count();
        assert_eq!(samples, 64, "{bad}: all good rows arrive");
        let bad_shard = if bad_path < good { 0 } else { 1 };
        assert_eq!(
            skips(&keys),
            vec![(0, "bad_file".to_string())],
            "{bad}: reported once as a bad file"
        );
        assert!(
            keys.iter().all(|k| !matches!(k, Key::Err(_))),
            "{bad}: lenient mode has no errors"
        );
        assert!(
            keys.iter().any(|k| matches!(k, Key::Skip { id, .. } if *id == SampleId { shard: bad_shard, row: 0 })),
            "{bad}: the skip names the bad shard"
        );
    }
}

#[test]
fn bad_file_skips_say_why_and_name_the_file() {
    for (bad, why) in BAD_FILES {
        let ds =
            comp_datasets::Dataset::open(config(&[&fixture(bad), &fixture("raw_bytes.parquet")]))
                .unwrap();
        let items: Vec<_> = crate::common::runtime().block_on(async {
            use futures::StreamExt;
            ds.stream(Default::default()).collect::<Vec<_>>().await
        });
        let skip = items
            .into_iter()
            .find_map(|r| match r {
                Ok(comp_datasets::Item::Skipped(s)) => Some(s),
                _ => None,
            })
            .expect("a skip");
        let text = skip.to_string();
        assert!(text.contains(bad.trim_start_matches("bad/")), "{text}");
        assert!(text.contains(why), "{bad}: {text}");
    }
}

#[test]
fn strict_mode_stops_at_the_first_bad_file_with_its_name() {
    for (bad, why) in BAD_FILES {
        let mut cfg = config(&[&fixture(bad), &fixture("raw_bytes.parquet")]);
        cfg.strict = true;
        let keys = collect(cfg);
        let last = keys.last().unwrap();
        match last {
            Key::Err(e) => {
                assert!(
                    e.contains(bad.trim_start_matches("bad/")) && e.contains(why),
                    "{e}"
                )
            }
            other => panic!("{bad}: expected an error, got {other:?}"),
        }
        assert_eq!(keys.iter().filter(|k| matches!(k, Key::Err(_))).count(), 1);
    }
}

#[test]
fn all_bad_files_stop_with_a_clear_error_instead_of_spinning() {
    let paths: Vec<String> = BAD_FILES.iter().map(|(b, _)| fixture(b)).collect();
    let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
    let mut cfg = config(&refs);
    cfg.epochs = None;
    let keys = collect(cfg);
    assert_eq!(skips(&keys).len(), 4);
    match keys.last().unwrap() {
        Key::Err(e) => assert!(e.contains("all 4 shards are unreadable"), "{e}"),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn partition_without_units_in_an_endless_stream_is_an_error() {
    let mut cfg = config(&[&fixture("bad/wrong_columns.parquet")]);
    cfg.columns.image = Some("picture".into());
    cfg.epochs = None;
    cfg.world_size = 2;
    cfg.rank = 1;
    let keys = collect(cfg);
    match keys.last().unwrap() {
        Key::Err(e) => assert!(e.contains("gets no row groups"), "{e}"),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn non_utf8_binary_captions_are_skipped_as_invalid_utf8() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("binary_caption.parquet");
    python(&format!(
        "import pyarrow as pa, pyarrow.parquet as pq\n\
         t = pa.table({{'jpg': pa.array([b'\\xff\\xd8a', b'\\xff\\xd8b', b'\\xff\\xd8c'], pa.binary()),\n\
                       'txt': pa.array([b'ok', b'\\xff\\xfe bad', b'   '], pa.binary())}})\n\
         pq.write_table(t, {:?})",
        path.display().to_string()
    ));
    let keys = collect(config(&[path.to_str().unwrap()]));
    assert!(matches!(&keys[0], Key::Sample { caption, .. } if caption == "ok"));
    assert_eq!(
        skips(&keys),
        vec![
            (1, "invalid_utf8".to_string()),
            (2, "empty_caption".to_string())
        ]
    );
}

#[test]
fn footers_are_opened_lazily_as_the_walk_reaches_them() {
    // Discovery never opens a file, and in strict mode a bad shard late in the order fails only when
    // the walk reaches it: every row of the earlier good shard has streamed by then.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("hf_style.parquet"), dir.path().join("a.parquet")).unwrap();
    std::fs::copy(
        fixture("bad/not_parquet.parquet"),
        dir.path().join("z.parquet"),
    )
    .unwrap();
    let mut cfg = config(&[dir.path().to_str().unwrap()]);
    cfg.strict = true;
    cfg.shuffle_window = 1;
    cfg.read_ahead = 1;
    let keys = collect(cfg);
    assert_eq!(keys.len(), 65);
    assert!(keys[..64].iter().all(|k| k.sample_id().is_some()));
    assert!(matches!(&keys[64], Key::Err(e) if e.contains("z.parquet")));
}
