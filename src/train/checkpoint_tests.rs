//! Tests of checkpoints: round trip, fallback past a damaged checkpoint, `.tmp` handling, rotation.
use std::sync::{Arc, Mutex};

use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

use super::*;
use crate::train::optim::{AdamWConfig, part_groups};

fn model(vs: &VarStore) -> nn::Linear {
    nn::linear(vs.root() / "adapter" / "fc", 4, 3, Default::default())
}

fn optimizer(vs: &VarStore) -> AdamW {
    let mut params: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    params.sort_by(|a, b| a.0.cmp(&b.0));
    AdamW::new(
        part_groups("adapter", params, 1e-2, 0.0),
        AdamWConfig::default(),
    )
    .unwrap()
}

fn train_step(net: &nn::Linear, opt: &mut AdamW, step: u64) {
    opt.zero_grad();
    let x = Tensor::arange(8, (Kind::Float, Device::Cpu)).reshape([2, 4]) / (step as f64 + 1.0);
    net.forward(&x).square().mean(Kind::Float).backward();
    opt.step(|g| g.peak_lr);
}

fn state(step: u64) -> TrainState {
    TrainState {
        stage_index: 1,
        stage_name: "stage2".into(),
        step_in_stage: step,
        global_step: step,
        skipped_steps: 0,
        seed: 7,
        rng: serde_json::json!({"draws": step}),
        loader: serde_json::json!({"shard": 3, "row": step * 10}),
        config_hash: "abc".into(),
    }
}

/// A trained model saved at the given steps; returns the checkpointer, the VarStore and the model.
fn run_with_checkpoints(
    run_dir: &Path,
    keep: usize,
    save_at: &[u64],
) -> (Checkpointer, VarStore, nn::Linear) {
    tch::manual_seed(0);
    let vs = VarStore::new(Device::Cpu);
    let net = model(&vs);
    let mut opt = optimizer(&vs);
    let cp = Checkpointer::new(run_dir, keep).unwrap();
    let last = *save_at.iter().max().unwrap();
    for step in 1..=last {
        train_step(&net, &mut opt, step);
        if save_at.contains(&step) {
            cp.save(&CheckpointData {
                vs: &vs,
                optim: &opt,
                state: &state(step),
            })
            .unwrap();
        }
    }
    (cp, vs, net)
}

fn steps(cp: &Checkpointer) -> Vec<u64> {
    cp.list().unwrap().into_iter().map(|(s, _)| s).collect()
}

/// Runs `f` with tracing output captured into a string.
fn capture_logs<T>(f: impl FnOnce() -> T) -> (T, String) {
    #[derive(Clone)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf(Arc::new(Mutex::new(Vec::new())));
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let out = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    (out, text)
}

#[test]
fn round_trip_restores_model_optimizer_and_state() {
    let run = tempfile::tempdir().unwrap();
    let (cp, vs, net) = run_with_checkpoints(run.path(), 3, &[2]);
    let loaded = cp.load_latest().unwrap().expect("a checkpoint");
    assert_eq!(loaded.state, state(2));
    assert!(loaded.dir.ends_with("checkpoints/step-00000002"));

    tch::manual_seed(99);
    let mut vs2 = VarStore::new(Device::Cpu);
    let net2 = model(&vs2);
    let mut opt2 = optimizer(&vs2);
    loaded.restore_model(&mut vs2).unwrap();
    loaded.restore_optimizer(&mut opt2).unwrap();
    for (name, t) in vs.variables() {
        assert!(t.equal(&vs2.variables()[&name]), "{name} restored");
    }
    assert_eq!(opt2.steps_taken(), 2);
    // Continuing from the checkpoint equals continuing the original.
    let mut opt1 = optimizer(&vs);
    loaded.restore_optimizer(&mut opt1).unwrap();
    train_step(&net, &mut opt1, 3);
    train_step(&net2, &mut opt2, 3);
    for (name, t) in vs.variables() {
        assert!(
            t.equal(&vs2.variables()[&name]),
            "{name} after one more step"
        );
    }
}

#[test]
fn restore_rejects_mismatched_models() {
    let run = tempfile::tempdir().unwrap();
    let (cp, _, _) = run_with_checkpoints(run.path(), 3, &[1]);
    let loaded = cp.load_latest().unwrap().unwrap();
    let mut other = VarStore::new(Device::Cpu);
    let _ = nn::linear(other.root() / "adapter" / "fc", 5, 3, Default::default());
    assert!(
        loaded
            .restore_model(&mut other)
            .unwrap_err()
            .to_string()
            .contains("shape")
    );
    let mut renamed = VarStore::new(Device::Cpu);
    let _ = nn::linear(renamed.root() / "vision" / "fc", 4, 3, Default::default());
    assert!(
        loaded
            .restore_model(&mut renamed)
            .unwrap_err()
            .to_string()
            .contains("missing")
    );
}

#[test]
fn damaged_newest_checkpoint_falls_back_with_a_warning() {
    let run = tempfile::tempdir().unwrap();
    let (cp, _, _) = run_with_checkpoints(run.path(), 3, &[1, 2, 3]);
    // Truncate the newest model file, flip a byte in the second newest's optimiser state.
    let newest = cp.dir().join("step-00000003/model.safetensors");
    let len = fs::metadata(&newest).unwrap().len();
    File::options()
        .write(true)
        .open(&newest)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let second = cp.dir().join("step-00000002/optim.safetensors");
    let mut bytes = fs::read(&second).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&second, bytes).unwrap();

    let (loaded, logs) = capture_logs(|| cp.load_latest().unwrap());
    assert_eq!(loaded.expect("step 1 is still good").state.global_step, 1);
    assert!(
        logs.contains("WARN") && logs.contains("step-00000003") && logs.contains("bytes"),
        "{logs}"
    );
    assert!(
        logs.contains("step-00000002") && logs.contains("checksum"),
        "{logs}"
    );

    // With every checkpoint damaged there is nothing to resume from.
    fs::remove_file(cp.dir().join("step-00000001/state.json")).unwrap();
    let (none, logs) = capture_logs(|| latest_good(run.path()).unwrap());
    assert!(none.is_none());
    assert!(logs.contains("all 3 are damaged"), "{logs}");
}

#[test]
fn unfinished_tmp_dirs_are_ignored_and_removed() {
    let run = tempfile::tempdir().unwrap();
    let (cp, _, _) = run_with_checkpoints(run.path(), 3, &[1]);
    let partial = cp.dir().join("step-00000005.tmp");
    fs::create_dir(&partial).unwrap();
    fs::write(partial.join("model.safetensors"), b"half").unwrap();
    assert_eq!(steps(&cp), vec![1], "a .tmp dir is not a checkpoint");
    let loaded = cp.load_latest().unwrap().unwrap();
    assert_eq!(loaded.state.global_step, 1);
    assert!(!partial.exists(), "cleaned up");
}

#[test]
fn rotation_keeps_the_newest_k() {
    let run = tempfile::tempdir().unwrap();
    let (cp, _, _) = run_with_checkpoints(run.path(), 2, &[1, 2, 3, 4]);
    assert_eq!(steps(&cp), vec![4, 3]);
    let names: Vec<String> = fs::read_dir(cp.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "no stray files: {names:?}");
    assert_eq!(parse_step("step-00000012"), Some(12));
    assert_eq!(parse_step("step-00000012.tmp"), None);
}
