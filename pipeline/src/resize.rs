//! Image geometry: the [`ImageConfig`] shared by the whole image path, Qwen2-VL's [`smart_resize`] rule,
//! and PIL-style bicubic resampling.
//!
//! `smart_resize` is the one owner of "what size does an image become": the model's patch grid, the
//! packer's patch counts and the placeholder-token count all derive from it, and it must equal Hugging
//! Face transformers' `smart_resize` (5.x) bit for bit, so the float steps below mirror Python's
//! (IEEE `/`, `math.sqrt`, round-half-to-even, floor/ceil) on the same operands.
//!
//! [`resample`] resizes an RGB8 image on its own with fast_image_resize's convolution and the
//! Catmull-Rom kernel (a = -0.5, support 2), which is PIL's `BICUBIC`; like PIL the kernel support is
//! widened by the scale factor when shrinking (antialiasing), and the result is rounded back to 8 bits,
//! as both of transformers' backends do. The loader's image path does not call it: it resamples with
//! the same filter inside the fused kernel of `fused.rs` (13% faster end to end on the fixture photos,
//! same agreement with transformers), and the tests hold the two to one 8-bit step of each other.
use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;

use crate::decode::ImageError;

/// OpenAI CLIP normalisation (transformers' `OPENAI_CLIP_MEAN` / `OPENAI_CLIP_STD`), Qwen2-VL's default.
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
pub const CLIP_STD: [f32; 3] = [0.268_629_55, 0.261_302_6, 0.275_777_1];

/// How an image's output size is chosen.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ResizePolicy {
    /// Native resolution through [`smart_resize`] (Stages 2-3).
    Native,
    /// A square of `size` rounded (half to even) to a multiple of `patch_size * merge_size`, ignoring the
    /// aspect ratio (Stage 1: 384 -> 392; Stage 2 warm-up: 1024 -> 1036).
    FixedSquare { size: u32 },
}

/// Everything the image path needs; the single source of its defaults (CoMP: CLIP statistics, T = 1).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ImageConfig {
    pub patch_size: usize,
    pub merge_size: usize,
    /// Frames per temporal patch: 1 for CoMP, 2 for Qwen2-VL (a still image is repeated T times).
    pub temporal_patch_size: usize,
    pub min_pixels: usize,
    pub max_pixels: usize,
    /// Images whose long/short side ratio exceeds this are rejected (reason `aspect_ratio`).
    pub max_aspect_ratio: f64,
    pub image_mean: [f32; 3],
    pub image_std: [f32; 3],
    /// Colour that transparent pixels are composited onto (transformers composites onto white).
    pub background: [u8; 3],
    /// Decompression-bomb guard, checked against the header before any pixel buffer is allocated.
    pub max_decoded_pixels: u64,
    pub resize: ResizePolicy,
    /// Resample a JPEG from its stored Y/Cb/Cr (or grey) planes and convert to RGB at the output
    /// size, instead of decoding to RGB first (on by default). It skips the decoder's chroma
    /// upsampling and colour conversion and resamples 4:2:0 chroma at quarter resolution. Grey JPEGs
    /// give the same values either way; colour ones differ from the RGB route (Pillow's) only in how
    /// chroma is interpolated (`cargo test -p comp-pipeline --test image planar` prints how much).
    pub jpeg_planes: bool,
}

impl Default for ImageConfig {
    fn default() -> Self {
        Self::clip()
    }
}

impl ImageConfig {
    /// CoMP defaults: CLIP mean/std, temporal patch 1, Qwen2-VL's pixel bounds.
    pub fn clip() -> Self {
        Self {
            patch_size: 14,
            merge_size: 2,
            temporal_patch_size: 1,
            min_pixels: 56 * 56,
            max_pixels: 28 * 28 * 1280,
            max_aspect_ratio: 200.0,
            image_mean: CLIP_MEAN,
            image_std: CLIP_STD,
            background: [255, 255, 255],
            max_decoded_pixels: 64 * 1024 * 1024,
            resize: ResizePolicy::Native,
            jpeg_planes: true,
        }
    }

    /// SigLIP statistics (mean = std = 0.5), otherwise as [`ImageConfig::clip`].
    pub fn siglip() -> Self {
        Self {
            image_mean: [0.5; 3],
            image_std: [0.5; 3],
            ..Self::clip()
        }
    }

    /// Exactly transformers' `Qwen2VLImageProcessor` defaults (temporal patch size 2).
    pub fn qwen2_vl() -> Self {
        Self {
            temporal_patch_size: 2,
            ..Self::clip()
        }
    }

    /// Side length that output sides are multiples of (`patch_size * merge_size` = 28).
    pub fn factor(&self) -> u32 {
        (self.patch_size * self.merge_size) as u32
    }

    /// The `(height, width)` an image of the given size is resampled to under this config's policy.
    pub fn target_size(&self, height: u32, width: u32) -> Result<(u32, u32), ImageError> {
        match self.resize {
            ResizePolicy::Native => smart_resize(
                height,
                width,
                self.factor(),
                self.min_pixels as u64,
                self.max_pixels as u64,
                self.max_aspect_ratio,
            ),
            ResizePolicy::FixedSquare { size } => {
                if height == 0 || width == 0 {
                    return Err(ImageError::TooSmall { height, width });
                }
                let f = self.factor();
                let side = ((size as f64 / f as f64).round_ties_even() as u32).max(1) * f;
                Ok((side, side))
            }
        }
    }
}

/// Qwen2-VL's `smart_resize`, identical to transformers 5.x for every input:
/// round each side to the nearest multiple of `factor` (half to even); if the area exceeds `max_pixels`,
/// scale the ORIGINAL sides by `1/beta`, `beta = sqrt(h*w/max_pixels)`, and floor to multiples of
/// `factor` (at least `factor`); if it is below `min_pixels`, scale by `beta = sqrt(min_pixels/(h*w))`
/// and ceil. Aspect ratios above `max_aspect` are rejected.
///
/// transformers 5.x (unlike 4.x and the prose in comp-method.md) does not clamp the rounded sides to at
/// least `factor`: a side under `factor/2` rounds to 0 and the area test then takes the `min_pixels`
/// branch. We follow it; the only input that would still yield a 0 side (`min_pixels == 0`) is rejected
/// as `too_small` instead of producing an empty grid.
pub fn smart_resize(
    height: u32,
    width: u32,
    factor: u32,
    min_pixels: u64,
    max_pixels: u64,
    max_aspect: f64,
) -> Result<(u32, u32), ImageError> {
    if height == 0 || width == 0 || factor == 0 {
        return Err(ImageError::TooSmall { height, width });
    }
    let (h, w, f) = (height as f64, width as f64, factor as f64);
    let ratio = h.max(w) / h.min(w);
    if ratio > max_aspect {
        return Err(ImageError::AspectRatio {
            height,
            width,
            max: max_aspect,
        });
    }
    // Python's round() on a float: half to even. h/f is the same IEEE quotient as in Python.
    let mut h_bar = (h / f).round_ties_even() as u64 * factor as u64;
    let mut w_bar = (w / f).round_ties_even() as u64 * factor as u64;
    // Python ints never overflow; h*w < 2^64 and converts exactly to f64 below 2^53 (always, for u32
    // sides up to ~94900 each; beyond that the bomb guard has already rejected the image).
    let area = height as u64 * width as u64;
    if h_bar * w_bar > max_pixels {
        let beta = (area as f64 / max_pixels as f64).sqrt();
        h_bar = ((h / beta / f).floor() as u64 * factor as u64).max(factor as u64);
        w_bar = ((w / beta / f).floor() as u64 * factor as u64).max(factor as u64);
    } else if h_bar * w_bar < min_pixels {
        let beta = (min_pixels as f64 / area as f64).sqrt();
        h_bar = (h * beta / f).ceil() as u64 * factor as u64;
        w_bar = (w * beta / f).ceil() as u64 * factor as u64;
    }
    if h_bar == 0 || w_bar == 0 || h_bar > u32::MAX as u64 || w_bar > u32::MAX as u64 {
        return Err(ImageError::TooSmall { height, width });
    }
    Ok((h_bar as u32, w_bar as u32))
}

thread_local! {
    // One resizer per worker thread: it keeps its coefficient and scratch buffers between images.
    static RESIZER: RefCell<Resizer> = RefCell::new(Resizer::new());
}

/// Resample an RGB8 image to `height x width` with PIL-style (antialiased) bicubic. Returns the input
/// unchanged when the size already matches, as PIL does.
pub fn resample(img: RgbImage, height: u32, width: u32) -> Result<RgbImage, ImageError> {
    if img.height() == height && img.width() == width {
        return Ok(img);
    }
    let src = ImageRef::new(img.width(), img.height(), img.as_raw(), PixelType::U8x3)
        .map_err(|e| ImageError::Resize(e.to_string()))?;
    let mut dst = Image::new(width, height, PixelType::U8x3);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::CatmullRom));
    RESIZER
        .with(|r| r.borrow_mut().resize(&src, &mut dst, &options))
        .map_err(|e| ImageError::Resize(e.to_string()))?;
    RgbImage::from_raw(width, height, dst.into_vec())
        .ok_or_else(|| ImageError::Resize("destination buffer has the wrong size".into()))
}
