//! Decoding: bad inputs and their reasons, EXIF orientation, PNG/GIF/WebP variants, alpha compositing.
use crate::common::{RefConfig, fixtures, images_dir, run_helper};
use crate::parity::check_against;
use comp_pipeline::{ImageConfig, decode, process_image};
use image::{ImageBuffer, Rgb, RgbImage};

fn mean_level_diff(a: &RgbImage, b: &RgbImage) -> f64 {
    assert_eq!(a.dimensions(), b.dimensions());
    let sum: u64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| (*x as i64 - *y as i64).unsigned_abs())
        .sum();
    sum as f64 / a.as_raw().len() as f64
}

fn read(path: &std::path::Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_bad_fixture_is_rejected_with_its_reason() {
    let expected = [
        ("empty.jpg", "empty"),
        ("random_bytes.jpg", "unknown_format"),
        ("text_not_image.jpg", "unknown_format"),
        ("truncated.jpg", "truncated"),
        ("header_only.png", "truncated"),
        ("bomb_30000x30000.png", "decompression_bomb"),
    ];
    let cfg = ImageConfig::default();
    let mut seen = 0;
    for entry in std::fs::read_dir(fixtures().join("bad")).unwrap() {
        let path = entry.unwrap().path();
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if ext != "jpg" && ext != "png" {
            continue;
        }
        let name = path.file_name().unwrap().to_str().unwrap();
        let want = expected
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("new bad fixture {name}: add its expected reason here"))
            .1;
        let err = process_image(&read(&path), &cfg).expect_err(name);
        assert_eq!(err.reason(), want, "{name}: {err}");
        seen += 1;
    }
    assert_eq!(seen, expected.len());
}

#[test]
fn jpeg_bomb_is_caught_from_the_header() {
    // Patch the SOF dimensions of a real JPEG to 65000 x 65000 (4.2 gigapixels).
    let mut bytes = read(&images_dir().join("coffee.jpg"));
    let sof = (0..bytes.len() - 1)
        .find(|&i| bytes[i] == 0xFF && matches!(bytes[i + 1], 0xC0 | 0xC2))
        .expect("SOF marker");
    bytes[sof + 5..sof + 9].copy_from_slice(&[0xFD, 0xE8, 0xFD, 0xE8]);
    let err = decode(&bytes, &ImageConfig::default()).unwrap_err();
    assert_eq!(err.reason(), "decompression_bomb", "{err}");
}

#[test]
fn truncated_png_and_corrupt_png_have_distinct_reasons() {
    let cfg = ImageConfig::default();
    let png = read(&images_dir().join("coffee.png"));
    let cut = &png[..png.len() / 2];
    assert_eq!(decode(cut, &cfg).unwrap_err().reason(), "truncated");
    let mut corrupt = png.clone();
    let mid = corrupt.len() / 2;
    for b in &mut corrupt[mid..mid + 64] {
        *b ^= 0x5A;
    }
    assert_eq!(decode(&corrupt, &cfg).unwrap_err().reason(), "corrupt");
}

#[test]
fn exif_orientation_6_comes_out_upright() {
    let cfg = ImageConfig::default();
    for name in [
        "astronaut",
        "camera",
        "chelsea",
        "coffee",
        "logo",
        "page",
        "rocket",
        "text",
    ] {
        let upright = decode(&read(&images_dir().join(format!("{name}.jpg"))), &cfg).unwrap();
        let raw = read(&images_dir().join(format!("{name}_exif6.jpg")));
        let rotated = decode(&raw, &cfg).unwrap();
        assert_eq!(rotated.dimensions(), upright.dimensions(), "{name}");
        let d = mean_level_diff(&rotated, &upright);
        assert!(
            d < 4.0,
            "{name}_exif6 differs from upright by {d:.2} levels on average"
        );
        // Without the orientation the pixels are far off: the test would catch a missing rotation.
        let stored = image::load_from_memory(&raw).unwrap().to_rgb8();
        if stored.dimensions() == upright.dimensions() {
            let unrotated = mean_level_diff(&stored, &upright);
            assert!(
                unrotated > 2.0 * d + 4.0,
                "{name}: stored pixels already upright? ({unrotated:.2})"
            );
        }
    }
}

#[test]
fn turbojpeg_agrees_with_the_image_crate_on_every_fixture_jpeg() {
    let cfg = ImageConfig::default();
    for path in crate::common::photos(Some("jpg")) {
        if path.to_str().unwrap().contains("exif6") {
            continue; // the image crate does not apply orientation by itself
        }
        let ours = decode(&read(&path), &cfg).unwrap();
        let theirs = image::load_from_memory(&read(&path)).unwrap().to_rgb8();
        let d = mean_level_diff(&ours, &theirs);
        assert!(d < 1.5, "{}: {d:.3} levels", path.display());
    }
}

/// PNG variants, GIF and RGBA WebP made with Pillow: grid and pixels equal transformers (which composites
/// alpha onto white, like our default background).
#[test]
fn png_gif_webp_variants_match_transformers() {
    let dir = tempfile::tempdir().unwrap();
    run_helper(&[
        "png-variants".into(),
        "--src".into(),
        images_dir().join("coffee.png").display().to_string(),
        "--out-dir".into(),
        dir.path().display().to_string(),
    ]);
    let names = [
        "grey8.png",
        "grey_alpha.png",
        "palette.png",
        "palette_trns.png",
        "rgba.png",
        "rgba.webp",
        "first_frame.gif",
    ];
    let files: Vec<_> = names.iter().map(|n| dir.path().join(n)).collect();
    let r = RefConfig {
        backend: "pil",
        temporal_patch_size: 2,
        min_pixels: None,
        max_pixels: None,
    };
    check_against(&r, &files);

    // 16-bit grey: Pillow's RGB conversion clips I;16 instead of scaling, so compare with the 8-bit file.
    let cfg = ImageConfig::default();
    let g16 = decode(&read(&dir.path().join("grey16.png")), &cfg).unwrap();
    let g8 = decode(&read(&dir.path().join("grey8.png")), &cfg).unwrap();
    assert_eq!(
        g16, g8,
        "16-bit grey (v * 257) must decode to the 8-bit values"
    );
}

#[test]
fn png_16bit_rgb_decodes_to_the_8bit_values() {
    let cfg = ImageConfig::default();
    let src = decode(&read(&images_dir().join("chelsea.png")), &cfg).unwrap();
    let wide: ImageBuffer<Rgb<u16>, Vec<u16>> = ImageBuffer::from_raw(
        src.width(),
        src.height(),
        src.as_raw().iter().map(|&v| v as u16 * 257).collect(),
    )
    .unwrap();
    let mut png = Vec::new();
    wide.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    assert_eq!(decode(&png, &cfg).unwrap(), src);
}

#[test]
fn alpha_is_composited_onto_the_configured_background() {
    // Bottom row fully transparent, top row opaque.
    let (w, h) = (40u32, 30u32);
    let rgba = image::RgbaImage::from_fn(w, h, |_, y| {
        image::Rgba([200, 30, 90, (255 - y * 255 / (h - 1)) as u8])
    });
    let mut png = Vec::new();
    rgba.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let cfg = ImageConfig {
        background: [10, 20, 30],
        ..ImageConfig::default()
    };
    let out = decode(&png, &cfg).unwrap();
    assert_eq!(out.get_pixel(5, 0).0, [200, 30, 90]);
    assert_eq!(out.get_pixel(5, h - 1).0, [10, 20, 30]);
    let mid = out.get_pixel(5, h / 2).0;
    assert!(
        mid[0] > 10 && mid[0] < 200,
        "half-transparent pixel blends: {mid:?}"
    );
}

#[test]
fn every_good_fixture_photo_decodes() {
    let cfg = ImageConfig::default();
    for path in crate::common::photos(None) {
        let img = decode(&read(&path), &cfg).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(img.width() > 0 && img.height() > 0);
    }
}
