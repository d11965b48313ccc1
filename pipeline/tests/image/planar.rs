//! The planar JPEG route (`ImageConfig::jpeg_planes`, the default): resampling a JPEG's Y/Cb/Cr planes
//! and converting to RGB at the output size, against the RGB route (decode to RGB, as Pillow does,
//! then resample).
use crate::common::photos;
use comp_pipeline::{ImageConfig, ProcessedImage, process_image};
use std::os::raw::c_int;
use turbojpeg_sys as tj;

fn both_routes(bytes: &[u8], cfg: &ImageConfig) -> (ProcessedImage, ProcessedImage) {
    let planar = process_image(bytes, cfg).expect("planar route");
    let rgb = ImageConfig {
        jpeg_planes: false,
        ..cfg.clone()
    };
    let rgb = process_image(bytes, &rgb).expect("RGB route");
    assert_eq!(planar.grid_thw, rgb.grid_thw);
    (planar, rgb)
}

/// Mean and largest absolute difference, in 8-bit steps of the config's smallest std.
fn diff_steps(a: &[f32], b: &[f32], cfg: &ImageConfig) -> (f64, f64) {
    let step = 1.0 / (255.0 * cfg.image_std.iter().cloned().fold(f32::MAX, f32::min)) as f64;
    let (mut sum, mut max) = (0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        let d = (x - y).abs() as f64 / step;
        sum += d;
        max = max.max(d);
    }
    (sum / a.len() as f64, max)
}

fn is_grey_jpeg(bytes: &[u8]) -> bool {
    image::load_from_memory(bytes).unwrap().color() == image::ColorType::L8
}

#[test]
fn planar_route_on_the_fixture_jpegs() {
    let configs = crate::common::resize_configs();
    let (mut worst_colour, mut worst_colour_max) = (0f64, 0f64);
    for path in photos(Some("jpg")) {
        let bytes = std::fs::read(&path).unwrap();
        let grey = is_grey_jpeg(&bytes);
        for cfg in &configs {
            let (planar, rgb) = both_routes(&bytes, cfg);
            let (mean, max) = diff_steps(&planar.pixel_values, &rgb.pixel_values, cfg);
            if grey {
                // One plane, the same taps and the same 8-bit intermediate as the RGB route.
                assert_eq!(max, 0.0, "{}: grey differs by {max} steps", path.display());
            } else {
                // Chroma is resampled exactly through libjpeg's upsampling filter; what remains is
                // where the decoder clamps and rounds RGB per pixel before resampling, and we after.
                assert!(mean < 0.5, "{}: mean {mean:.3} steps", path.display());
                worst_colour = worst_colour.max(mean);
                worst_colour_max = worst_colour_max.max(max);
            }
        }
    }
    eprintln!(
        "planar vs RGB route, fixture JPEGs x 4 configs: grey identical; colour worst mean {worst_colour:.3} \
         steps, largest single difference {worst_colour_max:.1} steps"
    );
}

/// A colourful `w x h` test picture: smooth gradients, a saturated rectangle and a diagonal edge, so
/// that a chroma plane placed half a sample off would show.
fn test_picture(w: usize, h: usize) -> Vec<u8> {
    let mut rgb = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            let inside = x > w / 3 && x < w / 2 && y > h / 4 && y < 3 * h / 4;
            let above = x * h < y * w;
            let px = if inside {
                [230, 20, 40]
            } else if above {
                [(x * 255 / w) as u8, 200, (y * 255 / h) as u8]
            } else {
                [40, (y * 255 / h) as u8, 220]
            };
            rgb.extend_from_slice(&px);
        }
    }
    rgb
}

fn encode_jpeg(rgb: &[u8], w: usize, h: usize, subsamp: tj::TJSAMP) -> Vec<u8> {
    // SAFETY: plain TurboJPEG calls on a fresh handle; `rgb` holds `w * h` packed pixels; the output
    // buffer TurboJPEG allocates is copied and freed.
    unsafe {
        let handle = tj::tj3Init(tj::TJINIT_TJINIT_COMPRESS as c_int);
        assert!(!handle.is_null());
        tj::tj3Set(
            handle,
            tj::TJPARAM_TJPARAM_SUBSAMP as c_int,
            subsamp as c_int,
        );
        tj::tj3Set(handle, tj::TJPARAM_TJPARAM_QUALITY as c_int, 95);
        let mut buf: *mut u8 = std::ptr::null_mut();
        let mut size: tj::size_t = 0;
        let rc = tj::tj3Compress8(
            handle,
            rgb.as_ptr(),
            w as c_int,
            (3 * w) as c_int,
            h as c_int,
            tj::TJPF_TJPF_RGB as c_int,
            &mut buf,
            &mut size,
        );
        assert_eq!(rc, 0, "tj3Compress8 failed");
        let out = std::slice::from_raw_parts(buf, size as usize).to_vec();
        tj::tj3Free(buf as *mut std::ffi::c_void);
        tj::tj3Destroy(handle);
        out
    }
}

/// `jpeg` with an EXIF APP1 segment carrying `orientation` inserted after SOI.
fn with_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let mut tiff = b"MM\0\x2a\0\0\0\x08".to_vec();
    tiff.extend_from_slice(&1u16.to_be_bytes()); // one IFD entry
    tiff.extend_from_slice(&0x0112u16.to_be_bytes()); // Orientation
    tiff.extend_from_slice(&3u16.to_be_bytes()); // SHORT
    tiff.extend_from_slice(&1u32.to_be_bytes()); // count
    tiff.extend_from_slice(&orientation.to_be_bytes());
    tiff.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // value padding, next IFD = 0
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend_from_slice(&tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&app1);
    out.extend_from_slice(&jpeg[2..]);
    out
}

#[test]
fn planar_route_every_sampling_and_orientation_at_odd_sizes() {
    // Odd sides put a padding sample at the far edge of subsampled chroma; flips move it to the start.
    let (w, h) = (203, 141);
    let picture = test_picture(w, h);
    let cfg = ImageConfig {
        min_pixels: 300 * 300,
        ..ImageConfig::clip()
    };
    for (name, subsamp) in [
        ("4:4:4", tj::TJSAMP_TJSAMP_444),
        ("4:2:2", tj::TJSAMP_TJSAMP_422),
        ("4:2:0", tj::TJSAMP_TJSAMP_420),
        ("4:4:0", tj::TJSAMP_TJSAMP_440),
        ("4:1:1", tj::TJSAMP_TJSAMP_411),
        ("grey", tj::TJSAMP_TJSAMP_GRAY),
    ] {
        let jpeg = encode_jpeg(&picture, w, h, subsamp);
        let mut upright = None;
        for orientation in 1..=8u16 {
            let bytes = with_orientation(&jpeg, orientation);
            let (planar, rgb) = both_routes(&bytes, &cfg);
            let transposed = orientation >= 5;
            let [_, gh, gw] = planar.grid_thw;
            assert_eq!(gh < gw, !transposed, "{name} orientation {orientation}");
            let (mean, max) = diff_steps(&planar.pixel_values, &rgb.pixel_values, &cfg);
            eprintln!("{name} orientation {orientation}: mean {mean:.3} steps, max {max:.1}");
            if subsamp == tj::TJSAMP_TJSAMP_GRAY {
                assert_eq!(max, 0.0, "grey orientation {orientation}");
                continue;
            }
            assert!(
                mean < 0.5,
                "{name} orientation {orientation}: {mean:.3} steps"
            );
            // Every orientation agrees as well as the upright file does: a plane turned the wrong way
            // or its chroma misplaced by the padding sample would not.
            let base = *upright.get_or_insert(mean);
            assert!(
                mean <= 1.1 * base + 0.02,
                "{name} orientation {orientation}: {mean:.3} steps vs {base:.3} upright"
            );
        }
    }
}

#[test]
fn planar_route_tiny_and_thin_jpegs() {
    // Sides of 1-3 pixels (chroma planes of one sample, libjpeg's plain replication instead of its
    // triangle filter) and long strips: no panic, and agreement within 2 steps on average. Enlarging
    // 2x2 pixels to 56x56 makes the bicubic overshoot, and clamping in RGB per source pixel (the RGB
    // route) or per output pixel (ours) then differs by up to 1.4 steps on average, also at 4:4:4.
    let cfg = ImageConfig::clip();
    for (w, h) in [
        (1, 1),
        (2, 2),
        (3, 1),
        (1, 3),
        (3, 3),
        (5, 2),
        (180, 3),
        (2, 150),
    ] {
        let picture = test_picture(w, h);
        for subsamp in [
            tj::TJSAMP_TJSAMP_444,
            tj::TJSAMP_TJSAMP_422,
            tj::TJSAMP_TJSAMP_420,
            tj::TJSAMP_TJSAMP_440,
            tj::TJSAMP_TJSAMP_411,
            tj::TJSAMP_TJSAMP_GRAY,
        ] {
            let jpeg = encode_jpeg(&picture, w, h, subsamp);
            for orientation in [1, 6, 7] {
                let bytes = with_orientation(&jpeg, orientation);
                let (planar, rgb) = both_routes(&bytes, &cfg);
                let (mean, _) = diff_steps(&planar.pixel_values, &rgb.pixel_values, &cfg);
                assert!(
                    mean < 2.0,
                    "{w}x{h} sampling {subsamp} orientation {orientation}: {mean:.3} steps"
                );
            }
        }
    }
}
