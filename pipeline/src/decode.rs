//! Image bytes to RGB8 at native resolution.
//!
//! - JPEG goes through libjpeg-turbo (about 1.6x the pure-Rust decoder on one core), with its EXIF
//!   orientation read from the APP1 segment. The image path ([`process_image`](crate::process_image))
//!   takes YCbCr and grey JPEGs as their stored planes instead (`decode_source`, when
//!   `ImageConfig::jpeg_planes` is on): no chroma upsampling or colour conversion in the decoder
//!   (~17% of its time on the fixture photos), the orientation applied to each plane. CMYK/YCCK and non-8-bit JPEGs, which TurboJPEG cannot turn
//!   into RGB, fall back to the `image` crate.
//! - PNG (8/16-bit, grey, palette, alpha), WebP and GIF (first frame) go through the `image` crate, which
//!   also reports their EXIF orientation.
//! - Alpha is composited onto [`ImageConfig::background`](crate::resize::ImageConfig) (white by default,
//!   as transformers' `convert_rgb` does); grey is replicated to RGB.
//! - The pixel count is checked from the header before any pixel buffer is allocated
//!   (`decompression_bomb`).
//!
//! A truncated JPEG is *rejected* (`truncated`), although libjpeg would hand back an image whose
//! missing part is filled with grey: training on half-grey pictures with full captions teaches the model
//! something false, and a clean skip is counted and visible. Other libjpeg warnings (e.g. stray bytes
//! between markers, common in web images) leave a complete image and are accepted, as Pillow does.
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};
use std::io::Cursor;
use thiserror::Error;

use crate::resize::ImageConfig;

#[path = "image/jpeg.rs"]
mod jpeg;
#[path = "image/transpose.rs"]
mod transpose;

/// Why an image was not usable. [`ImageError::reason`] is a stable key for counting skips.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum ImageError {
    #[error("image bytes are empty")]
    Empty,
    #[error("not a supported image format (first bytes {0:02x?})")]
    UnknownFormat(Vec<u8>),
    #[error("image data ends early: {0}")]
    Truncated(String),
    #[error("image is {width}x{height} = {} pixels, over the limit of {limit}", *width as u64 * *height as u64)]
    DecompressionBomb { width: u32, height: u32, limit: u64 },
    /// The decoder's own memory limit tripped (same reason as a bomb caught from the header).
    #[error("decoder memory limit exceeded: {0}")]
    LimitsExceeded(String),
    #[error("corrupt image: {0}")]
    Corrupt(String),
    #[error("unsupported image variant: {0}")]
    Unsupported(String),
    #[error("aspect ratio of {height}x{width} exceeds {max}")]
    AspectRatio { height: u32, width: u32, max: f64 },
    #[error("image of {height}x{width} is too small to resize")]
    TooSmall { height: u32, width: u32 },
    #[error("resampling failed: {0}")]
    Resize(String),
}

impl ImageError {
    /// Stable machine-readable reason, used as the key of skip counters.
    pub fn reason(&self) -> &'static str {
        match self {
            ImageError::Empty => "empty",
            ImageError::UnknownFormat(_) => "unknown_format",
            ImageError::Truncated(_) => "truncated",
            ImageError::DecompressionBomb { .. } | ImageError::LimitsExceeded(_) => {
                "decompression_bomb"
            }
            ImageError::Corrupt(_) => "corrupt",
            ImageError::Unsupported(_) => "unsupported",
            ImageError::AspectRatio { .. } => "aspect_ratio",
            ImageError::TooSmall { .. } => "too_small",
            ImageError::Resize(_) => "resize",
        }
    }
}

/// Decode `bytes` to RGB8 at native resolution with EXIF orientation applied and alpha composited
/// onto `cfg.background`.
pub fn decode(bytes: &[u8], cfg: &ImageConfig) -> Result<RgbImage, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    let format = image::guess_format(bytes)
        .map_err(|_| ImageError::UnknownFormat(bytes[..bytes.len().min(8)].to_vec()))?;
    match format {
        ImageFormat::Jpeg => decode_jpeg(bytes, cfg),
        ImageFormat::Png | ImageFormat::WebP | ImageFormat::Gif => {
            decode_generic(bytes, format, cfg)
        }
        other => Err(ImageError::Unsupported(format!("{other:?}"))),
    }
}

fn check_pixels(width: u32, height: u32, cfg: &ImageConfig) -> Result<(), ImageError> {
    if width == 0 || height == 0 {
        return Err(ImageError::Corrupt(format!(
            "header declares a {width}x{height} image"
        )));
    }
    if width as u64 * height as u64 > cfg.max_decoded_pixels {
        return Err(ImageError::DecompressionBomb {
            width,
            height,
            limit: cfg.max_decoded_pixels,
        });
    }
    Ok(())
}

fn jpeg_error(message: &str) -> ImageError {
    // libjpeg's JWRN_JPEG_EOF; it is also what a header cut short ends in.
    if message.contains("Premature end") {
        ImageError::Truncated(message.to_string())
    } else {
        ImageError::Corrupt(message.to_string())
    }
}

fn decode_jpeg(bytes: &[u8], cfg: &ImageConfig) -> Result<RgbImage, ImageError> {
    let header = jpeg::read_header(bytes).map_err(|e| jpeg_error(e.message()))?;
    check_pixels(header.width, header.height, cfg)?;
    decode_jpeg_header(bytes, &header, cfg)
}

/// A TurboJPEG result under this module's policy: a truncation warning rejects the image (see the
/// module docs), any other warning leaves a complete image.
fn accept_warning<T>(
    result: Result<(T, Option<String>), jpeg::JpegError>,
) -> Result<T, ImageError> {
    let (value, warning) = result.map_err(|e| jpeg_error(e.message()))?;
    match warning.map(|w| jpeg_error(&w)) {
        Some(err @ ImageError::Truncated(_)) => Err(err),
        _ => Ok(value),
    }
}

/// The EXIF orientation of a JPEG (none when absent or malformed).
fn jpeg_orientation(bytes: &[u8]) -> Orientation {
    jpeg::exif_orientation(bytes)
        .and_then(|v| Orientation::from_exif(v as u8))
        .unwrap_or(Orientation::NoTransforms)
}

fn decode_jpeg_header(
    bytes: &[u8],
    header: &jpeg::JpegHeader,
    cfg: &ImageConfig,
) -> Result<RgbImage, ImageError> {
    if header.is_cmyk || !header.is_8bit {
        return decode_generic(bytes, ImageFormat::Jpeg, cfg);
    }
    let pixels = accept_warning(jpeg::decode_rgb(bytes, header))?;
    let img = RgbImage::from_raw(header.width, header.height, pixels)
        .ok_or_else(|| ImageError::Corrupt("decoded buffer has the wrong size".into()))?;
    Ok(orient(img, jpeg_orientation(bytes)))
}

/// A decoded image as the resampling kernels take it.
pub(crate) enum Source {
    Rgb(RgbImage),
    /// A JPEG's Y/Cb/Cr (or grey) planes as stored, at their own resolutions (see [`JpegPlanes`]).
    Planes(JpegPlanes),
}

/// One component of a [`JpegPlanes`]: `width x height` samples, rows `stride` bytes apart.
pub(crate) struct Plane {
    pub data: Vec<u8>,
    pub width: usize,
    pub height: usize,
    pub stride: usize,
    /// Image pixels per sample along x and y (1 for luma, 2 for 4:2:0 chroma).
    pub block: (usize, usize),
    /// Pixels of padding before the image's first pixel along x and y: a subsampled plane whose
    /// image side is not a multiple of the block has padding at its far edge, which a flip moves to
    /// the start. Pixel coordinate `u` lies at sample coordinate `(u + pad) / block`.
    pub pad: (usize, usize),
    /// Whether libjpeg would upsample this plane with its triangle ("fancy") filter rather than by
    /// repeating samples (see `Taps::through_upsampling`).
    pub fancy: bool,
}

/// A JPEG's components, oriented for display: `[Y]` (grey) or `[Y, Cb, Cr]` (JFIF full-range
/// YCbCr), each covering the whole `width x height` image at its own resolution. Resampling these and
/// converting to RGB at the output resolution skips the decoder's chroma upsampling and colour
/// conversion, and resamples a subsampled chroma plane at a quarter of the cost of an RGB channel.
pub(crate) struct JpegPlanes {
    pub width: usize,
    pub height: usize,
    pub planes: Vec<Plane>,
}

/// Decode for the resampling kernels: a JPEG in YCbCr or grey as its planes (when `cfg.jpeg_planes`
/// is on), anything else as [`decode`] does.
pub(crate) fn decode_source(bytes: &[u8], cfg: &ImageConfig) -> Result<Source, ImageError> {
    if !cfg.jpeg_planes || image::guess_format(bytes).ok() != Some(ImageFormat::Jpeg) {
        return decode(bytes, cfg).map(Source::Rgb);
    }
    let header = jpeg::read_header(bytes).map_err(|e| jpeg_error(e.message()))?;
    check_pixels(header.width, header.height, cfg)?;
    if header.planar.is_none() {
        return decode_jpeg_header(bytes, &header, cfg).map(Source::Rgb);
    }
    let raw = accept_warning(jpeg::decode_planes(bytes, &header))?;
    let orientation = jpeg_orientation(bytes);
    let (w, h) = (header.width as usize, header.height as usize);
    let chroma_block = match header.planar {
        Some(jpeg::Sampling::YCbCr { x, y }) => (x, y),
        _ => (1, 1),
    };
    let planes = raw
        .into_iter()
        .enumerate()
        .map(|(c, p)| {
            let block = if c == 0 { (1, 1) } else { chroma_block };
            // libjpeg-turbo's jdsample.c: its triangle filter serves 2x1 and 2x2 blocks when the
            // plane is over 2 samples wide, and 1x2 blocks always; other layouts repeat samples.
            let fancy = match block {
                (2, 1) | (2, 2) => p.width > 2,
                (1, 2) => true,
                _ => false,
            };
            orient_plane(p, block, (w, h), orientation, fancy)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (width, height) = if transposes(orientation) {
        (h, w)
    } else {
        (w, h)
    };
    Ok(Source::Planes(JpegPlanes {
        width,
        height,
        planes,
    }))
}

/// Whether an orientation swaps the axes.
fn transposes(o: Orientation) -> bool {
    matches!(
        o,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    )
}

/// Apply `o` to one plane of an image of `size` pixels, tracking which edge its padding is at.
fn orient_plane(
    p: jpeg::RawPlane,
    block: (usize, usize),
    size: (usize, usize),
    o: Orientation,
    fancy: bool,
) -> Result<Plane, ImageError> {
    // Padding pixels at the far edge of each stored axis.
    let tail = (
        block.0 * p.width - size.0.min(block.0 * p.width),
        block.1 * p.height - size.1.min(block.1 * p.height),
    );
    if o == Orientation::NoTransforms {
        return Ok(Plane {
            data: p.data,
            width: p.width,
            height: p.height,
            stride: p.stride,
            block,
            pad: (0, 0),
            fancy,
        });
    }
    // Where each display axis comes from: (stored axis is y, flipped) for x, then for y.
    // Rotations are clockwise, as in EXIF and the `image` crate.
    use Orientation as O;
    let ((x_from_y, x_flip), (y_from_x, y_flip)) = match o {
        O::NoTransforms => ((false, false), (false, false)),
        O::FlipHorizontal => ((false, true), (false, false)),
        O::FlipVertical => ((false, false), (false, true)),
        O::Rotate180 => ((false, true), (false, true)),
        O::Rotate90 => ((true, true), (true, false)),
        O::Rotate270 => ((true, false), (true, true)),
        O::Rotate90FlipH => ((true, false), (true, false)),
        O::Rotate270FlipH => ((true, true), (true, true)),
    };
    debug_assert_eq!(x_from_y, y_from_x);
    let (width, height) = if x_from_y {
        (p.height, p.width)
    } else {
        (p.width, p.height)
    };
    let data = orient_bytes(&p, width, height, x_from_y, x_flip, y_flip);
    let (bx, by, tx, ty) = if x_from_y {
        (block.1, block.0, tail.1, tail.0)
    } else {
        (block.0, block.1, tail.0, tail.1)
    };
    Ok(Plane {
        data,
        width,
        height,
        stride: width,
        block: (bx, by),
        pad: (if x_flip { tx } else { 0 }, if y_flip { ty } else { 0 }),
        fancy,
    })
}

/// `p`'s samples in display order: display `(x, y)` is stored `(y, x)` when `transposed`, and an
/// axis counts from its far end when flipped.
fn orient_bytes(
    p: &jpeg::RawPlane,
    width: usize,
    height: usize,
    transposed: bool,
    x_flip: bool,
    y_flip: bool,
) -> Vec<u8> {
    let mut out = vec![0u8; width * height];
    if transposed {
        transpose::transpose_into(&p.data, p.stride, &mut out, width, height, (x_flip, y_flip));
        return out;
    }
    for (y, row) in out.chunks_exact_mut(width).enumerate() {
        let first = if y_flip { height - 1 - y } else { y } * p.stride;
        row.copy_from_slice(&p.data[first..first + width]);
        if x_flip {
            row.reverse();
        }
    }
    out
}

fn image_crate_error(e: image::ImageError) -> ImageError {
    use image::ImageError as E;
    match e {
        E::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            ImageError::Truncated(io.to_string())
        }
        E::Limits(l) => ImageError::LimitsExceeded(l.to_string()),
        E::Unsupported(u) => ImageError::Unsupported(u.to_string()),
        other => {
            let msg = other.to_string();
            let lower = msg.to_ascii_lowercase();
            if lower.contains("eof") || lower.contains("end of") || lower.contains("truncat") {
                ImageError::Truncated(msg)
            } else {
                ImageError::Corrupt(msg)
            }
        }
    }
}

fn decode_generic(
    bytes: &[u8],
    format: ImageFormat,
    cfg: &ImageConfig,
) -> Result<RgbImage, ImageError> {
    // A PNG needs its 8-byte signature plus the 25-byte IHDR chunk before it says anything.
    if format == ImageFormat::Png && bytes.len() < 33 {
        return Err(ImageError::Truncated(format!(
            "PNG of {} bytes has no complete header",
            bytes.len()
        )));
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = Limits::default();
    // Room for the largest allowed image at 16-bit RGBA plus the decoder's own buffers.
    limits.max_alloc = Some(
        cfg.max_decoded_pixels
            .saturating_mul(8)
            .saturating_add(64 << 20),
    );
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(image_crate_error)?;
    let (width, height) = decoder.dimensions();
    check_pixels(width, height, cfg)?;
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let img = DynamicImage::from_decoder(decoder).map_err(image_crate_error)?;
    Ok(orient(to_rgb(img, cfg.background), orientation))
}

/// RGB8 with alpha composited onto `bg`.
fn to_rgb(img: DynamicImage, bg: [u8; 3]) -> RgbImage {
    if !img.color().has_alpha() {
        return img.into_rgb8();
    }
    let rgba = img.into_rgba8();
    let (w, h) = rgba.dimensions();
    let mut out = Vec::with_capacity(w as usize * h as usize * 3);
    for px in rgba.as_raw().chunks_exact(4) {
        let a = px[3] as u32;
        for c in 0..3 {
            out.push(((px[c] as u32 * a + bg[c] as u32 * (255 - a) + 127) / 255) as u8);
        }
    }
    RgbImage::from_raw(w, h, out).expect("w*h*3 bytes")
}

fn orient(img: RgbImage, orientation: Orientation) -> RgbImage {
    if orientation == Orientation::NoTransforms {
        return img;
    }
    let mut dynamic = DynamicImage::ImageRgb8(img);
    dynamic.apply_orientation(orientation);
    dynamic.into_rgb8()
}
