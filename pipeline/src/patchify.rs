//! Normalise and cut a resized image into patch rows in 2x2 merge-window order: the whole image path
//! (`decode -> target size -> resample -> patchify`) ends here in [`process_image`].
//!
//! Layout (identical to transformers' `Qwen2VLImageProcessor`): `pixel_values` is
//! `[grid_t * grid_h * grid_w, C * T * P * P]`; each row holds one patch, channel-major, then the `T`
//! temporal copies (a still image is repeated), then rows, then columns. Patches are ordered by the grid
//! traversed as `(grid_h / M, grid_w / M, M, M)` so the `M * M` patches one merger token will pool
//! are consecutive. `grid_t` is 1 for a still image whatever `T` is.
//!
//! Normalisation `(x / 255 - mean) / std` is fused into the copy as one multiply-add per value, so every
//! output row is written once, front to back, with no zero-initialisation pass.
use image::RgbImage;
use std::mem::MaybeUninit;

use crate::decode::{ImageError, decode};
use crate::resize::{ImageConfig, resample};

/// One image, ready for a vision tower.
#[derive(Clone, Debug, PartialEq)]
pub struct ProcessedImage {
    /// `[t * h * w, patch_dim]`, row-major.
    pub pixel_values: Vec<f32>,
    /// `(t, h, w)` in patches.
    pub grid_thw: [i64; 3],
}

impl ProcessedImage {
    /// Number of patch rows (`t * h * w`).
    pub fn num_patches(&self) -> usize {
        (self.grid_thw[0] * self.grid_thw[1] * self.grid_thw[2]) as usize
    }
}

/// Values per patch row: `C * T * P * P` (588 for CoMP, 1176 for Qwen2-VL).
pub fn patch_dim(cfg: &ImageConfig) -> usize {
    3 * cfg.temporal_patch_size * cfg.patch_size * cfg.patch_size
}

/// Decode, resize (per `cfg.resize`), normalise and patchify one encoded image.
pub fn process_image(bytes: &[u8], cfg: &ImageConfig) -> Result<ProcessedImage, ImageError> {
    process_rgb(decode(bytes, cfg)?, cfg)
}

/// Resize, normalise and patchify an already decoded RGB8 image.
pub fn process_rgb(img: RgbImage, cfg: &ImageConfig) -> Result<ProcessedImage, ImageError> {
    let (height, width) = cfg.target_size(img.height(), img.width())?;
    let resized = resample(img, height, width)?;
    patchify(&resized, cfg)
}

/// Per-channel affine form of `(v / 255 - mean) / std`: `v * scale + bias`.
fn normalise_affine(cfg: &ImageConfig) -> ([f32; 3], [f32; 3]) {
    let scale = std::array::from_fn(|c| 1.0 / (255.0 * cfg.image_std[c]));
    let bias = std::array::from_fn(|c| -cfg.image_mean[c] / cfg.image_std[c]);
    (scale, bias)
}

/// Normalise and patchify an image whose sides are multiples of `patch_size * merge_size`.
pub fn patchify(img: &RgbImage, cfg: &ImageConfig) -> Result<ProcessedImage, ImageError> {
    let (p, m, t) = (cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size);
    let (height, width) = (img.height() as usize, img.width() as usize);
    if p == 0 || m == 0 || t == 0 || height % (p * m) != 0 || width % (p * m) != 0 || height == 0 {
        return Err(ImageError::Resize(format!(
            "{height}x{width} is not a non-empty multiple of patch_size * merge_size = {}",
            p * m
        )));
    }
    let (grid_h, grid_w) = (height / p, width / p);
    let dim = patch_dim(cfg);
    let total = grid_h * grid_w * dim;
    let (scale, bias) = normalise_affine(cfg);
    let raw = img.as_raw();
    // One band of merge windows (m * p image rows), normalised into three planar f32 buffers: a long,
    // vectorisable pass over the interleaved bytes; each patch row is then plain runs of `p` floats.
    let band_rows = m * p;
    let plane = band_rows * width;
    let mut band = vec![0f32; 3 * plane];
    // Written in place without a zero-initialisation pass over the (large) output.
    let mut pixel_values: Vec<f32> = Vec::with_capacity(total);
    let mut rows = pixel_values.spare_capacity_mut()[..total].chunks_exact_mut(dim);
    for bh in 0..grid_h / m {
        let src_band = &raw[bh * band_rows * width * 3..(bh + 1) * band_rows * width * 3];
        let (r_plane, gb) = band.split_at_mut(plane);
        let (g_plane, b_plane) = gb.split_at_mut(plane);
        normalise_planar(src_band, [r_plane, g_plane, b_plane], &scale, &bias);
        for bw in 0..grid_w / m {
            for mh in 0..m {
                for mw in 0..m {
                    let row = rows.next().expect("one row per patch");
                    let (y0, x0) = (mh * p, (bw * m + mw) * p);
                    write_patch(row, &band, plane, width, y0, x0, p, t);
                }
            }
        }
    }
    debug_assert!(rows.next().is_none());
    // SAFETY: the `grid_h * grid_w` chunks of `dim` elements cover exactly the first `total` slots of
    // the capacity, and `write_patch` initialises every element of the chunk it is given.
    unsafe { pixel_values.set_len(total) };
    Ok(ProcessedImage {
        pixel_values,
        grid_thw: [1, grid_h as i64, grid_w as i64],
    })
}

/// Interleaved RGB8 to three planes of `v * scale + bias`.
fn normalise_planar(src: &[u8], planes: [&mut [f32]; 3], scale: &[f32; 3], bias: &[f32; 3]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports the features the function is compiled for.
        return unsafe { x86::normalise_planar_avx2(src, planes, scale, bias) };
    }
    normalise_planar_scalar(src, planes, scale, bias, 0)
}

/// Portable version, from pixel `start` on (also the AVX2 version's tail).
fn normalise_planar_scalar(
    src: &[u8],
    [r, g, b]: [&mut [f32]; 3],
    scale: &[f32; 3],
    bias: &[f32; 3],
    start: usize,
) {
    let pixels = src[start * 3..].chunks_exact(3);
    for (((px, r), g), b) in pixels
        .zip(&mut r[start..])
        .zip(&mut g[start..])
        .zip(&mut b[start..])
    {
        *r = px[0] as f32 * scale[0] + bias[0];
        *g = px[1] as f32 * scale[1] + bias[1];
        *b = px[2] as f32 * scale[2] + bias[2];
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Eight pixels per step: two overlapping 16-byte loads (pixels 0-3 and 4-7, one per 128-bit lane),
    /// one byte shuffle per channel that zero-extends its four samples to 32 bits, then convert + FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn normalise_planar_avx2(
        src: &[u8],
        [r, g, b]: [&mut [f32]; 3],
        scale: &[f32; 3],
        bias: &[f32; 3],
    ) {
        let n = r.len().min(g.len()).min(b.len()).min(src.len() / 3);
        const Z: i8 = -1; // pshufb: zero this byte
        let mask = |o: i8| {
            _mm256_setr_epi8(
                o,
                Z,
                Z,
                Z,
                o + 3,
                Z,
                Z,
                Z,
                o + 6,
                Z,
                Z,
                Z,
                o + 9,
                Z,
                Z,
                Z, //
                o,
                Z,
                Z,
                Z,
                o + 3,
                Z,
                Z,
                Z,
                o + 6,
                Z,
                Z,
                Z,
                o + 9,
                Z,
                Z,
                Z,
            )
        };
        let masks = [mask(0), mask(1), mask(2)];
        let scales = scale.map(|s| _mm256_set1_ps(s));
        let biases = bias.map(|b| _mm256_set1_ps(b));
        let outs = [r.as_mut_ptr(), g.as_mut_ptr(), b.as_mut_ptr()];
        let mut i = 0;
        // The second load reads bytes 3i+12 .. 3i+28: stay inside `src`.
        while i + 8 <= n && 3 * i + 28 <= src.len() {
            // SAFETY: both 16-byte loads lie within `src` (checked above); the 8 stores per plane lie
            // within the first `n` elements of each plane.
            unsafe {
                let p = src.as_ptr().add(3 * i);
                let lo = _mm_loadu_si128(p as *const __m128i);
                let hi = _mm_loadu_si128(p.add(12) as *const __m128i);
                let v = _mm256_set_m128i(hi, lo);
                for c in 0..3 {
                    let ints = _mm256_shuffle_epi8(v, masks[c]);
                    let f = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ints), scales[c], biases[c]);
                    _mm256_storeu_ps(outs[c].add(i), f);
                }
            }
            i += 8;
        }
        super::normalise_planar_scalar(src, [r, g, b], scale, bias, i);
    }
}

/// Fill one patch row from the band's planes: for each channel its `p x p` block (row `y0`, column
/// `x0` of the band), then `t - 1` copies of it.
#[allow(clippy::too_many_arguments)]
#[inline]
fn write_patch(
    row: &mut [MaybeUninit<f32>],
    band: &[f32],
    plane: usize,
    width: usize,
    y0: usize,
    x0: usize,
    p: usize,
    t: usize,
) {
    let pp = p * p;
    for (c, channel) in row.chunks_exact_mut(t * pp).enumerate() {
        let (first, copies) = channel.split_at_mut(pp);
        let src_plane = &band[c * plane..(c + 1) * plane];
        for (r, dst) in first.chunks_exact_mut(p).enumerate() {
            let start = (y0 + r) * width + x0;
            for (d, &v) in dst.iter_mut().zip(&src_plane[start..start + p]) {
                d.write(v);
            }
        }
        for copy in copies.chunks_exact_mut(pp) {
            copy.copy_from_slice(first);
        }
    }
}
