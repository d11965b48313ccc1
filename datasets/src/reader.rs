//! Reading Parquet: lazily opened footers and row-group reads through parquet's async Arrow reader.
//!
//! Local files are read with positional reads on tokio's blocking pool, behind parquet's
//! [`AsyncFileReader`] trait, so the same code path will serve object stores later. Only the image-bytes
//! leaf and the caption leaf are decoded (see [`crate::schema`]); each read covers one row group, so
//! memory per in-flight read is one row group of those two columns.
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::DataType;
use bytes::Bytes;
use futures::TryStreamExt;
use futures::future::{BoxFuture, FutureExt};
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::arrow::{ParquetRecordBatchStreamBuilder, ProjectionMask};
use parquet::errors::ParquetError;
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};

use crate::schema::{ColumnMapping, ImageLayout, ResolvedColumns};
use crate::{DatasetError, SkipReason};

/// One opened shard: its footer, resolved columns and row-group sizes.
#[derive(Debug)]
pub struct ShardMeta {
    pub shard: u32,
    pub path: Arc<PathBuf>,
    pub arrow: ArrowReaderMetadata,
    pub columns: ResolvedColumns,
    pub mask: ProjectionMask,
    /// Rows per row group.
    pub row_group_rows: Vec<u64>,
    /// Row number (within the shard) of each row group's first row.
    pub row_group_first: Vec<u64>,
}

impl ShardMeta {
    pub fn num_rows(&self) -> u64 {
        self.row_group_rows.iter().sum()
    }
}

fn bad_file(path: &std::path::Path, reason: impl Into<String>) -> DatasetError {
    DatasetError::BadFile {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Read one shard's footer and resolve its columns. Fails for files that are not Parquet, are
/// truncated, lack usable columns or have zero rows.
pub async fn open_shard(
    shard: u32,
    path: Arc<PathBuf>,
    mapping: &ColumnMapping,
) -> Result<Arc<ShardMeta>, DatasetError> {
    let p = path.clone();
    let footer = tokio::task::spawn_blocking(move || -> Result<ParquetMetaData, String> {
        let file = std::fs::File::open(p.as_path()).map_err(|e| e.to_string())?;
        ParquetMetaDataReader::new()
            .parse_and_finish(&file)
            .map_err(|e| format!("not a readable Parquet file: {e}"))
    })
    .await
    .map_err(|e| DatasetError::Task(e.to_string()))?
    .map_err(|e| bad_file(&path, e))?;
    let arrow = ArrowReaderMetadata::try_new(Arc::new(footer), ArrowReaderOptions::new())
        .map_err(|e| bad_file(&path, format!("unsupported schema: {e}")))?;
    let columns = mapping
        .resolve(arrow.schema())
        .map_err(|e| bad_file(&path, e))?;
    let mask = columns
        .projection(arrow.metadata().file_metadata().schema_descr())
        .map_err(|e| bad_file(&path, e))?;
    let row_group_rows: Vec<u64> = arrow
        .metadata()
        .row_groups()
        .iter()
        .map(|rg| rg.num_rows().max(0) as u64)
        .collect();
    if row_group_rows.iter().sum::<u64>() == 0 {
        return Err(bad_file(&path, "zero rows"));
    }
    let row_group_first = row_group_rows
        .iter()
        .scan(0u64, |acc, &n| {
            let first = *acc;
            *acc += n;
            Some(first)
        })
        .collect();
    Ok(Arc::new(ShardMeta {
        shard,
        path,
        arrow,
        columns,
        mask,
        row_group_rows,
        row_group_first,
    }))
}

/// A local file behind parquet's async reader trait: positional reads on the blocking pool.
struct LocalFile {
    file: Arc<std::fs::File>,
    metadata: Arc<ParquetMetaData>,
}

fn read_range(file: &std::fs::File, range: Range<u64>) -> parquet::errors::Result<Bytes> {
    let mut buf = vec![0u8; (range.end - range.start) as usize];
    file.read_exact_at(&mut buf, range.start)
        .map_err(|e| ParquetError::External(Box::new(e)))?;
    Ok(Bytes::from(buf))
}

impl AsyncFileReader for LocalFile {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        let file = self.file.clone();
        async move {
            tokio::task::spawn_blocking(move || read_range(&file, range))
                .await
                .map_err(|e| ParquetError::External(Box::new(e)))?
        }
        .boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        let file = self.file.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                ranges.into_iter().map(|r| read_range(&file, r)).collect()
            })
            .await
            .map_err(|e| ParquetError::External(Box::new(e)))?
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        _options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        let metadata = self.metadata.clone();
        async move { Ok(metadata) }.boxed()
    }
}

/// The outcome for one row of a row group.
#[derive(Clone, Debug)]
pub enum RowOutcome {
    Good { image: Bytes, caption: String },
    Bad(SkipReason),
}

/// Read one row group's image and caption cells.
pub async fn read_row_group(
    meta: Arc<ShardMeta>,
    row_group: usize,
) -> Result<Vec<RowOutcome>, DatasetError> {
    let bad = |reason: String| DatasetError::BadRowGroup {
        path: meta.path.to_path_buf(),
        row_group,
        reason,
    };
    let file = tokio::task::spawn_blocking({
        let path = meta.path.clone();
        move || std::fs::File::open(path.as_path())
    })
    .await
    .map_err(|e| DatasetError::Task(e.to_string()))?
    .map_err(|e| bad(e.to_string()))?;
    let input = LocalFile {
        file: Arc::new(file),
        metadata: meta.arrow.metadata().clone(),
    };
    let expected = meta.row_group_rows[row_group] as usize;
    let mut stream = ParquetRecordBatchStreamBuilder::new_with_metadata(input, meta.arrow.clone())
        .with_projection(meta.mask.clone())
        .with_row_groups(vec![row_group])
        .with_batch_size(expected.clamp(1, 8192))
        .build()
        .map_err(|e| bad(e.to_string()))?;
    let mut rows = Vec::with_capacity(expected);
    while let Some(batch) = stream.try_next().await.map_err(|e| bad(e.to_string()))? {
        extract_rows(&batch, &meta.columns, &mut rows).map_err(bad)?;
    }
    if rows.len() != expected {
        return Err(bad(format!(
            "footer promises {expected} rows, decoded {}",
            rows.len()
        )));
    }
    Ok(rows)
}

/// Byte-like cells of any of Arrow's binary or string array types.
enum Cells<'a> {
    Binary(&'a arrow_array::BinaryArray),
    LargeBinary(&'a arrow_array::LargeBinaryArray),
    BinaryView(&'a arrow_array::BinaryViewArray),
    Utf8(&'a arrow_array::StringArray),
    LargeUtf8(&'a arrow_array::LargeStringArray),
    Utf8View(&'a arrow_array::StringViewArray),
}

impl<'a> Cells<'a> {
    fn new(array: &'a ArrayRef) -> Result<Self, String> {
        Ok(match array.data_type() {
            DataType::Binary => Cells::Binary(array.as_binary()),
            DataType::LargeBinary => Cells::LargeBinary(array.as_binary()),
            DataType::BinaryView => Cells::BinaryView(array.as_binary_view()),
            DataType::Utf8 => Cells::Utf8(array.as_string()),
            DataType::LargeUtf8 => Cells::LargeUtf8(array.as_string()),
            DataType::Utf8View => Cells::Utf8View(array.as_string_view()),
            other => return Err(format!("unexpected column type {other}")),
        })
    }

    fn get(&self, i: usize) -> Option<&'a [u8]> {
        match self {
            Cells::Binary(a) => a.is_valid(i).then(|| a.value(i)),
            Cells::LargeBinary(a) => a.is_valid(i).then(|| a.value(i)),
            Cells::BinaryView(a) => a.is_valid(i).then(|| a.value(i)),
            Cells::Utf8(a) => a.is_valid(i).then(|| a.value(i).as_bytes()),
            Cells::LargeUtf8(a) => a.is_valid(i).then(|| a.value(i).as_bytes()),
            Cells::Utf8View(a) => a.is_valid(i).then(|| a.value(i).as_bytes()),
        }
    }
}

fn extract_rows(
    batch: &RecordBatch,
    cols: &ResolvedColumns,
    out: &mut Vec<RowOutcome>,
) -> Result<(), String> {
    let column = |name: &str| {
        batch
            .column_by_name(name)
            .ok_or_else(|| format!("column `{name}` missing from the decoded batch"))
    };
    let image_col = column(&cols.image)?;
    // For the HF struct, a row is null if the struct or its `bytes` field is null.
    let (image_cells, struct_nulls) = match cols.layout {
        ImageLayout::HfStruct => {
            let s = image_col.as_struct();
            let bytes = s
                .column_by_name("bytes")
                .ok_or("image struct has no `bytes` field")?;
            (Cells::new(bytes)?, s.nulls().cloned())
        }
        ImageLayout::Binary => (Cells::new(image_col)?, None),
    };
    let caption_cells = Cells::new(column(&cols.caption)?)?;
    for i in 0..batch.num_rows() {
        let image = match (&struct_nulls, image_cells.get(i)) {
            (Some(n), _) if n.is_null(i) => Err(SkipReason::NullImage),
            (_, None) => Err(SkipReason::NullImage),
            (_, Some([])) => Err(SkipReason::EmptyImage),
            (_, Some(b)) => Ok(b),
        };
        let caption = match caption_cells.get(i) {
            None => Err(SkipReason::NullCaption),
            Some(b) => match std::str::from_utf8(b) {
                Err(_) => Err(SkipReason::InvalidUtf8),
                Ok(s) if s.trim().is_empty() => Err(SkipReason::EmptyCaption),
                Ok(s) => Ok(s),
            },
        };
        out.push(match (image, caption) {
            (Ok(image), Ok(caption)) => RowOutcome::Good {
                image: Bytes::copy_from_slice(image),
                caption: caption.to_owned(),
            },
            (Err(reason), _) | (_, Err(reason)) => RowOutcome::Bad(reason),
        });
    }
    Ok(())
}

/// What `comp data inspect` shows about one shard.
#[derive(Clone, Debug)]
pub struct ShardSummary {
    pub path: PathBuf,
    pub rows: u64,
    pub row_groups: usize,
    pub columns: ResolvedColumns,
    /// All columns of the file with their Arrow types.
    pub schema: String,
    pub file_bytes: u64,
}

/// Read one shard's footer and summarise it (rows, row groups, resolved columns).
pub async fn read_shard_summary(
    path: &std::path::Path,
    mapping: &ColumnMapping,
) -> Result<ShardSummary, DatasetError> {
    let meta = open_shard(0, Arc::new(path.to_path_buf()), mapping).await?;
    let file_bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    Ok(ShardSummary {
        path: path.to_path_buf(),
        rows: meta.num_rows(),
        row_groups: meta.row_group_rows.len(),
        columns: meta.columns.clone(),
        schema: crate::schema::describe_columns(meta.arrow.schema()),
        file_bytes,
    })
}
