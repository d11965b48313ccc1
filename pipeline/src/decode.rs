//! Image bytes to RGB8 at native resolution.
//!
//! - JPEG goes through libjpeg-turbo (about 1.6x the pure-Rust decoder on one core), with its EXIF
//!   orientation read from the APP1 segment. CMYK/YCCK and non-8-bit JPEGs, which TurboJPEG cannot turn
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
    if header.is_cmyk || !header.is_8bit {
        return decode_generic(bytes, ImageFormat::Jpeg, cfg);
    }
    let (pixels, warning) =
        jpeg::decode_rgb(bytes, &header).map_err(|e| jpeg_error(e.message()))?;
    if let Some(w) = warning
        && let err @ ImageError::Truncated(_) = jpeg_error(&w)
    {
        return Err(err);
    }
    let img = RgbImage::from_raw(header.width, header.height, pixels)
        .ok_or_else(|| ImageError::Corrupt("decoded buffer has the wrong size".into()))?;
    let orientation = jpeg::exif_orientation(bytes)
        .and_then(|v| Orientation::from_exif(v as u8))
        .unwrap_or(Orientation::NoTransforms);
    Ok(orient(img, orientation))
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
