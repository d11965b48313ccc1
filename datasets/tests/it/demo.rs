//! The demo generator: deterministic by seed, readable by pyarrow, captions true to the scene, and its
//! shards stream, partition and resume like any other data.
use std::path::Path;

use comp_datasets::demo::scene::{Layout, Scene, Size};
use comp_datasets::demo::{DemoConfig, Split, generate};

use crate::common::{Key, collect, python};
use crate::partition::check_partition;
use crate::resume::check_resume;

fn small(seed: u64, split: Split) -> DemoConfig {
    DemoConfig {
        rows: 90,
        shards: 3,
        row_groups_per_shard: 4,
        seed,
        split,
        max_side: 256,
        ..DemoConfig::default()
    }
}

fn files(dir: &Path) -> Vec<Vec<u8>> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    paths.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

#[test]
fn generation_is_deterministic_by_seed_and_splits_differ() {
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut one_thread = small(5, Split::Train);
    one_thread.threads = 1;
    generate(dirs[0].path(), &small(5, Split::Train)).unwrap();
    generate(dirs[1].path(), &one_thread).unwrap();
    generate(dirs[2].path(), &small(6, Split::Train)).unwrap();
    let eval = generate(dirs[3].path(), &small(5, Split::Eval)).unwrap();
    assert_eq!(
        files(dirs[0].path()),
        files(dirs[1].path()),
        "same seed, any thread count: same bytes"
    );
    assert_ne!(files(dirs[0].path()), files(dirs[2].path()));
    assert!(
        eval.files[0]
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("eval-00000-of-00003")
    );
    let captions =
        |dir: &Path| -> Vec<Key> { collect(crate::common::config(&[dir.to_str().unwrap()])) };
    let (train, eval) = (captions(dirs[0].path()), captions(dirs[3].path()));
    let images = |keys: &[Key]| -> std::collections::HashSet<(usize, String)> {
        keys.iter()
            .filter_map(|k| match k {
                Key::Sample {
                    image_len, caption, ..
                } => Some((*image_len, caption.clone())),
                _ => None,
            })
            .collect()
    };
    assert_eq!(
        images(&train).intersection(&images(&eval)).count(),
        0,
        "eval never repeats train"
    );
}

#[test]
fn pyarrow_reads_the_hugging_face_layout() {
    let dir = tempfile::tempdir().unwrap();
    let summary = generate(dir.path(), &small(1, Split::Train)).unwrap();
    assert_eq!(summary.rows, 90);
    let out = python(&format!(
        "import pyarrow.parquet as pq, io, json, glob\n\
         from PIL import Image\n\
         files = sorted(glob.glob({:?} + '/*.parquet'))\n\
         rows = 0\n\
         for f in files:\n\
         \x20   pf = pq.ParquetFile(f)\n\
         \x20   assert str(pf.schema_arrow.field('image').type) == 'struct<bytes: binary, path: string>', pf.schema_arrow\n\
         \x20   assert str(pf.schema_arrow.field('caption').type) == 'string'\n\
         \x20   assert pf.metadata.num_row_groups == 4\n\
         \x20   for r in pf.read().to_pylist():\n\
         \x20       im = Image.open(io.BytesIO(r['image']['bytes']))\n\
         \x20       m = json.loads(r['meta'])\n\
         \x20       assert im.size == (m['width'], m['height']), (im.size, m)\n\
         \x20       assert im.format.lower() == m['format'], (im.format, m['format'])\n\
         \x20       rows += 1\n\
         print(len(files), rows)",
        dir.path().display().to_string()
    ));
    assert_eq!(out.trim(), "3 90");
}

fn check_caption(caption: &str, scene: &Scene) {
    for g in &scene.groups {
        assert!(
            caption.contains(&g.phrase()),
            "`{caption}` lacks `{}`",
            g.phrase()
        );
        assert_eq!(g.count as usize, g.objects.len());
        let size_word = match g.size {
            Size::Small => "small",
            Size::Large => "large",
        };
        assert!(g.phrase().contains(size_word));
    }
    match scene.layout {
        Layout::Single => {
            assert_eq!(scene.groups.len(), 1);
            assert!(caption.ends_with(&format!("on a {} background", scene.background.colour)));
        }
        Layout::Vertical => {
            assert!(caption.contains(" above "));
            // The first group named is really above the second.
            let y = |i: usize| {
                scene.groups[i]
                    .objects
                    .iter()
                    .map(|o| o.y)
                    .fold(0.0f32, f32::max)
            };
            let top = |i: usize| {
                scene.groups[i]
                    .objects
                    .iter()
                    .map(|o| o.y)
                    .fold(f32::MAX, f32::min)
            };
            assert!(y(0) < top(1), "{caption}");
        }
        Layout::Horizontal => {
            let right = |i: usize| {
                scene.groups[i]
                    .objects
                    .iter()
                    .map(|o| o.x)
                    .fold(0.0f32, f32::max)
            };
            let left = |i: usize| {
                scene.groups[i]
                    .objects
                    .iter()
                    .map(|o| o.x)
                    .fold(f32::MAX, f32::min)
            };
            for i in 1..scene.groups.len() {
                assert!(right(i - 1) < left(i), "{caption}");
            }
        }
    }
}

#[test]
fn captions_and_pixels_match_the_scene() {
    let cfg = DemoConfig {
        max_side: 512,
        ..small(9, Split::Train)
    };
    for index in 0..200 {
        let row = comp_datasets::demo::generate_row(&cfg, index).unwrap();
        check_caption(&row.caption, &row.scene);
        let img = image::load_from_memory(&row.image).unwrap().to_rgb8();
        assert_eq!(
            (img.width(), img.height()),
            (row.scene.width, row.scene.height)
        );
        let tolerance = if row.scene.format == "png" { 0 } else { 70 };
        for g in &row.scene.groups {
            for o in g
                .objects
                .iter()
                .filter(|o| tolerance == 0 || o.size_px >= 10.0)
            {
                let p = img.get_pixel(o.x as u32, o.y as u32).0;
                let close = p
                    .iter()
                    .zip(g.rgb)
                    .all(|(a, b)| (*a as i32 - b as i32).abs() <= tolerance);
                assert!(
                    close,
                    "row {index}: pixel {p:?} at an object's centre is not {} {:?}",
                    g.colour, g.rgb
                );
            }
        }
        let meta: Scene =
            serde_json::from_str(&serde_json::to_string(&row.scene).unwrap()).unwrap();
        assert_eq!(meta, row.scene);
    }
}

#[test]
fn sizes_vary_and_skew_small() {
    let cfg = DemoConfig::default();
    let sides: Vec<(u32, u32)> = (0..300)
        .map(|i| {
            let s = comp_datasets::demo::generate_row(&cfg, i).unwrap().scene;
            (s.width, s.height)
        })
        .collect();
    let longest: Vec<u32> = sides.iter().map(|&(w, h)| w.max(h)).collect();
    assert!(
        sides
            .iter()
            .all(|&(w, h)| (32..=1024).contains(&w) && (32..=1024).contains(&h))
    );
    assert!(
        longest.iter().filter(|&&l| l <= 256).count() > 150,
        "most images are small"
    );
    assert!(longest.iter().any(|&l| l > 512), "some are large");
    assert!(sides.iter().any(|&(w, h)| w > h) && sides.iter().any(|&(w, h)| w < h));
}

#[test]
fn demo_shards_partition_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), &small(3, Split::Train)).unwrap();
    let sources = vec![dir.path().to_str().unwrap().to_string()];
    check_partition(&sources, 1);
    check_resume(&sources, true, 2, 3);
}
