//! `loss_curves.png`: total, decoding and alignment loss against the global step, one panel each,
//! with the stage boundaries marked.
//!
//! Drawn with plotters into an in-memory RGB buffer and encoded with the `image` crate, then written
//! atomically, because the trainer redraws it while the run goes on and a reader must never see half a
//! PNG. Text uses DejaVu Sans compiled into the binary (`assets/fonts/`, Bitstream Vera licence), so
//! the plot renders the same on a fresh machine without any system font packages.
//!
//! Raw per-step values are noisy at small batch sizes; each panel draws them faintly and an
//! exponential moving average on top. The legend sits lower left, where falling loss curves leave room.
use std::path::Path;
use std::sync::Once;

use anyhow::{Context, Result, anyhow};
use plotters::prelude::*;
use plotters::style::FontStyle;

use super::metrics::{StepMetrics, read_metrics};

const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";

/// Default image size in pixels.
pub const DEFAULT_SIZE: (u32, u32) = (1200, 1000);

/// Weight of the newest value in the moving average.
const EMA_WEIGHT: f64 = 0.1;

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The embedded file is a valid TTF; failure here would be a build defect.
        plotters::style::register_font(FAMILY, FontStyle::Normal, FONT)
            .unwrap_or_else(|_| panic!("embedded DejaVuSans.ttf could not be parsed"));
    });
}

/// Where each stage starts: (first global step, stage name).
fn stage_starts(rows: &[StepMetrics]) -> Vec<(f64, String)> {
    let mut out: Vec<(f64, String)> = Vec::new();
    let mut current = None;
    for m in rows {
        if current != Some(m.stage_index) {
            current = Some(m.stage_index);
            out.push((m.global_step as f64, m.stage.clone()));
        }
    }
    out
}

fn ema(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut avg = None;
    points
        .iter()
        .map(|&(x, y)| {
            let a = avg.map_or(y, |a: f64| a + EMA_WEIGHT * (y - a));
            avg = Some(a);
            (x, a)
        })
        .collect()
}

struct Panel {
    title: &'static str,
    color: RGBColor,
    points: Vec<(f64, f64)>,
}

/// Draws the curves for `rows` (in step order) into `out` as a PNG of `size` pixels.
pub fn plot_loss_curves(rows: &[StepMetrics], out: &Path, size: (u32, u32)) -> Result<()> {
    register_font();
    let (w, h) = size;
    let mut buf = vec![0u8; w as usize * h as usize * 3];
    draw(rows, &mut buf, size).map_err(|e| anyhow!("drawing {}: {e}", out.display()))?;
    let img = image::RgbImage::from_raw(w, h, buf).context("plot buffer size")?;
    let tmp = out.with_extension("png.tmp");
    img.save_with_format(&tmp, image::ImageFormat::Png)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, out).with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

/// Reads `metrics.jsonl` and writes the plot (default size).
pub fn plot_from_metrics_file(metrics: &Path, out: &Path) -> Result<()> {
    plot_loss_curves(&read_metrics(metrics)?, out, DEFAULT_SIZE)
}

type DrawResult = std::result::Result<(), Box<dyn std::error::Error + Send + Sync>>;

fn draw(rows: &[StepMetrics], buf: &mut [u8], size: (u32, u32)) -> DrawResult {
    let series = |f: fn(&StepMetrics) -> f64| -> Vec<(f64, f64)> {
        rows.iter()
            .map(|m| (m.global_step as f64, f(m)))
            .filter(|p| p.1.is_finite())
            .collect()
    };
    let panels = [
        Panel {
            title: "total loss  (L_dec + alpha * L_align)",
            color: RGBColor(31, 119, 180),
            points: series(|m| m.loss),
        },
        Panel {
            title: "decoding loss  L_dec",
            color: RGBColor(44, 160, 44),
            points: series(|m| m.dec_loss),
        },
        Panel {
            title: "alignment loss  L_align",
            color: RGBColor(214, 39, 40),
            points: series(|m| m.align_loss),
        },
    ];
    let starts = stage_starts(rows);
    let x_min = rows.iter().map(|m| m.global_step).min().unwrap_or(0) as f64;
    let x_max = (rows.iter().map(|m| m.global_step).max().unwrap_or(1) as f64).max(x_min + 1.0);

    let root = BitMapBackend::with_buffer(buf, size).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        "CoMP training: loss vs global step",
        (FAMILY, 30).into_font().color(&BLACK),
    )?;
    let areas = root.split_evenly((panels.len(), 1));
    for (area, panel) in areas.iter().zip(&panels) {
        let (y_min, y_max) = y_range(&panel.points);
        let mut chart = ChartBuilder::on(area)
            .caption(panel.title, (FAMILY, 22))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(70)
            .build_cartesian_2d(x_min..x_max, y_min..y_max)?;
        chart
            .configure_mesh()
            .x_desc("global step")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_desc("loss")
            .label_style((FAMILY, 16))
            .axis_desc_style((FAMILY, 18))
            .light_line_style(WHITE.mix(0.0))
            .draw()?;

        // Stage boundaries: a grey line at each stage's first step, named at the top.
        for (i, (x, name)) in starts.iter().enumerate() {
            if i > 0 {
                chart.draw_series(std::iter::once(PathElement::new(
                    vec![(*x - 0.5, y_min), (*x - 0.5, y_max)],
                    RGBColor(110, 110, 110).stroke_width(2),
                )))?;
            }
            let label = Text::new(
                name.clone(),
                (*x, y_max),
                (FAMILY, 15).into_font().color(&RGBColor(80, 80, 80)),
            );
            chart.draw_series(std::iter::once(label))?;
        }

        if panel.points.is_empty() {
            let mid = ((x_min + x_max) / 2.0, (y_min + y_max) / 2.0);
            chart.draw_series(std::iter::once(Text::new("no data", mid, (FAMILY, 20))))?;
            continue;
        }
        let color = panel.color;
        chart
            .draw_series(LineSeries::new(
                panel.points.iter().copied(),
                color.mix(0.3).stroke_width(1),
            ))?
            .label("per step")
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.mix(0.3).stroke_width(2))
            });
        chart
            .draw_series(LineSeries::new(ema(&panel.points), color.stroke_width(3)))?
            .label("moving average")
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3))
            });
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerLeft)
            .label_font((FAMILY, 16))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

/// Finite data range padded by 5% (and a little headroom for the stage names).
fn y_range(points: &[(f64, f64)]) -> (f64, f64) {
    let lo = points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let hi = points.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let span = (hi - lo).max(1e-3 * hi.abs().max(1.0));
    (lo - 0.05 * span, hi + 0.12 * span)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::train::metrics::MetricsWriter;

    /// Three stages of a plausible run: the loss falls, stage 3 has no alignment loss.
    fn sample_run() -> Vec<StepMetrics> {
        let stages = [
            ("stage1-warmup", 40u64),
            ("stage2-continual-pretraining", 100),
            ("stage3-instruction-tuning", 40),
        ];
        let mut rows = Vec::new();
        let mut global = 0u64;
        for (index, (name, steps)) in stages.iter().enumerate() {
            for step in 1..=*steps {
                global += 1;
                let t = global as f64;
                let noise = (t * 12.9898).sin() * 0.15;
                let dec = 2.0 + 4.0 * (-t / 60.0).exp() + noise;
                let align = if index < 2 {
                    1.5 + 2.5 * (-t / 80.0).exp() + 0.5 * noise
                } else {
                    f64::NAN
                };
                let loss = dec + if align.is_finite() { 0.05 * align } else { 0.0 };
                rows.push(StepMetrics {
                    stage: name.to_string(),
                    stage_index: index,
                    step,
                    global_step: global,
                    loss,
                    dec_loss: dec,
                    align_loss: align,
                    lr: BTreeMap::from([("adapter.decay".into(), 1e-3)]),
                    grad_norm: 1.0,
                    images_per_s: 10.0,
                    tokens_per_s: 2000.0,
                    data_wait_share: 0.01,
                    skipped_steps: 0,
                    time: t,
                });
            }
        }
        rows
    }

    #[test]
    fn writes_a_readable_png_from_metrics_jsonl() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = dir.path().join("metrics.jsonl");
        let mut w = MetricsWriter::open(&metrics).unwrap();
        for m in sample_run() {
            w.append(&m).unwrap();
        }
        let png = dir.path().join("loss_curves.png");
        plot_from_metrics_file(&metrics, &png).unwrap();
        if let Ok(keep) = std::env::var("COMP_KEEP_PLOT") {
            std::fs::copy(&png, keep).unwrap();
        }

        let img = image::open(&png).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), DEFAULT_SIZE);
        let non_white = img.pixels().filter(|p| p.0 != [255, 255, 255]).count();
        let total = (DEFAULT_SIZE.0 * DEFAULT_SIZE.1) as usize;
        assert!(
            non_white > total / 100 && non_white < total / 2,
            "drawn but not flooded: {non_white}/{total}"
        );
        // The three series colours are present (curves were drawn, not just axes).
        for c in [[31u8, 119, 180], [44, 160, 44], [214, 39, 40]] {
            assert!(img.pixels().any(|p| p.0 == c), "colour {c:?} missing");
        }
        assert!(!dir.path().join("loss_curves.png.tmp").exists());
    }

    #[test]
    fn handles_empty_and_single_point_runs() {
        let dir = tempfile::tempdir().unwrap();
        let png = dir.path().join("p.png");
        plot_loss_curves(&[], &png, (400, 300)).unwrap();
        assert_eq!(
            image::open(&png).unwrap().to_rgb8().dimensions(),
            (400, 300)
        );
        let one = sample_run().into_iter().take(1).collect::<Vec<_>>();
        plot_loss_curves(&one, &png, (640, 480)).unwrap();
        assert_eq!(
            image::open(&png).unwrap().to_rgb8().dimensions(),
            (640, 480)
        );
        assert_eq!(
            stage_starts(&sample_run())
                .iter()
                .map(|s| s.0)
                .collect::<Vec<_>>(),
            vec![1.0, 41.0, 141.0]
        );
    }
}
