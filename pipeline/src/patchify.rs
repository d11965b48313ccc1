//! Normalise and cut a resized image into patch rows in 2x2 merge-window order: the whole image path
//! (`decode -> target size -> resample -> patchify`) ends here in [`process_image`]; when the size
//! changes, resampling runs inside the band loop (the private `fused` kernel).
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

use crate::decode::{ImageError, Source};
use crate::resize::ImageConfig;

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
    match crate::decode::decode_source(bytes, cfg)? {
        Source::Rgb(img) => process_rgb(img, cfg),
        Source::Planes(planes) => {
            let (height, width) = cfg.target_size(planes.height as u32, planes.width as u32)?;
            let isa = crate::fused::Isa::detect();
            crate::fused::planes_patchify_with(&planes, height as usize, width as usize, cfg, isa)
        }
    }
}

/// Resize, normalise and patchify an already decoded RGB8 image. An image that needs resampling goes
/// through the fused kernel in [`crate::fused`] (resample, round to 8 bits, normalise and cut patches in
/// one cache-resident pass per band); one already at its target size is only normalised and cut.
pub fn process_rgb(img: RgbImage, cfg: &ImageConfig) -> Result<ProcessedImage, ImageError> {
    let (height, width) = cfg.target_size(img.height(), img.width())?;
    if (height, width) == (img.height(), img.width()) {
        patchify(&img, cfg)
    } else {
        crate::fused::resample_patchify(&img, height as usize, width as usize, cfg)
    }
}

/// Per-channel affine form of `(v / 255 - mean) / std`: `v * scale + bias`.
pub(crate) fn normalise_affine(cfg: &ImageConfig) -> ([f32; 3], [f32; 3]) {
    let scale = std::array::from_fn(|c| 1.0 / (255.0 * cfg.image_std[c]));
    let bias = std::array::from_fn(|c| -cfg.image_mean[c] / cfg.image_std[c]);
    (scale, bias)
}

/// The patch grid of an output of `height x width` pixels, or why there is none.
pub(crate) fn check_grid(
    height: usize,
    width: usize,
    cfg: &ImageConfig,
) -> Result<(usize, usize), ImageError> {
    let (p, m, t) = (cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size);
    if p == 0
        || m == 0
        || t == 0
        || !height.is_multiple_of(p * m)
        || !width.is_multiple_of(p * m)
        || height == 0
    {
        return Err(ImageError::Resize(format!(
            "{height}x{width} is not a non-empty multiple of patch_size * merge_size = {}",
            p * m
        )));
    }
    Ok((height / p, width / p))
}

/// Build an image's patch rows band by band. A band is one row of merge windows (`merge_size *
/// patch_size` pixel rows); `fill_band(bh, band)` writes band `bh` as three normalised f32 planes
/// `[3][band_rows][stride]` (columns past the image width are ignored), and its patches are then cut
/// in merge-window order. The output is written front to back with no zero-initialisation pass.
pub(crate) fn patches_from_bands(
    grid_h: usize,
    grid_w: usize,
    stride: usize,
    cfg: &ImageConfig,
    band: &mut Vec<f32>,
    mut fill_band: impl FnMut(usize, &mut [f32]),
) -> ProcessedImage {
    let (p, m, t) = (cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size);
    let dim = patch_dim(cfg);
    let total = grid_h * grid_w * dim;
    let plane = m * p * stride;
    band.resize(3 * plane, 0.0);
    let mut pixel_values: Vec<f32> = Vec::with_capacity(total);
    let mut rows = pixel_values.spare_capacity_mut()[..total].chunks_exact_mut(dim);
    for bh in 0..grid_h / m {
        fill_band(bh, band);
        let view = BandView {
            band,
            plane,
            stride,
        };
        for bw in 0..grid_w / m {
            for mh in 0..m {
                for mw in 0..m {
                    let row = rows.next().expect("one row per patch");
                    write_patch(row, &view, mh * p, (bw * m + mw) * p, p, t);
                }
            }
        }
    }
    debug_assert!(rows.next().is_none());
    // SAFETY: the `grid_h * grid_w` chunks of `dim` elements cover exactly the first `total` slots of
    // the capacity, and `write_patch` initialises every element of the chunk it is given.
    unsafe { pixel_values.set_len(total) };
    ProcessedImage {
        pixel_values,
        grid_thw: [1, grid_h as i64, grid_w as i64],
    }
}

thread_local! {
    // One band buffer per worker thread, reused from image to image.
    static BAND: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Normalise and patchify an image whose sides are multiples of `patch_size * merge_size`.
pub fn patchify(img: &RgbImage, cfg: &ImageConfig) -> Result<ProcessedImage, ImageError> {
    let (height, width) = (img.height() as usize, img.width() as usize);
    let (grid_h, grid_w) = check_grid(height, width, cfg)?;
    let band_rows = cfg.merge_size * cfg.patch_size;
    let (scale, bias) = normalise_affine(cfg);
    let raw = img.as_raw();
    let plane = band_rows * width;
    // Each band is normalised into three planar f32 buffers in one long, vectorisable pass over the
    // interleaved bytes; each patch row is then plain runs of `p` floats.
    Ok(BAND.with(|band| {
        patches_from_bands(
            grid_h,
            grid_w,
            width,
            cfg,
            &mut band.borrow_mut(),
            |bh, band| {
                let src = &raw[bh * band_rows * width * 3..(bh + 1) * band_rows * width * 3];
                let (r_plane, gb) = band.split_at_mut(plane);
                let (g_plane, b_plane) = gb.split_at_mut(plane);
                normalise_planar(src, [r_plane, g_plane, b_plane], &scale, &bias);
            },
        )
    }))
}

/// Interleaved RGB8 to three planes of `v * scale + bias`.
pub(crate) fn normalise_planar(
    src: &[u8],
    planes: [&mut [f32]; 3],
    scale: &[f32; 3],
    bias: &[f32; 3],
) {
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

/// A band's three planes: value `(c, y, x)` at `band[c * plane + y * stride + x]`.
struct BandView<'a> {
    band: &'a [f32],
    plane: usize,
    stride: usize,
}

/// Fill one patch row from the band's planes: for each channel its `p x p` block (row `y0`, column
/// `x0` of the band), written `t` times (a still image repeated over the temporal patch).
#[inline]
fn write_patch(
    row: &mut [MaybeUninit<f32>],
    view: &BandView,
    y0: usize,
    x0: usize,
    p: usize,
    t: usize,
) {
    // Every ViT this crate serves uses 14 (or 16) pixel patches; a compile-time run length turns each
    // run into a fixed-size move the compiler inlines (a runtime `p` costs a `memcpy` call per run).
    match p {
        14 => write_runs(row, view, y0, x0, 14, t, copy_run::<14>),
        16 => write_runs(row, view, y0, x0, 16, t, copy_run::<16>),
        _ => write_runs(row, view, y0, x0, p, t, copy_run_any),
    }
}

#[inline(always)]
fn write_runs(
    row: &mut [MaybeUninit<f32>],
    view: &BandView,
    y0: usize,
    x0: usize,
    p: usize,
    t: usize,
    copy: impl Fn(&mut [MaybeUninit<f32>], &[f32]),
) {
    for (c, channel) in row.chunks_exact_mut(t * p * p).enumerate() {
        let src_plane = &view.band[c * view.plane..(c + 1) * view.plane];
        let (first, copies) = channel.split_at_mut(p * p);
        for (r, dst) in first.chunks_exact_mut(p).enumerate() {
            let start = (y0 + r) * view.stride + x0;
            copy(dst, &src_plane[start..start + p]);
        }
        // Further temporal copies repeat the first frame, one contiguous block each.
        for frame in copies.chunks_exact_mut(p * p) {
            frame.copy_from_slice(first);
        }
    }
}

#[inline(always)]
fn copy_run<const P: usize>(dst: &mut [MaybeUninit<f32>], src: &[f32]) {
    let src: &[f32; P] = src.try_into().expect("P floats");
    let dst: &mut [MaybeUninit<f32>; P] = dst.try_into().expect("P slots");
    *dst = src.map(MaybeUninit::new);
}

fn copy_run_any(dst: &mut [MaybeUninit<f32>], src: &[f32]) {
    for (d, &v) in dst.iter_mut().zip(src) {
        d.write(v);
    }
}
