//! What `comp data inspect` reports: per-shard footers, the resolved column mapping, and a sample of
//! image sizes (from the image header only, no full decode) and captions.
use std::path::PathBuf;

use futures::StreamExt;

use crate::{ColumnMapping, Cursor, Dataset, DatasetConfig, DatasetError, Item, ShardSummary};

/// One sampled row.
#[derive(Clone, Debug)]
pub struct SampledRow {
    pub id: crate::SampleId,
    pub shard_path: PathBuf,
    /// `(width, height, format)` read from the header, or why the header could not be read.
    pub image: Result<(u32, u32, String), String>,
    pub image_bytes: usize,
    pub caption: String,
}

#[derive(Debug)]
pub struct InspectReport {
    /// Every shard: its summary, or the error naming the file.
    pub shards: Vec<(PathBuf, Result<ShardSummary, DatasetError>)>,
    pub samples: Vec<SampledRow>,
    /// Skips met while sampling, as display strings.
    pub skips: Vec<String>,
}

/// Width, height and format from an encoded image's header (no pixel decode).
pub fn image_header(bytes: &[u8]) -> Result<(u32, u32, String), String> {
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    let format = reader
        .format()
        .map(|f| format!("{f:?}").to_lowercase())
        .ok_or("unknown image format")?;
    let (w, h) = reader.into_dimensions().map_err(|e| e.to_string())?;
    Ok((w, h, format))
}

/// Summarise every shard under `source` and sample the first `samples` rows in file order.
pub async fn inspect(
    source: &str,
    columns: ColumnMapping,
    samples: usize,
) -> Result<InspectReport, DatasetError> {
    let ds = Dataset::open(DatasetConfig {
        sources: vec![source.to_string()],
        columns: columns.clone(),
        shuffle: false,
        epochs: Some(1),
        ..DatasetConfig::default()
    })?;
    let mut shards = Vec::new();
    for path in ds.shards() {
        shards.push((
            path.clone(),
            crate::read_shard_summary(path, &columns).await,
        ));
    }
    let mut report = InspectReport {
        shards,
        samples: Vec::new(),
        skips: Vec::new(),
    };
    if samples == 0 || report.shards.iter().all(|(_, s)| s.is_err()) {
        return Ok(report);
    }
    let mut stream = ds.stream(Cursor::default());
    while report.samples.len() < samples {
        match stream.next().await {
            None => break,
            Some(Ok(Item::Sample { sample, .. })) => report.samples.push(SampledRow {
                id: sample.id,
                shard_path: ds.shards()[sample.id.shard as usize].clone(),
                image: image_header(&sample.image),
                image_bytes: sample.image.len(),
                caption: sample.caption,
            }),
            Some(Ok(Item::Skipped(skip))) => report.skips.push(skip.to_string()),
            Some(Err(e)) => return Err(e),
        }
    }
    Ok(report)
}
