//! `comp preprocess`: run our image (and text) preprocessing over Parquet data and write the tensors with
//! Hugging Face's names and layouts, so a user can compare them with another stack (e.g. transformers'
//! Qwen2-VL processor) value by value.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use comp_datasets::{Cursor, Dataset, DatasetConfig, Item, RawSample};
use comp_pipeline::patchify::{patch_dim, process_image};
use comp_pipeline::resize::ImageConfig;
use comp_pipeline::tokenize::{CaptionTokenizer, TextConfig};
use comp_pipeline::{Budgets, PackedBatch, ProcessedSample};
use futures::StreamExt;
use safetensors::{Dtype, tensor::TensorView};

use super::common::{ColumnArgs, ImageArgs};

#[derive(Args, Debug)]
pub struct PreprocessArgs {
    /// A Parquet file, a directory of shards or a glob.
    #[arg(long)]
    pub data: String,
    /// Output safetensors file.
    #[arg(long)]
    pub out: PathBuf,
    /// Stop after this many good samples.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Keep file order (shard by shard, row by row) instead of the seeded shuffle.
    #[arg(long)]
    pub no_shuffle: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// A tokenizer.json: also write the packed text tensors (input_ids, labels, ...).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    #[command(flatten)]
    pub image: ImageArgs,
    #[command(flatten)]
    pub columns: ColumnArgs,
    /// CPU threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
}

pub fn run(args: PreprocessArgs) -> Result<()> {
    let image_cfg = args.image.to_config(ImageConfig::default())?;
    let dataset = Dataset::open(DatasetConfig {
        sources: vec![args.data.clone()],
        columns: args.columns.mapping(),
        shuffle: !args.no_shuffle,
        seed: args.seed,
        epochs: Some(1),
        ..Default::default()
    })?;
    let tokenizer = match &args.tokenizer {
        Some(p) => Some(CaptionTokenizer::from_file(
            p,
            &TextConfig {
                tokenizer: Some(p.clone()),
                ..Default::default()
            },
        )?),
        None => None,
    };
    let workers = comp_datasets::threads_or_all_cores(args.workers);
    let limit = args.limit.unwrap_or(usize::MAX);
    let mut skips: BTreeMap<String, u64> = BTreeMap::new();
    let mut samples: Vec<ProcessedSample> = Vec::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut stream = Box::pin(dataset.stream(Cursor::default()));
    let mut chunk: Vec<RawSample> = Vec::new();
    let mut done = false;
    while !done {
        // Read a chunk in order, then process it on `workers` threads; results keep file order.
        chunk.clear();
        while chunk.len() < 64 * workers {
            match rt.block_on(stream.next()) {
                Some(item) => match item? {
                    Item::Sample { sample, .. } => chunk.push(sample),
                    Item::Skipped(skip) => {
                        eprintln!("skipped {skip}");
                        *skips.entry(skip.reason.as_str().to_string()).or_default() += 1;
                    }
                },
                None => {
                    done = true;
                    break;
                }
            }
        }
        let processed = process_chunk(&chunk, &image_cfg, tokenizer.as_ref(), workers);
        for (raw, out) in chunk.iter().zip(processed) {
            match out {
                Ok(s) if samples.len() < limit => samples.push(s),
                Ok(_) => {}
                Err((reason, msg)) => {
                    eprintln!(
                        "skipped {} row {}: {msg}",
                        dataset.shards()[raw.id.shard as usize].display(),
                        raw.id.row
                    );
                    *skips.entry(reason).or_default() += 1;
                }
            }
        }
        if samples.len() >= limit {
            break;
        }
    }
    anyhow::ensure!(
        !samples.is_empty(),
        "no usable sample in {} (skipped: {skips:?})",
        args.data
    );
    let n = samples.len();
    let image_token_id = tokenizer.as_ref().map(|t| t.image_token_id()).unwrap_or(-1);
    let batch = PackedBatch::from_samples(
        samples,
        patch_dim(&image_cfg),
        image_token_id,
        Budgets {
            max_patches: 0,
            max_tokens: 0,
            max_images: 0,
        },
    );
    write_batch(&args.out, &batch, tokenizer.is_some(), &image_cfg)?;
    println!(
        "wrote {n} images ({} patches x {}) to {}{}; skipped {}",
        batch.num_patches(),
        batch.patch_dim,
        args.out.display(),
        if tokenizer.is_some() {
            format!(" with {} text tokens", batch.num_tokens())
        } else {
            String::new()
        },
        if skips.is_empty() {
            "none".to_string()
        } else {
            format!("{skips:?}")
        }
    );
    Ok(())
}

type Outcome = std::result::Result<ProcessedSample, (String, String)>;

fn process_chunk(
    chunk: &[RawSample],
    cfg: &ImageConfig,
    tok: Option<&CaptionTokenizer>,
    workers: usize,
) -> Vec<Outcome> {
    let merge = (cfg.merge_size * cfg.merge_size) as i64;
    let one = |raw: &RawSample| -> Outcome {
        let img =
            process_image(&raw.image, cfg).map_err(|e| (e.reason().to_string(), e.to_string()))?;
        let (input_ids, labels, caption_span) = match tok {
            Some(t) => {
                let n = (img.grid_thw.iter().product::<i64>() / merge) as usize;
                let e = t
                    .encode(&raw.caption, n)
                    .map_err(|e| ("caption".to_string(), e.to_string()))?;
                (e.input_ids, e.labels, e.caption_span)
            }
            None => (Vec::new(), Vec::new(), [0, 0]),
        };
        Ok(ProcessedSample {
            id: raw.id,
            pixel_values: img.pixel_values,
            grid_thw: img.grid_thw,
            input_ids,
            labels,
            caption_span,
        })
    };
    let per = chunk.len().div_ceil(workers.max(1)).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = chunk
            .chunks(per)
            .map(|part| s.spawn(move || part.iter().map(one).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("preprocess worker panicked"))
            .collect()
    })
}

fn bytes_of<T: bytemuck::Pod>(v: &[T]) -> &[u8] {
    bytemuck::cast_slice(v)
}

fn write_batch(out: &Path, b: &PackedBatch, with_text: bool, cfg: &ImageConfig) -> Result<()> {
    let n = b.image_grid_thw.len();
    let grid: Vec<i64> = b.image_grid_thw.iter().flatten().copied().collect();
    let ids: Vec<i64> = b
        .sample_ids
        .iter()
        .flat_map(|id| [id.shard as i64, id.row as i64])
        .collect();
    let vcu: Vec<i64> = b.vision_cu_seqlens.iter().map(|&x| x as i64).collect();
    let tcu: Vec<i64> = b.text_cu_seqlens.iter().map(|&x| x as i64).collect();
    let spans: Vec<i64> = b
        .caption_spans
        .iter()
        .flatten()
        .map(|&x| x as i64)
        .collect();
    let mut tensors: Vec<(&str, TensorView)> = vec![
        (
            "pixel_values",
            TensorView::new(
                Dtype::F32,
                vec![b.num_patches(), b.patch_dim],
                bytes_of(&b.pixel_values),
            )?,
        ),
        (
            "image_grid_thw",
            TensorView::new(Dtype::I64, vec![n, 3], bytes_of(&grid))?,
        ),
        (
            "vision_cu_seqlens",
            TensorView::new(Dtype::I64, vec![n + 1], bytes_of(&vcu))?,
        ),
        (
            "sample_ids",
            TensorView::new(Dtype::I64, vec![n, 2], bytes_of(&ids))?,
        ),
    ];
    if with_text {
        let t = b.num_tokens();
        tensors.extend([
            (
                "input_ids",
                TensorView::new(Dtype::I64, vec![t], bytes_of(&b.input_ids))?,
            ),
            (
                "labels",
                TensorView::new(Dtype::I64, vec![t], bytes_of(&b.labels))?,
            ),
            (
                "position_ids",
                TensorView::new(Dtype::I64, vec![t], bytes_of(&b.position_ids))?,
            ),
            (
                "text_cu_seqlens",
                TensorView::new(Dtype::I64, vec![n + 1], bytes_of(&tcu))?,
            ),
            (
                "caption_spans",
                TensorView::new(Dtype::I64, vec![n, 2], bytes_of(&spans))?,
            ),
        ]);
    }
    let mut meta = std::collections::HashMap::new();
    meta.insert("image_config".to_string(), serde_json::to_string(cfg)?);
    meta.insert(
        "sample_ids".to_string(),
        "[n, 2] = (shard index in sorted shard list, row)".to_string(),
    );
    if with_text {
        meta.insert("image_token_id".to_string(), b.image_token_id.to_string());
    }
    safetensors::serialize_to_file(tensors, Some(meta), out)
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}
