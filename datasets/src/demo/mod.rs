//! Demo data: deterministic shards of synthetic image-caption pairs in the Hugging Face layout.
//!
//! Gives a new user something real to stream and train on without a download: scenes of coloured
//! shapes ([`scene`]) at varied native resolutions and aspect ratios (32 to 1024 px per side, skewed
//! towards small images so CPU training is feasible), encoded as JPEG or PNG, with captions that
//! describe them exactly. Every row is a pure function of (seed, split, row number), so shards are
//! byte-identical across runs and thread counts. Columns: `image: struct<bytes, path>`,
//! `caption: string`, and `meta: string` (the scene as JSON, for evaluation and probes).
pub mod scene;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{ArrayRef, BinaryArray, RecordBatch, StringArray, StructArray};
use arrow_schema::{DataType, Field, Fields, Schema};
use image::ImageEncoder;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::plan::mix;

/// Which split to generate; splits use disjoint random streams, so eval images are never trained on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    Train,
    Eval,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Eval => "eval",
        }
    }
}

impl std::str::FromStr for Split {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "train" => Ok(Split::Train),
            "eval" => Ok(Split::Eval),
            other => Err(format!("unknown split `{other}` (expected train or eval)")),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct DemoConfig {
    pub rows: usize,
    pub shards: usize,
    pub row_groups_per_shard: usize,
    pub seed: u64,
    pub split: Split,
    pub min_side: u32,
    pub max_side: u32,
    /// Fraction of images stored as PNG (the rest are JPEG).
    pub png_fraction: f64,
    /// Worker threads; 0 = all cores. The output does not depend on it.
    pub threads: usize,
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig {
            rows: 4000,
            shards: 4,
            row_groups_per_shard: 8,
            seed: 0,
            split: Split::Train,
            min_side: 32,
            max_side: 1024,
            png_fraction: 0.3,
            threads: 0,
        }
    }
}

#[derive(Clone, Debug)]
pub struct DemoSummary {
    pub files: Vec<PathBuf>,
    pub rows: usize,
    /// Total encoded image bytes.
    pub image_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("invalid demo config: {0}")]
    Config(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: writing Parquet: {source}", path.display())]
    Parquet {
        path: PathBuf,
        source: parquet::errors::ParquetError,
    },
    #[error("row {row}: encoding image: {source}")]
    Encode {
        row: usize,
        source: image::ImageError,
    },
}

/// One generated row.
#[derive(Clone, Debug)]
pub struct DemoRow {
    pub image: Vec<u8>,
    pub path: String,
    pub caption: String,
    pub scene: scene::Scene,
}

/// Generate row `index` of `split` (pure function of its arguments).
pub fn generate_row(cfg: &DemoConfig, index: usize) -> Result<DemoRow, DemoError> {
    let split_tag = match cfg.split {
        Split::Train => 0x0074_7261_696e,
        Split::Eval => 0x6576_616c,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(mix(&[cfg.seed, split_tag, index as u64]));
    // Long side log-uniform-ish with a skew towards small images; a common aspect ratio.
    let (lo, hi) = (cfg.min_side as f64, cfg.max_side.max(cfg.min_side) as f64);
    let u: f64 = rng.random::<f64>().powf(1.7);
    let long = (lo * (hi / lo).powf(u)).round();
    let aspect = [1.0, 1.0, 4.0 / 3.0, 3.0 / 2.0, 16.0 / 9.0, 2.0][rng.random_range(0..6)];
    let short = (long / aspect).round().max(lo);
    let (width, height) = if rng.random_bool(0.5) {
        (long as u32, short as u32)
    } else {
        (short as u32, long as u32)
    };
    let png = rng.random_bool(cfg.png_fraction.clamp(0.0, 1.0));
    let scene = scene::sample_scene(&mut rng, width, height, png);
    let pixels = scene::render(&scene, &mut rng);
    let mut image = Vec::new();
    let encoded = if png {
        image::codecs::png::PngEncoder::new(&mut image).write_image(
            &pixels,
            width,
            height,
            image::ExtendedColorType::Rgb8,
        )
    } else {
        let quality = rng.random_range(80..=95);
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut image, quality).write_image(
            &pixels,
            width,
            height,
            image::ExtendedColorType::Rgb8,
        )
    };
    encoded.map_err(|source| DemoError::Encode { row: index, source })?;
    Ok(DemoRow {
        image,
        path: format!(
            "{}_{index:06}.{}",
            cfg.split.name(),
            if png { "png" } else { "jpg" }
        ),
        caption: scene.caption(),
        scene,
    })
}

/// Generate rows `range` on `threads` threads, in order.
fn generate_rows(
    cfg: &DemoConfig,
    range: std::ops::Range<usize>,
    threads: usize,
) -> Result<Vec<DemoRow>, DemoError> {
    let indices: Vec<usize> = range.collect();
    let chunk = indices.len().div_ceil(threads.max(1)).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = indices
            .chunks(chunk)
            .map(|ix| {
                s.spawn(move || {
                    ix.iter()
                        .map(|&i| generate_row(cfg, i))
                        .collect::<Result<Vec<_>, _>>()
                })
            })
            .collect();
        let mut rows = Vec::with_capacity(indices.len());
        for h in handles {
            rows.extend(h.join().expect("demo generator thread panicked")?);
        }
        Ok(rows)
    })
}

fn schema() -> Arc<Schema> {
    let image_fields = Fields::from(vec![
        Field::new("bytes", DataType::Binary, true),
        Field::new("path", DataType::Utf8, true),
    ]);
    // The same metadata `datasets` writes, so `load_dataset("parquet", ...)` decodes images.
    let hf = r#"{"info": {"features": {"image": {"_type": "Image"}, "caption": {"dtype": "string", "_type": "Value"}, "meta": {"dtype": "string", "_type": "Value"}}}}"#;
    Arc::new(
        Schema::new(vec![
            Field::new("image", DataType::Struct(image_fields), true),
            Field::new("caption", DataType::Utf8, true),
            Field::new("meta", DataType::Utf8, true),
        ])
        .with_metadata(std::collections::HashMap::from([(
            "huggingface".to_string(),
            hf.to_string(),
        )])),
    )
}

fn batch(rows: &[DemoRow], schema: &Arc<Schema>) -> RecordBatch {
    let DataType::Struct(fields) = schema.field(0).data_type() else {
        unreachable!("image is a struct")
    };
    let bytes = BinaryArray::from_iter_values(rows.iter().map(|r| r.image.as_slice()));
    let paths = StringArray::from_iter_values(rows.iter().map(|r| r.path.as_str()));
    let image = StructArray::new(
        fields.clone(),
        vec![Arc::new(bytes) as ArrayRef, Arc::new(paths)],
        None,
    );
    let captions = StringArray::from_iter_values(rows.iter().map(|r| r.caption.as_str()));
    let meta = StringArray::from_iter_values(
        rows.iter()
            .map(|r| serde_json::to_string(&r.scene).expect("scene serialises")),
    );
    RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(image), Arc::new(captions), Arc::new(meta)],
    )
    .expect("columns match the schema")
}

/// Write `cfg.shards` files named `{split}-{i:05}-of-{n:05}.parquet` into `out_dir`.
pub fn generate(out_dir: &Path, cfg: &DemoConfig) -> Result<DemoSummary, DemoError> {
    if cfg.rows == 0 || cfg.shards == 0 || cfg.row_groups_per_shard == 0 {
        return Err(DemoError::Config(
            "rows, shards and row_groups_per_shard must be at least 1".into(),
        ));
    }
    if cfg.min_side == 0 || cfg.min_side > cfg.max_side {
        return Err(DemoError::Config("need 0 < min_side <= max_side".into()));
    }
    std::fs::create_dir_all(out_dir).map_err(|source| DemoError::Io {
        path: out_dir.to_path_buf(),
        source,
    })?;
    let threads = crate::threads_or_all_cores(cfg.threads);
    let schema = schema();
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        // Encoded images neither repeat nor compress: skip the dictionary attempt.
        .set_column_dictionary_enabled(
            ColumnPath::from(vec!["image".to_string(), "bytes".to_string()]),
            false,
        )
        .set_column_compression(
            ColumnPath::from(vec!["image".to_string(), "bytes".to_string()]),
            Compression::UNCOMPRESSED,
        )
        .set_max_row_group_row_count(None)
        .build();
    let mut summary = DemoSummary {
        files: Vec::new(),
        rows: 0,
        image_bytes: 0,
    };
    for shard in 0..cfg.shards {
        let rows = split_evenly(cfg.rows, cfg.shards, shard);
        let path = out_dir.join(format!(
            "{}-{shard:05}-of-{:05}.parquet",
            cfg.split.name(),
            cfg.shards
        ));
        let file = std::fs::File::create(&path).map_err(|source| DemoError::Io {
            path: path.clone(),
            source,
        })?;
        let perr = |source| DemoError::Parquet {
            path: path.clone(),
            source,
        };
        let mut writer =
            ArrowWriter::try_new(file, schema.clone(), Some(props.clone())).map_err(perr)?;
        for rg in 0..cfg.row_groups_per_shard.min(rows.len()) {
            let part = split_evenly(rows.len(), cfg.row_groups_per_shard.min(rows.len()), rg);
            let range = rows.start + part.start..rows.start + part.end;
            let generated = generate_rows(cfg, range, threads)?;
            summary.rows += generated.len();
            summary.image_bytes += generated.iter().map(|r| r.image.len() as u64).sum::<u64>();
            writer.write(&batch(&generated, &schema)).map_err(perr)?;
            writer.flush().map_err(perr)?;
        }
        writer.close().map_err(perr)?;
        summary.files.push(path);
    }
    Ok(summary)
}

/// The `i`-th of `parts` nearly equal consecutive ranges of `0..n`.
fn split_evenly(n: usize, parts: usize, i: usize) -> std::ops::Range<usize> {
    (n * i / parts)..(n * (i + 1) / parts)
}
