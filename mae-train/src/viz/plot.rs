//! The curves of one or several runs, from `RUN_DIR/metrics.jsonl` (and `eval.jsonl`), as a PNG
//! or an SVG: the training loss (raw, faint, and smoothed as TensorBoard smooths it), the
//! learning rate, and the evaluation accuracy when the run has one; ticks, grid, axis titles
//! and a legend, drawn with plotters and an embedded font (DejaVu Sans, `assets/`), so a fresh
//! machine needs no system font.
//!
//! PyTorch counterpart: what users of the official scripts draw with matplotlib from `log.txt`,
//! or look at in TensorBoard.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::TrainError;
use crate::runlog::MetricsLine;

/// DejaVu Sans (Bitstream Vera licence: `assets/DejaVuSans-LICENSE.txt`).
const FONT: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");

/// The font family the plots ask for; registered once with the embedded font.
const FAMILY: &str = "sans-serif";

/// A picture's size in pixels.
const SIZE: (u32, u32) = (960, 720);

/// The SVG comment that marks a plot of ours (what `--force` checks, as a PNG's `Software`).
pub const SVG_MARK: &str = "<!-- mae-rs: mae plot -->";

/// matplotlib's first colours (`tab:blue`, `tab:orange`, ...), one per run.
const COLOURS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Reads every line of a `metrics.jsonl`; a malformed line is an error naming its number.
pub fn read_metrics(path: &Path) -> Result<Vec<MetricsLine>, TrainError> {
    read_lines(path)
}

/// Every line of a JSON-lines file as `T`; a malformed line is an error naming its number.
fn read_lines<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>, TrainError> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| TrainError::ConfigFile {
                path: path.to_path_buf(),
                message: format!("line {}: {e}", i + 1),
            })
        })
        .collect()
}

/// How to draw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlotOptions {
    /// TensorBoard's smoothing weight for the loss (an exponential moving average with its
    /// debiasing): 0 draws the raw curve alone, 0.6 is TensorBoard's default.
    pub smoothing: f64,
    /// A logarithmic loss axis.
    pub log_loss: bool,
}

impl Default for PlotOptions {
    fn default() -> Self {
        PlotOptions {
            smoothing: 0.6,
            log_loss: false,
        }
    }
}

/// One run's curves.
struct Run {
    name: String,
    steps: Vec<f64>,
    loss: Vec<f64>,
    lr: Vec<f64>,
    /// `(step, top-1 %)` of its evaluations: fine-tuning's val top-1 or pretraining's kNN.
    eval: Vec<(f64, f64)>,
    eval_name: &'static str,
}

impl Run {
    fn read(dir: &Path) -> Result<Self, TrainError> {
        let metrics = read_metrics(&dir.join("metrics.jsonl"))?;
        if metrics.is_empty() {
            return Err(TrainError::Config(format!(
                "{}: metrics.jsonl has no line yet",
                dir.display()
            )));
        }
        let (eval, eval_name) = read_eval(&dir.join("eval.jsonl"))?;
        let name = dir
            .file_name()
            .map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into());
        Ok(Run {
            name,
            steps: metrics.iter().map(|m| m.step as f64).collect(),
            loss: metrics.iter().map(|m| m.loss).collect(),
            lr: metrics.iter().map(|m| m.lr).collect(),
            eval,
            eval_name,
        })
    }
}

/// `(step, value)` points of a curve.
type Points = Vec<(f64, f64)>;

/// `(step, top-1)` of an `eval.jsonl` (`top1` of fine-tuning, `knn_top1` of pretraining), and
/// what it is; none when the file is not there.
fn read_eval(path: &Path) -> Result<(Points, &'static str), TrainError> {
    if !path.exists() {
        return Ok((Vec::new(), ""));
    }
    let lines: Vec<serde_json::Value> = read_lines(path)?;
    let mut name = "";
    let points = lines
        .iter()
        .filter_map(|l| {
            let step = l.get("step")?.as_f64()?;
            let (v, n) = match (l.get("top1"), l.get("knn_top1")) {
                (Some(v), _) => (v.as_f64()?, "val top-1 (%)"),
                (None, Some(v)) => (v.as_f64()?, "kNN top-1 (%)"),
                (None, None) => return None,
            };
            name = n;
            Some((step, v))
        })
        .collect();
    Ok((points, name))
}

/// TensorBoard's smoothing: `last = last·w + (1 − w)·y`, divided by `1 − w^k` (the debiasing of
/// its zero start); non-finite values are passed through.
pub fn smooth(ys: &[f64], weight: f64) -> Vec<f64> {
    let w = weight.clamp(0.0, 0.999);
    let mut last = 0.0;
    let mut k = 0;
    ys.iter()
        .map(|&y| {
            if !y.is_finite() {
                return y;
            }
            k += 1;
            last = last * w + (1.0 - w) * y;
            last / (1.0 - w.powi(k))
        })
        .collect()
}

fn font() -> Result<(), TrainError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = REGISTERED
        .get_or_init(|| plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    match ok {
        true => Ok(()),
        false => Err(TrainError::Config(
            "the embedded plot font does not load".into(),
        )),
    }
}

fn plot_err(e: impl std::fmt::Display) -> TrainError {
    TrainError::Config(format!("plot: {e}"))
}

/// The `(min, max)` of `values` (finite ones), widened a little.
fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.05).max(hi.abs().max(1e-12) * 1e-3);
    (lo - pad, hi + pad)
}

/// A tick label: plain for moderate numbers (trailing zeros dropped), scientific for small and
/// large ones.
fn tick(v: f64) -> String {
    if v.abs() < 1e-12 {
        // zero, or float noise beside it
        return "0".into();
    }
    if !(1e-2..1e4).contains(&v.abs()) {
        return format!("{v:.1e}");
    }
    let text = format!("{v:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Draws one panel: each run's `series` against its steps. A log axis is drawn as the log10 of
/// the values on a linear axis, labelled with the values (so its ticks are not powers of ten
/// only).
fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    runs: &[Run],
    (title, y_title): (&str, &str),
    series: &dyn Fn(&Run) -> Vec<(f64, f64)>,
    (log, smoothing): (bool, f64),
) -> Result<(), TrainError> {
    // the points an axis can show, as values, then as drawn (their log10 on a log axis)
    let kept = |run: &Run| -> Vec<(f64, f64)> {
        series(run)
            .into_iter()
            .filter(|p| p.1.is_finite() && (!log || p.1 > 0.0))
            .collect()
    };
    let axis = |y: f64| if log { y.log10() } else { y };
    let shown = |run: &Run| -> Vec<(f64, f64)> {
        kept(run).into_iter().map(|(x, y)| (x, axis(y))).collect()
    };
    let all: Vec<(f64, f64)> = runs.iter().flat_map(shown).collect();
    let (x0, x1) = range(all.iter().map(|p| p.0));
    let (y0, y1) = range(all.iter().map(|p| p.1));
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FAMILY, 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(plot_err)?;
    let y_label = |y: &f64| tick(if log { 10f64.powf(*y) } else { *y });
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc(y_title)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&y_label)
        .y_labels(8)
        .label_style((FAMILY, 13))
        .axis_desc_style((FAMILY, 15))
        .light_line_style(RGBColor(246, 246, 246))
        .bold_line_style(RGBColor(215, 215, 215))
        .draw()
        .map_err(plot_err)?;
    for (i, run) in runs.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let points = shown(run);
        let legend = move |(x, y): (i32, i32)| PathElement::new([(x, y), (x + 20, y)], colour);
        if smoothing > 0.0 {
            // smoothed as TensorBoard does, on the values (not their logs)
            let values: Vec<f64> = kept(run).into_iter().map(|p| p.1).collect();
            let smoothed = points
                .iter()
                .zip(smooth(&values, smoothing))
                .map(|(p, v)| (p.0, axis(v)));
            let faint = LineSeries::new(points.clone(), colour.mix(0.25));
            chart.draw_series(faint).map_err(plot_err)?;
            let line = LineSeries::new(smoothed, colour.stroke_width(2));
            chart
                .draw_series(line)
                .map_err(plot_err)?
                .label(format!("{} (smoothed {smoothing})", run.name))
                .legend(legend);
        } else {
            let line = LineSeries::new(points.clone(), colour.stroke_width(2));
            chart
                .draw_series(line)
                .map_err(plot_err)?
                .label(run.name.clone())
                .legend(legend);
            if points.len() <= 50 {
                let dots = points.iter().map(|&p| Circle::new(p, 3, colour.filled()));
                chart.draw_series(dots).map_err(plot_err)?;
            }
        }
    }
    chart
        .configure_series_labels()
        .label_font((FAMILY, 13))
        .background_style(WHITE.mix(0.8))
        .border_style(RGBColor(205, 205, 205))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(plot_err)
}

/// Draws every panel of `runs` on `root`.
fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    runs: &[Run],
    opts: PlotOptions,
) -> Result<(), TrainError> {
    root.fill(&WHITE).map_err(plot_err)?;
    let with_eval = runs.iter().any(|r| !r.eval.is_empty());
    let (top, bottom) = root.split_vertically(SIZE.1 / 2);
    let lower = if with_eval {
        bottom.split_evenly((1, 2))
    } else {
        vec![bottom]
    };
    let steps = |r: &Run, ys: &[f64]| r.steps.iter().copied().zip(ys.iter().copied()).collect();
    let loss_title = if opts.log_loss {
        "training loss (log scale)"
    } else {
        "training loss"
    };
    panel(
        &top,
        runs,
        (loss_title, "loss"),
        &|r| steps(r, &r.loss),
        (opts.log_loss, opts.smoothing),
    )?;
    panel(
        &lower[0],
        runs,
        ("learning rate", "lr"),
        &|r| steps(r, &r.lr),
        (false, 0.0),
    )?;
    if with_eval {
        let name = runs
            .iter()
            .map(|r| r.eval_name)
            .find(|n| !n.is_empty())
            .unwrap_or("top-1 (%)");
        panel(
            &lower[1],
            runs,
            ("evaluation", name),
            &|r| r.eval.clone(),
            (false, 0.0),
        )?;
    }
    root.present().map_err(plot_err)
}

/// Draws the curves of `runs` (run folders) into `out`: an SVG if its name ends in `.svg`, a PNG
/// otherwise. Returns the number of metrics points drawn.
pub fn plot_runs(runs: &[PathBuf], out: &Path, opts: PlotOptions) -> Result<usize, TrainError> {
    if runs.is_empty() {
        return Err(TrainError::Config("plot: no run folder given".into()));
    }
    if !(0.0..1.0).contains(&opts.smoothing) {
        return Err(TrainError::Config(format!(
            "--smoothing {}: a weight in 0..1 (0: none; TensorBoard's default 0.6)",
            opts.smoothing
        )));
    }
    font()?;
    let runs = runs
        .iter()
        .map(|d| Run::read(d))
        .collect::<Result<Vec<_>, _>>()?;
    let points = runs.iter().map(|r| r.steps.len()).sum();
    let svg = out
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("svg"));
    let bytes = if svg {
        let mut text = String::new();
        draw(
            SVGBackend::with_string(&mut text, SIZE).into_drawing_area(),
            &runs,
            opts,
        )?;
        mark_svg(&text).into_bytes()
    } else {
        let mut rgb = vec![255u8; SIZE.0 as usize * SIZE.1 as usize * 3];
        draw(
            BitMapBackend::with_buffer(&mut rgb, SIZE).into_drawing_area(),
            &runs,
            opts,
        )?;
        let img = image::RgbImage::from_raw(SIZE.0, SIZE.1, rgb)
            .ok_or_else(|| plot_err("bitmap size"))?;
        mae_data::png::encode(&img, "plot")?
    };
    mae_core::weights::write_atomic(out, &bytes)?;
    Ok(points)
}

/// `text` with [`SVG_MARK`] after its first line (the XML header or the `<svg>` tag).
fn mark_svg(text: &str) -> String {
    match text.split_once('\n') {
        Some((first, rest)) => format!("{first}\n{SVG_MARK}\n{rest}"),
        None => format!("{SVG_MARK}\n{text}"),
    }
}

/// Draws the loss and learning-rate curves of `run_dir` into `out` with the default options;
/// returns the number of points.
pub fn plot_run(run_dir: &Path, out: &Path) -> Result<usize, TrainError> {
    plot_runs(&[run_dir.to_path_buf()], out, PlotOptions::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoothing_is_tensorboards_debiased_moving_average() {
        let s = smooth(&[1.0, 1.0, 1.0], 0.6);
        assert!(s.iter().all(|v| (v - 1.0).abs() < 1e-12), "{s:?}");
        // by hand: 0.4·2 / 0.4 = 2; (0.6·0.8 + 0.4·4) / (1 − 0.36) = 3.25
        let s = smooth(&[2.0, 4.0], 0.6);
        assert!(
            (s[0] - 2.0).abs() < 1e-12 && (s[1] - 3.25).abs() < 1e-12,
            "{s:?}"
        );
        assert_eq!(smooth(&[5.0, 7.0], 0.0), vec![5.0, 7.0]);
    }

    #[test]
    fn tick_labels_read_as_a_person_writes_them() {
        let labels: Vec<String> = [0.0, 2.7e-20, 0.5, 1.0, 2.25, 1500.0, 1e-3, 2.5e-4, 1e5]
            .into_iter()
            .map(tick)
            .collect();
        let want = [
            "0", "0", "0.5", "1", "2.25", "1500", "1.0e-3", "2.5e-4", "1.0e5",
        ];
        assert_eq!(labels, want);
    }

    #[test]
    fn a_run_plots_as_png_and_svg_with_its_evaluations() {
        let dir = tempfile::tempdir().expect("temp dir");
        let run = dir.path().join("run");
        std::fs::create_dir(&run).expect("dir");
        let lines: String = (1..=30)
            .map(|s| {
                format!(
                    "{{\"step\":{s},\"epoch\":{},\"loss\":{},\"lr\":{},\"images_per_s\":1.0,\"elapsed_s\":1.0}}\n",
                    s as f64 / 10.0,
                    1.0 / s as f64,
                    1e-3 * s as f64
                )
            })
            .collect();
        std::fs::write(run.join("metrics.jsonl"), lines).expect("write");
        std::fs::write(
            run.join("eval.jsonl"),
            "{\"epoch\":1,\"step\":10,\"top1\":50.0}\n{\"epoch\":2,\"step\":20,\"top1\":70.0}\n",
        )
        .expect("write");
        let png = dir.path().join("p.png");
        assert_eq!(plot_run(&run, &png).expect("plots"), 30);
        assert_eq!(mae_data::png::written_by(&png).as_deref(), Some("plot"));
        let img = image::open(&png).expect("a PNG").to_rgb8();
        assert_eq!(img.dimensions(), SIZE);
        // the curves are drawn in matplotlib's blue somewhere
        assert!(img.pixels().any(|p| p.0 == [31, 119, 180]));
        let svg = dir.path().join("p.svg");
        let opts = PlotOptions {
            log_loss: true,
            ..PlotOptions::default()
        };
        plot_runs(&[run.clone(), run.clone()], &svg, opts).expect("plots");
        let text = std::fs::read_to_string(&svg).expect("text");
        assert!(
            text.contains(SVG_MARK) && text.contains("val top-1"),
            "{}",
            &text[..200]
        );
        // plotters writes each label on a line of its own
        assert!(text.contains("\ntraining loss (log scale)\n") && text.contains("\nstep\n"));
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).expect("dir");
        std::fs::write(empty.join("metrics.jsonl"), "").expect("write");
        assert!(plot_run(&empty, &png).is_err());
        let bad = PlotOptions {
            smoothing: 1.0,
            ..PlotOptions::default()
        };
        assert!(plot_runs(&[run], &svg, bad).is_err());
    }
}
