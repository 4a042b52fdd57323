//! Charts from the experiments' tidy CSV (plotters, PNG and SVG).
//!
//! A chart is data ([`Figure`]) drawn by one function generic over the backend, so the PNG and
//! the SVG cannot differ. Text uses the bundled DejaVu Sans (assets/fonts, Bitstream Vera
//! licence), registered once; no system font is needed. On log axes, zero, underflowed and
//! non-finite values are left out and listed in a note drawn on the chart, never clamped to
//! the edge; on linear axes, non-finite values and values beyond [`LINEAR_LIMIT`]. Every
//! chart that leaves points out also says so in one `note:` line on stderr
//! ([`draw_charts`]): nothing is dropped silently.
//!
//! Bounded drawing: plotters' search for tick positions never ends on an infinite range, so
//! every axis range handed to it is finite and non-degenerate by construction. Log axes are
//! computed on log10 of the data ([`y_range`]), never on the padded data (1e308 x 10^0.25
//! overflowed to inf and spun forever), and are therefore within about [-325, 310]; linear
//! axes hold values within `±LINEAR_LIMIT`, so their padded span is finite.

pub mod analyses;
pub mod charts;
pub mod descendants;
pub mod kinds;
pub mod report;
pub mod table;
pub mod training;

use std::path::{Path, PathBuf};
use std::sync::Once;

use anyhow::{anyhow, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::FontStyle;

static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
static REGISTER: Once = Once::new();

/// Registers the bundled font as "sans-serif" (the only family the charts use).
pub fn register_font() {
    REGISTER.call_once(|| {
        // The bytes are a valid TTF shipped with the crate; failure would be a build defect.
        plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
            .unwrap_or_else(|_| panic!("bundled font failed to load"));
    });
}

/// Ten colours that stay distinct in print (the Tableau 10 palette).
pub const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineStyle {
    Solid,
    Dashed,
    /// Markers only.
    Points,
    /// A thin, faint line behind the others (one replicate behind the median); never in
    /// the legend.
    Thin,
}

#[derive(Debug, Clone)]
pub struct Line {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    pub style: LineStyle,
    pub color: usize,
    /// Whether the line gets a legend entry.
    pub in_legend: bool,
}

/// A shaded band between two curves over the same x values.
#[derive(Debug, Clone)]
pub struct Band {
    pub lower: Vec<(f64, f64)>,
    pub upper: Vec<(f64, f64)>,
    pub color: usize,
}

/// One panel: a line chart with a log y axis.
#[derive(Debug, Clone, Default)]
pub struct Panel {
    pub title: String,
    pub x_desc: String,
    pub y_desc: String,
    pub lines: Vec<Line>,
    pub bands: Vec<Band>,
    /// Horizontal reference lines (e.g. a tolerance), with labels.
    pub hlines: Vec<(f64, String)>,
    /// Put the legend at the lower right (when the data crowd the upper right).
    pub legend_low: bool,
    /// Put the legend on the left (with `legend_low`: lower left).
    pub legend_left: bool,
    /// x extent of all the data, including points a log axis cannot show (set by `prepare_log`).
    pub x_span: Option<(f64, f64)>,
    /// A heatmap instead of lines.
    pub heat: Option<Heat>,
    /// A linear y axis (for values that can be negative or zero); logarithmic otherwise.
    pub linear: bool,
    /// A logarithmic x axis (positive x only; for power laws against the depth).
    pub log_x: bool,
    /// Names of the x values 0, 1, 2, ... (an imported network's units), written under the
    /// axis instead of the numbers; empty: the numbers.
    pub x_names: Vec<String>,
}

/// Values on a grid: `z[j][i]` at column `xs[i]` and row `ys[j]` (NaN: no value).
#[derive(Debug, Clone)]
pub struct Heat {
    pub xs: Vec<f64>,
    pub ys: Vec<f64>,
    pub z: Vec<Vec<f64>>,
    /// Cells (x, y) that had values but none the colour scale can show (their z is NaN, as
    /// an empty cell's): listed in a note, never left grey without a word.
    pub dropped: Vec<(f64, f64, Dropped)>,
}

/// A perceptually ordered colour map (viridis, five anchors, linear in between).
pub fn colormap(t: f64) -> RGBColor {
    const ANCHORS: [(u8, u8, u8); 5] = [
        (68, 1, 84),
        (59, 82, 139),
        (33, 145, 140),
        (94, 201, 98),
        (253, 231, 37),
    ];
    let t = t.clamp(0.0, 1.0) * 4.0;
    let i = (t.floor() as usize).min(3);
    let f = t - i as f64;
    let (a, b) = (ANCHORS[i], ANCHORS[i + 1]);
    let mix = |x: u8, y: u8| (x as f64 + (y as f64 - x as f64) * f).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

fn draw_heat<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    panel: &Panel,
    heat: &Heat,
    small: bool,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("drawing: {e:?}");
    let finite: Vec<f64> = heat
        .z
        .iter()
        .flatten()
        .copied()
        .filter(|v| v.is_finite())
        .collect();
    let (lo, hi) = finite
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let step = |v: &[f64], i: usize| {
        if i + 1 < v.len() {
            v[i + 1] - v[i]
        } else if i > 0 {
            v[i] - v[i - 1]
        } else {
            1.0
        }
    };
    let (x0, x1) = (
        heat.xs[0],
        heat.xs[heat.xs.len() - 1] + step(&heat.xs, heat.xs.len() - 1),
    );
    let (y0, y1) = (
        heat.ys[0],
        heat.ys[heat.ys.len() - 1] + step(&heat.ys, heat.ys.len() - 1),
    );
    let font = if small { 14 } else { 18 };
    let title = if finite.is_empty() {
        format!("{} (no finite values)", panel.title)
    } else {
        format!("{}: {lo:.2} (dark) to {hi:.2} (bright)", panel.title)
    };
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", font + 1))
        .margin(8)
        .x_label_area_size(if small { 30 } else { 40 })
        .y_label_area_size(if small { 45 } else { 60 })
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc(&panel.x_desc)
        .y_desc(&panel.y_desc)
        .label_style(("sans-serif", font - 2))
        .axis_desc_style(("sans-serif", font))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()
        .map_err(err)?;
    let cells = heat
        .ys
        .iter()
        .enumerate()
        .flat_map(|(j, &y)| heat.xs.iter().enumerate().map(move |(i, &x)| (i, j, x, y)));
    chart
        .draw_series(cells.map(|(i, j, x, y)| {
            let v = heat.z[j][i];
            let color = if v.is_finite() && hi > lo {
                colormap((v - lo) / (hi - lo))
            } else if v.is_finite() {
                colormap(0.5)
            } else {
                RGBColor(200, 200, 200)
            };
            Rectangle::new(
                [(x, y), (x + step(&heat.xs, i), y + step(&heat.ys, j))],
                color.filled(),
            )
        }))
        .map_err(err)?;
    Ok(())
}

/// A whole chart: one or more panels and the notes shown under them.
#[derive(Debug, Clone)]
pub struct Figure {
    pub title: String,
    pub panels: Vec<Panel>,
    pub notes: Vec<String>,
    pub size: (u32, u32),
}

/// (x, y) pairs of a series.
pub type Points = Vec<(f64, f64)>;

/// The largest magnitude a linear axis draws: a quarter of `f64::MAX`, so that the axis's
/// span (at most half of `f64::MAX`) and its 5% padding stay finite. Values beyond it are left
/// out with a note, as a log axis leaves out what it cannot show.
pub const LINEAR_LIMIT: f64 = f64::MAX / 4.0;

/// Why a value cannot go on an axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Dropped {
    /// Exactly 0 (an exact result, e.g. an error of 0 to the last bit).
    Zero,
    /// Negative, or positive but below the normal f64 range (underflow).
    TinyOrNegative,
    /// inf or NaN (overflow, or a diverged run's record).
    NonFinite,
    /// Beyond `±LINEAR_LIMIT` on a linear axis.
    Huge,
    /// x <= 0 (or not finite) on a logarithmic x axis.
    XNotPositive,
}

impl Dropped {
    fn describe(self) -> &'static str {
        match self {
            Dropped::Zero => "exactly 0, not drawable on a log axis",
            Dropped::TinyOrNegative => "underflowed (below 1e-308) or negative, not drawn",
            Dropped::NonFinite => "inf or NaN (overflow), not drawn",
            Dropped::Huge => "beyond ±4.5e307, too large for a linear axis, not drawn",
            Dropped::XNotPositive => "at x <= 0, not drawable on a log x axis",
        }
    }

    /// The reason in a few words, for the one-line note on stderr.
    fn short(self) -> &'static str {
        match self {
            Dropped::Zero => "exactly 0 on a log axis",
            Dropped::TinyOrNegative => "negative or below 1e-308 on a log axis",
            Dropped::NonFinite => "inf or NaN",
            Dropped::Huge => "beyond ±4.5e307 on a linear axis",
            Dropped::XNotPositive => "x <= 0 on a log x axis",
        }
    }
}

/// How many points of a figure [`prepare_log`] left out, by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NotDrawn(pub std::collections::BTreeMap<Dropped, usize>);

impl NotDrawn {
    fn add(&mut self, reason: Dropped) {
        *self.0.entry(reason).or_default() += 1;
    }

    pub fn total(&self) -> usize {
        self.0.values().sum()
    }

    /// "3 points not drawn (2 inf or NaN, 1 exactly 0 on a log axis)"; `None` when none was
    /// left out.
    pub fn summary(&self) -> Option<String> {
        let n = self.total();
        (n > 0).then(|| {
            let parts: Vec<String> = self
                .0
                .iter()
                .map(|(r, k)| format!("{k} {}", r.short()))
                .collect();
            format!(
                "{n} point{} not drawn ({})",
                if n == 1 { "" } else { "s" },
                parts.join(", ")
            )
        })
    }
}

/// The kept points (finite, > 0) and the x values of the dropped ones with the reason.
pub fn log_filter(points: &[(f64, f64)]) -> (Points, Vec<(f64, Dropped)>) {
    axis_filter(points, false, false)
}

/// The points an axis can show and the x values of the others with the reason: on a log y
/// axis finite values >= `f64::MIN_POSITIVE`; on a linear one finite values within
/// `±LINEAR_LIMIT`; on a log x axis only x > 0 (and finite).
pub fn axis_filter(
    points: &[(f64, f64)],
    linear: bool,
    log_x: bool,
) -> (Points, Vec<(f64, Dropped)>) {
    let mut kept = Vec::new();
    let mut dropped = Vec::new();
    for &(x, y) in points {
        if log_x && !(x > 0.0 && x.is_finite()) {
            dropped.push((x, Dropped::XNotPositive));
        } else if !y.is_finite() {
            dropped.push((x, Dropped::NonFinite));
        } else if linear {
            if y.abs() > LINEAR_LIMIT {
                dropped.push((x, Dropped::Huge));
            } else {
                kept.push((x, y));
            }
        } else if y == 0.0 {
            dropped.push((x, Dropped::Zero));
        } else if y < f64::MIN_POSITIVE {
            dropped.push((x, Dropped::TinyOrNegative));
        } else {
            kept.push((x, y));
        }
    }
    (kept, dropped)
}

/// Splits `text` into lines of at most about `width` characters, at spaces.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in text.split(' ') {
        let last = lines.last_mut().unwrap();
        if !last.is_empty() && last.chars().count() + word.chars().count() + 1 > width {
            lines.push(format!("    {word}"));
        } else {
            if !last.is_empty() {
                last.push(' ');
            }
            last.push_str(word);
        }
    }
    lines
}

/// "0-3, 7, 9-12" for a sorted list of unit indices.
pub fn ranges(xs: &[f64]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < xs.len() {
        let mut j = i;
        while j + 1 < xs.len() && xs[j + 1] == xs[j] + 1.0 {
            j += 1;
        }
        out.push(if i == j {
            format!("{}", xs[i])
        } else {
            format!("{}-{}", xs[i], xs[j])
        });
        i = j + 1;
    }
    out.join(", ")
}

/// Drops what an axis cannot show (see [`axis_filter`]) from every line, band and heatmap
/// cell, adds one note per reason saying which series lost which units, and returns how many
/// points were left out.
pub fn prepare_log(fig: &mut Figure) -> NotDrawn {
    let mut by_reason: std::collections::BTreeMap<Dropped, Vec<String>> = Default::default();
    let mut not_drawn = NotDrawn::default();
    let several = fig.panels.len() > 1;
    for panel in fig.panels.iter_mut() {
        let where_ = if several {
            format!(" [{}]", panel.title)
        } else {
            String::new()
        };
        if let Some(heat) = &panel.heat {
            // One item per panel and reason: a count and the x range the grey cells span (a
            // diverged run leaves thousands; listing each would bury the chart).
            let mut cells: std::collections::BTreeMap<Dropped, (usize, f64, f64)> =
                Default::default();
            for &(x, _, reason) in &heat.dropped {
                not_drawn.add(reason);
                let e = cells
                    .entry(reason)
                    .or_insert((0, f64::INFINITY, f64::NEG_INFINITY));
                *e = (e.0 + 1, e.1.min(x), e.2.max(x));
            }
            for (reason, (n, lo, hi)) in cells {
                by_reason.entry(reason).or_default().push(format!(
                    "{n} cell{}{where_} (grey) at {} {}",
                    if n == 1 { "" } else { "s" },
                    panel.x_desc,
                    if lo == hi {
                        format!("{lo}")
                    } else {
                        format!("{lo} to {hi}")
                    }
                ));
            }
        }
        let (linear, log_x) = (panel.linear, panel.log_x);
        let xs = panel
            .lines
            .iter()
            .flat_map(|l| l.points.iter().map(|p| p.0))
            .filter(|&x| x.is_finite() && (!log_x || x > 0.0));
        let (lo, hi) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
            (a.min(x), b.max(x))
        });
        if lo.is_finite() {
            panel.x_span = Some((lo, hi));
        }
        for line in &mut panel.lines {
            let (kept, dropped) = axis_filter(&line.points, linear, log_x);
            for d in &dropped {
                not_drawn.add(d.1);
            }
            let mut reasons: Vec<Dropped> = dropped.iter().map(|d| d.1).collect();
            reasons.sort();
            reasons.dedup();
            for reason in reasons {
                let units: Vec<f64> = dropped
                    .iter()
                    .filter(|d| d.1 == reason)
                    .map(|d| d.0)
                    .collect();
                by_reason.entry(reason).or_default().push(format!(
                    "{}{where_} at {}",
                    line.label,
                    ranges(&units)
                ));
            }
            line.points = kept;
        }
        // A band's bounds are drawn around its line's points, which count above.
        for band in &mut panel.bands {
            let (lo, dropped_lo) = axis_filter(&band.lower, linear, log_x);
            let (hi, dropped_hi) = axis_filter(&band.upper, linear, log_x);
            if !dropped_lo.is_empty() || !dropped_hi.is_empty() {
                band.lower.clear();
                band.upper.clear();
            } else {
                band.lower = lo;
                band.upper = hi;
            }
        }
    }
    for (reason, items) in by_reason {
        fig.notes
            .push(format!("{}: {}", reason.describe(), items.join("; ")));
    }
    not_drawn
}

/// The half-width of the range drawn around a single value `v` (a flat line, one point): 1,
/// or a billionth of `|v|` where 1 would vanish in its rounding (|v| beyond 2^53), so the
/// range is never empty.
fn flat_pad(v: f64) -> f64 {
    1f64.max(v.abs() * 1e-9)
}

/// The y extent of a linear panel's data, padded by 5% (or [`flat_pad`] around a flat line).
/// Bound: the values are within `±LINEAR_LIMIT` (`prepare_log` leaves out the rest; the
/// filter here is for figures drawn without it), so the span is at most `f64::MAX / 2` and
/// the padded range is finite.
fn y_range_linear(panel: &Panel) -> (f64, f64) {
    let (lo, hi) = panel
        .lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.1))
        .chain(panel.hlines.iter().map(|h| h.0))
        .filter(|y| y.is_finite() && y.abs() <= LINEAR_LIMIT)
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| {
            (a.min(y), b.max(y))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-12 {
        return (lo - flat_pad(lo), hi + flat_pad(hi));
    }
    let pad = 0.05 * (hi - lo);
    (lo - pad, hi + pad)
}

/// The y extent of a log panel's data as log10 bounds: a quarter decade of padding either
/// side, and at least about two decades around a nearly flat line. Computed on log10 of the
/// data, never on the data (padding 1e308 by 10^0.25 overflowed to inf, and plotters' tick
/// search never ended). Bound: only finite values >= `f64::MIN_POSITIVE` count (what
/// `prepare_log` keeps), whose log10 lies in [-307.7, 308.3], so the bounds lie in
/// [-308.5, 309.1] and are at least a decade apart, whatever the data.
fn y_range(panel: &Panel) -> (f64, f64) {
    let ys = panel
        .lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.1))
        .chain(
            panel
                .bands
                .iter()
                .flat_map(|b| b.lower.iter().chain(&b.upper).map(|p| p.1)),
        )
        .chain(panel.hlines.iter().map(|h| h.0))
        .filter(|y| y.is_finite() && *y >= f64::MIN_POSITIVE);
    let (lo, hi) = ys.fold((f64::INFINITY, 0.0f64), |(lo, hi), y| {
        (lo.min(y), hi.max(y))
    });
    if !lo.is_finite() || hi <= 0.0 {
        return (-1.0, 1.0);
    }
    // Pad by a quarter decade; a flat line still gets a visible range (x3 either side).
    let (lo, hi) = (lo.log10() - 0.25, hi.log10() + 0.25);
    if hi - lo < 1.0 {
        let three = 3f64.log10();
        (lo - three, hi + three)
    } else {
        (lo, hi)
    }
}

/// The x extent: the data's (`x_span`, or the lines' finite x values), or [`flat_pad`] around
/// a single x. Finite and non-empty whatever the data.
fn x_range(panel: &Panel) -> (f64, f64) {
    let (lo, hi) = match panel.x_span {
        Some(span) => span,
        None => panel
            .lines
            .iter()
            .flat_map(|l| l.points.iter().map(|p| p.0))
            .filter(|x| x.is_finite())
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
                (lo.min(x), hi.max(x))
            }),
    };
    if !panel.x_names.is_empty() {
        // One slot per name, each value in the middle of its own.
        (-0.5, panel.x_names.len() as f64 - 0.5)
    } else if lo.is_finite() && hi.is_finite() && hi > lo {
        (lo, hi)
    } else if lo.is_finite() && lo > 0.0 && !panel.log_x {
        // One x value (the test error of a one-epoch run, at its last step): the axis from 0,
        // so the point sits where it belongs in the run.
        (0.0, lo + flat_pad(lo))
    } else if lo.is_finite() {
        (lo - flat_pad(lo), lo + flat_pad(lo))
    } else {
        (0.0, 1.0)
    }
}

/// Tick label for a log10 value: "1e-3" on whole decades, "3.2e-3" between. Where 10^v itself
/// is not a normal f64 (ticks above 10^308.25 or below 10^-307.7 on an axis padded past the
/// f64 range), the mantissa and exponent come from v, so no tick reads "inf" or "0".
fn decade_label(v: &f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        return format!("1e{}", v.round() as i64);
    }
    let p = 10f64.powf(*v);
    if p.is_finite() && p >= f64::MIN_POSITIVE {
        return format!("{p:.1e}");
    }
    let mut e = v.floor();
    let mut m = 10f64.powf(v - e);
    if (m * 10.0).round() >= 100.0 {
        m /= 10.0;
        e += 1.0;
    }
    format!("{m:.1}e{}", e as i64)
}

/// Which names go under a named x axis, and how.
struct NameTicks {
    /// The x values (indices into the names) that get their name.
    shown: Vec<usize>,
    /// Turned to read upwards: side by side they would overlap.
    upright: bool,
    /// How much deeper than a row of numbers the label area must be to hold them.
    extra_depth: i32,
}

/// Names side by side when the longest fits its slot of `plot_width`; else upright, and
/// every k-th only when even upright they would overlap (the last, the head's input, always).
fn name_ticks<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    names: &[String],
    font: u32,
    plot_width: i32,
) -> Result<NameTicks, DrawingAreaErrorKind<DB::ErrorType>> {
    let style = TextStyle::from(("sans-serif", font).into_font());
    let (mut widest, mut tallest) = (0, 0);
    for name in names {
        let (w, h) = area.estimate_text_size(name, &style)?;
        widest = widest.max(w as i32);
        tallest = tallest.max(h as i32);
    }
    let n = names.len();
    let slot = plot_width.max(1) as f64 / n.max(1) as f64;
    if (widest + 8) as f64 <= slot {
        return Ok(NameTicks {
            shown: (0..n).collect(),
            upright: false,
            extra_depth: 0,
        });
    }
    let every = ((tallest + 4) as f64 / slot).ceil().max(1.0) as usize;
    let mut shown: Vec<usize> = (0..n).step_by(every).collect();
    if let Some(&last) = shown.last() {
        if last != n - 1 {
            if ((n - 1 - last) as f64) * slot < (tallest + 4) as f64 {
                shown.pop();
            }
            shown.push(n - 1);
        }
    }
    Ok(NameTicks {
        shown,
        upright: true,
        extra_depth: (widest - tallest).max(0),
    })
}

/// A log axis's tick value with two significant digits (`0.01`, `0.032`, `3`, `1000`), so
/// that ticks below 1 are not all printed as `0`.
fn log_tick_label(v: f64) -> String {
    if !(v.is_finite() && v > 0.0) {
        return format!("{v}");
    }
    if v >= 10.0 {
        return format!("{v:.0}");
    }
    let decimals = (1.0 - v.log10().floor()).max(0.0) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// Draws one panel. The y axis is logarithmic: values are drawn as log10(y) on a linear axis
/// labelled in powers of ten (plotters' own log axis drops labels over wide ranges).
fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    panel: &Panel,
    small: bool,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    if let Some(heat) = &panel.heat {
        return draw_heat(area, panel, heat, small);
    }
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("drawing: {e:?}");
    let linear = panel.linear;
    let log_x = panel.log_x;
    let lx = |x: f64| if log_x { x.log10() } else { x };
    let lg = |pts: &[(f64, f64)]| -> Vec<(f64, f64)> {
        pts.iter()
            .filter(|p| p.1.is_finite() && (!log_x || p.0 > 0.0))
            .map(|&(x, y)| (lx(x), if linear { y } else { y.log10() }))
            .collect()
    };
    let (x0, x1) = x_range(panel);
    let (x0, x1) = if log_x {
        // A tenth of a decade either side, so the end points are not on the frame.
        (
            lx(x0.max(f64::MIN_POSITIVE)) - 0.1,
            lx(x1.max(f64::MIN_POSITIVE)) + 0.1,
        )
    } else {
        (x0, x1)
    };
    let (y0, y1) = if linear {
        y_range_linear(panel)
    } else {
        y_range(panel)
    };
    let font = if small { 14 } else { 18 };
    let (margin, y_label_area) = (8, if small { 55 } else { 70 });
    let names = if panel.x_names.is_empty() {
        None
    } else {
        let plot_width = area.dim_in_pixel().0 as i32 - y_label_area - 2 * margin;
        Some(name_ticks(area, &panel.x_names, font - 2, plot_width).map_err(err)?)
    };
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, ("sans-serif", font + 2))
        .margin(margin)
        .x_label_area_size(
            if small { 30 } else { 40 } + names.as_ref().map_or(0, |n| n.extra_depth),
        )
        .y_label_area_size(y_label_area)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(err)?;
    let y_label = |v: &f64| {
        if linear {
            format!("{v:.3}")
        } else {
            decade_label(v)
        }
    };
    let x_label = |x: &f64| {
        if log_x {
            log_tick_label(10f64.powf(*x))
        } else {
            format!("{x:.0}")
        }
    };
    let mut mesh = chart.configure_mesh();
    mesh.x_desc(&panel.x_desc)
        .y_desc(&panel.y_desc)
        .label_style(("sans-serif", font - 2))
        .axis_desc_style(("sans-serif", font))
        .y_label_formatter(&y_label)
        .x_label_formatter(&x_label);
    if names.is_some() {
        // The names are drawn below, one tick each.
        mesh.x_labels(0).disable_x_mesh();
    }
    mesh.draw().map_err(err)?;
    if let Some(names) = &names {
        let grid = BLACK.mix(0.1).stroke_width(1);
        chart
            .draw_series(
                names
                    .shown
                    .iter()
                    .map(|&i| PathElement::new(vec![(i as f64, y0), (i as f64, y1)], grid)),
            )
            .map_err(err)?;
        let style = if names.upright {
            // Reading upwards, ending at its tick.
            TextStyle::from(("sans-serif", font - 2).into_font())
                .transform(FontTransform::Rotate270)
                .pos(Pos::new(HPos::Right, VPos::Center))
        } else {
            TextStyle::from(("sans-serif", font - 2).into_font())
                .pos(Pos::new(HPos::Center, VPos::Top))
        };
        chart
            .draw_series(names.shown.iter().map(|&i| {
                EmptyElement::at((i as f64, y0))
                    + PathElement::new(vec![(0, 0), (0, 5)], BLACK.stroke_width(1))
                    + Text::new(panel.x_names[i].clone(), (0, 8), style.clone())
            }))
            .map_err(err)?;
    }
    if linear && y0 < 0.0 && y1 > 0.0 {
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(x0, 0.0), (x1, 0.0)],
                BLACK.mix(0.4).stroke_width(1),
            )))
            .map_err(err)?;
    }
    for band in &panel.bands {
        if band.lower.is_empty() {
            continue;
        }
        let color = PALETTE[band.color % PALETTE.len()];
        let mut poly = lg(&band.lower);
        poly.extend(lg(&band.upper).into_iter().rev());
        chart
            .draw_series(std::iter::once(Polygon::new(poly, color.mix(0.18))))
            .map_err(err)?;
    }
    for (y, label) in &panel.hlines {
        let style = BLACK.mix(0.6).stroke_width(1);
        let y = if linear { *y } else { y.log10() };
        chart
            .draw_series(DashedLineSeries::new(vec![(x0, y), (x1, y)], 4, 4, style))
            .map_err(err)?
            .label(label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
    }
    // Markers first, lines over them, dashed lines last: a prediction drawn over exactly
    // matching measurements must stay visible.
    let order = |s: LineStyle| match s {
        LineStyle::Thin => 0,
        LineStyle::Points => 1,
        LineStyle::Solid => 2,
        LineStyle::Dashed => 3,
    };
    let mut lines: Vec<&Line> = panel.lines.iter().collect();
    lines.sort_by_key(|l| order(l.style));
    for line in lines {
        let color = PALETTE[line.color % PALETTE.len()];
        let pts = lg(&line.points);
        let anno = match line.style {
            LineStyle::Thin => {
                chart
                    .draw_series(LineSeries::new(pts, color.mix(0.3).stroke_width(1)))
                    .map_err(err)?;
                continue;
            }
            LineStyle::Solid => chart
                .draw_series(LineSeries::new(pts, color.stroke_width(2)))
                .map_err(err)?,
            LineStyle::Dashed => {
                // Dark and thin over the colour of the measured series it predicts.
                chart
                    .draw_series(DashedLineSeries::new(
                        pts,
                        6,
                        4,
                        BLACK.mix(0.85).stroke_width(1),
                    ))
                    .map_err(err)?
            }
            LineStyle::Points => chart
                .draw_series(
                    pts.iter()
                        .map(|&p| Circle::new(p, 4, color.stroke_width(2))),
                )
                .map_err(err)?,
        };
        if line.in_legend {
            let style = line.style;
            anno.label(line.label.clone())
                .legend(move |(x, y)| match style {
                    LineStyle::Dashed => {
                        PathElement::new(vec![(x, y), (x + 18, y)], BLACK.mix(0.85).stroke_width(1))
                            .into_dyn()
                    }
                    LineStyle::Points => {
                        Circle::new((x + 9, y), 4, color.stroke_width(2)).into_dyn()
                    }
                    LineStyle::Solid | LineStyle::Thin => {
                        PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                            .into_dyn()
                    }
                });
        }
    }
    if panel.lines.iter().any(|l| l.in_legend) || !panel.hlines.is_empty() {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.5))
            .label_font(("sans-serif", font - 3))
            .position(match (panel.legend_low, panel.legend_left) {
                (true, false) => SeriesLabelPosition::LowerRight,
                (true, true) => SeriesLabelPosition::LowerLeft,
                (false, false) => SeriesLabelPosition::UpperRight,
                (false, true) => SeriesLabelPosition::UpperLeft,
            })
            .draw()
            .map_err(err)?;
    }
    Ok(())
}

fn draw_figure<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, fig: &Figure) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("drawing: {e:?}");
    root.fill(&WHITE).map_err(err)?;
    let wrapped: Vec<String> = fig
        .notes
        .iter()
        .flat_map(|n| wrap(&format!("Note: {n}"), 150))
        .collect();
    let note_height = 20 * wrapped.len() as u32 + if wrapped.is_empty() { 0 } else { 10 };
    let (main, notes) = root.split_vertically(fig.size.1 - note_height);
    let body = if fig.panels.len() > 1 {
        main.titled(&fig.title, ("sans-serif", 24)).map_err(err)?
    } else {
        main
    };
    let n = fig.panels.len();
    let cols = if n <= 1 {
        1
    } else if n <= 4 {
        2
    } else {
        3
    };
    let rows = n.div_ceil(cols);
    let areas = body.split_evenly((rows, cols));
    for (panel, area) in fig.panels.iter().zip(areas.iter()) {
        draw_panel(area, panel, n > 1)?;
    }
    for (i, line) in wrapped.iter().enumerate() {
        let style = ("sans-serif", 14).into_font().color(&RED.mix(0.9));
        notes
            .draw(&Text::new(line.clone(), (12, 5 + 20 * i as i32), style))
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

/// A chart's file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Png,
    Svg,
}

impl Format {
    /// The format a chart's file name asks for by its extension (`.png` or `.svg`, in any
    /// case).
    pub fn of(path: &Path) -> Result<Format, String> {
        match path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .as_deref()
        {
            Some("png") => Ok(Format::Png),
            Some("svg") => Ok(Format::Svg),
            _ => Err(format!(
                "'{}' ends in neither .png nor .svg: a chart is written as PNG or SVG, by its file name's extension",
                path.display()
            )),
        }
    }
}

/// `fig` (its points already filtered by [`prepare_log`]) drawn in memory as a file of
/// `format`.
fn render(fig: &Figure, format: Format) -> Result<Vec<u8>> {
    use image::ImageEncoder as _;
    register_font();
    match format {
        Format::Png => {
            let (w, h) = fig.size;
            let mut rgb = vec![0u8; 3 * w as usize * h as usize];
            draw_figure(
                BitMapBackend::with_buffer(&mut rgb, fig.size).into_drawing_area(),
                fig,
            )?;
            // What plotters' own file backend does: image's PNG encoder, default settings.
            let mut bytes = Vec::new();
            image::codecs::png::PngEncoder::new(&mut bytes).write_image(
                &rgb,
                w,
                h,
                image::ColorType::Rgb8,
            )?;
            Ok(bytes)
        }
        Format::Svg => {
            let mut text = String::new();
            draw_figure(
                SVGBackend::with_string(&mut text, fig.size).into_drawing_area(),
                fig,
            )?;
            Ok(text.into_bytes())
        }
    }
}

/// Renders `fig` to `<stem>.png` and `<stem>.svg` (the extensions appended to the stem), each
/// drawn in memory and written atomically (`output::write_atomic`); returns their paths and
/// how many points the axes could not show (listed in the chart's notes).
pub fn save_figure(fig: &Figure, stem: &Path) -> Result<(PathBuf, PathBuf, NotDrawn)> {
    let mut fig = fig.clone();
    let not_drawn = prepare_log(&mut fig);
    let with_ext = |ext: &str| {
        let mut name = stem.as_os_str().to_owned();
        name.push(ext);
        PathBuf::from(name)
    };
    let (png, svg) = (with_ext(".png"), with_ext(".svg"));
    let result = (|| -> Result<()> {
        crate::output::write_atomic(&png, &render(&fig, Format::Png)?)?;
        crate::output::write_atomic(&svg, &render(&fig, Format::Svg)?)
    })();
    result.map_err(|e| e.context(format!("cannot write chart '{}'", stem.display())))?;
    Ok((png, svg, not_drawn))
}

/// Renders `fig` to `path`, as PNG or SVG by its extension ([`Format::of`]), drawn in memory
/// and written atomically; returns how many points the axes could not show (listed in the
/// chart's notes).
pub fn save_chart(fig: &Figure, path: &Path) -> Result<NotDrawn> {
    let format = Format::of(path).map_err(|e| anyhow!(e))?;
    let mut fig = fig.clone();
    let not_drawn = prepare_log(&mut fig);
    render(&fig, format)
        .and_then(|bytes| crate::output::write_atomic(path, &bytes))
        .map_err(|e| e.context(format!("cannot write chart '{}'", path.display())))?;
    Ok(not_drawn)
}

/// Draws `kinds` into `out` (created when the tables have been read; `flag` names it in
/// errors), returning the PNG paths. Each chart reads the table it is drawn from
/// (`ChartKind::table`) next to the experiment's main CSV, and is named after the experiment.
/// A chart that leaves points out (values its axes cannot show, see [`axis_filter`]) says how
/// many and why in one `note:` line on stderr, besides the notes drawn on it.
pub fn draw_charts(
    csv: &Path,
    kinds: &[kinds::ChartKind],
    out: &Path,
    flag: &str,
) -> Result<Vec<PathBuf>> {
    let mut tables: std::collections::BTreeMap<&str, table::Table> = Default::default();
    for &kind in kinds {
        if !tables.contains_key(kind.table().name) {
            let path = csv.with_file_name(format!("{}.csv", kind.table().name));
            let t = table::Table::read(&path)?;
            let mut needed = kind.table().required_columns();
            needed.extend(kind.extra_columns());
            let missing: Vec<&str> = needed
                .iter()
                .filter(|c| !t.has(**c))
                .map(|c| c.name())
                .collect();
            if !missing.is_empty() {
                anyhow::bail!(
                    "'{}' cannot give chart '{}': it has no column {} (is it the experiment's {}.csv?)",
                    path.display(),
                    kind.name(),
                    missing.join(", "),
                    kind.table().name
                );
            }
            tables.insert(kind.table().name, t);
        }
    }
    crate::output::create_dir(flag, out)?;
    let mut pngs = Vec::new();
    for &kind in kinds {
        let source = &tables[kind.table().name];
        let stem = out.join(format!("{}_{}", source.experiment(), kind.name()));
        let (png, _svg, not_drawn) = save_figure(&charts::figure(kind, source), &stem)?;
        if let Some(summary) = not_drawn.summary() {
            eprintln!(
                "note: chart '{}' ({}): {summary}; listed in the chart's notes",
                kind.name(),
                png.display()
            );
        }
        pngs.push(png);
    }
    Ok(pngs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_axis_ticks_below_one_keep_two_significant_digits() {
        let labels: Vec<String> = [0.001, 0.0316, 0.1, 0.3, 1.0, 3.162, 100.0]
            .into_iter()
            .map(log_tick_label)
            .collect();
        assert_eq!(labels, ["0.001", "0.032", "0.1", "0.3", "1", "3.2", "100"]);
    }

    #[test]
    fn a_heatmaps_grey_cells_are_summed_up_in_one_short_note() {
        // A diverged run leaves thousands of cells log10 cannot colour: one item per panel
        // and reason, with a count and the x range (listing each buried the chart).
        let dropped = (0..1500)
            .map(|k| ((40 + 10 * (k % 18)) as f64, (k / 18) as f64, Dropped::Zero))
            .collect();
        let mut fig = Figure {
            title: "t".into(),
            panels: vec![Panel {
                title: "p".into(),
                x_desc: "step".into(),
                heat: Some(Heat {
                    xs: vec![],
                    ys: vec![],
                    z: vec![],
                    dropped,
                }),
                ..Default::default()
            }],
            notes: vec![],
            size: (100, 100),
        };
        let not_drawn = prepare_log(&mut fig);
        assert_eq!(not_drawn.total(), 1500);
        assert_eq!(fig.notes.len(), 1);
        assert!(
            fig.notes[0].ends_with("1500 cells (grey) at step 40 to 210"),
            "{}",
            fig.notes[0]
        );
    }

    #[test]
    fn unit_names_stand_upright_and_thin_out_only_when_they_must() {
        register_font();
        let mut rgb = vec![0u8; 3 * 1100 * 700];
        let area = BitMapBackend::with_buffer(&mut rgb, (1100, 700)).into_drawing_area();
        let names = |n: usize| -> Vec<String> {
            (0..n)
                .map(|i| format!("layer{}.{}", 1 + i / 40, i % 40))
                .chain(["top".to_string()])
                .collect()
        };
        // A few: side by side, every one.
        let few = name_ticks(&area, &names(4), 16, 1000).unwrap();
        assert_eq!(
            (few.shown, few.upright, few.extra_depth),
            ((0..5).collect(), false, 0)
        );
        // resnet152's 50 and top: upright, every one, the area deeper by the longest name.
        let r152 = name_ticks(&area, &names(50), 16, 1000).unwrap();
        assert_eq!((r152.shown.len(), r152.upright), (51, true));
        assert!(r152.extra_depth > 30, "{}", r152.extra_depth);
        // 150: every k-th upright, the top always, none closer than a line of text.
        let many = name_ticks(&area, &names(150), 16, 1000).unwrap();
        assert!(many.upright && many.shown.len() < 60, "{:?}", many.shown);
        assert_eq!((many.shown[0], *many.shown.last().unwrap()), (0, 150));
        let slot = 1000.0 / 151.0;
        assert!(many
            .shown
            .windows(2)
            .all(|w| (w[1] - w[0]) as f64 * slot >= 16.0));
    }

    #[test]
    fn ranges_compress_runs() {
        assert_eq!(ranges(&[0.0, 1.0, 2.0, 5.0, 7.0, 8.0]), "0-2, 5, 7-8");
        assert_eq!(ranges(&[]), "");
    }

    #[test]
    fn log_filter_drops_what_a_log_axis_cannot_show() {
        let (kept, dropped) = log_filter(&[
            (0.0, 1.0),
            (1.0, 0.0),
            (2.0, f64::NAN),
            (3.0, f64::INFINITY),
            (4.0, 1e-320),
        ]);
        assert_eq!(kept, vec![(0.0, 1.0)]);
        let reasons: Vec<(f64, Dropped)> = vec![
            (1.0, Dropped::Zero),
            (2.0, Dropped::NonFinite),
            (3.0, Dropped::NonFinite),
            (4.0, Dropped::TinyOrNegative),
        ];
        assert_eq!(dropped, reasons);
    }
}
