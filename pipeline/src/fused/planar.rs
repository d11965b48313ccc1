//! The planar JPEG kernel: a JPEG's stored Y/Cb/Cr (or grey) planes resampled straight to the output
//! grid, converted to RGB per output pixel, normalised and patchified (see the parent module's docs).
//! It shares the taps, groups and vertical pass of the RGB kernel in `fused.rs`.
use std::cell::RefCell;
use std::rc::Rc;

use super::{BandOut, Groups, Isa, LANES, PAD, Taps, vertical_row};
use crate::decode::{ImageError, JpegPlanes, Plane};
use crate::patchify::{ProcessedImage, check_grid, normalise_affine, patches_from_bands};
use crate::resize::ImageConfig;

/// Source rows per chunk of the planar kernel's horizontal pass: 12 rows of a grey plane, or 4 of
/// each of Y, Cb and Cr, as many accumulators as the RGB kernel's 4 rows x 3 channels.
const PLANE_CHUNK: usize = 12;

/// Per-thread buffers of [`planes_patchify_with`], reused from image to image.
#[derive(Default)]
struct PlaneScratch {
    /// Per plane, a ring of its source rows widened to f32 (`ring_rows x plane_len`).
    rings: Vec<Vec<f32>>,
    /// [`PLANE_CHUNK`] vertically resampled rows (of one plane, or 4 of each of three).
    rows: Vec<f32>,
    /// 4 rows of Cb and 4 of Cr with every value stored twice, for groups with `dup == 2`.
    doubled: Vec<f32>,
    band: Vec<f32>,
}

thread_local! {
    static PLANE_SCRATCH: RefCell<PlaneScratch> = RefCell::new(PlaneScratch::default());
}

/// How one plane of a [`JpegPlanes`] maps onto the output.
struct PlanePass {
    vertical: Taps,
    horizontal: Groups,
    /// Floats per widened source row.
    plane_len: usize,
    ring_rows: usize,
    vertical_identity: bool,
}

/// Resample a JPEG's planes to `out_h x out_w`, convert to RGB, round to 8 bits, normalise and
/// patchify. Each plane is resampled from its own resolution straight to the output grid (chroma
/// is centred as JPEG stores it: a sample covers its whole block of pixels), with the same Pillow
/// bicubic weights and passes as [`resample_patchify`](super::resample_patchify); the colour conversion (JFIF full-range
/// YCbCr, libjpeg's coefficients) and the one rounding to 8 bits happen per output pixel.
pub(crate) fn planes_patchify_with(
    src: &JpegPlanes,
    out_h: usize,
    out_w: usize,
    cfg: &ImageConfig,
    isa: Isa,
) -> Result<ProcessedImage, ImageError> {
    let (grid_h, grid_w) = check_grid(out_h, out_w, cfg)?;
    let too_small = || ImageError::TooSmall {
        height: src.height as u32,
        width: src.width as u32,
    };
    if src.planes.is_empty() || src.planes.iter().any(|p| p.width == 0 || p.height == 0) {
        return Err(too_small());
    }
    if !matches!(src.planes.len(), 1 | 3) {
        return Err(ImageError::Unsupported(format!(
            "{} JPEG components",
            src.planes.len()
        )));
    }
    let band_rows = cfg.merge_size * cfg.patch_size;
    let out_stride = out_w.next_multiple_of(LANES);
    let colour = src.planes.len() == 3;
    if colour {
        let (cb, cr) = (&src.planes[1], &src.planes[2]);
        assert!(
            (cb.width, cb.height, cb.block, cb.pad, cb.fancy)
                == (cr.width, cr.height, cr.block, cr.pad, cr.fancy),
            "Cb and Cr differ in geometry"
        );
    }
    // Cb and Cr always share a geometry: one plan serves both.
    let plans = PLANS.with(|cache| {
        let key = PlanKey::new(src, out_h, out_w, band_rows);
        cache
            .borrow_mut()
            .get_or_insert_with(key, || plan_passes(src, out_h, out_w, band_rows))
    });
    let passes: Vec<&PlanePass> = (0..src.planes.len()).map(|i| &plans[i.min(1)]).collect();
    let (scale, bias) = normalise_affine(cfg);
    let out_plane = band_rows * out_stride;
    Ok(PLANE_SCRATCH.with(|scratch| {
        let PlaneScratch {
            rings,
            rows,
            doubled,
            band,
        } = &mut *scratch.borrow_mut();
        rings.resize_with(passes.len(), Vec::new);
        // Not cleared between images, as in `resample_patchify`: only padding can be stale, and it
        // meets zero weights.
        for (ring, pass) in rings.iter_mut().zip(&passes) {
            ring.resize(pass.ring_rows * pass.plane_len, 0.0);
        }
        let widest = passes.iter().map(|p| p.plane_len).max().unwrap_or(0);
        rows.resize(PLANE_CHUNK * widest, 0.0);
        doubled.resize(8 * 2 * widest, 0.0);
        let mut widened = vec![0usize; passes.len()];
        let mut offsets = Vec::new();
        patches_from_bands(grid_h, grid_w, out_stride, cfg, band, |bh, band| {
            let first = bh * band_rows;
            for (i, (plane, pass)) in src.planes.iter().zip(&passes).enumerate() {
                let (ring, stride) = (&mut rings[i], pass.plane_len);
                // Chroma is widened as Cb - 128 and Cr - 128, the form the colour conversion takes:
                // the taps sum to one, so the offset passes through both resampling passes unchanged.
                let offset = if i > 0 { 128.0 } else { 0.0 };
                let (lo, hi) = pass.vertical.source_range(first, first + band_rows);
                for y in widened[i].max(lo)..hi {
                    let dst = &mut ring[(y % pass.ring_rows) * stride..][PAD..PAD + plane.width];
                    widen(
                        &plane.data[y * plane.stride..][..plane.width],
                        dst,
                        offset,
                        isa,
                    );
                }
                widened[i] = widened[i].max(hi);
            }
            let mut out = BandOut {
                band,
                plane: out_plane,
                stride: out_stride,
                scale,
                bias,
            };
            let mut r0 = 0;
            while r0 < band_rows {
                let left = band_rows - r0;
                // Colour: 4 rows of Y, Cb and Cr. Grey: 12 rows of Y (28 = 12 + 8 + 8), so that
                // every chunk keeps at least eight accumulators going.
                let chunk = if colour {
                    4
                } else if left >= 12 && left != 16 {
                    12
                } else if left > 4 {
                    8
                } else {
                    4
                };
                let n = left.min(chunk);
                // Plane `i`'s row `r` of the chunk lives in slot `i * chunk + r` of `rows`.
                for (i, pass) in passes.iter().enumerate() {
                    if pass.vertical_identity {
                        continue;
                    }
                    let stride = pass.plane_len;
                    for r in 0..n {
                        let y = first + r0 + r;
                        pass.vertical
                            .ring_offsets(y, pass.ring_rows, stride, &mut offsets);
                        let (ring, weights) = (&rings[i], pass.vertical.weights(y));
                        // Grey rounds to 8 bits between the passes, as Pillow does on the RGB
                        // image (the same values); colour rounds once, in RGB. Chroma read by
                        // doubled groups is stored doubled straight away.
                        if pass.horizontal.dup == 2 {
                            let out = &mut doubled[((i - 1) * 4 + r) * 2 * widest..][..2 * stride];
                            vertical_row::<false, true>(ring, &offsets, weights, out, isa);
                        } else {
                            let out = &mut rows[(i * chunk + r) * widest..][..stride];
                            if colour {
                                vertical_row::<false, false>(ring, &offsets, weights, out, isa);
                            } else {
                                vertical_row::<true, false>(ring, &offsets, weights, out, isa);
                            }
                        }
                    }
                }
                for (i, pass) in passes.iter().enumerate().skip(1) {
                    if pass.horizontal.dup != 2 || !pass.vertical_identity {
                        continue;
                    }
                    let len = pass.plane_len;
                    for r in 0..n {
                        let plain = &rings[i][((first + r0 + r) % pass.ring_rows) * len..][..len];
                        let dst = &mut doubled[((i - 1) * 4 + r) * 2 * widest..][..2 * len];
                        duplicate(plain, dst, isa);
                    }
                }
                let slot = |k: usize| -> &[f32] {
                    let (i, r) = (k / chunk, (k % chunk).min(n - 1));
                    let Some(pass) = passes.get(i) else {
                        return &[];
                    };
                    let len = pass.plane_len;
                    if pass.horizontal.dup == 2 {
                        &doubled[((i - 1) * 4 + r) * 2 * widest..][..2 * len]
                    } else if pass.vertical_identity {
                        &rings[i][((first + r0 + r) % pass.ring_rows) * len..][..len]
                    } else {
                        &rows[(i * chunk + r) * widest..][..len]
                    }
                };
                let src_rows: [&[f32]; PLANE_CHUNK] = std::array::from_fn(slot);
                if colour {
                    let (luma, chroma) = (&passes[0].horizontal, &passes[1].horizontal);
                    horizontal_ycc(src_rows, n, r0, luma, chroma, &mut out, isa);
                } else {
                    let groups = &passes[0].horizontal;
                    horizontal_grey(&src_rows[..chunk], n, r0, groups, &mut out, isa);
                }
                r0 += n;
            }
        })
    }))
}

/// What a JPEG's plan depends on: the image and output sizes, the band height, and each stored
/// plane's geometry (the first two; Cr repeats Cb's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PlanKey {
    size: (usize, usize),
    out: (usize, usize),
    band_rows: usize,
    planes: [Option<PlaneGeometry>; 2],
}

/// A plane's `(width, height, block, pad, fancy)`.
type PlaneGeometry = (usize, usize, (usize, usize), (usize, usize), bool);

impl PlanKey {
    fn new(src: &JpegPlanes, out_h: usize, out_w: usize, band_rows: usize) -> PlanKey {
        PlanKey {
            size: (src.height, src.width),
            out: (out_h, out_w),
            band_rows,
            planes: std::array::from_fn(|i| {
                let p = src.planes.get(i)?;
                Some((p.width, p.height, p.block, p.pad, p.fancy))
            }),
        }
    }
}

/// The plans a thread built last, most recently used first. Planning (Pillow's taps for both axes,
/// their composition with chroma upsampling, the regrouping for the horizontal kernel) is a few
/// percent of the image path, and datasets often hold many images of one geometry (fixed-size
/// crawls, camera resolutions), which then skip it.
struct PlanCache {
    entries: Vec<(PlanKey, Rc<Vec<PlanePass>>)>,
}

/// Plans kept per thread: few enough that a lookup is a short scan...
const PLANS_KEPT: usize = 16;
/// ...and at most this many bytes of them (a 512x512 photo's plan is 58 kB; one for a 48 MP image
/// shrunk to 12.8 MP 0.64 MB), so that the cache adds little to a worker's memory.
const PLAN_BYTES_KEPT: usize = 4 << 20;

impl PlanCache {
    fn get_or_insert_with(
        &mut self,
        key: PlanKey,
        build: impl FnOnce() -> Vec<PlanePass>,
    ) -> Rc<Vec<PlanePass>> {
        if let Some(i) = self.entries.iter().position(|(k, _)| *k == key) {
            let entry = self.entries.remove(i);
            self.entries.insert(0, entry);
        } else {
            self.entries.insert(0, (key, Rc::new(build())));
            // Drop the least recently used plans past either limit (the new one always stays).
            let mut bytes = 0;
            let keep = self
                .entries
                .iter()
                .take(PLANS_KEPT)
                .take_while(|(_, plan)| {
                    bytes += plan.iter().map(PlanePass::bytes).sum::<usize>();
                    bytes <= PLAN_BYTES_KEPT
                })
                .count();
            self.entries.truncate(keep.max(1));
        }
        self.entries[0].1.clone()
    }
}

impl PlanePass {
    /// Heap bytes held, roughly (the weights dominate).
    fn bytes(&self) -> usize {
        self.vertical.bytes() + self.horizontal.bytes()
    }
}

thread_local! {
    static PLANS: RefCell<PlanCache> = const { RefCell::new(PlanCache { entries: Vec::new() }) };
}

/// One [`PlanePass`] for the luma (or grey) plane and, for colour, one that serves Cb and Cr.
fn plan_passes(src: &JpegPlanes, out_h: usize, out_w: usize, band_rows: usize) -> Vec<PlanePass> {
    let bands = out_h / band_rows;
    // The RGB path's taps over the image's pixels; each plane's are derived from them.
    let rows_taps = Taps::bicubic(src.height, out_h);
    let columns_taps = Taps::bicubic(src.width, out_w);
    let colour = src.planes.len() == 3;
    let plan = |p: &Plane| {
        let vertical = Taps::through_upsampling(&rows_taps, p.block.1, p.pad.1, p.height, p.fancy);
        let columns = Taps::through_upsampling(&columns_taps, p.block.0, p.pad.0, p.width, p.fancy);
        // Chroma enlarged about 2x or more reads doubled rows: ~4 steps per group instead of ~7.
        let enlarged = (p.width as f64) < 0.75 * out_w as f64;
        let dup = if colour && p.block.0 == 2 && enlarged {
            2
        } else {
            1
        };
        let horizontal = Groups::with_dup(&columns, dup);
        assert!(
            horizontal.reach.0 >= -(PAD as isize),
            "groups reach left of the padding"
        );
        let ring_rows = vertical.ring_rows(band_rows, bands);
        PlanePass {
            plane_len: horizontal.plane_len(p.width),
            vertical_identity: p.height == out_h && vertical.ksize == 1,
            vertical,
            horizontal,
            ring_rows,
        }
    };
    src.planes.iter().take(2).map(plan).collect()
}

/// `dst[j] = src[j] as f32 - offset` (exact for the offsets used: 0, and 128 for chroma).
fn widen(src: &[u8], dst: &mut [f32], offset: f32, isa: Isa) {
    assert_eq!(dst.len(), src.len());
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 present; the lengths match (asserted).
        Isa::Avx2 => unsafe { x86::widen(src, dst, offset) },
        Isa::Portable => {
            for (d, &v) in dst.iter_mut().zip(src) {
                *d = v as f32 - offset;
            }
        }
    }
}

/// `dst[2j] = dst[2j + 1] = src[j]`.
fn duplicate(src: &[f32], dst: &mut [f32], isa: Isa) {
    assert_eq!(dst.len(), 2 * src.len());
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 present; the lengths match (asserted).
        Isa::Avx2 => unsafe { x86::duplicate(src, dst) },
        Isa::Portable => {
            for (d, &v) in dst.chunks_exact_mut(2).zip(src) {
                d.fill(v);
            }
        }
    }
}

/// Output pixels `8g .. 8g + 8` of one row of a plane, unrounded.
#[inline]
fn group_sum(row: &[f32], groups: &Groups, g: usize) -> [f32; LANES] {
    let m = groups.matrix(g);
    let start = groups.dup * (PAD as isize + groups.base[g]) as usize;
    let mut acc = [0f32; LANES];
    for q in 0..groups.steps[g] {
        let v = &row[start + groups.dup * q..][..LANES];
        for ((a, &v), &w) in acc.iter_mut().zip(v).zip(&m[q * LANES..]) {
            *a += v * w;
        }
    }
    acc
}

/// Checks shared by the planar horizontal passes: rows `r0 .. r0 + n` of `out` exist, the groups'
/// stores fit a row, and every source row holds all the groups' loads.
fn check_planar(src: &[&[f32]], n: usize, r0: usize, groups: &Groups, out: &BandOut) {
    assert!(n >= 1 && r0 + n <= out.plane / out.stride && 3 * out.plane <= out.band.len());
    assert!(groups.len() * LANES <= out.stride);
    // A doubled row stores pixel `j` (padding included) at floats `2j` and `2j + 1`.
    let reach = groups.dup as isize * (groups.reach.1 + PAD as isize);
    assert!(groups.reach.0 + PAD as isize >= 0 && src.iter().all(|s| reach <= s.len() as isize));
}

/// The horizontal pass of a grey plane for `n` rows (`src` holds 4, 8 or 12; those past `n` repeat a
/// real row and are not stored): round, clamp, and store each value normalised into all three channel
/// planes of rows `r0 ..` of `out`.
fn horizontal_grey(
    src: &[&[f32]],
    n: usize,
    r0: usize,
    groups: &Groups,
    out: &mut BandOut,
    isa: Isa,
) {
    assert!(matches!(src.len(), 4 | 8 | 12) && n <= src.len());
    check_planar(src, n, r0, groups, out);
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2/FMA present; `check_planar` bounds every load (8 floats at `PAD + base + q`,
        // within `PAD + reach`) and every store (rows `r0 + r < rows`, columns `8g + 8 <= stride`).
        Isa::Avx2 => unsafe {
            match src.len() {
                12 => x86::horizontal_grey::<12>(src, n, r0, groups, out),
                8 => x86::horizontal_grey::<8>(src, n, r0, groups, out),
                _ => x86::horizontal_grey::<4>(src, n, r0, groups, out),
            }
        },
        Isa::Portable => {
            for g in 0..groups.len() {
                for (r, row) in src.iter().enumerate().take(n) {
                    let acc = group_sum(row, groups, g);
                    for c in 0..3 {
                        let at = c * out.plane + (r0 + r) * out.stride + g * LANES;
                        for (d, a) in out.band[at..at + LANES].iter_mut().zip(acc) {
                            *d = a.round().clamp(0.0, 255.0) * out.scale[c] + out.bias[c];
                        }
                    }
                }
            }
        }
    }
}

/// libjpeg's JFIF YCbCr -> RGB coefficients (`jdcolor.c`): R = Y + 1.402 Cr', G = Y - 0.34414 Cb' -
/// 0.71414 Cr', B = Y + 1.772 Cb', with Cb' = Cb - 128 and Cr' = Cr - 128 (the chroma planes are
/// widened with the offset already taken off).
const CR_R: f32 = 1.402;
const CB_G: f32 = -0.34414;
const CR_G: f32 = -0.71414;
const CB_B: f32 = 1.772;

/// The horizontal pass of 4 rows of Y (`src[0..4]`), Cb (`src[4..8]`) and Cr (`src[8..12]`), the
/// chroma with its own groups; each output pixel is converted to RGB, rounded to 8 bits, normalised
/// and stored in rows `r0 .. r0 + n` of `out`.
fn horizontal_ycc(
    src: [&[f32]; 12],
    n: usize,
    r0: usize,
    luma: &Groups,
    chroma: &Groups,
    out: &mut BandOut,
    isa: Isa,
) {
    assert!(n <= 4 && luma.len() == chroma.len());
    check_planar(&src[..4], n, r0, luma, out);
    check_planar(&src[4..], n, r0, chroma, out);
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2/FMA present; `check_planar` bounds every load and store, as above.
        Isa::Avx2 => unsafe { x86::horizontal_ycc(src, n, r0, luma, chroma, out) },
        Isa::Portable => {
            for g in 0..luma.len() {
                for r in 0..n {
                    let y = group_sum(src[r], luma, g);
                    let cb = group_sum(src[4 + r], chroma, g);
                    let cr = group_sum(src[8 + r], chroma, g);
                    for l in 0..LANES {
                        let (cb, cr) = (cb[l], cr[l]);
                        let rgb = [
                            y[l] + CR_R * cr,
                            y[l] + CB_G * cb + CR_G * cr,
                            y[l] + CB_B * cb,
                        ];
                        for (c, v) in rgb.into_iter().enumerate() {
                            let at = c * out.plane + (r0 + r) * out.stride + g * LANES + l;
                            out.band[at] = v.round().clamp(0.0, 255.0) * out.scale[c] + out.bias[c];
                        }
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::x86::{band_constants, group_sums, round_clamp};
    use super::{CB_B, CB_G, CR_G, CR_R};
    use crate::fused::{BandOut, Groups, LANES};
    use std::arch::x86_64::*;

    /// See `super::duplicate`.
    ///
    /// # Safety
    /// AVX2 present; `dst.len() == 2 * src.len()`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn duplicate(src: &[f32], dst: &mut [f32]) {
        let mut j = 0;
        while j + 8 <= src.len() {
            // SAFETY: floats `j .. j + 8` of `src` and `2j .. 2j + 16` of `dst` exist.
            unsafe {
                let v = _mm256_loadu_ps(src.as_ptr().add(j));
                // [v0 v0 v1 v1 | v4 v4 v5 v5] and [v2 v2 v3 v3 | v6 v6 v7 v7], then regrouped.
                let (lo, hi) = (_mm256_unpacklo_ps(v, v), _mm256_unpackhi_ps(v, v));
                let d = dst.as_mut_ptr().add(2 * j);
                _mm256_storeu_ps(d, _mm256_permute2f128_ps::<0x20>(lo, hi));
                _mm256_storeu_ps(d.add(8), _mm256_permute2f128_ps::<0x31>(lo, hi));
            }
            j += 8;
        }
        for (d, &v) in dst[2 * j..].chunks_exact_mut(2).zip(&src[j..]) {
            d.fill(v);
        }
    }

    /// # Safety
    /// AVX2 present; `dst.len() == src.len()`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn widen(src: &[u8], dst: &mut [f32], offset: f32) {
        let off = _mm256_set1_ps(offset);
        let mut j = 0;
        while j + 8 <= src.len() {
            // SAFETY: bytes `j .. j + 8` of `src` and floats `j .. j + 8` of `dst` exist.
            unsafe {
                let bytes = _mm_loadl_epi64(src.as_ptr().add(j) as *const __m128i);
                let v = _mm256_sub_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes)), off);
                _mm256_storeu_ps(dst.as_mut_ptr().add(j), v);
            }
            j += 8;
        }
        for (d, &v) in dst[j..].iter_mut().zip(&src[j..]) {
            *d = v as f32 - offset;
        }
    }

    /// See `super::horizontal_grey`.
    ///
    /// # Safety
    /// AVX2/FMA present; `src.len() == S` and the loads and stores are in bounds (`check_planar`).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn horizontal_grey<const S: usize>(
        src: &[&[f32]],
        n: usize,
        r0: usize,
        groups: &Groups,
        out: &mut BandOut,
    ) {
        let rows: [*const f32; S] = std::array::from_fn(|r| src[r].as_ptr());
        let (out_plane, stride) = (out.plane, out.stride);
        let (scales, biases, dst) = band_constants(out);
        for g in 0..groups.len() {
            // SAFETY: the loads are in bounds (contract).
            let acc = unsafe { group_sums(&rows, groups, g) };
            for (r, a) in acc.iter().enumerate().take(n) {
                let v = round_clamp(*a);
                for c in 0..3 {
                    let at = c * out_plane + (r0 + r) * stride + g * LANES;
                    // SAFETY: row `r0 + r` of plane `c`, columns `8g .. 8g + 8 <= stride` (contract).
                    unsafe {
                        _mm256_storeu_ps(dst.add(at), _mm256_fmadd_ps(v, scales[c], biases[c]))
                    };
                }
            }
        }
    }

    /// See `super::horizontal_ycc`.
    ///
    /// # Safety
    /// AVX2/FMA present; the loads and stores are in bounds (`check_planar` on both halves).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn horizontal_ycc(
        src: [&[f32]; 12],
        n: usize,
        r0: usize,
        luma: &Groups,
        chroma: &Groups,
        out: &mut BandOut,
    ) {
        let rows = src.map(|s| s.as_ptr());
        let luma_rows: [*const f32; 4] = std::array::from_fn(|r| rows[r]);
        let chroma_rows: [*const f32; 8] = std::array::from_fn(|r| rows[4 + r]);
        let (out_plane, stride) = (out.plane, out.stride);
        let (scales, biases, dst) = band_constants(out);
        let [cr_r, cb_g, cr_g, cb_b] = [CR_R, CB_G, CR_G, CB_B].map(|c| _mm256_set1_ps(c));
        for g in 0..luma.len() {
            // Y of 4 rows, then Cb and Cr of the same rows (8 chains): independent loops the core
            // overlaps. SAFETY: the loads are in bounds (contract; a doubled chroma row is read at
            // `dup` times the offset).
            let (y, c) = unsafe {
                (
                    group_sums(&luma_rows, luma, g),
                    group_sums(&chroma_rows, chroma, g),
                )
            };
            for r in 0..n {
                let (cb, cr) = (c[r], c[4 + r]);
                let rgb = [
                    _mm256_fmadd_ps(cr, cr_r, y[r]),
                    _mm256_fmadd_ps(cr, cr_g, _mm256_fmadd_ps(cb, cb_g, y[r])),
                    _mm256_fmadd_ps(cb, cb_b, y[r]),
                ];
                for (ch, v) in rgb.into_iter().enumerate() {
                    let v = _mm256_fmadd_ps(round_clamp(v), scales[ch], biases[ch]);
                    let at = ch * out_plane + (r0 + r) * stride + g * LANES;
                    // SAFETY: row `r0 + r` of plane `ch`, columns `8g .. 8g + 8 <= stride` (contract).
                    unsafe { _mm256_storeu_ps(dst.add(at), v) };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{max_abs_diff, noise_image};
    use super::*;

    #[test]
    fn chroma_taps_equal_libjpeg_upsampling_then_the_pixel_taps() {
        // Reference: upsample a random chroma row to pixels the way libjpeg does (in exact
        // arithmetic), then apply the pixel taps; the composite taps on the samples must agree.
        let mut state = 12345u32;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state % 256) as f64
        };
        for (pixels, out, block, pad, fancy) in [
            (203usize, 196usize, 2usize, 0usize, true),
            (203, 196, 2, 1, true),
            (512, 504, 2, 0, true),
            (64, 300, 2, 1, true),
            (900, 140, 2, 0, true),
            (203, 224, 4, 1, false),
            (203, 224, 4, 3, false),
            (31, 56, 2, 1, false),
        ] {
            let samples: usize = (pixels + pad).div_ceil(block);
            let chroma: Vec<f64> = (0..samples).map(|_| next()).collect();
            let upsampled: Vec<f64> = (0..pixels)
                .map(|u| {
                    let p = u + pad;
                    let k = p / block;
                    if !fancy {
                        return chroma[k];
                    }
                    let other = if p.is_multiple_of(2) {
                        k.saturating_sub(1)
                    } else {
                        (k + 1).min(samples - 1)
                    };
                    0.75 * chroma[k] + 0.25 * chroma[other]
                })
                .collect();
            let pixel_taps = Taps::bicubic(pixels, out);
            let taps = Taps::through_upsampling(&pixel_taps, block, pad, samples, fancy);
            for i in 0..out {
                let want: f64 = pixel_taps
                    .weights(i)
                    .iter()
                    .enumerate()
                    .map(|(k, &w)| w as f64 * upsampled[pixel_taps.start[i] + k])
                    .sum();
                let got: f64 = taps
                    .weights(i)
                    .iter()
                    .enumerate()
                    .map(|(k, &w)| w as f64 * chroma[taps.start[i] + k])
                    .sum();
                assert!(
                    (want - got).abs() < 1e-3,
                    "{pixels}->{out} block {block} pad {pad} output {i}: {got} vs {want}"
                );
            }
            // Doubled rows read an enlarged plane in about half the steps, and the regrouped
            // weights still place every tap.
            let plain = Groups::new(&taps);
            let doubled = Groups::with_dup(&taps, 2);
            if samples * 2 <= out {
                assert!(
                    doubled.total_steps() * 10 < plain.total_steps() * 7,
                    "{} vs {}",
                    doubled.total_steps(),
                    plain.total_steps()
                );
            }
            for i in 0..out {
                let (g, lane) = (i / LANES, i % LANES);
                let m = doubled.matrix(g);
                let mut got = 0f64;
                for q in 0..doubled.steps[g] {
                    let sample = doubled.base[g] + q as isize + (lane / 2) as isize;
                    let w = m[q * LANES + lane] as f64;
                    if w != 0.0 {
                        got += w * chroma[sample as usize];
                    }
                }
                let want: f64 = taps
                    .weights(i)
                    .iter()
                    .enumerate()
                    .map(|(k, &w)| w as f64 * chroma[taps.start[i] + k])
                    .sum();
                assert!((want - got).abs() < 1e-3, "doubled, output {i}");
            }
        }
    }

    fn noise_plane(width: usize, height: usize, seed: u32, block: (usize, usize)) -> Plane {
        let img = noise_image(height as u32, width as u32, seed);
        let stride = width + 3; // rows with a gap, as TurboJPEG's padded planes have
        let mut data = vec![0u8; stride * height];
        for (y, row) in data.chunks_exact_mut(stride).enumerate() {
            for (x, v) in row[..width].iter_mut().enumerate() {
                *v = img.get_pixel(x as u32, y as u32)[(x + y) % 3];
            }
        }
        Plane {
            data,
            width,
            height,
            stride,
            block,
            pad: (block.0 - 1, 0),
            fancy: block == (2, 2),
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn planar_avx2_kernels_equal_the_portable_ones() {
        if Isa::detect() != Isa::Avx2 {
            eprintln!("no AVX2 here: nothing to compare");
            return;
        }
        let step = 1.0 / (255.0 * 0.26) + 1e-4;
        for (seed, (h, w), (oh, ow), block) in [
            (31, (141, 203), (140, 196), (2, 2)),
            (32, (141, 203), (308, 420), (2, 2)),
            (33, (300, 451), (112, 168), (2, 1)),
            (34, (61, 97), (56, 112), (1, 1)),
        ] {
            let luma = noise_plane(w, h, seed, (1, 1));
            let chroma = |s| {
                let mut p = noise_plane(w.div_ceil(block.0), h.div_ceil(block.1), s, block);
                p.pad.0 = (block.0 * p.width - w) % block.0.max(1);
                p
            };
            let colour = JpegPlanes {
                width: w,
                height: h,
                planes: vec![luma, chroma(seed + 100), chroma(seed + 200)],
            };
            let grey = JpegPlanes {
                width: w,
                height: h,
                planes: vec![noise_plane(w, h, seed + 300, (1, 1))],
            };
            for (what, src) in [("colour", &colour), ("grey", &grey)] {
                for cfg in [ImageConfig::clip(), ImageConfig::qwen2_vl()] {
                    let fast = planes_patchify_with(src, oh, ow, &cfg, Isa::Avx2).unwrap();
                    let slow = planes_patchify_with(src, oh, ow, &cfg, Isa::Portable).unwrap();
                    assert_eq!(fast.grid_thw, slow.grid_thw);
                    let worst = max_abs_diff(&fast.pixel_values, &slow.pixel_values);
                    assert!(worst <= step, "{what} {h}x{w} -> {oh}x{ow}: {worst}");
                }
            }
        }
    }

    #[test]
    fn cached_plans_give_the_output_of_fresh_ones() {
        let cfg = ImageConfig::clip();
        let image = |w: usize, h: usize, seed: u32| JpegPlanes {
            width: w,
            height: h,
            planes: vec![
                noise_plane(w, h, seed, (1, 1)),
                noise_plane(w.div_ceil(2), h.div_ceil(2), seed + 1, (2, 2)),
                noise_plane(w.div_ceil(2), h.div_ceil(2), seed + 2, (2, 2)),
            ],
        };
        let (a, b) = (image(203, 141, 41), image(141, 203, 42));
        let run =
            |src: &JpegPlanes| planes_patchify_with(src, 140, 196, &cfg, Isa::detect()).unwrap();
        let first = run(&a);
        // A different geometry to the same output size, then `a` again, now from the cache.
        let other = run(&b);
        assert_eq!(run(&a), first);
        assert_ne!(other.pixel_values, first.pixel_values);
        // More geometries than the cache keeps: `a`'s plan is dropped, and rebuilt the same.
        for k in 0..PLANS_KEPT {
            run(&image(150 + k, 141, 50));
        }
        let key = PlanKey::new(&a, 140, 196, cfg.merge_size * cfg.patch_size);
        assert!(PLANS.with(|c| c.borrow().entries.iter().all(|(k, _)| *k != key)));
        assert_eq!(run(&a), first);
    }

    #[test]
    fn the_plan_cache_stays_within_its_byte_limit() {
        // Geometry only: planning never reads the samples.
        let geometry = |w: usize, h: usize| JpegPlanes {
            width: w,
            height: h,
            planes: [(w, h, (1, 1)), (w.div_ceil(2), h.div_ceil(2), (2, 2))]
                .iter()
                .chain([(w.div_ceil(2), h.div_ceil(2), (2, 2))].iter())
                .map(|&(width, height, block)| Plane {
                    data: Vec::new(),
                    width,
                    height,
                    stride: width,
                    block,
                    pad: (0, 0),
                    fancy: block == (2, 2),
                })
                .collect(),
        };
        let bytes = |plan: &[PlanePass]| plan.iter().map(PlanePass::bytes).sum::<usize>();
        let photo = bytes(&plan_passes(&geometry(512, 512), 504, 504, 28));
        // 48 MP shrunk to about 12.8 MP (Qwen2-VL's default max_pixels).
        let huge = bytes(&plan_passes(&geometry(8000, 6000), 3080, 4116, 28));
        eprintln!("plan bytes: 512x512 photo {photo}, 8000x6000 -> 4116x3080 {huge}");
        assert!(photo < 100_000 && huge < PLAN_BYTES_KEPT);
        let mut cache = PlanCache {
            entries: Vec::new(),
        };
        for k in 0..8 {
            let src = geometry(8000 + k, 6000);
            let key = PlanKey::new(&src, 3080, 4116, 28);
            cache.get_or_insert_with(key, || plan_passes(&src, 3080, 4116, 28));
            let held: usize = cache.entries.iter().map(|(_, p)| bytes(p)).sum();
            assert!(
                held <= PLAN_BYTES_KEPT,
                "{held} bytes in {} plans",
                cache.entries.len()
            );
        }
        assert!(cache.entries.len() < 8);
    }
}
