//! Read throughput of comp-datasets against pyarrow on the same shards, in one run.
//!
//! `cargo bench -p comp-datasets --bench read [-- PATH]`: without PATH it generates demo shards into
//! a temporary directory. Both sides read the same two columns (image bytes and caption) of every row;
//! pyarrow times itself inside Python (`pq.read_table`, multi-threaded), this crate streams every row
//! as a `RawSample` with shuffling off and `read_ahead` row groups in flight. MB/s counts image and
//! caption bytes delivered.
use std::time::Instant;

use comp_datasets::demo::{DemoConfig, generate};
use comp_datasets::{Cursor, Dataset, DatasetConfig, Item};
use futures::StreamExt;

const PYARROW: &str = r#"
import sys, time, glob, os
import pyarrow.parquet as pq, pyarrow.compute as pc
src = sys.argv[1]
files = sorted(glob.glob(os.path.join(src, '**/*.parquet'), recursive=True)) if os.path.isdir(src) else [src]
best = None
for _ in range(int(sys.argv[2])):
    t0 = time.perf_counter()
    rows = nbytes = 0
    for f in files:
        names = pq.ParquetFile(f).schema_arrow.names
        image = 'image' if 'image' in names else 'jpg'
        caption = 'caption' if 'caption' in names else 'txt'
        col = image + '.bytes' if image == 'image' else image
        t = pq.read_table(f, columns=[col, caption])
        rows += t.num_rows
        img = t.column(0)
        if str(img.type).startswith('struct'):
            img = pc.struct_field(img, 'bytes')
        nbytes += pc.sum(pc.binary_length(img)).as_py() + pc.sum(pc.binary_length(t.column(caption))).as_py()
    dt = time.perf_counter() - t0
    if best is None or dt < best[0]:
        best = (dt, rows, nbytes)
print(*best)
"#;

fn read_with_crate(source: &str, read_ahead: usize) -> (f64, u64, u64) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ds = Dataset::open(DatasetConfig {
        sources: vec![source.to_string()],
        shuffle: false,
        read_ahead,
        ..DatasetConfig::default()
    })
    .unwrap();
    rt.block_on(async {
        let start = Instant::now();
        let (mut rows, mut bytes) = (0u64, 0u64);
        let mut stream = ds.stream(Cursor::default());
        while let Some(item) = stream.next().await {
            if let Item::Sample { sample, .. } = item.unwrap() {
                rows += 1;
                bytes += (sample.image.len() + sample.caption.len()) as u64;
            }
        }
        (start.elapsed().as_secs_f64(), rows, bytes)
    })
}

fn read_with_pyarrow(source: &str, repeats: usize) -> (f64, u64, u64) {
    let out = std::process::Command::new("python3")
        .args(["-c", PYARROW, source, &repeats.to_string()])
        .output()
        .expect("python3 with pyarrow");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let v: Vec<f64> = text
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    (v[0], v[1] as u64, v[2] as u64)
}

fn main() {
    let arg = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    let _tmp;
    let source = match arg {
        Some(path) => path,
        None => {
            let dir = tempfile::tempdir().unwrap();
            let cfg = DemoConfig {
                rows: 8000,
                shards: 8,
                row_groups_per_shard: 8,
                ..DemoConfig::default()
            };
            let t = Instant::now();
            let s = generate(dir.path(), &cfg).unwrap();
            println!(
                "generated {} demo rows ({:.1} MB images) in {:.1}s",
                s.rows,
                s.image_bytes as f64 / 1e6,
                t.elapsed().as_secs_f64()
            );
            let p = dir.path().to_str().unwrap().to_string();
            _tmp = dir;
            p
        }
    };
    let repeats = 5;
    // Warm the page cache for both readers.
    read_with_crate(&source, 4);
    let (py_s, py_rows, py_bytes) = read_with_pyarrow(&source, repeats);
    for read_ahead in [2, 4, 8] {
        let (s, rows, bytes) = (0..repeats)
            .map(|_| read_with_crate(&source, read_ahead))
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .unwrap();
        assert_eq!(
            (rows, bytes),
            (py_rows, py_bytes),
            "both read the same data"
        );
        println!(
            "comp-datasets (read_ahead {read_ahead}): {:>10.0} rows/s {:>8.1} MB/s",
            rows as f64 / s,
            bytes as f64 / 1e6 / s
        );
        println!(
            "pyarrow read_table:           {:>10.0} rows/s {:>8.1} MB/s   ratio {:.2}x",
            py_rows as f64 / py_s,
            py_bytes as f64 / 1e6 / py_s,
            py_s / s
        );
    }
}
