//! The image path's hot loop as one fused kernel: PIL-style antialiased bicubic resampling, rounding to
//! 8 bits, normalisation and patch cutting, one band of merge windows at a time so that every
//! intermediate stays in cache.
//!
//! Why not a resize crate followed by [`patchify`](crate::patchify::patchify): on the fixture photos
//! (0.17 MP, resized by a few percent to multiples of 28) a general RGB8 resizer costs about as much
//! as decoding the JPEG, and its output is then read again to normalise and cut it. Here:
//!
//! 1. source rows are widened to f32 once each, split into three padded channel planes (a ring of the
//!    rows the current band needs);
//! 2. the **vertical** pass runs first, four output rows at a time: each is a weighted sum of a few
//!    whole source rows, contiguous multiply-adds, rounded and clamped to 0..=255 as PIL's 8-bit
//!    intermediate is;
//! 3. the **horizontal** pass, on those four rows while they are in L1, computes 8 output pixels of a
//!    plane at once: lane `l` of output pixel `8g + l` reads source pixel `base + l + q` at step `q`,
//!    so every step is one contiguous load per row and channel times a weight vector (zero where a
//!    pixel is not one of that output's taps). Near scale 1 that is 5-6 steps per 8 outputs, the
//!    taps themselves plus one for the drift of the window across the lanes; 4 rows x 3 channels are
//!    accumulated together to keep the multiply-add units busy. The result is rounded to 8 bits,
//!    normalised and stored as planar rows;
//! 4. the band's patches are cut by [`patches_from_bands`].
//!
//! JPEGs arrive as their stored planes ([`planes_patchify_with`]): grey is one plane, resampled exactly as
//! above and replicated to three channels at the end (bit-identical to the RGB route); colour is Y at
//! full resolution and Cb/Cr at their subsampled one. Each chroma plane is resampled straight to the
//! output grid with taps that compose libjpeg's upsampling filter with the pixel taps
//! ([`Taps::through_upsampling`]), so the linear part equals "decode to RGB, then resample"; an
//! enlarged (2x) chroma row is read with every sample doubled, which halves its horizontal steps. The
//! horizontal pass takes 4 rows of Y, Cb and Cr together and converts each output pixel to RGB
//! (libjpeg's coefficients) before the one rounding to 8 bits. What remains different from the RGB
//! route is where clamping happens (the decoder clamps RGB per source pixel, we per output pixel), on
//! saturated colour edges.
//!
//! Filter weights follow Pillow's `BICUBIC` (Catmull-Rom, `a = -0.5`, support 2 widened by the scale
//! factor when shrinking, weights normalised per output pixel), which both of transformers' Qwen2-VL
//! backends use. The arithmetic is f32 rather than Pillow's fixed point, and the vertical pass comes
//! first, so an output value can differ from Pillow's by one 8-bit step where a value sits on a rounding
//! boundary; the parity tests bound the effect against transformers.
use image::RgbImage;
use std::cell::RefCell;

use crate::decode::ImageError;

mod planar;
use crate::patchify::{
    ProcessedImage, check_grid, normalise_affine, normalise_planar, patches_from_bands,
};
use crate::resize::ImageConfig;
pub(crate) use planar::planes_patchify_with;

/// Pillow's bicubic kernel with `a = -0.5` (Catmull-Rom).
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// A 1-D resampling: output `i` is `sum_k weight(i, k) * input[start[i] + k]` for `k < len[i]`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Taps {
    start: Vec<usize>,
    len: Vec<usize>,
    /// Row `i` of `ksize` weights (only the first `len[i]` are used).
    weights: Vec<f32>,
    ksize: usize,
}

impl Taps {
    /// Pillow's coefficients for resampling `in_size` samples to `out_size` over the whole input.
    pub(crate) fn bicubic(in_size: usize, out_size: usize) -> Taps {
        assert!(in_size > 0 && out_size > 0, "empty resampling");
        if in_size == out_size {
            // The kernel is 1 at 0 and 0 at every other integer: the identity, as one tap.
            return Taps {
                start: (0..out_size).collect(),
                len: vec![1; out_size],
                weights: vec![1.0; out_size],
                ksize: 1,
            };
        }
        let scale = in_size as f64 / out_size as f64;
        let filter_scale = scale.max(1.0);
        let support = 2.0 * filter_scale;
        // Pillow multiplies by the reciprocal (`ss` in its `precompute_coeffs`).
        let inv_scale = 1.0 / filter_scale;
        let ksize = support.ceil() as usize * 2 + 1;
        let mut taps = Taps::empty(out_size, ksize);
        let mut w = vec![0f64; ksize];
        for i in 0..out_size {
            let center = (i as f64 + 0.5) * scale;
            // C's (int) cast truncates toward zero, as `as i64` does.
            let lo = ((center - support + 0.5) as i64).max(0) as usize;
            let hi = ((center + support + 0.5) as i64).clamp(0, in_size as i64) as usize;
            let n = hi.saturating_sub(lo).min(ksize);
            let mut total = 0.0;
            for (k, wk) in w[..n].iter_mut().enumerate() {
                *wk = bicubic(((lo + k) as f64 - center + 0.5) * inv_scale);
                total += *wk;
            }
            let row = &mut taps.weights[i * ksize..i * ksize + n];
            for (dst, &wk) in row.iter_mut().zip(&w[..n]) {
                *dst = if total != 0.0 { wk / total } else { wk } as f32;
            }
            taps.start.push(lo);
            taps.len.push(n);
        }
        taps
    }

    /// Room for `out_size` outputs of up to `ksize` taps.
    fn empty(out_size: usize, ksize: usize) -> Taps {
        Taps {
            start: Vec::with_capacity(out_size),
            len: Vec::with_capacity(out_size),
            weights: vec![0.0; out_size * ksize],
            ksize,
        }
    }

    /// Taps over a subsampled JPEG plane equal to `pixel_taps` (over the image's pixels) applied to
    /// the plane as libjpeg upsamples it: `samples` samples each covering `block` pixels, the first
    /// one starting `pad` pixels before pixel 0. With `fancy`, libjpeg's triangle filter for 2x
    /// ("fancy upsampling", its default, which Pillow uses): the pixel at offset 0 of a block is
    /// 3/4 its sample + 1/4 the previous one, at offset 1 3/4 + 1/4 the next one (edges repeat).
    /// Otherwise each pixel is its block's sample. Resampling the plane with these gives, up to
    /// libjpeg's 8-bit rounding of the upsampled plane, what resampling the decoder's output does.
    pub(crate) fn through_upsampling(
        pixel_taps: &Taps,
        block: usize,
        pad: usize,
        samples: usize,
        fancy: bool,
    ) -> Taps {
        assert!(block >= 1 && samples >= 1);
        if block == 1 && pad == 0 {
            return pixel_taps.clone();
        }
        let fancy = fancy && block == 2;
        let last = samples - 1;
        // (sample, weight) pairs that pixel `u` is made of.
        let sources = |u: usize| -> [(usize, f64); 2] {
            let p = u + pad;
            let k = (p / block).min(last);
            if !fancy {
                return [(k, 1.0), (k, 0.0)];
            }
            let other = if p.is_multiple_of(2) {
                k.saturating_sub(1)
            } else {
                (k + 1).min(last)
            };
            [(k, 0.75), (other, 0.25)]
        };
        let out_size = pixel_taps.start.len();
        let mut spans = Vec::with_capacity(out_size);
        let mut ksize = 1;
        for i in 0..out_size {
            let (first, end) = (pixel_taps.start[i], pixel_taps.start[i] + pixel_taps.len[i]);
            let lo = (first..end).flat_map(sources).map(|(k, _)| k).min();
            let hi = (first..end).flat_map(sources).map(|(k, _)| k).max();
            let (lo, hi) = (lo.unwrap_or(0), hi.unwrap_or(0));
            ksize = ksize.max(hi + 1 - lo);
            spans.push((lo, hi + 1 - lo));
        }
        let mut taps = Taps::empty(out_size, ksize);
        let mut acc = vec![0f64; ksize];
        for (i, &(lo, len)) in spans.iter().enumerate() {
            acc[..len].fill(0.0);
            for (k, &w) in pixel_taps.weights(i).iter().enumerate() {
                for (sample, f) in sources(pixel_taps.start[i] + k) {
                    acc[sample - lo] += w as f64 * f;
                }
            }
            for (dst, &a) in taps.weights[i * ksize..][..len].iter_mut().zip(&acc) {
                *dst = a as f32;
            }
            taps.start.push(lo);
            taps.len.push(len);
        }
        taps
    }

    /// Heap bytes held.
    pub(crate) fn bytes(&self) -> usize {
        (self.start.len() + self.len.len()) * size_of::<usize>()
            + self.weights.len() * size_of::<f32>()
    }

    fn weights(&self, i: usize) -> &[f32] {
        &self.weights[i * self.ksize..i * self.ksize + self.len[i]]
    }

    /// Rows a ring must hold so that bands of `band_rows` outputs, taken in order, find every source
    /// row they read: bands move down monotonically, so a slot is only reused once no later band
    /// needs its row.
    fn ring_rows(&self, band_rows: usize, bands: usize) -> usize {
        let (mut rows, mut high) = (0, 0);
        for bh in 0..bands {
            let (lo, hi) = self.source_range(bh * band_rows, (bh + 1) * band_rows);
            high = high.max(hi);
            rows = rows.max(high - lo);
        }
        rows
    }

    /// Offsets, in a ring of `ring_rows` rows of `stride` floats, of the source rows output `y` reads.
    fn ring_offsets(&self, y: usize, ring_rows: usize, stride: usize, offsets: &mut Vec<usize>) {
        offsets.clear();
        offsets.extend((0..self.len[y]).map(|k| ((self.start[y] + k) % ring_rows) * stride));
    }

    /// Source range `[lo, hi)` that outputs `first..last` read.
    fn source_range(&self, first: usize, last: usize) -> (usize, usize) {
        let lo = (first..last).map(|i| self.start[i]).min().unwrap_or(0);
        let hi = (first..last)
            .map(|i| self.start[i] + self.len[i])
            .max()
            .unwrap_or(0);
        (lo, hi)
    }
}

/// Output pixels per horizontal group: one AVX register of f32.
const LANES: usize = 8;

/// Left padding of each planar source row, in pixels: a group's loads may start up to 7 pixels
/// before pixel 0 (see [`Groups`]).
const PAD: usize = LANES;

/// The horizontal taps regrouped for planar rows. Group `g` covers output pixels `8g .. 8g + 8`;
/// lane `l` of its `q`-th weight vector multiplies source pixel `base + l + q`. Each step of the
/// kernel is then one contiguous 8-pixel load per row and channel times one weight vector, and a
/// group takes `steps` of them: a pixel's own 4-5 taps plus the drift of its start across the 8
/// lanes (one step at scales near 1). A weight is zero where `base + l + q` is not one of output
/// `8g + l`'s taps, and for lanes past the last output.
#[derive(Debug, Clone)]
pub(crate) struct Groups {
    /// Lane 0's first source pixel, per group (up to 7 left of pixel 0 when growing).
    base: Vec<isize>,
    steps: Vec<usize>,
    offset: Vec<usize>,
    weights: Vec<f32>,
    /// The lowest source pixel any load reads, and one past the highest.
    reach: (isize, isize),
    /// 1, or 2 for groups that read a row with every pixel stored twice (`[a, a, b, b, ..]`): lane
    /// `l` then reads pixel `base + q + l / 2`, which follows the taps of a 2x enlargement (JPEG
    /// chroma) in about half the steps. Group `g`'s step `q` loads at float `dup * (base + q)` of
    /// such a row (past its padding).
    dup: usize,
}

impl Groups {
    pub(crate) fn new(taps: &Taps) -> Groups {
        Groups::with_dup(taps, 1)
    }

    /// Groups for rows whose pixels are stored `dup` (1 or 2) times each.
    pub(crate) fn with_dup(taps: &Taps, dup: usize) -> Groups {
        assert!(matches!(dup, 1 | 2));
        let out = taps.start.len();
        let n = out.div_ceil(LANES);
        let mut g = Groups {
            base: Vec::with_capacity(n),
            steps: Vec::with_capacity(n),
            offset: Vec::with_capacity(n),
            weights: Vec::new(),
            reach: (0, 0),
            dup,
        };
        for first in (0..out).step_by(LANES) {
            let lanes = first..(first + LANES).min(out);
            let lane = |i: usize| ((i - first) / dup) as isize;
            let base = lanes
                .clone()
                .map(|i| taps.start[i] as isize - lane(i))
                .min()
                .expect("a group has a lane");
            let steps = lanes
                .clone()
                .map(|i| (taps.start[i] + taps.len[i]) as isize - lane(i) - base)
                .max()
                .expect("a group has a lane") as usize;
            let offset = g.weights.len();
            g.weights.resize(offset + steps * LANES, 0.0);
            for i in lanes {
                for (k, &w) in taps.weights(i).iter().enumerate() {
                    let q = (taps.start[i] + k) as isize - lane(i) - base;
                    g.weights[offset + q as usize * LANES + (i - first)] = w;
                }
            }
            g.reach.0 = g.reach.0.min(base);
            g.reach.1 = g.reach.1.max(base + (steps + LANES / dup - 1) as isize);
            g.base.push(base);
            g.steps.push(steps);
            g.offset.push(offset);
        }
        g
    }

    fn len(&self) -> usize {
        self.base.len()
    }

    /// Heap bytes held.
    pub(crate) fn bytes(&self) -> usize {
        (self.base.len() + self.steps.len() + self.offset.len()) * size_of::<usize>()
            + self.weights.len() * size_of::<f32>()
    }

    #[cfg(test)]
    fn total_steps(&self) -> usize {
        self.steps.iter().sum()
    }

    fn matrix(&self, g: usize) -> &[f32] {
        &self.weights[self.offset[g]..self.offset[g] + self.steps[g] * LANES]
    }

    /// Floats per channel plane of a source row of `width` pixels: the left padding, the pixels,
    /// and whatever the loads reach past them, in whole vectors.
    fn plane_len(&self, width: usize) -> usize {
        (PAD + width.max(self.reach.1.max(0) as usize)).next_multiple_of(LANES)
    }
}

/// Per-thread buffers, reused from image to image.
#[derive(Default)]
struct Scratch {
    /// Ring of source rows widened to f32 as three padded planes each, `ring_rows x row_stride`.
    ring: Vec<f32>,
    /// Four vertically resampled rows (same layout), `4 x row_stride`.
    rows: Vec<f32>,
    /// The band's normalised planes for [`patches_from_bands`].
    band: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Which kernels to run: AVX2+FMA where the CPU has them, portable loops otherwise (and in tests that
/// compare the two).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Isa {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Isa {
    pub(crate) fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Isa::Avx2;
        }
        Isa::Portable
    }
}

/// Resample `img` to `out_h x out_w` (multiples of `patch_size * merge_size`), normalise and patchify.
pub(crate) fn resample_patchify(
    img: &RgbImage,
    out_h: usize,
    out_w: usize,
    cfg: &ImageConfig,
) -> Result<ProcessedImage, ImageError> {
    resample_patchify_with(img, out_h, out_w, cfg, Isa::detect())
}

pub(crate) fn resample_patchify_with(
    img: &RgbImage,
    out_h: usize,
    out_w: usize,
    cfg: &ImageConfig,
    isa: Isa,
) -> Result<ProcessedImage, ImageError> {
    let (grid_h, grid_w) = check_grid(out_h, out_w, cfg)?;
    let (in_h, in_w) = (img.height() as usize, img.width() as usize);
    if in_h == 0 || in_w == 0 {
        return Err(ImageError::TooSmall {
            height: in_h as u32,
            width: in_w as u32,
        });
    }
    let vertical = Taps::bicubic(in_h, out_h);
    let horizontal = Groups::new(&Taps::bicubic(in_w, out_w));
    let band_rows = cfg.merge_size * cfg.patch_size;
    let row_len = in_w * 3;
    // A row is three planes (R, G, B), each padded so that every load of the horizontal pass stays
    // inside it; the vertical pass runs over whole rows, padding included.
    let plane = horizontal.plane_len(in_w);
    assert!(
        horizontal.reach.0 >= -(PAD as isize),
        "groups reach left of the padding"
    );
    let row_stride = 3 * plane;
    let out_stride = out_w.next_multiple_of(LANES);
    let vertical_identity = in_h == out_h;
    let bands = grid_h / cfg.merge_size;
    let ring_rows = vertical.ring_rows(band_rows, bands);
    let (scale, bias) = normalise_affine(cfg);
    let raw = img.as_raw();
    Ok(SCRATCH.with(|scratch| {
        let Scratch { ring, rows, band } = &mut *scratch.borrow_mut();
        // Not cleared between images: every value a pass reads is written for this image first, except
        // the padding around each plane's pixels, whose (finite) values only meet zero weights.
        ring.resize(ring_rows * row_stride, 0.0);
        rows.resize(4 * row_stride, 0.0);
        let mut widened = 0;
        let mut offsets = Vec::new();
        patches_from_bands(grid_h, grid_w, out_stride, cfg, band, |bh, band| {
            let first = bh * band_rows;
            let (lo, hi) = vertical.source_range(first, first + band_rows);
            for y in widened.max(lo)..hi {
                let dst = &mut ring[(y % ring_rows) * row_stride..][..row_stride];
                let (r, gb) = dst.split_at_mut(plane);
                let (g, b) = gb.split_at_mut(plane);
                let planes = [r, g, b].map(|p| &mut p[PAD..PAD + in_w]);
                normalise_planar(&raw[y * row_len..(y + 1) * row_len], planes, &ONE, &ZERO);
            }
            widened = widened.max(hi);
            let mut out = BandOut {
                band,
                plane: band_rows * out_stride,
                stride: out_stride,
                scale,
                bias,
            };
            // Four rows at a time: their vertical pass, then their horizontal pass while the four
            // resampled rows are still in L1.
            for r0 in (0..band_rows).step_by(4) {
                let n = (band_rows - r0).min(4);
                if !vertical_identity {
                    for (r, out) in rows.chunks_exact_mut(row_stride).take(n).enumerate() {
                        let y = first + r0 + r;
                        vertical.ring_offsets(y, ring_rows, row_stride, &mut offsets);
                        vertical_row::<true, false>(ring, &offsets, vertical.weights(y), out, isa);
                    }
                }
                let source = |r: usize| -> &[f32] {
                    if vertical_identity {
                        &ring[((first + r0 + r) % ring_rows) * row_stride..][..row_stride]
                    } else {
                        &rows[r * row_stride..(r + 1) * row_stride]
                    }
                };
                let src: [&[f32]; 4] = std::array::from_fn(|i| source(i.min(n - 1)));
                horizontal_rows(src, plane, n, r0, &horizontal, &mut out, isa);
            }
        })
    }))
}

/// `normalise_planar` with these is a plain widening to f32 (exact).
const ONE: [f32; 3] = [1.0; 3];
const ZERO: [f32; 3] = [0.0; 3];

/// One output row of the vertical pass: `out = clamp(round(sum_k w[k] * ring[offsets[k]..]))`, the
/// 8-bit intermediate of Pillow's RGB passes; without `ROUND` (planes that are converted to RGB
/// later, where only the final value is rounded) the plain sum.
/// With `DOUBLE`, every value is stored twice (`out` is twice as long as the row), the layout a
/// group with `dup == 2` reads.
fn vertical_row<const ROUND: bool, const DOUBLE: bool>(
    ring: &[f32],
    offsets: &[usize],
    weights: &[f32],
    out: &mut [f32],
    isa: Isa,
) {
    debug_assert_eq!(offsets.len(), weights.len());
    let values = if DOUBLE { out.len() / 2 } else { out.len() };
    assert!(values.is_multiple_of(LANES) && (!DOUBLE || out.len() == 2 * values));
    assert!(offsets.iter().all(|&o| o + values <= ring.len()));
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2/FMA present (see `Isa`); every row read lies in `ring` and `out` holds
        // `values` (a multiple of 8) or twice that (asserted above).
        Isa::Avx2 => unsafe { x86::vertical_row::<ROUND, DOUBLE>(ring, offsets, weights, out) },
        Isa::Portable => {
            for i in 0..values {
                let mut acc = 0f32;
                for (&off, &w) in offsets.iter().zip(weights) {
                    acc += w * ring[off + i];
                }
                let v = if ROUND {
                    acc.round().clamp(0.0, 255.0)
                } else {
                    acc
                };
                if DOUBLE {
                    out[2 * i..2 * i + 2].fill(v);
                } else {
                    out[i] = v;
                }
            }
        }
    }
}

/// Where the horizontal pass puts its results: three normalised planes `[3][rows][stride]` (the band
/// [`patches_from_bands`] cuts), with the normalisation to apply.
struct BandOut<'a> {
    band: &'a mut [f32],
    plane: usize,
    stride: usize,
    scale: [f32; 3],
    bias: [f32; 3],
}

/// The horizontal pass for `n <= 4` rows (`src[i]` for `i >= n` repeat a real row and are not
/// stored), each three planes of `plane` floats: round, normalise and store channel `c` of row
/// `r0 + i` at `band[c * out.plane + (r0 + i) * out.stride ..]`.
fn horizontal_rows(
    src: [&[f32]; 4],
    plane: usize,
    n: usize,
    r0: usize,
    groups: &Groups,
    out: &mut BandOut,
    isa: Isa,
) {
    assert!((1..=4).contains(&n) && r0 + n <= out.plane / out.stride);
    assert!(3 * out.plane <= out.band.len() && groups.len() * LANES <= out.stride);
    assert!(src.iter().all(|s| 3 * plane <= s.len()));
    assert!(groups.reach.0 + PAD as isize >= 0 && groups.reach.1 + PAD as isize <= plane as isize);
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2/FMA present; the asserts above bound every load (8 floats at `PAD + base + q`
        // of a plane, within `PAD + reach`) and every store (8 lanes of group `g` at column
        // `8g < stride`).
        Isa::Avx2 => unsafe { x86::horizontal_rows(src, plane, n, r0, groups, out) },
        Isa::Portable => {
            for g in 0..groups.len() {
                let m = groups.matrix(g);
                let start = (PAD as isize + groups.base[g]) as usize;
                for (i, row) in src.iter().enumerate().take(n) {
                    for c in 0..3 {
                        let mut acc = [0f32; LANES];
                        for q in 0..groups.steps[g] {
                            let v = &row[c * plane + start + q..][..LANES];
                            let w = &m[q * LANES..(q + 1) * LANES];
                            for ((a, &v), &w) in acc.iter_mut().zip(v).zip(w) {
                                *a += v * w;
                            }
                        }
                        let at = c * out.plane + (r0 + i) * out.stride + g * LANES;
                        for (d, a) in out.band[at..at + LANES].iter_mut().zip(acc) {
                            *d = a.round().clamp(0.0, 255.0) * out.scale[c] + out.bias[c];
                        }
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{BandOut, Groups, LANES, PAD};
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn round_clamp(v: __m256) -> __m256 {
        let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
        _mm256_min_ps(_mm256_max_ps(r, _mm256_setzero_ps()), _mm256_set1_ps(255.0))
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn vertical_row<const ROUND: bool, const DOUBLE: bool>(
        ring: &[f32],
        offsets: &[usize],
        weights: &[f32],
        out: &mut [f32],
    ) {
        let values = if DOUBLE { out.len() / 2 } else { out.len() };
        let mut i = 0;
        // Eight independent accumulators (64 values) per step: each takes one multiply-add per tap,
        // and eight chains cover the multiply-add latency at two per cycle (four left it half idle).
        while i + 64 <= values {
            // SAFETY: `i + 64 <= values`.
            unsafe { vertical_strip::<8, ROUND, DOUBLE>(ring, offsets, weights, out, i) };
            i += 64;
        }
        while i + 8 <= values {
            // SAFETY: `i + 8 <= values`.
            unsafe { vertical_strip::<1, ROUND, DOUBLE>(ring, offsets, weights, out, i) };
            i += 8;
        }
        debug_assert_eq!(i, values, "row stride is a multiple of 8");
    }

    /// `out[i .. i + 8N]` of one vertical output row, with `N` independent accumulators.
    ///
    /// # Safety
    /// AVX2/FMA present; `i + 8N <= out.len()` and `off + out.len() <= ring.len()` for every offset.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn vertical_strip<const N: usize, const ROUND: bool, const DOUBLE: bool>(
        ring: &[f32],
        offsets: &[usize],
        weights: &[f32],
        out: &mut [f32],
        i: usize,
    ) {
        let base = ring.as_ptr();
        let mut acc = [_mm256_setzero_ps(); N];
        for (&off, &w) in offsets.iter().zip(weights) {
            let wv = _mm256_set1_ps(w);
            for (j, a) in acc.iter_mut().enumerate() {
                // SAFETY: `off + i + 8N <= off + out.len() <= ring.len()` (the contract).
                let v = unsafe { _mm256_loadu_ps(base.add(off + i + 8 * j)) };
                *a = _mm256_fmadd_ps(v, wv, *a);
            }
        }
        for (j, a) in acc.into_iter().enumerate() {
            let v = if ROUND { round_clamp(a) } else { a };
            let at = i + 8 * j;
            if DOUBLE {
                // [v0 v0 v1 v1 | v4 v4 v5 v5] and [v2 v2 v3 v3 | v6 v6 v7 v7], regrouped.
                let (lo, hi) = (_mm256_unpacklo_ps(v, v), _mm256_unpackhi_ps(v, v));
                // SAFETY: `2 * (i + 8N) <= out.len()` (the contract, doubled).
                unsafe {
                    let d = out.as_mut_ptr().add(2 * at);
                    _mm256_storeu_ps(d, _mm256_permute2f128_ps::<0x20>(lo, hi));
                    _mm256_storeu_ps(d.add(8), _mm256_permute2f128_ps::<0x31>(lo, hi));
                }
            } else {
                // SAFETY: `i + 8N <= out.len()` (the contract).
                unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(at), v) };
            }
        }
    }

    /// Group `g` of `groups` over `S` rows: lane `l` of `acc[r]` is output `8g + l` of row `r`.
    ///
    /// # Safety
    /// AVX2/FMA present; every row holds the group's loads (`dup * (PAD + base + q) + 8` floats).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn group_sums<const S: usize>(
        rows: &[*const f32; S],
        groups: &Groups,
        g: usize,
    ) -> [__m256; S] {
        let m = groups.matrix(g).as_ptr();
        let dup = groups.dup;
        let start = dup * (PAD as isize + groups.base[g]) as usize;
        let mut acc = [_mm256_setzero_ps(); S];
        for q in 0..groups.steps[g] {
            // SAFETY: the matrix has `steps * 8` weights; the row loads are in bounds (contract).
            unsafe {
                let w = _mm256_loadu_ps(m.add(q * LANES));
                for (a, row) in acc.iter_mut().zip(rows) {
                    *a = _mm256_fmadd_ps(_mm256_loadu_ps(row.add(start + dup * q)), w, *a);
                }
            }
        }
        acc
    }

    /// Normalisation constants of a `BandOut` as vectors, and where its band starts.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn band_constants(out: &mut BandOut) -> ([__m256; 3], [__m256; 3], *mut f32) {
        (
            out.scale.map(|s| _mm256_set1_ps(s)),
            out.bias.map(|b| _mm256_set1_ps(b)),
            out.band.as_mut_ptr(),
        )
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn horizontal_rows(
        src: [&[f32]; 4],
        plane: usize,
        n: usize,
        r0: usize,
        groups: &Groups,
        out: &mut BandOut,
    ) {
        // 4 rows x 3 channels of 8 outputs: 12 independent accumulators, row-major.
        let slices: [*const f32; 12] =
            std::array::from_fn(|k| src[k / 3][(k % 3) * plane..].as_ptr());
        let (out_plane, stride) = (out.plane, out.stride);
        let (scales, biases, dst) = band_constants(out);
        for g in 0..groups.len() {
            // SAFETY: the 8 floats at `c * plane + PAD + base + q` lie within each row's plane `c`
            // (checked by the caller).
            let sums = unsafe { group_sums(&slices, groups, g) };
            let acc: [[__m256; 3]; 4] =
                std::array::from_fn(|i| [sums[3 * i], sums[3 * i + 1], sums[3 * i + 2]]);
            for (i, a) in acc.iter().enumerate().take(n) {
                for c in 0..3 {
                    let v = _mm256_fmadd_ps(round_clamp(a[c]), scales[c], biases[c]);
                    // SAFETY: row `r0 + i` of plane `c`, columns `8g .. 8g + 8 <= stride`.
                    unsafe {
                        _mm256_storeu_ps(dst.add(c * out_plane + (r0 + i) * stride + g * LANES), v)
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn noise_image(h: u32, w: u32, seed: u32) -> RgbImage {
        let mut state = seed.wrapping_mul(2_654_435_761).max(1);
        RgbImage::from_fn(w, h, |x, y| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            // Smooth gradients plus noise: exercises both clamping and ordinary values.
            let base = ((x * 7 + y * 3) % 256) as u8;
            image::Rgb([
                base,
                (state % 256) as u8,
                base.wrapping_add((state >> 8) as u8 % 32),
            ])
        })
    }

    pub(super) fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max)
    }

    #[test]
    fn weights_match_pillow_rules() {
        // Identity: one tap of weight 1.
        let id = Taps::bicubic(5, 5);
        assert_eq!(id.weights(3), &[1.0]);
        // Shrinking widens the support by the scale factor: 100 -> 50 has 4 * 2 = 8 (or 9) taps.
        let down = Taps::bicubic(100, 50);
        assert!(down.len[10] >= 8, "{:?}", down.weights(10));
        for i in 0..50 {
            let sum: f32 = down.weights(i).iter().sum();
            assert!((sum - 1.0).abs() < 1e-5, "weights of {i} sum to {sum}");
        }
        // Growing 4 -> 8: output 1 is centred at 0.75 and reads inputs 0..3 at distances 0.25, 0.75
        // and 1.75 (worked by hand from the kernel), normalised by their sum 1.0703125.
        let up = Taps::bicubic(4, 8);
        assert_eq!((up.start[1], up.len[1]), (0, 3));
        let want = [0.867_187_5, 0.226_562_5, -0.023_437_5].map(|w: f64| (w / 1.070_312_5) as f32);
        assert_eq!(up.weights(1), &want);
    }

    #[test]
    fn group_matrices_reproduce_the_taps() {
        for (inp, out) in [
            (512, 504),
            (300, 308),
            (1000, 392),
            (37, 56),
            (1, 28),
            (5000, 56),
        ] {
            let taps = Taps::bicubic(inp, out);
            let g = Groups::new(&taps);
            assert!(g.reach.0 >= -(PAD as isize) && g.plane_len(inp) >= PAD + inp);
            for i in 0..out {
                let (gi, lane) = (i / LANES, i % LANES);
                let m = g.matrix(gi);
                let window = g.base[gi] + lane as isize;
                // Every tap of output `i` falls inside its lane's window of `steps` pixels...
                assert!(taps.start[i] as isize >= window, "{inp}->{out} output {i}");
                assert!(
                    (taps.start[i] + taps.len[i]) as isize <= window + g.steps[gi] as isize,
                    "{inp}->{out} output {i}"
                );
                // ...and the window's weights are exactly the taps, zero elsewhere.
                for q in 0..g.steps[gi] {
                    let src = window + q as isize;
                    let k = src - taps.start[i] as isize;
                    let want = if k >= 0 && (k as usize) < taps.len[i] {
                        taps.weights(i)[k as usize]
                    } else {
                        0.0
                    };
                    assert_eq!(
                        m[q * LANES + lane],
                        want,
                        "{inp}->{out} output {i} source {src}"
                    );
                }
                assert!(window + (g.steps[gi] + LANES - 1 - lane) as isize <= g.reach.1);
            }
        }
        // Near scale 1 a group needs one step more than a pixel's own taps, not the ~12 of a dense
        // 8-pixel span.
        let g = Groups::new(&Taps::bicubic(512, 504));
        assert!(g.steps.iter().all(|&s| s <= 6), "{:?}", g.steps);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_kernels_equal_the_portable_ones() {
        if Isa::detect() != Isa::Avx2 {
            eprintln!("no AVX2 here: nothing to compare");
            return;
        }
        let cfg = ImageConfig::qwen2_vl();
        for (seed, (h, w), (oh, ow)) in [
            (1, (512, 512), (504, 504)),
            (2, (300, 451), (308, 448)),
            (3, (308, 451), (308, 448)),
            (4, (61, 97), (56, 112)),
            (5, (900, 700), (392, 392)),
            // Extremes: a 1- and 2-pixel side grown to 28, and a 40x vertical shrink (83 taps).
            (6, (2, 300), (28, 308)),
            (7, (1, 1), (28, 28)),
            (8, (3000, 20), (56, 28)),
        ] {
            let img = noise_image(h, w, seed);
            let fast = resample_patchify_with(&img, oh, ow, &cfg, Isa::Avx2).unwrap();
            let slow = resample_patchify_with(&img, oh, ow, &cfg, Isa::Portable).unwrap();
            assert_eq!(fast.grid_thw, slow.grid_thw);
            // Same operations in a different summation order: at most one 8-bit step apart.
            let step = 1.0 / (255.0 * 0.26) + 1e-4;
            let worst = max_abs_diff(&fast.pixel_values, &slow.pixel_values);
            assert!(worst <= step, "{h}x{w} -> {oh}x{ow}: {worst}");
        }
    }

    #[test]
    fn extreme_geometries_agree_with_fast_image_resize() {
        use crate::patchify::patchify;
        use crate::resize::resample;
        let cfg = ImageConfig::clip();
        let step = 1.0 / (255.0 * 0.26) + 1e-4;
        for (seed, (h, w), (oh, ow)) in [
            (11, (2, 300), (28, 308)),
            (12, (1, 1), (28, 28)),
            (13, (3000, 20), (56, 28)),
            (14, (28, 5000), (28, 56)),
        ] {
            let img = noise_image(h, w, seed);
            let got = resample_patchify(&img, oh, ow, &cfg).unwrap();
            let want = patchify(&resample(img, oh as u32, ow as u32).unwrap(), &cfg).unwrap();
            assert_eq!(got.grid_thw, want.grid_thw);
            let worst = max_abs_diff(&got.pixel_values, &want.pixel_values);
            assert!(
                worst <= 2.0 * step,
                "{h}x{w} -> {oh}x{ow}: {}",
                worst / step
            );
        }
    }

    #[test]
    fn odd_patch_sizes_and_two_frames() {
        // 4- and 10-pixel patches (runs of a length not specialised at compile time) with T = 2 (the
        // second frame repeats the first): both ISAs against fast_image_resize + patchify.
        use crate::patchify::patchify;
        use crate::resize::resample;
        let step = 1.0 / (255.0 * 0.26) + 1e-4;
        for (patch_size, seed, (h, w), (oh, ow)) in [
            (4, 21, (61, 97), (56, 112)),
            (4, 22, (300, 451), (304, 448)),
            (10, 23, (333, 123), (300, 120)),
        ] {
            let cfg = ImageConfig {
                patch_size,
                temporal_patch_size: 2,
                ..ImageConfig::clip()
            };
            let img = noise_image(h, w, seed);
            let want =
                patchify(&resample(img.clone(), oh as u32, ow as u32).unwrap(), &cfg).unwrap();
            let mut isas = vec![Isa::Portable];
            isas.extend(Some(Isa::detect()).filter(|&i| i != Isa::Portable));
            for isa in isas {
                let got = resample_patchify_with(&img, oh, ow, &cfg, isa).unwrap();
                assert_eq!(got.grid_thw, want.grid_thw);
                let worst = max_abs_diff(&got.pixel_values, &want.pixel_values);
                assert!(
                    worst <= 2.0 * step,
                    "{isa:?} p={patch_size} {h}x{w} -> {oh}x{ow}: {}",
                    worst / step
                );
            }
        }
    }
}
