use std::collections::HashMap;

use comp_datasets::SampleId;
use comp_pipeline::pack::{PackConfig, PackError, Packer, pad_to_longest_waste};
use comp_pipeline::{PackedBatch, ProcessedSample};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::mixes::{self, Mix};

const IMAGE_TOKEN: i64 = 5;

/// Feed everything, then flush. Returns the batches and the ids refused as oversized.
fn pack_all(cfg: &PackConfig, samples: &[ProcessedSample]) -> (Vec<PackedBatch>, Vec<SampleId>) {
    let mut packer = Packer::new(cfg.clone(), 1, IMAGE_TOKEN).unwrap();
    let (mut out, mut refused) = (Vec::new(), Vec::new());
    for s in samples {
        match packer.push(s.clone()) {
            Ok(b) => out.extend(b),
            Err(PackError::Oversized { id, .. }) => refused.push(id),
            Err(e) => panic!("{e}"),
        }
    }
    out.extend(packer.flush());
    (out, refused)
}

/// A random stream: sizes from either mix or uniformly odd grids, random caption lengths.
fn random_samples(rng: &mut ChaCha8Rng, n: usize) -> Vec<ProcessedSample> {
    let shapes: Vec<([i64; 3], usize)> = match rng.random_range(0..3) {
        0 => mixes::shapes(Mix::Demo, n, rng.random()),
        1 => mixes::shapes(Mix::HeavyTailed, n, rng.random()),
        _ => (0..n)
            .map(|_| {
                let (h, w) = (
                    2 * rng.random_range(1..60i64),
                    2 * rng.random_range(1..60i64),
                );
                ([1, h, w], rng.random_range(1..200usize))
            })
            .collect(),
    };
    mixes::samples(&shapes, 1)
}

fn check_batch(b: &PackedBatch, cfg: &PackConfig, by_id: &HashMap<SampleId, &ProcessedSample>) {
    let f = b.fill;
    assert!(
        f.patches <= f.patch_budget && f.patch_budget == cfg.max_patches,
        "{f:?}"
    );
    assert!(f.tokens <= f.token_budget, "{f:?}");
    if let Some(t) = cfg.max_tokens {
        assert_eq!(f.token_budget, t);
    }
    assert!(f.images <= cfg.max_images && f.images >= 1, "{f:?}");
    assert_eq!(f.patches, b.num_patches());
    assert_eq!(f.tokens, b.num_tokens());
    for (i, id) in b.sample_ids.iter().enumerate() {
        let s = by_id[id];
        let (p0, p1) = (
            b.vision_cu_seqlens[i] as usize,
            b.vision_cu_seqlens[i + 1] as usize,
        );
        assert!(
            b.pixel_values[p0..p1].iter().all(|&v| v == id.row as f32),
            "pixels belong to their sample"
        );
        let (t0, t1) = (
            b.text_cu_seqlens[i] as usize,
            b.text_cu_seqlens[i + 1] as usize,
        );
        assert_eq!(&b.input_ids[t0..t1], &s.input_ids[..]);
        assert_eq!(b.image_grid_thw[i], s.grid_thw);
    }
    assert!(
        b.sample_ids.windows(2).all(|w| w[0] < w[1]),
        "arrival order inside a batch"
    );
}

#[test]
fn budgets_hold_and_every_sample_arrives_once() {
    let mut rng = ChaCha8Rng::seed_from_u64(2026);
    for trial in 0..60 {
        let n = rng.random_range(1..400);
        let samples = random_samples(&mut rng, n);
        let cfg = PackConfig {
            max_patches: rng.random_range(64..6000),
            max_tokens: if rng.random_bool(0.5) {
                None
            } else {
                Some(rng.random_range(40..2000))
            },
            max_images: rng.random_range(1..70),
            buffer_size: rng.random_range(1..80),
            ..PackConfig::default()
        };
        let (batches, refused) = pack_all(&cfg, &samples);
        let by_id: HashMap<_, _> = samples.iter().map(|s| (s.id, s)).collect();
        let mut seen: Vec<SampleId> = refused.clone();
        for b in &batches {
            check_batch(b, &cfg, &by_id);
            seen.extend(&b.sample_ids);
        }
        seen.sort();
        let mut all: Vec<SampleId> = samples.iter().map(|s| s.id).collect();
        all.sort();
        assert_eq!(seen, all, "trial {trial}: a sample was lost or duplicated");
        // Refusals are exactly the samples that cannot fit alone.
        let token_budget = batches
            .first()
            .map(|b| b.fill.token_budget)
            .or(cfg.max_tokens);
        for id in &refused {
            let s = by_id[id];
            assert!(
                s.num_patches() > cfg.max_patches
                    || token_budget.is_some_and(|t| s.num_tokens() > t),
                "trial {trial}: {id:?} refused but fits"
            );
        }
    }
}

#[test]
fn output_depends_only_on_input_order() {
    let samples = mixes::samples(&mixes::shapes(Mix::HeavyTailed, 1500, 3), 1);
    let cfg = PackConfig::default();
    let (a, _) = pack_all(&cfg, &samples);
    let (b, _) = pack_all(&cfg, &samples);
    assert_eq!(a, b);
}

#[test]
fn no_sample_waits_longer_than_buffer_size_batches() {
    let samples = mixes::samples(&mixes::shapes(Mix::HeavyTailed, 3000, 11), 1);
    let cfg = PackConfig {
        buffer_size: 32,
        ..PackConfig::default()
    };
    let mut packer = Packer::new(cfg.clone(), 1, IMAGE_TOKEN).unwrap();
    let mut arrived_at: HashMap<SampleId, usize> = HashMap::new();
    let mut batches = 0usize;
    let mut worst = 0usize;
    for s in samples {
        arrived_at.insert(s.id, batches);
        if let Some(b) = packer.push(s).unwrap() {
            batches += 1;
            for id in &b.sample_ids {
                worst = worst.max(batches - arrived_at[id]);
            }
        }
    }
    assert!(
        worst >= 1 && worst <= cfg.buffer_size,
        "worst wait {worst} batches"
    );
}

#[test]
fn resume_from_buffered_ids_reproduces_the_stream() {
    let samples = mixes::samples(&mixes::shapes(Mix::Demo, 900, 5), 1);
    let by_id: HashMap<_, _> = samples.iter().map(|s| (s.id, s)).collect();
    for buffer_size in [1, 7, 48] {
        let cfg = PackConfig {
            buffer_size,
            ..PackConfig::default()
        };
        let (uninterrupted, _) = pack_all(&cfg, &samples);
        let mut rng = ChaCha8Rng::seed_from_u64(buffer_size as u64);
        let mut cuts: Vec<usize> = (0..25)
            .map(|_| rng.random_range(0..=samples.len()))
            .collect();
        cuts.extend([0, 1, buffer_size - 1, buffer_size, samples.len()]);
        for cut in cuts {
            let mut first = Packer::new(cfg.clone(), 1, IMAGE_TOKEN).unwrap();
            let mut emitted = Vec::new();
            for s in &samples[..cut] {
                emitted.extend(first.push(s.clone()).unwrap());
            }
            // The saved state: buffered ids + the resolved budgets (a config value).
            let state_ids = first.buffered_ids();
            let resumed_cfg = first.resolved_config();
            drop(first);
            let mut second = Packer::new(resumed_cfg, 1, IMAGE_TOKEN).unwrap();
            let mut after = Vec::new();
            for id in &state_ids {
                after.extend(second.push(by_id[id].clone()).unwrap());
            }
            assert!(after.is_empty(), "replaying the buffer must not emit");
            for s in &samples[cut..] {
                after.extend(second.push(s.clone()).unwrap());
            }
            after.extend(second.flush());
            assert_eq!(
                emitted.len() + after.len(),
                uninterrupted.len(),
                "cut {cut}"
            );
            assert_eq!(&uninterrupted[..emitted.len()], &emitted[..], "cut {cut}");
            assert_eq!(
                &uninterrupted[emitted.len()..],
                &after[..],
                "cut {cut}, buffer {buffer_size}"
            );
        }
    }
}

#[test]
fn oversized_samples_are_refused_and_the_stream_goes_on() {
    let samples = mixes::samples(
        &[
            ([1, 80, 80], 10),
            ([1, 10, 10], 10),
            ([1, 4, 4], 300),
            ([1, 8, 8], 10),
        ],
        1,
    );
    let cfg = PackConfig {
        max_patches: 4096,
        max_tokens: Some(200),
        buffer_size: 2,
        ..PackConfig::default()
    };
    let mut packer = Packer::new(cfg, 1, IMAGE_TOKEN).unwrap();
    let err = packer.push(samples[0].clone()).unwrap_err();
    assert!(
        matches!(err, PackError::Oversized { patches: 6400, .. }),
        "{err}"
    );
    assert!(packer.push(samples[1].clone()).unwrap().is_none());
    assert!(matches!(
        packer.push(samples[2].clone()),
        Err(PackError::Oversized { .. })
    ));
    let b = packer.push(samples[3].clone()).unwrap().unwrap();
    assert_eq!(b.sample_ids, vec![samples[1].id, samples[3].id]);
    assert!(packer.flush().is_empty());

    let mut wrong_dim = samples[1].clone();
    wrong_dim.pixel_values.push(0.0);
    assert!(matches!(
        packer.push(wrong_dim),
        Err(PackError::PatchDim { .. })
    ));
    for bad in [
        PackConfig {
            buffer_size: 0,
            ..PackConfig::default()
        },
        PackConfig {
            max_tokens: Some(0),
            ..PackConfig::default()
        },
        PackConfig {
            bucket_boundaries: vec![5, 5],
            ..PackConfig::default()
        },
    ] {
        assert!(matches!(
            Packer::new(bad, 1, IMAGE_TOKEN),
            Err(PackError::Config(_))
        ));
    }
}

#[test]
fn default_budgets_waste_at_most_two_percent_on_both_mixes() {
    for (mix, seed) in [(Mix::Demo, 1), (Mix::HeavyTailed, 2)] {
        let samples = mixes::samples(&mixes::shapes(mix, 4000, seed), 1);
        let cfg = PackConfig::default();
        let mut packer = Packer::new(cfg.clone(), 1, IMAGE_TOKEN).unwrap();
        let mut stream = Vec::new();
        for s in &samples {
            stream.extend(packer.push(s.clone()).unwrap());
        }
        let n = stream.len() as f64;
        let patch_fill = stream.iter().map(|b| b.fill.patch_fill()).sum::<f64>() / n;
        let token_fill = stream.iter().map(|b| b.fill.token_fill()).sum::<f64>() / n;
        let per_batch = samples.len().div_ceil(stream.len());
        let (naive_p, naive_t) = pad_to_longest_waste(&mixes::sizes(&samples), per_batch);
        println!(
            "{}: {} batches, patch fill {:.2}%, token fill {:.2}% (max_tokens {}); naive pad-to-longest \
             waste {:.1}% / {:.1}%",
            mix.name(),
            stream.len(),
            100.0 * patch_fill,
            100.0 * token_fill,
            packer.budgets().unwrap().max_tokens,
            100.0 * naive_p,
            100.0 * naive_t
        );
        assert!(
            patch_fill >= 0.98,
            "{}: patch fill {patch_fill}",
            mix.name()
        );
        assert!(
            token_fill >= 0.98,
            "{}: token fill {token_fill}",
            mix.name()
        );
        assert!(naive_p > 10.0 * (1.0 - patch_fill) && naive_t > 10.0 * (1.0 - token_fill));
    }
}
