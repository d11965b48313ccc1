//! Flags shared by several subcommands; they build on the library config structs' defaults.
use anyhow::{Result, bail};
use clap::Args;
use comp_datasets::ColumnMapping;
use comp_pipeline::resize::ImageConfig;

/// Image preprocessing overrides (Qwen2-VL processor names).
#[derive(Args, Debug, Clone, Default)]
pub struct ImageArgs {
    /// Lower bound on resized pixels (Qwen2-VL `min_pixels`).
    #[arg(long)]
    pub min_pixels: Option<usize>,
    /// Upper bound on resized pixels (Qwen2-VL `max_pixels`).
    #[arg(long)]
    pub max_pixels: Option<usize>,
    /// Per-channel mean, e.g. 0.5,0.5,0.5 (default: CLIP's).
    #[arg(long, value_parser = parse_triple)]
    pub image_mean: Option<[f32; 3]>,
    /// Per-channel std, e.g. 0.5,0.5,0.5 (default: CLIP's).
    #[arg(long, value_parser = parse_triple)]
    pub image_std: Option<[f32; 3]>,
    /// Frames per temporal patch: 1 for CoMP, 2 for Qwen2-VL's layout.
    #[arg(long)]
    pub temporal_patch_size: Option<usize>,
    /// Decode JPEGs to RGB before resampling, as Pillow (and so transformers) does, instead of
    /// resampling their Y/Cb/Cr planes (faster; colour values differ by ~0.4 of an 8-bit step on
    /// average, grey ones not at all).
    #[arg(long)]
    pub jpeg_via_rgb: bool,
}

impl ImageArgs {
    pub fn to_config(&self, mut cfg: ImageConfig) -> Result<ImageConfig> {
        if let Some(v) = self.min_pixels {
            cfg.min_pixels = v;
        }
        if let Some(v) = self.max_pixels {
            cfg.max_pixels = v;
        }
        if let Some(v) = self.image_mean {
            cfg.image_mean = v;
        }
        if let Some(v) = self.image_std {
            cfg.image_std = v;
        }
        if let Some(v) = self.temporal_patch_size {
            cfg.temporal_patch_size = v;
        }
        if self.jpeg_via_rgb {
            cfg.jpeg_planes = false;
        }
        if cfg.min_pixels > cfg.max_pixels {
            bail!(
                "--min-pixels {} is larger than --max-pixels {}",
                cfg.min_pixels,
                cfg.max_pixels
            );
        }
        if cfg.temporal_patch_size == 0 {
            bail!("--temporal-patch-size must be at least 1");
        }
        Ok(cfg)
    }
}

fn parse_triple(s: &str) -> std::result::Result<[f32; 3], String> {
    let v: Vec<f32> = s
        .split(',')
        .map(|x| x.trim().parse::<f32>().map_err(|e| format!("{x:?}: {e}")))
        .collect::<std::result::Result<_, _>>()?;
    <[f32; 3]>::try_from(v)
        .map_err(|v| format!("expected 3 comma-separated numbers, got {}", v.len()))
}

/// Image/caption column overrides shared by data subcommands.
#[derive(Args, Clone, Debug, Default)]
pub struct ColumnArgs {
    /// Image column (binary or struct<bytes, path>); auto-detected when omitted.
    #[arg(long)]
    pub image_column: Option<String>,
    /// Caption column (string); auto-detected when omitted.
    #[arg(long)]
    pub caption_column: Option<String>,
}

impl ColumnArgs {
    pub fn mapping(&self) -> ColumnMapping {
        ColumnMapping {
            image: self.image_column.clone(),
            caption: self.caption_column.clone(),
            layout: None,
        }
    }
}
