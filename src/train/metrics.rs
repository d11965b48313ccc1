//! Per-step training metrics: the `metrics.jsonl` log and the live progress display.
//!
//! `metrics.jsonl` holds one JSON object per optimiser step, written with a single `write` call per
//! line so that a crash leaves at most one torn last line (the reader skips it). It is the single
//! source for the loss plot, the tests and any later analysis. On resume the log is cut back to the
//! checkpoint's step ([`MetricsWriter::resume`]) so a resumed run's log reads exactly like an
//! uninterrupted one.
//!
//! Progress goes to stderr: an indicatif bar per stage when stderr is a terminal, otherwise a plain
//! `tracing` line every N steps, so CI logs stay short and readable.
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// JSON has no NaN/Infinity; non-finite values (a skipped step's loss) are written as `null` and read
/// back as NaN, so every line stays valid JSON.
mod non_finite_as_null {
    use super::*;

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else {
            s.serialize_none()
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }
}

/// One optimiser step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    pub stage: String,
    pub stage_index: usize,
    /// Optimiser steps completed in this stage, this one included (1-based).
    pub step: u64,
    /// Optimiser steps completed over the run, this one included.
    pub global_step: u64,
    /// L_dec + alpha * L_align.
    #[serde(with = "non_finite_as_null")]
    pub loss: f64,
    #[serde(with = "non_finite_as_null")]
    pub dec_loss: f64,
    /// NaN (null) in stages without the alignment loss.
    #[serde(with = "non_finite_as_null")]
    pub align_loss: f64,
    /// Learning rate per parameter group.
    pub lr: BTreeMap<String, f64>,
    /// Global gradient norm before clipping.
    #[serde(with = "non_finite_as_null")]
    pub grad_norm: f64,
    pub images_per_s: f64,
    pub tokens_per_s: f64,
    /// Share of the step's wall time spent waiting for the loader, in [0, 1].
    pub data_wait_share: f64,
    /// Steps skipped so far for non-finite loss or gradients.
    pub skipped_steps: u64,
    /// Seconds since the run started (wall clock; excludes time before a resume).
    pub time: f64,
}

/// Appends lines to `metrics.jsonl`.
pub struct MetricsWriter {
    path: PathBuf,
    file: File,
}

impl MetricsWriter {
    /// Opens (creating if needed) the log for appending.
    pub fn open(path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(MetricsWriter {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Opens the log of a resumed run, first dropping every line after `global_step` (steps that will
    /// be recomputed) and any torn last line. The rewrite is atomic (temporary file + rename).
    pub fn resume(path: &Path, global_step: u64) -> Result<Self> {
        if path.exists() {
            let kept: Vec<StepMetrics> = read_metrics(path)?
                .into_iter()
                .filter(|m| m.global_step <= global_step)
                .collect();
            let tmp = path.with_extension("jsonl.tmp");
            let mut text = String::new();
            for m in &kept {
                text.push_str(&serde_json::to_string(m)?);
                text.push('\n');
            }
            let mut f = File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, path)?;
        }
        Self::open(path)
    }

    /// Writes one line; it reaches the OS before this returns.
    pub fn append(&mut self, m: &StepMetrics) -> Result<()> {
        let mut line = serde_json::to_string(m)?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .with_context(|| format!("appending to {}", self.path.display()))?;
        self.file.flush()?;
        Ok(())
    }
}

/// Reads `metrics.jsonl`. A torn (unparsable) last line is dropped with a warning; a bad line
/// elsewhere is an error.
pub fn read_metrics(path: &Path) -> Result<Vec<StepMetrics>> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut out = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        match serde_json::from_str(line) {
            Ok(m) => out.push(m),
            Err(err) if i + 1 == lines.len() && !text.ends_with('\n') => {
                tracing::warn!("{}: ignoring torn last line ({err})", path.display());
            }
            Err(err) => bail!("{} line {}: {err}", path.display(), i + 1),
        }
    }
    Ok(out)
}

/// One human-readable summary of a step, shared by the bar and the log lines.
pub fn summary(m: &StepMetrics) -> String {
    let lr = m.lr.values().cloned().fold(0.0, f64::max);
    let align = if m.align_loss.is_finite() {
        format!(" align {:.4}", m.align_loss)
    } else {
        String::new()
    };
    let skipped = if m.skipped_steps > 0 {
        format!(" skipped {}", m.skipped_steps)
    } else {
        String::new()
    };
    format!(
        "loss {:.4}{align} lr {lr:.2e} | {:.1} img/s {:.0} tok/s | data wait {:.1}%{skipped}",
        m.loss,
        m.images_per_s,
        m.tokens_per_s,
        100.0 * m.data_wait_share
    )
}

enum Display {
    Bar(ProgressBar),
    /// Log a line every `every` steps (and at the stage's last step).
    Lines {
        every: u64,
    },
}

/// Progress of one stage.
pub struct StageProgress {
    name: String,
    total_steps: u64,
    display: Display,
}

impl StageProgress {
    /// A bar on stderr if it is a terminal, otherwise log lines every `log_every` steps.
    /// `start_step` is the number of steps already done (non-zero after a resume).
    pub fn new(
        name: &str,
        stage_index: usize,
        n_stages: usize,
        total_steps: u64,
        start_step: u64,
        log_every: u64,
    ) -> Self {
        let label = format!("[{}/{n_stages}] {name}", stage_index + 1);
        let display = if std::io::stderr().is_terminal() {
            let bar =
                ProgressBar::with_draw_target(Some(total_steps), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{prefix} {bar:30.cyan/blue} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
            )
            .expect("valid template")
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_prefix(label);
            bar.set_position(start_step);
            Display::Bar(bar)
        } else {
            Display::Lines {
                every: log_every.max(1),
            }
        };
        StageProgress {
            name: name.to_string(),
            total_steps,
            display,
        }
    }

    /// Always log lines (for tests and for callers that know better than the terminal check).
    #[cfg(test)]
    pub fn lines(name: &str, total_steps: u64, log_every: u64) -> Self {
        StageProgress {
            name: name.to_string(),
            total_steps,
            display: Display::Lines {
                every: log_every.max(1),
            },
        }
    }

    /// Whether a line is logged for this stage step in line mode.
    pub fn logs_at(&self, step: u64) -> bool {
        match self.display {
            Display::Bar(_) => false,
            Display::Lines { every } => {
                step.checked_rem(every) == Some(0) || step == self.total_steps || step == 1
            }
        }
    }

    pub fn update(&self, m: &StepMetrics) {
        match &self.display {
            Display::Bar(bar) => {
                bar.set_position(m.step);
                bar.set_message(summary(m));
            }
            Display::Lines { .. } => {
                if self.logs_at(m.step) {
                    tracing::info!(
                        "{} step {}/{}: {}",
                        self.name,
                        m.step,
                        self.total_steps,
                        summary(m)
                    );
                }
            }
        }
    }

    pub fn finish(&self) {
        if let Display::Bar(bar) = &self.display {
            bar.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample(stage_index: usize, step: u64, global_step: u64) -> StepMetrics {
        StepMetrics {
            stage: format!("stage{stage_index}"),
            stage_index,
            step,
            global_step,
            loss: 5.0 / (1.0 + global_step as f64 * 0.1),
            dec_loss: 4.5 / (1.0 + global_step as f64 * 0.1),
            align_loss: if stage_index < 2 {
                3.0 - global_step as f64 * 0.01
            } else {
                f64::NAN
            },
            lr: BTreeMap::from([
                ("adapter.decay".into(), 1e-3),
                ("vision.decay".into(), 1e-4),
            ]),
            grad_norm: 0.8,
            images_per_s: 12.5,
            tokens_per_s: 3000.0,
            data_wait_share: 0.012,
            skipped_steps: 0,
            time: global_step as f64 * 0.5,
        }
    }

    fn same(a: &StepMetrics, b: &StepMetrics) -> bool {
        // NaN != NaN, so compare the serialised form.
        serde_json::to_string(a).unwrap() == serde_json::to_string(b).unwrap()
    }

    #[test]
    fn append_read_round_trip_with_non_finite_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let mut w = MetricsWriter::open(&path).unwrap();
        let mut rows: Vec<StepMetrics> = (1..=5).map(|s| sample(1, s, s)).collect();
        rows[2].loss = f64::NAN;
        rows[2].grad_norm = f64::INFINITY;
        rows[2].skipped_steps = 1;
        for r in &rows {
            w.append(r).unwrap();
        }
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 5);
        assert!(text.lines().nth(2).unwrap().contains("\"loss\":null"));
        let back = read_metrics(&path).unwrap();
        assert!(back[2].loss.is_nan() && back[2].grad_norm.is_nan());
        assert!(
            rows.iter()
                .zip(&back)
                .enumerate()
                .all(|(i, (a, b))| i == 2 || same(a, b))
        );
    }

    #[test]
    fn torn_last_line_is_skipped_and_resume_truncates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let mut w = MetricsWriter::open(&path).unwrap();
        for s in 1..=6 {
            w.append(&sample(0, s, s)).unwrap();
        }
        drop(w);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"stage\":\"sta").unwrap();
        assert_eq!(read_metrics(&path).unwrap().len(), 6);

        let mut w = MetricsWriter::resume(&path, 4).unwrap();
        w.append(&sample(0, 5, 5)).unwrap();
        let back = read_metrics(&path).unwrap();
        let steps: Vec<u64> = back.iter().map(|m| m.global_step).collect();
        assert_eq!(steps, vec![1, 2, 3, 4, 5]);
        assert!(fs::read_to_string(&path).unwrap().ends_with("}\n"));

        fs::write(&path, "not json\n{}\n").unwrap();
        assert!(
            read_metrics(&path).is_err(),
            "a bad line in the middle is an error"
        );
    }

    #[test]
    fn summary_and_line_cadence() {
        let m = sample(0, 10, 10);
        let s = summary(&m);
        assert!(
            s.contains("loss 2.5000") && s.contains("align 2.9000") && s.contains("lr 1.00e-3"),
            "{s}"
        );
        assert!(
            s.contains("12.5 img/s") && s.contains("3000 tok/s") && s.contains("data wait 1.2%"),
            "{s}"
        );
        assert!(
            !summary(&sample(2, 1, 1)).contains("align"),
            "no alignment loss in stage 3"
        );
        let p = StageProgress::lines("s", 25, 10);
        let logged: Vec<u64> = (1..=25).filter(|&s| p.logs_at(s)).collect();
        assert_eq!(logged, vec![1, 10, 20, 25]);
    }
}
