//! `comp train` through the real binary on `configs/tiny.toml` (issue 5, "Shown by").
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::*;

/// Tensors a trained part may leave untouched: SigLIP's `post_layernorm` is kept loadable for parity
/// with transformers but CoMP does not apply it (`use_post_layernorm = false`), so it gets no gradient.
const UNUSED: [&str; 2] = ["vision.post_layernorm.weight", "vision.post_layernorm.bias"];

fn part_of(name: &str) -> &str {
    name.split('.').next().unwrap_or(name)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), &dst).unwrap();
        }
    }
}

/// A fresh temporary directory holding 96 demo rows in `data/`.
fn with_data() -> (tempfile::TempDir, PathBuf) {
    with_rows(96)
}

fn with_rows(rows: usize) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    make_demo_data(&data, rows);
    (tmp, data)
}

#[test]
fn stages_freeze_and_train_the_right_parts() {
    let (tmp, data) = with_data();
    // Known starting weights: one adapter-only step of a throwaway run.
    let init_run = tmp.path().join("init");
    let mut init = tiny_config(&data, &init_run);
    init.insert(
        "stages".into(),
        vec![init["stages"].as_array().unwrap()[0].clone()].into(),
    );
    set_stage_steps(&mut init, &[1]);
    run_ok(&mut train_cmd(&write_config(
        &init,
        &tmp.path().join("init.toml"),
    )));
    let w0 = checkpoint_dir(&init_run, 1).join("model.safetensors");
    assert!(w0.exists(), "the one-step run wrote {}", w0.display());

    let run = tmp.path().join("run");
    let mut cfg = tiny_config(&data, &run);
    table(&mut cfg, "model").insert("init".into(), w0.display().to_string().into());
    // Only the stage-end checkpoints, and all of them kept.
    cfg.insert("checkpoint_every".into(), 1000.into());
    cfg.insert("keep_checkpoints".into(), 10.into());
    set_stage_steps(&mut cfg, &[4, 6, 4]);
    run_ok(&mut train_cmd(&write_config(
        &cfg,
        &tmp.path().join("run.toml"),
    )));

    let ckpts = checkpoints(&run);
    let steps: Vec<u64> = ckpts.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        steps,
        vec![4, 10, 14],
        "one checkpoint at the end of each stage"
    );
    for (i, (_, dir)) in ckpts.iter().enumerate() {
        let state = checkpoint_state(dir);
        assert_eq!(
            (
                state["stage_index"].as_u64(),
                state["step_in_stage"].as_u64()
            ),
            (Some(i as u64 + 1), Some(0)),
            "{}: a stage-end checkpoint points at the start of the next stage",
            dir.display()
        );
    }

    let mut snapshots = vec![("initial weights".to_string(), load_safetensors(&w0))];
    for (step, dir) in &ckpts {
        snapshots.push((
            format!("step {step}"),
            load_safetensors(&dir.join("model.safetensors")),
        ));
    }
    let trained: [&[&str]; 3] = [&["adapter"], &["vision", "adapter", "llm"], &["llm"]];
    let mut problems = Vec::new();
    for (i, parts) in trained.iter().enumerate() {
        let (from, before) = &snapshots[i];
        let (to, after) = &snapshots[i + 1];
        assert_eq!(
            before.keys().collect::<Vec<_>>(),
            after.keys().collect::<Vec<_>>(),
            "the same tensors in every checkpoint"
        );
        let mut changed_parts = BTreeSet::new();
        for (name, b) in before {
            let a = &after[name];
            assert_eq!((&a.dtype, &a.shape), (&b.dtype, &b.shape), "{name}");
            let changed = a.data != b.data;
            let part = part_of(name);
            assert!(
                ["vision", "adapter", "llm"].contains(&part),
                "{name} belongs to no part"
            );
            if changed {
                changed_parts.insert(part);
            }
            let trains = parts.contains(&part);
            if trains && !changed && !UNUSED.contains(&name.as_str()) {
                problems.push(format!(
                    "stage {}: {name} is trainable but did not change ({from} -> {to})",
                    i + 1
                ));
            }
            if !trains && changed {
                problems.push(format!(
                    "stage {}: {name} is frozen but changed ({from} -> {to})",
                    i + 1
                ));
            }
        }
        assert_eq!(
            changed_parts.into_iter().collect::<Vec<_>>(),
            {
                let mut p = parts.to_vec();
                p.sort();
                p
            },
            "stage {}: parts that changed",
            i + 1
        );
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // The optimiser's parameter groups match: learning rates are logged only for trained parts.
    for m in read_metrics(&run) {
        let groups: BTreeSet<&str> = m.json["lr"]
            .as_object()
            .unwrap()
            .keys()
            .map(|k| part_of(k))
            .collect();
        let expected: BTreeSet<&str> = trained[m.json["stage_index"].as_u64().unwrap() as usize]
            .iter()
            .copied()
            .collect();
        assert_eq!(groups, expected, "lr groups of {}", m.raw);
    }
}

#[test]
fn loss_decreases_and_the_run_directory_is_complete() {
    let (tmp, data) = with_data();
    let run = tmp.path().join("run");
    let mut cfg = tiny_config(&data, &run);
    set_stage_steps(&mut cfg, &[4, 24, 4]);
    let (stdout, _) = run_ok(&mut train_cmd(&write_config(
        &cfg,
        &tmp.path().join("run.toml"),
    )));
    assert!(stdout.contains("done: 32 steps"), "{stdout}");

    let metrics = read_metrics(&run);
    assert_eq!(
        metrics.iter().map(|m| m.global_step()).collect::<Vec<_>>(),
        (1..=32).collect::<Vec<_>>(),
        "one line per optimiser step"
    );
    let stages: Vec<&str> = metrics.iter().map(|m| m.stage()).collect();
    assert_eq!(stages[0], "stage1-warmup");
    assert_eq!(stages[4], "stage2-continual-pretraining");
    assert_eq!(stages[31], "stage3-instruction-tuning");
    for m in &metrics {
        let (loss, dec, align) = (m.f64("loss"), m.f64("dec_loss"), m.f64("align_loss"));
        assert!(
            loss.is_finite() && dec.is_finite() && m.f64("grad_norm") > 0.0,
            "{}",
            m.raw
        );
        if m.stage() == "stage3-instruction-tuning" {
            assert!(
                m.json["align_loss"].is_null(),
                "no alignment loss in stage 3, logged as null: {}",
                m.raw
            );
            assert_eq!(loss, dec, "{}", m.raw);
        } else {
            // L = L_dec + alpha * L_align with alpha = 0.05 (computed in f32).
            let want = dec + 0.05 * align;
            assert!((loss - want).abs() <= 1e-4 * want.abs(), "{}", m.raw);
        }
    }

    let stage2: Vec<f64> = metrics[4..28].iter().map(|m| m.f64("dec_loss")).collect();
    let first = mean(stage2[..5].iter().copied());
    let last = mean(stage2[stage2.len() - 5..].iter().copied());
    assert!(
        last < first - 0.05,
        "stage 2 decoding loss should fall: first 5 steps {first:.4}, last 5 {last:.4}"
    );
    let all_first = mean(metrics[..5].iter().map(|m| m.f64("dec_loss")));
    let all_last = mean(metrics[27..].iter().map(|m| m.f64("dec_loss")));
    assert!(
        all_last < all_first,
        "decoding loss over the run: first 5 {all_first:.4}, last 5 {all_last:.4}"
    );

    // The rest of the run directory.
    let png = std::fs::read(run.join("loss_curves.png")).expect("loss_curves.png");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 1000);
    let snapshot: toml::Table = std::fs::read_to_string(run.join("config.toml"))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(snapshot["stages"].as_array().unwrap().len(), 3);
    assert!(run.join("word_prior.safetensors").exists());
    let vfm_cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("vfm/config.json")).unwrap())
            .unwrap();
    assert_eq!(vfm_cfg["comp"]["hidden_size"], 64);
    // The exported VFM is the final vision tower under Hugging Face names.
    let vfm = load_safetensors(&run.join("vfm/model.safetensors"));
    let last = checkpoints(&run).last().unwrap().1.clone();
    assert_eq!(last, checkpoint_dir(&run, 32));
    let model = load_safetensors(&last.join("model.safetensors"));
    let vision: Vec<&String> = model.keys().filter(|k| k.starts_with("vision.")).collect();
    assert_eq!(vfm.len(), vision.len());
    for name in vision {
        let hf = format!("vision_model.{}", name.strip_prefix("vision.").unwrap());
        assert_eq!(vfm.get(&hf), Some(&model[name]), "{hf} in vfm/");
    }
}

/// The tiny config for the resume tests: 6 + 14 + 6 steps, a checkpoint every 4 steps.
fn resume_config(tmp: &Path, data: &Path, name: &str, keep: i64) -> PathBuf {
    let mut cfg = tiny_config(data, &tmp.join(name));
    set_stage_steps(&mut cfg, &[6, 14, 6]);
    cfg.insert("checkpoint_every".into(), 4.into());
    cfg.insert("keep_checkpoints".into(), keep.into());
    write_config(&cfg, &tmp.join(format!("{name}.toml")))
}

const TOTAL_STEPS: u64 = 26;

/// The `(stage, step in stage, global step)` a resumed run reports starting from.
fn resumed_from(stderr: &str) -> (String, u64, u64) {
    let line = stderr
        .lines()
        .find(|l| l.contains("resuming from"))
        .unwrap_or_else(|| panic!("no 'resuming from' line in:\n{stderr}"));
    let inner = line.rsplit_once('(').unwrap().1.trim_end_matches(')');
    // "stage NAME step S, global step G"
    let words: Vec<&str> = inner.split([' ', ',']).filter(|w| !w.is_empty()).collect();
    (
        words[1].to_string(),
        words[3].parse().unwrap(),
        words[6].parse().unwrap(),
    )
}

/// Starts a run, SIGKILLs it once `ready(latest checkpoint step, latest logged step)` holds, and checks
/// it was really cut short. Returns the (checkpoint, logged step) seen at the kill.
fn kill_when(config: &Path, run: &Path, ready: impl Fn(u64, u64) -> bool) -> (u64, u64) {
    let log = std::fs::File::create(run.with_extension("stderr")).unwrap();
    let mut child = train_cmd(config)
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    let t = Instant::now();
    let (ckpt, logged) = loop {
        let ckpt = checkpoints(run).last().map(|(s, _)| *s).unwrap_or(0);
        let logged = read_metrics(run)
            .last()
            .map(|m| m.global_step())
            .unwrap_or(0);
        if ready(ckpt, logged) {
            break (ckpt, logged);
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "the run ended ({status}) before the kill point (checkpoint {ckpt}, step {logged}):\n{}",
                std::fs::read_to_string(run.with_extension("stderr")).unwrap_or_default()
            );
        }
        assert!(t.elapsed() < Duration::from_secs(60), "no progress");
        std::thread::sleep(Duration::from_millis(2));
    };
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(!status.success(), "killed, not finished");
    let logged_after = read_metrics(run).last().map(|m| m.global_step()).unwrap();
    assert!(
        logged_after < TOTAL_STEPS,
        "the kill came too late: step {logged_after} of {TOTAL_STEPS} was logged"
    );
    (ckpt, logged)
}

fn kill_then_resume_matches(ready: impl Fn(u64, u64) -> bool) -> (String, u64, u64) {
    let (tmp, data) = with_data();
    let reference = tmp.path().join("reference");
    run_ok(&mut train_cmd(&resume_config(
        tmp.path(),
        &data,
        "reference",
        3,
    )));
    let expected = read_metrics(&reference);
    assert_eq!(expected.len() as u64, TOTAL_STEPS);

    let run = tmp.path().join("killed");
    let config = resume_config(tmp.path(), &data, "killed", 3);
    kill_when(&config, &run, ready);
    let (stdout, stderr) = run_ok(&mut resume_cmd(&run));
    assert!(
        stdout.contains(&format!("done: {TOTAL_STEPS} steps")),
        "{stdout}"
    );
    let from = resumed_from(&stderr);
    eprintln!("killed and resumed from {from:?}");
    assert_same_metrics(&expected, &read_metrics(&run), from.2, "SIGKILL + --resume");
    // And the weights end bit-identical too.
    let last =
        |dir: &Path| load_safetensors(&checkpoint_dir(dir, TOTAL_STEPS).join("model.safetensors"));
    assert!(
        last(&run) == last(&reference),
        "final weights differ from the uninterrupted run's"
    );
    from
}

#[test]
fn sigkill_mid_stage_then_resume_matches_an_uninterrupted_run() {
    // Stage 2 runs global steps 7..=20 with checkpoints at 10 (its 4th step) and 14; kill 2+ steps
    // after a stage-2 checkpoint, i.e. in the middle of the stage.
    let (stage, step, global) =
        kill_then_resume_matches(|ckpt, logged| ckpt >= 10 && logged >= ckpt + 2);
    assert_eq!(stage, "stage2-continual-pretraining");
    assert!(
        step > 0 && global >= 10,
        "resumed mid-stage, from step {step} (global {global})"
    );
}

#[test]
fn sigkill_after_a_stage_boundary_then_resume_matches_an_uninterrupted_run() {
    // Stage 1 ends at global step 6 (a checkpoint); kill in stage 2 as soon as its first step is
    // logged. Usually the run resumes from the stage-end checkpoint (a fresh stage 2: new optimiser,
    // new loader); if the kill lands later, from the first stage-2 checkpoint. Either way the losses
    // must match.
    kill_then_resume_matches(|ckpt, logged| ckpt >= 6 && logged >= 7);
}

/// A finished reference run with every checkpoint kept, and a copy of it cut back to `keep_up_to`
/// (as if killed right after writing that checkpoint; the metrics beyond it are cut on resume).
fn reference_and_copy(keep_up_to: u64) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let (tmp, data) = with_data();
    let reference = tmp.path().join("reference");
    let config = resume_config(tmp.path(), &data, "reference", 100);
    run_ok(&mut train_cmd(&config));
    let steps: Vec<u64> = checkpoints(&reference).iter().map(|(s, _)| *s).collect();
    assert_eq!(steps, vec![4, 6, 10, 14, 18, 20, 24, 26]);
    let copy = tmp.path().join("copy");
    copy_dir(&reference, &copy);
    for (step, dir) in checkpoints(&copy) {
        if step > keep_up_to {
            std::fs::remove_dir_all(dir).unwrap();
        }
    }
    (tmp, reference, copy)
}

#[test]
fn corrupted_latest_checkpoint_falls_back_to_the_previous_one() {
    let (_tmp, reference, run) = reference_and_copy(14);
    // Flip one byte in the middle of the newest checkpoint's weights.
    let model = checkpoint_dir(&run, 14).join("model.safetensors");
    let mut bytes = std::fs::read(&model).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&model, bytes).unwrap();

    let (stdout, stderr) = run_ok(&mut resume_cmd(&run));
    let warning = stderr
        .lines()
        .find(|l| l.contains("WARN") && l.contains("step-00000014"))
        .unwrap_or_else(|| panic!("no warning naming the damaged checkpoint:\n{stderr}"));
    assert!(
        warning.contains("damaged") && warning.contains("model.safetensors"),
        "{warning}"
    );
    assert_eq!(
        resumed_from(&stderr),
        ("stage2-continual-pretraining".to_string(), 4, 10),
        "fell back to the previous checkpoint"
    );
    assert!(
        stdout.contains(&format!("done: {TOTAL_STEPS} steps")),
        "{stdout}"
    );
    assert_same_metrics(
        &read_metrics(&reference),
        &read_metrics(&run),
        10,
        "fallback resume",
    );
    // The damaged checkpoint was rewritten by the resumed run, identical to the reference's.
    for step in [14, TOTAL_STEPS] {
        let file =
            |dir: &Path| load_safetensors(&checkpoint_dir(dir, step).join("model.safetensors"));
        assert!(file(&run) == file(&reference), "weights at step {step}");
    }
}

#[test]
fn truncated_checkpoint_falls_back_across_a_stage_boundary() {
    // Checkpoint 10 (stage 2, step 4) truncated: the previous one is stage 1's end (global step 6),
    // which points at the start of stage 2 with a fresh optimiser.
    let (_tmp, reference, run) = reference_and_copy(10);
    let model = checkpoint_dir(&run, 10).join("model.safetensors");
    let len = std::fs::metadata(&model).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&model)
        .unwrap()
        .set_len(len / 3)
        .unwrap();

    let (_, stderr) = run_ok(&mut resume_cmd(&run));
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("WARN") && l.contains("step-00000010") && l.contains("damaged")),
        "no warning naming the truncated checkpoint:\n{stderr}"
    );
    let (_, step, global) = resumed_from(&stderr);
    assert_eq!((step, global), (0, 6), "resumed from the end of stage 1");
    assert_same_metrics(
        &read_metrics(&reference),
        &read_metrics(&run),
        6,
        "resume at a stage boundary",
    );
    let file =
        |dir: &Path| load_safetensors(&checkpoint_dir(dir, TOTAL_STEPS).join("model.safetensors"));
    assert!(file(&run) == file(&reference), "final weights");
}

#[test]
fn bad_data_is_skipped_and_reported_without_stopping_training() {
    // Few good rows, so that every stage (8 steps of up to 8 images) reads all the bad ones.
    let (tmp, data) = with_rows(16);
    for bad in ["mixed_good_and_bad.parquet", "not_parquet.parquet"] {
        std::fs::copy(repo().join("tests/fixtures/bad").join(bad), data.join(bad)).unwrap();
    }
    let run = tmp.path().join("run");
    let cfg = tiny_config(&data, &run);
    let (stdout, stderr) = run_ok(&mut train_cmd(&write_config(
        &cfg,
        &tmp.path().join("run.toml"),
    )));

    let metrics = read_metrics(&run);
    assert_eq!(metrics.len(), 28, "every step of the three stages ran");
    assert!(metrics.iter().all(|m| m.f64("dec_loss").is_finite()));

    let done = stdout
        .lines()
        .find(|l| l.starts_with("done:"))
        .expect("done line");
    let skipped: u64 = done
        .split(", ")
        .find_map(|p| p.strip_suffix(" bad samples skipped"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no bad-sample count in {done:?}"));
    // Per pass: 8 bad rows in the mixed file and the unreadable file.
    assert!(skipped >= 9, "{done}");

    // One report per stage: counts by reason, with examples naming shard:row.
    let reports: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("bad samples"))
        .collect();
    assert_eq!(reports.len(), 3, "one report per stage:\n{stderr}");
    for report in &reports {
        // "reason N" for each kind of bad row in the fixture, and the unreadable file.
        for reason in [
            "bad_file",
            "truncated",
            "unknown_format",
            "null_image",
            "null_caption",
            "empty_image",
            "empty_caption",
        ] {
            let count = report
                .split(['(', ',', ')'])
                .find_map(|part| part.trim().strip_prefix(&format!("{reason} ")))
                .and_then(|n| n.parse::<u64>().ok());
            assert!(
                count.is_some_and(|n| n > 0),
                "no count for {reason} in {report}"
            );
        }
    }
    assert!(
        reports
            .iter()
            .any(|r| r.contains("mixed_good_and_bad.parquet:")),
        "examples name shard:row:\n{}",
        reports.join("\n")
    );
    assert!(
        stderr.contains("not_parquet.parquet"),
        "the unreadable file is named:\n{stderr}"
    );
}

#[test]
fn resumed_metrics_log_keeps_the_earlier_lines_verbatim() {
    // metrics.jsonl of a resumed run is cut back to the checkpoint's step; the lines it keeps must
    // read exactly as the uninterrupted run's (the log is the record the plot and users compare).
    let (_tmp, reference, run) = reference_and_copy(14);
    run_ok(&mut resume_cmd(&run));
    assert_same_metrics_verbatim(
        &read_metrics(&reference),
        &read_metrics(&run),
        "lines kept by --resume",
    );
}
