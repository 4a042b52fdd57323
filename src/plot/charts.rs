//! One function per chart kind: the tidy table in, a [`Figure`] out. Replicates are combined
//! by the geometric mean (ratios live on a log scale).

use crate::schema::{col, Column};
use std::collections::BTreeMap;

use super::table::{geo_mean, Table, UnitRows};
use super::{Band, Figure, Line, LineStyle, Panel};
use crate::analysis::checks::{FORMULA_TOL, PROD_LAMBDA_TOL};
use crate::analysis::record::UnitRecord;
use crate::plot::kinds::ChartKind;

const UNIT_AXIS: &str = "unit l";
const WIDE: (u32, u32) = (1100, 700);
const PANELS: (u32, u32) = (1400, 900);
/// Small multiples beyond this many variants would be unreadable.
const MAX_PANELS: usize = 12;

/// `column` per unit for one variant, combined over replicates.
fn series(t: &Table, units: &UnitRows<'_>, column: Column) -> Vec<(f64, f64)> {
    series_where(t, units, column, |_| true)
}

/// As [`series`], over the rows `keep` accepts (e.g. one weight layer's).
pub(super) fn series_where(
    t: &Table,
    units: &UnitRows<'_>,
    column: Column,
    keep: impl Fn(&[String]) -> bool,
) -> Vec<(f64, f64)> {
    units
        .iter()
        .filter_map(|(&u, rows)| {
            let vals: Vec<f64> = rows
                .iter()
                .filter(|r| keep(r))
                .filter_map(|r| t.f(r, column))
                .collect();
            (!vals.is_empty()).then(|| (u as f64, geo_mean(&vals)))
        })
        .collect()
}

/// A line with a legend entry, labelled by an owned string (the descendants' and analyses'
/// charts).
pub(super) fn labelled(
    label: String,
    points: Vec<(f64, f64)>,
    style: LineStyle,
    color: usize,
) -> Line {
    Line {
        label,
        points,
        style,
        color,
        in_legend: true,
    }
}

fn line(
    label: &str,
    points: Vec<(f64, f64)>,
    style: LineStyle,
    color: usize,
    in_legend: bool,
) -> Line {
    Line {
        label: label.to_string(),
        points,
        style,
        color,
        in_legend,
    }
}

pub fn figure(kind: ChartKind, t: &Table) -> Figure {
    let name = t.experiment().to_string();
    let variants = t.by_variant();
    let one = |title: String, y_desc: &str, lines: Vec<Line>, hlines: Vec<(f64, String)>| Figure {
        title: title.clone(),
        panels: vec![Panel {
            title,
            x_desc: UNIT_AXIS.into(),
            y_desc: y_desc.into(),
            lines,
            hlines,
            ..Default::default()
        }],
        notes: vec![],
        size: WIDE,
    };
    let panels = |title: String, panels: Vec<Panel>| Figure {
        title,
        panels,
        notes: vec![],
        size: PANELS,
    };
    match kind {
        ChartKind::TrainCurves => train_curves(t),
        ChartKind::LrSweep => lr_sweep(t),
        ChartKind::GradHeatmap => grad_heatmap(t),
        ChartKind::GradRatioSteps => grad_ratio_steps(t),
        ChartKind::Generalisation => generalisation(t),
        ChartKind::WeightInputs => weight_inputs(t),
        ChartKind::Signal => signal(t),
        ChartKind::WeightGrads => super::descendants::weight_grads(t),
        ChartKind::LastWeightGrad => super::descendants::last_weight_grad(t),
        ChartKind::SquaredNorm => super::descendants::squared_norm(t),
        ChartKind::PathLengths => super::analyses::path_lengths(t),
        ChartKind::LesionUnits => super::analyses::lesion_units(t),
        ChartKind::LesionCount => super::analyses::lesion_count(t),
        ChartKind::Shatter => super::analyses::shatter(t),
        ChartKind::GradRatio => one(
            format!("{name}: gradient ratio ‖∂E/∂x_l‖ / ‖∂E/∂x_L‖"),
            "‖∂E/∂x_l‖ / ‖∂E/∂x_L‖",
            variants
                .iter()
                .enumerate()
                .map(|(i, (v, units))| {
                    line(
                        v,
                        series(t, units, col::GRAD_RATIO),
                        LineStyle::Solid,
                        i,
                        true,
                    )
                })
                .collect(),
            vec![],
        ),
        ChartKind::Forward => one(
            format!("{name}: forward signal ‖x_l‖"),
            "‖x_l‖",
            variants
                .iter()
                .enumerate()
                .map(|(i, (v, units))| {
                    line(
                        v,
                        series(t, units, col::ACT_NORM),
                        LineStyle::Solid,
                        i,
                        true,
                    )
                })
                .collect(),
            vec![],
        ),
        ChartKind::LambdaSweep => {
            let mut lines = Vec::new();
            for (i, (v, units)) in variants.iter().enumerate() {
                lines.push(line(
                    &format!("{v} measured"),
                    series(t, units, col::DIRECT_RATIO),
                    LineStyle::Points,
                    i,
                    true,
                ));
                lines.push(line(
                    "prod λ (Eq. 8)",
                    series(t, units, col::PREDICTED_DIRECT_RATIO),
                    LineStyle::Dashed,
                    i,
                    i == 0,
                ));
            }
            let mut fig = one(
                format!("{name}: direct part ‖D_l‖ / ‖∂E/∂x_L‖ (points) vs prod λ (dashed)"),
                "‖D_l‖ / ‖∂E/∂x_L‖",
                lines,
                vec![],
            );
            fig.notes.push("dashed lines: the paper's prediction prod_{i=l}^{L-1} λ_i (Eq. 8), drawn over the measured points".into());
            fig.panels[0].legend_low = true;
            fig
        }
        ChartKind::DirectRest => panels(
            format!("{name}: direct part D_l vs the rest ∂E/∂x_l − D_l"),
            variants
                .iter()
                .take(MAX_PANELS)
                .map(|(v, units)| Panel {
                    title: v.clone(),
                    x_desc: UNIT_AXIS.into(),
                    y_desc: "norm".into(),
                    lines: vec![
                        line(
                            "‖D_l‖ (direct)",
                            series(t, units, col::DIRECT_NORM),
                            LineStyle::Solid,
                            0,
                            true,
                        ),
                        line(
                            "‖∂E/∂x_l − D_l‖ (rest)",
                            series(t, units, col::REST_NORM),
                            LineStyle::Solid,
                            1,
                            true,
                        ),
                        line(
                            "‖∂E/∂x_l‖",
                            series(t, units, col::GRAD_NORM),
                            LineStyle::Dashed,
                            7,
                            true,
                        ),
                    ],
                    legend_low: true,
                    ..Default::default()
                })
                .collect(),
        ),
        ChartKind::SampleBands => panels(
            format!("{name}: per-sample ‖∂E/∂x_l[n]‖ / ‖∂E/∂x_L[n]‖, min–max band and median"),
            variants
                .iter()
                .take(MAX_PANELS)
                .enumerate()
                .map(|(i, (v, units))| Panel {
                    title: v.clone(),
                    x_desc: UNIT_AXIS.into(),
                    y_desc: "per-sample ratio".into(),
                    lines: vec![
                        line(
                            "median",
                            series(t, units, col::SAMPLE_RATIO_MEDIAN),
                            LineStyle::Solid,
                            i,
                            true,
                        ),
                        line(
                            "min",
                            series(t, units, col::SAMPLE_RATIO_MIN),
                            LineStyle::Dashed,
                            i,
                            true,
                        ),
                    ],
                    bands: vec![Band {
                        lower: series(t, units, col::SAMPLE_RATIO_MIN),
                        upper: series(t, units, col::SAMPLE_RATIO_MAX),
                        color: i,
                    }],
                    ..Default::default()
                })
                .collect(),
        ),
        ChartKind::Verification => panels(
            format!("{name}: verification errors per unit (relative)"),
            variants
                .iter()
                .take(MAX_PANELS)
                .map(|(v, units)| {
                    let mut lines = vec![line(
                        "Eq. 5/8 additive backward",
                        series(t, units, col::ADDITIVE_BACKWARD_ERROR),
                        LineStyle::Solid,
                        0,
                        true,
                    )];
                    if t.has(col::FORWARD_SUM_ERROR) {
                        let fwd = series(t, units, col::FORWARD_SUM_ERROR);
                        if !fwd.is_empty() {
                            lines.push(line("Eq. 4/7 forward sum", fwd, LineStyle::Solid, 1, true));
                            lines.push(line(
                                "direct ratio vs prod λ",
                                series(t, units, col::PROD_LAMBDA_ERROR),
                                LineStyle::Points,
                                2,
                                true,
                            ));
                        }
                    }
                    Panel {
                        title: v.clone(),
                        x_desc: UNIT_AXIS.into(),
                        y_desc: "relative error".into(),
                        lines,
                        hlines: vec![
                            (FORMULA_TOL, "tolerance 1e-10".into()),
                            (PROD_LAMBDA_TOL, "tolerance 1e-12 (prod λ)".into()),
                        ],
                        ..Default::default()
                    }
                })
                .collect(),
        ),
    }
}

/// A profile with more rows than this draws its direct part as a line, not as markers.
const MAX_MARKERS: usize = 40;

/// One network's profile at a glance (`resprop profile --chart`): against the unit, on a log
/// axis, `‖∂E/∂x_l‖ / ‖∂E/∂x_L‖` (grad_ratio), the direct part `‖D_l‖ / ‖∂E/∂x_top‖`
/// (direct_ratio) and, where the paper predicts it, `prod λ` (predicted_direct_ratio, Eq. 8)
/// dashed over it. `names` (an imported network's units, then `top`) are written under the
/// axis in place of the indices.
pub fn profile(title: String, records: &[UnitRecord], names: Option<Vec<String>>) -> Figure {
    // The direct part and its prediction run from each unit up to its own top: a line is
    // drawn within each run, never across a restart or a unit without a value.
    let runs = |value: fn(&UnitRecord) -> Option<f64>| -> Vec<Vec<(f64, f64)>> {
        let mut runs: Vec<Vec<(f64, f64)>> = Vec::new();
        let mut top = None;
        for r in records {
            match value(r) {
                Some(v) if top == Some(r.direct_top) => {
                    runs.last_mut().unwrap().push((r.unit as f64, v))
                }
                Some(v) => {
                    runs.push(vec![(r.unit as f64, v)]);
                    top = Some(r.direct_top);
                }
                None => top = None,
            }
        }
        runs
    };
    let mut lines = vec![line(
        "‖∂E/∂x_l‖ / ‖∂E/∂x_L‖ (grad_ratio)",
        records
            .iter()
            .map(|r| (r.unit as f64, r.grad_ratio))
            .collect(),
        LineStyle::Solid,
        0,
        true,
    )];
    let direct = "direct part ‖D_l‖ / ‖∂E/∂x_top‖ (direct_ratio)";
    if records.len() <= MAX_MARKERS {
        let points = records
            .iter()
            .map(|r| (r.unit as f64, r.direct_ratio))
            .collect();
        lines.push(line(direct, points, LineStyle::Points, 1, true));
    } else {
        for (i, run) in runs(|r| Some(r.direct_ratio)).into_iter().enumerate() {
            lines.push(line(direct, run, LineStyle::Solid, 1, i == 0));
        }
    }
    // A run of one point is a top itself, where the prediction is 1 by definition.
    let predicted: Vec<Vec<(f64, f64)>> = runs(|r| r.predicted_direct_ratio)
        .into_iter()
        .filter(|run| run.len() > 1)
        .collect();
    let mut notes = Vec::new();
    if predicted.is_empty() {
        notes.push("no prediction drawn: prod λ (Eq. 8) predicts the direct part across units whose shortcut is a constant scaling and whose f (after the addition) is the identity, and here no unit is such".into());
    }
    for (i, run) in predicted.into_iter().enumerate() {
        lines.push(line(
            "predicted: prod λ (Eq. 8)",
            run,
            LineStyle::Dashed,
            1,
            i == 0,
        ));
    }
    let x_desc = match names {
        Some(_) => "unit, by its module (top: the head's input x_L)",
        None => "unit l (l = L: the head's input)",
    };
    let mut panel = Panel {
        title: title.clone(),
        x_desc: x_desc.into(),
        y_desc: "gradient norm relative to the top's".into(),
        lines,
        x_names: names.unwrap_or_default(),
        ..Default::default()
    };
    // Every series ends at 1 on the right: the legend goes to the emptier right corner.
    panel.legend_low = fewer_points_lower_right(&panel);
    Figure {
        title,
        panels: vec![panel],
        notes,
        size: WIDE,
    }
}

/// Whether fewer points lie in the lower right corner of a log panel than in the upper right,
/// where its legend goes otherwise.
fn fewer_points_lower_right(panel: &Panel) -> bool {
    let (lo, hi) = super::y_range(panel);
    let (x0, x1) = super::x_range(panel);
    let (right, band) = (x0 + 0.6 * (x1 - x0), 0.25 * (hi - lo));
    let (mut upper, mut lower) = (0, 0);
    for &(x, y) in panel.lines.iter().flat_map(|l| &l.points) {
        if x < right || !(y.is_finite() && y >= f64::MIN_POSITIVE) {
            continue;
        }
        if y.log10() > hi - band {
            upper += 1;
        } else if y.log10() < lo + band {
            lower += 1;
        }
    }
    lower < upper
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// Per variant (first-appearance order) and replicate: the rows of each completed epoch
/// (one with a test error), keyed by its first step; a run of fewer epochs than
/// [`SHORT_RUN_WINDOWS`] in windows of steps instead.
type EpochRows<'a> = BTreeMap<usize, Vec<&'a Vec<String>>>;

/// A run shorter than this many epochs draws its training loss over this many windows of
/// steps, not one point per epoch (a one-epoch run would be a single point).
const SHORT_RUN_WINDOWS: usize = 16;

/// `epochs` (keyed by epoch) split into about [`SHORT_RUN_WINDOWS`] windows of consecutive
/// steps when there are fewer epochs than that; keyed by each part's first step.
fn windows<'a>(t: &Table, epochs: BTreeMap<usize, Vec<&'a Vec<String>>>) -> EpochRows<'a> {
    let step = |r: &Vec<String>| t.f(r, col::STEP).map_or(0, |s| s as usize);
    let steps: usize = epochs.values().map(Vec::len).sum();
    let per = if epochs.len() < SHORT_RUN_WINDOWS {
        steps.div_ceil(SHORT_RUN_WINDOWS).max(1)
    } else {
        usize::MAX
    };
    let mut out: EpochRows = BTreeMap::new();
    for mut rows in epochs.into_values() {
        rows.sort_by_key(|r| step(r));
        for chunk in rows.chunks(per) {
            out.insert(step(chunk[0]), chunk.to_vec());
        }
    }
    out
}

fn by_variant_replicate(t: &Table) -> Vec<(String, Vec<EpochRows<'_>>)> {
    t.by_variant_on(col::REPLICATE)
        .into_iter()
        .map(|(v, reps)| {
            let per_rep = reps
                .into_values()
                .map(|rows| {
                    let mut epochs: EpochRows = BTreeMap::new();
                    for r in rows {
                        if let Some(e) = t.f(r, col::EPOCH) {
                            epochs.entry(e as usize).or_default().push(r);
                        }
                    }
                    // Only completed epochs: a run that diverged mid-epoch would stretch the
                    // axis over astronomically large, meaningless losses.
                    epochs.retain(|_, rows| rows.iter().any(|r| t.f(r, col::TEST_ERROR).is_some()));
                    windows(t, epochs)
                })
                .collect();
            (v, per_rep)
        })
        .collect()
}

/// One replicate's curve: `value(epoch rows)` at each completed epoch's last step.
fn epoch_curve(t: &Table, epochs: &EpochRows<'_>, value: EpochValue) -> Vec<(f64, f64)> {
    epochs
        .values()
        .filter_map(|rows| {
            let end = rows
                .iter()
                .filter_map(|r| t.f(r, col::STEP))
                .fold(0.0, f64::max)
                + 1.0;
            value(rows).map(|v| (end, v))
        })
        .collect()
}

/// The median over replicates at each x every replicate's curve shares.
fn median_curve(curves: &[Vec<(f64, f64)>]) -> Vec<(f64, f64)> {
    let mut at: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
    for c in curves {
        for &(x, y) in c {
            at.entry(x.to_bits()).or_default().push(y);
        }
    }
    let mut pts: Vec<(f64, f64)> = at
        .into_iter()
        .filter_map(|(x, ys)| crate::stats::median(&ys).map(|m| (f64::from_bits(x), m)))
        .collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    pts
}

/// A quantity of a completed epoch's rows (`None`: not measured).
type EpochValue<'f> = &'f dyn Fn(&[&Vec<String>]) -> Option<f64>;

/// A panel per quantity `(title, y label, linear axis, value)`: every replicate thin behind
/// the median of its variant.
fn replicate_panels(
    t: &Table,
    quantities: &[(&str, &str, bool, EpochValue)],
) -> (Vec<Panel>, Vec<String>) {
    let groups = by_variant_replicate(t);
    let mut notes = Vec::new();
    for (v, reps) in &groups {
        if reps.iter().all(|e| e.is_empty()) {
            notes.push(format!(
                "{v}: diverged before its first epoch ended, nothing to draw"
            ));
        }
    }
    let panels = quantities
        .iter()
        .map(|(title, y, linear, value)| {
            let mut lines = Vec::new();
            for (i, (v, reps)) in groups.iter().enumerate() {
                let curves: Vec<Vec<(f64, f64)>> =
                    reps.iter().map(|e| epoch_curve(t, e, *value)).collect();
                for c in &curves {
                    lines.push(line(v, c.clone(), LineStyle::Thin, i, false));
                }
                let median = median_curve(&curves);
                // A marker at each point, so that a one-point curve (the test error of a
                // one-epoch run) shows.
                lines.push(line(v, median.clone(), LineStyle::Points, i, false));
                lines.push(line(
                    &format!("{v} (median of {})", reps.len()),
                    median,
                    LineStyle::Solid,
                    i,
                    true,
                ));
            }
            Panel {
                title: title.to_string(),
                x_desc: "step".into(),
                y_desc: y.to_string(),
                lines,
                linear: *linear,
                ..Default::default()
            }
        })
        .collect();
    (panels, notes)
}

fn epoch_mean(t: &Table, rows: &[&Vec<String>], column: Column) -> Option<f64> {
    let v: Vec<f64> = rows.iter().filter_map(|r| t.f(r, column)).collect();
    (!v.is_empty()).then(|| mean(&v))
}

/// Training loss (mean over each epoch's steps) and test error at epoch ends: every replicate
/// thin, the median over replicates thick.
fn train_curves(t: &Table) -> Figure {
    let loss = |rows: &[&Vec<String>]| epoch_mean(t, rows, col::TRAIN_LOSS);
    let err = |rows: &[&Vec<String>]| epoch_mean(t, rows, col::TEST_ERROR).map(|e| 100.0 * e);
    let (panels, notes) = replicate_panels(
        t,
        &[
            (
                "training loss (mean over each completed epoch, or over each 16th of a short run)",
                "loss E",
                false,
                &loss,
            ),
            (
                "test error at the end of each epoch",
                "test error (%)",
                false,
                &err,
            ),
        ],
    );
    Figure {
        title: format!(
            "{}: training (thin: each replicate; thick: their median)",
            t.experiment()
        ),
        panels,
        notes,
        size: (1400, 600),
    }
}

/// Final training loss and test error against the base learning rate (log), per variant: the
/// median over the replicates that reached the last epoch, their range shaded.
fn lr_sweep(t: &Table) -> Figure {
    use super::training::{lr_sweeps, VariantStats};
    let sweeps = lr_sweeps(t);
    let mut notes = Vec::new();
    // One legend, in the loss panel (the colours are the same in both).
    let panel = |title: &str,
                 y: &str,
                 linear: bool,
                 legend: bool,
                 value: &dyn Fn(&VariantStats) -> Vec<f64>| {
        let mut lines = Vec::new();
        let mut bands = Vec::new();
        for (i, sw) in sweeps.iter().enumerate() {
            let (mut mid, mut lo, mut hi) = (Vec::new(), Vec::new(), Vec::new());
            for (lr, v) in &sw.points {
                let vals = value(v);
                if let Some(m) = crate::stats::median(&vals) {
                    mid.push((*lr, m));
                    lo.push((*lr, vals.iter().copied().fold(f64::INFINITY, f64::min)));
                    hi.push((*lr, vals.iter().copied().fold(f64::NEG_INFINITY, f64::max)));
                }
            }
            lines.push(line(&sw.variant, mid.clone(), LineStyle::Solid, i, legend));
            // A marker at each rate run.
            lines.push(line(&sw.variant, mid, LineStyle::Points, i, false));
            bands.push(Band {
                lower: lo,
                upper: hi,
                color: i,
            });
        }
        Panel {
            title: title.into(),
            x_desc: "base learning rate".into(),
            y_desc: y.into(),
            lines,
            bands,
            linear,
            log_x: true,
            ..Default::default()
        }
    };
    for sw in &sweeps {
        for (lr, v) in &sw.points {
            if v.diverged() > 0 {
                notes.push(format!(
                    "{} at lr {lr}: {} of {} replicates diverged (not in the median)",
                    sw.variant,
                    v.diverged(),
                    v.outcomes.len()
                ));
            }
        }
    }
    let loss = |v: &VariantStats| v.outcomes.iter().filter_map(|o| o.train_loss).collect();
    let err = |v: &VariantStats| {
        v.outcomes
            .iter()
            .filter_map(|o| o.test_error.map(|e| 100.0 * e))
            .collect()
    };
    let mut loss_panel = panel(
        "final training loss (the last epoch's mean)",
        "loss E",
        false,
        true,
        &loss,
    );
    // A variant that trains has its lowest loss at a large rate (the right); the low rates
    // leave every variant's loss near its start: the lower left is where lines are fewest.
    loss_panel.legend_low = true;
    loss_panel.legend_left = true;
    Figure {
        title: format!(
            "{}: trained at each learning rate (line: median over replicates; shade: their range)",
            t.experiment()
        ),
        panels: vec![
            loss_panel,
            panel("final test error", "test error (%)", true, false, &err),
        ],
        notes,
        size: (1400, 600),
    }
}

/// Test minus training loss and error at each epoch's end (training numbers on the fixed
/// training images, evaluation mode): every replicate thin, the median thick.
fn generalisation(t: &Table) -> Figure {
    let gap = |rows: &[&Vec<String>], test: Column, train: Column, scale: f64| {
        Some(scale * (epoch_mean(t, rows, test)? - epoch_mean(t, rows, train)?))
    };
    let loss = |rows: &[&Vec<String>]| gap(rows, col::TEST_LOSS, col::TRAIN_EVAL_LOSS, 1.0);
    let err = |rows: &[&Vec<String>]| gap(rows, col::TEST_ERROR, col::TRAIN_EVAL_ERROR, 100.0);
    let (panels, mut notes) = replicate_panels(
        t,
        &[
            ("test loss − training loss", "loss gap", true, &loss),
            (
                "test error − training error",
                "error gap (points of %)",
                true,
                &err,
            ),
        ],
    );
    notes.push(format!(
        "training numbers on {} fixed training images with BN in evaluation mode, as the test numbers",
        crate::train::TRAIN_EVAL_IMAGES
    ));
    Figure {
        title: format!(
            "{}: generalisation gap (thin: each replicate; thick: their median)",
            t.experiment()
        ),
        panels,
        notes,
        size: (1400, 600),
    }
}

/// The variance of every weight layer's input against the unit, one panel per snapshot and
/// branch layer, one line per variant (median over replicates).
fn weight_inputs(t: &Table) -> Figure {
    let mut keys: Vec<(String, String)> = Vec::new();
    for r in &t.rows {
        let k = (
            t.get(r, col::WHEN).to_string(),
            t.get(r, col::LAYER).to_string(),
        );
        // Branch layers only: projections and gates exist at a few units.
        if k.1.starts_with('w') && !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys.sort_by(|a, b| (a.0 != "init", &a.1).cmp(&(b.0 != "init", &b.1)));
    let variants = t.by_variant();
    let panels = keys
        .iter()
        .map(|(when, layer)| {
            let lines = variants
                .iter()
                .enumerate()
                .map(|(i, (v, units))| {
                    let pts = units
                        .iter()
                        .filter_map(|(&u, rows)| {
                            let vals: Vec<f64> = rows
                                .iter()
                                .filter(|r| {
                                    t.get(r, col::WHEN) == when && t.get(r, col::LAYER) == layer
                                })
                                .filter_map(|r| t.f(r, col::VAR))
                                .collect();
                            crate::stats::median(&vals).map(|m| (u as f64, m))
                        })
                        .collect();
                    line(v, pts, LineStyle::Solid, i, true)
                })
                .collect();
            Panel {
                title: format!("{layer} input, {when}"),
                x_desc: UNIT_AXIS.into(),
                y_desc: "variance of the input".into(),
                lines,
                hlines: vec![(0.341, "BN-ReLU output (0.34)".into())],
                ..Default::default()
            }
        })
        .collect();
    Figure {
        title: format!(
            "{}: variance of each weight layer's input (median over replicates)",
            t.experiment()
        ),
        panels,
        notes: vec!["on the fixed training images, BN in training mode; init: before the first step, trained: after the last".into()],
        size: PANELS,
    }
}

/// log10 ||dE/dx_l|| over (step, unit), geometric mean over replicates.
fn grad_heatmap(t: &Table) -> Figure {
    let name = t.experiment().to_string();
    let panels = t
        .by_variant_on(col::STEP)
        .into_iter()
        .take(MAX_PANELS)
        .map(|(v, steps)| {
            let xs: Vec<f64> = steps.keys().map(|&s| s as f64).collect();
            let max_unit = steps
                .values()
                .flatten()
                .filter_map(|r| t.f(r, col::UNIT))
                .fold(0.0, f64::max) as usize;
            let ys: Vec<f64> = (0..=max_unit).map(|u| u as f64).collect();
            let mut z = vec![vec![f64::NAN; xs.len()]; ys.len()];
            let mut dropped = Vec::new();
            for (i, rows) in steps.values().enumerate() {
                for (u, z_row) in z.iter_mut().enumerate() {
                    let vals: Vec<f64> = rows
                        .iter()
                        .filter(|r| t.f(r, col::UNIT) == Some(u as f64))
                        .filter_map(|r| t.f(r, col::GRAD_NORM))
                        .collect();
                    if !vals.is_empty() {
                        // A value log10 cannot colour is NaN (grey, as an empty cell) and
                        // listed in the chart's notes.
                        let g = geo_mean(&vals);
                        match super::log_filter(&[(xs[i], g)]).1.first() {
                            Some(&(_, reason)) => dropped.push((xs[i], u as f64, reason)),
                            None => z_row[i] = g.log10(),
                        }
                    }
                }
            }
            Panel {
                title: format!("{v}: log10 ‖∂E/∂x_l‖"),
                x_desc: "step".into(),
                y_desc: UNIT_AXIS.into(),
                lines: vec![],
                heat: Some(super::Heat { xs, ys, z, dropped }),
                ..Default::default()
            }
        })
        .collect();
    Figure {
        title: format!("{name}: gradient norm per unit over training"),
        panels,
        notes: vec![],
        size: PANELS,
    }
}

/// Gradient ratio against the unit at the first, middle and last recorded steps.
fn grad_ratio_steps(t: &Table) -> Figure {
    let name = t.experiment().to_string();
    let panels = t
        .by_variant_on(col::STEP)
        .into_iter()
        .take(MAX_PANELS)
        .map(|(v, steps)| {
            let keys: Vec<usize> = steps.keys().copied().collect();
            let picks = [keys[0], keys[keys.len() / 2], keys[keys.len() - 1]];
            let lines = picks
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let mut by_unit: std::collections::BTreeMap<usize, Vec<f64>> =
                        Default::default();
                    for r in &steps[s] {
                        if let (Some(u), Some(g)) = (t.f(r, col::UNIT), t.f(r, col::GRAD_RATIO)) {
                            by_unit.entry(u as usize).or_default().push(g);
                        }
                    }
                    let pts = by_unit
                        .into_iter()
                        .map(|(u, g)| (u as f64, geo_mean(&g)))
                        .collect();
                    line(&format!("step {s}"), pts, LineStyle::Solid, i, true)
                })
                .collect();
            Panel {
                title: v,
                x_desc: UNIT_AXIS.into(),
                y_desc: "‖∂E/∂x_l‖ / ‖∂E/∂x_L‖".into(),
                lines,
                ..Default::default()
            }
        })
        .collect();
    Figure {
        title: format!("{name}: gradient ratio at the first, middle and last recorded step"),
        panels,
        notes: vec![],
        size: PANELS,
    }
}

/// The forward-signal prediction that applies to a variant (its first row's keys), with the
/// source it is labelled with, as `Var(x_l)` from the measured `Var(x_0)` of the stage:
/// `alpha = 0` (ReZero, SkipInit at zero): flat; no normalisation, He, identity shortcut and
/// after-addition function: doubling per unit, `2^l` (each branch adds what it receives);
/// BatchNorm pre-activation, identity shortcut: `+1` per unit within a stage (the branch's
/// BN resets its input's scale; De and Smith 2020). Others: none is drawn.
/// A prediction's label and `Var(x_l)` as a function of the stage's `Var(x_0)` and `l`.
pub(super) type Prediction = (&'static str, fn(f64, f64) -> f64);

pub(super) fn signal_prediction(t: &Table, row: &[String]) -> Option<Prediction> {
    use crate::unit::ShortcutKind;
    let placement: crate::unit::Placement = t.get(row, col::PLACEMENT).parse().ok()?;
    let shortcut: ShortcutKind = t.get(row, col::SHORTCUT).parse().ok()?;
    let norm = if t.has(col::NORM) {
        t.get(row, col::NORM).to_string()
    } else {
        "batch".to_string()
    };
    let init = if t.has(col::INIT) {
        t.get(row, col::INIT).to_string()
    } else {
        "he".to_string()
    };
    let identity_f = placement.after_add_is_identity();
    match shortcut {
        ShortcutKind::Alpha { init: 0.0 } => Some(("α = 0 (ReZero, SkipInit): flat", |v0, _| v0)),
        ShortcutKind::Identity if identity_f && norm == "none" && init == "he" => {
            Some(("unnormalised He: Var(x_0) 2^l", |v0, l| v0 * 2f64.powf(l)))
        }
        ShortcutKind::Identity if placement.is_preact() && norm == "batch" => Some((
            "BN pre-activation: Var(x_0) + l (De & Smith 2020)",
            |v0, l| v0 + l,
        )),
        // No prediction: the identity outside the two cases above, alpha away from 0, and the
        // other shortcuts.
        ShortcutKind::Identity
        | ShortcutKind::Alpha { .. }
        | ShortcutKind::Scale { .. }
        | ShortcutKind::Gate { .. }
        | ShortcutKind::ShortcutGate { .. }
        | ShortcutKind::Conv1x1
        | ShortcutKind::Dropout { .. }
        | ShortcutKind::None
        | ShortcutKind::LayerScale { .. }
        | ShortcutKind::DeepNorm { .. }
        | ShortcutKind::Pad => None,
    }
}

/// Signal propagation (Brock, De and Smith 2021): the channel variance of `x_l` and of the
/// branch term against the unit, replicates combined; dashed, the prediction each variant
/// has (restarting at every stage), labelled with its source.
fn signal(t: &Table) -> Figure {
    let name = t.experiment().to_string();
    let variants = t.by_variant();
    let mut act = Vec::new();
    let mut branch = Vec::new();
    for (i, (v, units)) in variants.iter().enumerate() {
        act.push(line(
            v,
            series(t, units, col::ACT_VAR),
            LineStyle::Solid,
            i,
            true,
        ));
        branch.push(line(
            v,
            series(t, units, col::BRANCH_VAR),
            LineStyle::Solid,
            i,
            true,
        ));
        let Some(first) = units.values().next().and_then(|rows| rows.first()) else {
            continue;
        };
        let Some((source, predict)) = signal_prediction(t, first) else {
            continue;
        };
        // Within each stage, from the measured variance at the stage's first unit.
        let measured: Vec<(usize, usize, f64)> = units
            .iter()
            .filter_map(|(&u, rows)| {
                let vals: Vec<f64> = rows.iter().filter_map(|r| t.f(r, col::ACT_VAR)).collect();
                let stage = rows
                    .first()
                    .and_then(|r| t.get(r, col::STAGE).parse().ok())?;
                (!vals.is_empty()).then(|| (u, stage, geo_mean(&vals)))
            })
            .collect();
        let mut pts = Vec::new();
        let mut start: Option<(usize, usize, f64)> = None;
        for &(u, stage, v) in &measured {
            if start.is_none_or(|(_, s, _)| s != stage) {
                start = Some((u, stage, v));
            }
            let (u0, _, v0) = start.unwrap();
            pts.push((u as f64, predict(v0, (u - u0) as f64)));
        }
        act.push(line(
            &format!("{v}: {source}"),
            pts,
            LineStyle::Dashed,
            i,
            true,
        ));
    }
    let panel = |title: &str, y: &str, lines: Vec<Line>| Panel {
        title: title.into(),
        x_desc: UNIT_AXIS.into(),
        y_desc: y.into(),
        lines,
        ..Default::default()
    };
    Figure {
        title: format!("{name}: forward signal propagation"),
        panels: vec![
            panel(
                "average channel variance of x_l (dashed: predictions)",
                "mean_c Var(x_l)",
                act,
            ),
            panel(
                "average channel variance of the branch term F'(x_l)",
                "mean_c Var(F'(x_l))",
                branch,
            ),
        ],
        notes: vec![
            "dashed lines: the prediction that applies to the variant, restarting at each stage from the measured variance of its first unit; labelled with its source".into(),
        ],
        size: PANELS,
    }
}
