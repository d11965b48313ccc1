//! Shared helpers: fixture paths, running a stream to completion, comparable item keys.
use comp_datasets::{Cursor, Dataset, DatasetConfig, Item, SampleId};
use futures::StreamExt;

pub fn fixture(name: &str) -> String {
    format!("{}/../tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A comparable summary of one stream element.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Key {
    Sample {
        id: SampleId,
        at: Cursor,
        image_len: usize,
        caption: String,
    },
    Skip {
        id: SampleId,
        reason: String,
    },
    Err(String),
}

impl Key {
    pub fn sample_id(&self) -> Option<SampleId> {
        match self {
            Key::Sample { id, .. } => Some(*id),
            _ => None,
        }
    }
}

pub fn key(r: Result<Item, comp_datasets::DatasetError>) -> Key {
    match r {
        Ok(Item::Sample { sample, at }) => Key::Sample {
            id: sample.id,
            at,
            image_len: sample.image.len(),
            caption: sample.caption,
        },
        Ok(Item::Skipped(s)) => Key::Skip {
            id: s.id,
            reason: s.reason.as_str().to_string(),
        },
        Err(e) => Key::Err(e.to_string()),
    }
}

/// Run `ds.stream(from)` to the end (or `limit` items) and summarise every element.
pub fn collect_from(ds: &Dataset, from: Cursor, limit: usize) -> Vec<Key> {
    runtime().block_on(ds.stream(from).take(limit).map(key).collect())
}

pub fn collect(cfg: DatasetConfig) -> Vec<Key> {
    let ds = Dataset::open(cfg).expect("open dataset");
    collect_from(&ds, Cursor::default(), usize::MAX)
}

pub fn config(sources: &[&str]) -> DatasetConfig {
    DatasetConfig {
        sources: sources.iter().map(|s| s.to_string()).collect(),
        shuffle: false,
        ..DatasetConfig::default()
    }
}

/// Python with pyarrow, for reference reads.
pub fn python(script: &str) -> String {
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
