//! Helpers shared by the end-to-end tests: running the real `comp` binary, building run configs from
//! `configs/tiny.toml`, and reading what a run leaves behind (metrics.jsonl, checkpoints).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// The repository root (where `configs/`, `assets/` and `tests/fixtures/` live).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `comp` binary under test, without colour codes in its logs.
pub fn comp() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_comp"));
    cmd.env("NO_COLOR", "1").env_remove("RUST_LOG");
    cmd
}

/// Runs `cmd`, panics with its output unless it exits 0, and returns (stdout, stderr).
pub fn run_ok(cmd: &mut Command) -> (String, String) {
    let out: Output = cmd.output().expect("spawning comp");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    (stdout, stderr)
}

/// Writes `rows` demo image-caption pairs (small images) into `dir` as two shards.
pub fn make_demo_data(dir: &Path, rows: usize) {
    run_ok(
        comp()
            .args(["make-demo-data", "--shards", "2", "--row-groups", "4"])
            .args(["--max-side", "96", "--rows", &rows.to_string()])
            .arg("--out")
            .arg(dir),
    );
}

/// `configs/tiny.toml` pointed at `data` and `run_dir` (absolute paths, so the binary's working
/// directory does not matter).
pub fn tiny_config(data: &Path, run_dir: &Path) -> toml::Table {
    let path = repo().join("configs/tiny.toml");
    let text = std::fs::read_to_string(&path).expect("reading configs/tiny.toml");
    let mut cfg: toml::Table = text.parse().expect("configs/tiny.toml is valid TOML");
    cfg.insert("run_dir".into(), path_value(run_dir));
    let data_tbl = table(&mut cfg, "data");
    table(data_tbl, "dataset").insert("sources".into(), vec![path_value(data)].into());
    table(data_tbl, "text").insert(
        "tokenizer".into(),
        path_value(&repo().join("assets/tokenizer.json")),
    );
    cfg
}

fn path_value(p: &Path) -> toml::Value {
    toml::Value::String(p.display().to_string())
}

/// The sub-table `key` of `t` (created if missing).
pub fn table<'a>(t: &'a mut toml::Table, key: &str) -> &'a mut toml::Table {
    t.entry(key)
        .or_insert_with(|| toml::Value::Table(Default::default()))
        .as_table_mut()
        .unwrap_or_else(|| panic!("`{key}` is not a table"))
}

/// The `i`-th `[[stages]]` entry.
pub fn stage(cfg: &mut toml::Table, i: usize) -> &mut toml::Table {
    cfg["stages"].as_array_mut().expect("stages")[i]
        .as_table_mut()
        .expect("stage table")
}

pub fn set_stage_steps(cfg: &mut toml::Table, steps: &[i64]) {
    assert_eq!(cfg["stages"].as_array().unwrap().len(), steps.len());
    for (i, &s) in steps.iter().enumerate() {
        stage(cfg, i).insert("steps".into(), s.into());
    }
}

pub fn write_config(cfg: &toml::Table, path: &Path) -> PathBuf {
    std::fs::write(path, toml::to_string(cfg).unwrap()).unwrap();
    path.to_path_buf()
}

/// `comp train --config FILE` with the deterministic thread settings the tests rely on.
pub fn train_cmd(config: &Path) -> Command {
    deterministic_train("--config", config)
}

/// `comp train --resume RUN_DIR`, with the same settings.
pub fn resume_cmd(run_dir: &Path) -> Command {
    deterministic_train("--resume", run_dir)
}

fn deterministic_train(flag: &str, path: &Path) -> Command {
    let mut cmd = comp();
    cmd.arg("train").arg(flag).arg(path);
    cmd.args(["--threads", "1", "--workers", "1", "--device", "cpu"]);
    cmd
}

/// One line of metrics.jsonl: the parsed object and the line's text.
#[derive(Debug, Clone)]
pub struct MetricLine {
    pub raw: String,
    pub json: Value,
}

impl MetricLine {
    pub fn global_step(&self) -> u64 {
        self.json["global_step"].as_u64().expect("global_step")
    }
    pub fn stage(&self) -> &str {
        self.json["stage"].as_str().expect("stage")
    }
    pub fn f64(&self, key: &str) -> f64 {
        // null (non-finite) reads as NaN, as the trainer documents.
        self.json[key].as_f64().unwrap_or(f64::NAN)
    }
    /// The exact text of a field's value. The writer prints the shortest representation that
    /// round-trips, so equal text means a bit-identical f64 (comparing parsed values would not:
    /// the reader may round two different texts to one f64).
    pub fn field_text(&self, key: &str) -> &str {
        raw_field(&self.raw, key).unwrap_or_else(|| panic!("no `{key}` in {}", self.raw))
    }
}

/// The text of the top-level value of `key` in a one-line JSON object.
fn raw_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("\"{key}\":");
    let start = line.find(&pat)? + pat.len();
    let (mut depth, mut in_str, mut escaped) = (0i32, false, false);
    for (i, c) in line[start..].char_indices() {
        if in_str {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_str = true,
            '{' | '[' => depth += 1,
            '}' | ']' if depth > 0 => depth -= 1,
            ',' | '}' if depth == 0 => return Some(&line[start..start + i]),
            _ => {}
        }
    }
    None
}

/// metrics.jsonl of a run; a torn last line (a killed writer) is dropped.
pub fn read_metrics(run_dir: &Path) -> Vec<MetricLine> {
    let path = run_dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let mut out = Vec::new();
    for line in text.lines() {
        match serde_json::from_str(line) {
            Ok(json) => out.push(MetricLine {
                raw: line.to_string(),
                json,
            }),
            Err(_) => break,
        }
    }
    out
}

/// The fields that must agree bit for bit between an interrupted-and-resumed run and an
/// uninterrupted one (everything but wall-clock throughput and time).
pub const DETERMINISTIC_FIELDS: [&str; 10] = [
    "stage",
    "stage_index",
    "step",
    "global_step",
    "loss",
    "dec_loss",
    "align_loss",
    "lr",
    "grad_norm",
    "skipped_steps",
];

/// Asserts that two runs logged the same steps, and that every step after `after_step` (the steps a
/// resumed run computed itself) has bit-identical deterministic fields. Steps up to `after_step` were
/// logged before the interruption; `assert_same_metrics_verbatim` checks those too.
pub fn assert_same_metrics(
    expected: &[MetricLine],
    got: &[MetricLine],
    after_step: u64,
    what: &str,
) {
    let steps = |m: &[MetricLine]| m.iter().map(|l| l.global_step()).collect::<Vec<_>>();
    assert_eq!(
        steps(got),
        steps(expected),
        "{what}: the steps logged differ from the uninterrupted run's"
    );
    let diffs = metric_diffs(expected, got, after_step);
    assert!(
        diffs.is_empty(),
        "{what}: {} of the steps after global step {after_step} differ from the uninterrupted run:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
}

/// Every line, including those a resumed run kept from before the interruption, reads exactly as in
/// the uninterrupted run (deterministic fields).
pub fn assert_same_metrics_verbatim(expected: &[MetricLine], got: &[MetricLine], what: &str) {
    assert_same_metrics(expected, got, 0, what);
}

/// One message per differing line (the first differing field, both lines).
fn metric_diffs(expected: &[MetricLine], got: &[MetricLine], after_step: u64) -> Vec<String> {
    let mut out = Vec::new();
    for (e, g) in expected.iter().zip(got) {
        if e.global_step() <= after_step {
            continue;
        }
        if let Some(key) = DETERMINISTIC_FIELDS
            .iter()
            .find(|k| g.field_text(k) != e.field_text(k))
        {
            out.push(format!(
                "  global step {}: `{key}` {} (uninterrupted) vs {} (resumed)\n    uninterrupted: {}\n    resumed:       {}",
                e.global_step(),
                e.field_text(key),
                g.field_text(key),
                e.raw,
                g.raw
            ));
        }
    }
    out
}

/// Finished checkpoints of a run, oldest first: (global step, directory).
pub fn checkpoints(run_dir: &Path) -> Vec<(u64, PathBuf)> {
    let dir = run_dir.join("checkpoints");
    let mut out: Vec<(u64, PathBuf)> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| {
                let e = e.ok()?;
                let step = e
                    .file_name()
                    .to_str()?
                    .strip_prefix("step-")?
                    .parse()
                    .ok()?;
                Some((step, e.path()))
            })
            .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

pub fn checkpoint_dir(run_dir: &Path, step: u64) -> PathBuf {
    run_dir.join("checkpoints").join(format!("step-{step:08}"))
}

/// A checkpoint's state.json.
pub fn checkpoint_state(dir: &Path) -> Value {
    let text = std::fs::read_to_string(dir.join("state.json")).expect("state.json");
    serde_json::from_str(&text).expect("state.json is JSON")
}

/// One tensor of a safetensors file, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct RawTensor {
    pub dtype: String,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

pub fn load_safetensors(path: &Path) -> BTreeMap<String, RawTensor> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()));
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            (
                name,
                RawTensor {
                    dtype: format!("{:?}", view.dtype()),
                    shape: view.shape().to_vec(),
                    data: view.data().to_vec(),
                },
            )
        })
        .collect()
}

/// Little-endian i64 values of a tensor.
pub fn as_i64(t: &RawTensor) -> Vec<i64> {
    assert_eq!(t.dtype, "I64");
    t.data
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

pub fn mean(xs: impl IntoIterator<Item = f64>) -> f64 {
    let v: Vec<f64> = xs.into_iter().collect();
    v.iter().sum::<f64>() / v.len() as f64
}
