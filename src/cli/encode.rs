//! `comp encode`: native-resolution feature extraction with a (CoMP-trained) vision tower — the main
//! way users consume the product of training.
//!
//! Each image goes through the same image path as training (`comp_pipeline::patchify::process_image`:
//! decode, smart-resize to multiples of 28, normalise, merge-window patchify), then through the tower
//! loaded from a Hugging Face-layout directory (a `comp` export, or a stock SigLIP / DINOv2 checkpoint).
//! The output file holds, per input image `i` (in the order given), `features.{i}`: `[h*w, D]` f32 in
//! raster (row-major) order over the patch grid, and `grid.{i}`: `[t, h, w]` int64.
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use comp_model::checkpoint::{load_hf_vision, vision_config_from_dir};
use comp_model::vision::VisionTower;
use comp_pipeline::patchify::process_image;
use comp_pipeline::resize::ImageConfig;
use tch::{Device, Tensor, nn};

use super::common::ImageArgs;

#[derive(Args, Debug, Clone)]
pub struct EncodeArgs {
    /// Vision tower directory: `config.json` + `model.safetensors` (or a sharded index).
    #[arg(long)]
    pub vision: PathBuf,
    /// Image files (any format the loader decodes).
    #[arg(long, num_args = 1.., required = true)]
    pub images: Vec<PathBuf>,
    /// Output safetensors file.
    #[arg(long)]
    pub out: PathBuf,
    /// 2D RoPE on or off (default: the tower's config; CoMP towers after stage 2 use it).
    #[arg(long)]
    pub rope: Option<bool>,
    /// Run on CPU even when CUDA is available.
    #[arg(long)]
    pub cpu: bool,
    #[command(flatten)]
    pub image: ImageArgs,
}

pub fn run(args: EncodeArgs) -> Result<()> {
    let cfg = vision_config_from_dir(&args.vision)
        .with_context(|| format!("reading the vision config in {}", args.vision.display()))?;
    let mut image_cfg = args.image.to_config(ImageConfig::default())?;
    if args.image.temporal_patch_size.is_none() {
        image_cfg.temporal_patch_size = cfg.temporal_patch_size as usize;
    }
    if image_cfg.patch_size as i64 != cfg.patch_size
        || image_cfg.merge_size as i64 != cfg.merge_size
        || image_cfg.temporal_patch_size as i64 != cfg.temporal_patch_size
    {
        bail!(
            "the tower expects patch {} / merge {} / temporal patch {}, the image settings give {} / {} / {}",
            cfg.patch_size,
            cfg.merge_size,
            cfg.temporal_patch_size,
            image_cfg.patch_size,
            image_cfg.merge_size,
            image_cfg.temporal_patch_size
        );
    }
    let device = if args.cpu {
        Device::Cpu
    } else {
        Device::cuda_if_available()
    };
    let vs = nn::VarStore::new(device);
    let tower = VisionTower::new(vs.root() / "vision", &cfg)?;
    let report = load_hf_vision(&vs, &cfg, &args.vision)?;
    tracing::info!(
        tensors = report.loaded,
        skipped = report.skipped.len(),
        family = ?cfg.family,
        "loaded vision tower from {}",
        args.vision.display()
    );
    let rope = args.rope.unwrap_or(cfg.rope);

    let mut named: Vec<(String, Tensor)> = Vec::with_capacity(2 * args.images.len());
    for (i, path) in args.images.iter().enumerate() {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let img = process_image(&bytes, &image_cfg)
            .with_context(|| format!("preprocessing {}", path.display()))?;
        let rows = Tensor::from_slice(&img.pixel_values)
            .view([img.num_patches() as i64, cfg.patch_dim()])
            .to_device(device);
        let feats = tower.encode_raster(&rows, &[img.grid_thw], rope)?;
        let [t, h, w] = img.grid_thw;
        tracing::info!(
            "{}: grid {t}x{h}x{w} -> features [{}, {}]",
            path.display(),
            t * h * w,
            cfg.hidden_size
        );
        named.push((
            format!("features.{i}"),
            feats[0].to_device(Device::Cpu).contiguous(),
        ));
        named.push((format!("grid.{i}"), Tensor::from_slice(&img.grid_thw)));
    }
    if let Some(parent) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    Tensor::write_safetensors(&named, &args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!(
        "wrote {} image feature maps to {}",
        args.images.len(),
        args.out.display()
    );
    Ok(())
}
