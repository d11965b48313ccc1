//! A profiling harness for the image path: runs it over the fixture JPEGs for 4 s and prints the time
//! per image, so that `perf record` sees nothing else (the `image` bench interleaves many measurements).
//!
//! `cargo run --release -p comp-pipeline --example image_loop -- [T] [full]`: `T` is the temporal
//! patch size (default 1); with `full` each step decodes too, otherwise the images are decoded once up
//! front and only resampled, normalised and patchified.
use comp_pipeline::{ImageConfig, decode, process_image, process_rgb};
use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let t: usize = args.next().map_or(1, |s| s.parse().expect("T: a number"));
    let full = args.next().is_some_and(|a| a == "full");
    let cfg = ImageConfig {
        temporal_patch_size: t,
        ..ImageConfig::clip()
    };
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/images");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("fixture images")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    files.sort();
    let bytes: Vec<Vec<u8>> = files
        .iter()
        .map(|p| std::fs::read(p).expect("read"))
        .collect();
    let decoded: Vec<_> = bytes
        .iter()
        .map(|b| decode(b, &cfg).expect("decode"))
        .collect();
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed().as_secs_f64() < 4.0 {
        for (b, img) in bytes.iter().zip(&decoded) {
            if full {
                std::hint::black_box(process_image(b, &cfg).expect("process"));
            } else {
                std::hint::black_box(process_rgb(img.clone(), &cfg).expect("process"));
            }
        }
        n += bytes.len();
    }
    let what = if full {
        "decode+resample+patchify"
    } else {
        "resample+patchify"
    };
    println!(
        "{what}, T={t}: {:.3} ms per image over {} fixture JPEGs",
        start.elapsed().as_secs_f64() * 1e3 / n as f64,
        bytes.len()
    );
}
