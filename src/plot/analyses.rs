//! Charts and report numbers of the analyses beyond the paper: the gradient by path length
//! (exact against Veit et al.'s sampled estimate, at initialisation and after training),
//! lesions of trained networks, and shattered gradients. Each chart and its report section
//! read the same grouping functions.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::table::{geo_mean, Table};
use super::{Band, Figure, Line, LineStyle, Panel};
use crate::analysis::paths::effective_window;
use crate::schema::col;

use super::charts::labelled as line;

/// One (variant, when) of a paths table at the input: per k, the exact norms and the sampled
/// totals over the replicates.
pub struct PathSeries {
    pub label: String,
    pub exact: BTreeMap<usize, Vec<f64>>,
    pub sampled: BTreeMap<usize, Vec<f64>>,
}

impl PathSeries {
    fn combined(m: &BTreeMap<usize, Vec<f64>>) -> Vec<(usize, f64)> {
        m.iter().map(|(&k, v)| (k, geo_mean(v))).collect()
    }

    /// The 90% window of the combined (geometric-mean) norms.
    pub fn window(m: &BTreeMap<usize, Vec<f64>>, share: f64) -> Option<(usize, usize)> {
        let c = Self::combined(m);
        if c.is_empty() {
            return None;
        }
        let dense: Vec<f64> = c.iter().map(|p| p.1).collect();
        effective_window(&dense, share).map(|(a, b)| (c[a].0, c[b].0))
    }
}

/// The input's rows (unit 0) of a paths table, by variant and `when`, in order.
pub fn path_series(t: &Table) -> Vec<PathSeries> {
    let mut order: Vec<String> = Vec::new();
    let mut map: BTreeMap<String, PathSeries> = BTreeMap::new();
    for r in &t.rows {
        if t.get(r, col::UNIT) != "0" {
            continue;
        }
        let Ok(k) = t.get(r, col::K).parse::<usize>() else {
            continue;
        };
        let label = format!("{}, {}", t.variant(r), t.get(r, col::WHEN));
        if !map.contains_key(&label) {
            order.push(label.clone());
        }
        let e = map.entry(label.clone()).or_insert_with(|| PathSeries {
            label,
            exact: BTreeMap::new(),
            sampled: BTreeMap::new(),
        });
        if let Some(v) = t.f(r, col::EXACT_NORM) {
            e.exact.entry(k).or_default().push(v);
        }
        if let Some(v) = t.f(r, col::SAMPLED_TOTAL) {
            e.sampled.entry(k).or_default().push(v);
        }
    }
    order.into_iter().map(|l| map.remove(&l).unwrap()).collect()
}

fn cumulative(points: &[(usize, f64)]) -> Vec<(f64, f64)> {
    let total: f64 = points.iter().map(|p| p.1).sum();
    let mut acc = 0.0;
    points
        .iter()
        .map(|&(k, v)| {
            acc += v;
            (k as f64, acc / total)
        })
        .collect()
}

/// `||G_k(0)||` against k (exact: lines; Veit's estimate `C(n,k)` x mean single-path norm:
/// points) and the cumulative share of `sum_k`, per variant, at initialisation and trained.
pub fn path_lengths(t: &Table) -> Figure {
    let name = t.experiment().to_string();
    let (mut norms, mut shares) = (Vec::new(), Vec::new());
    for (i, s) in path_series(t).iter().enumerate() {
        let exact = PathSeries::combined(&s.exact);
        norms.push(line(
            format!("{}: exact ‖G_k(0)‖", s.label),
            exact.iter().map(|&(k, v)| (k as f64, v)).collect(),
            LineStyle::Solid,
            i,
        ));
        shares.push(line(
            format!("{}: exact", s.label),
            cumulative(&exact),
            LineStyle::Solid,
            i,
        ));
        if !s.sampled.is_empty() {
            let sampled = PathSeries::combined(&s.sampled);
            norms.push(line(
                format!("{}: sampled (Veit)", s.label),
                sampled.iter().map(|&(k, v)| (k as f64, v)).collect(),
                LineStyle::Points,
                i,
            ));
            shares.push(line(
                format!("{}: sampled (Veit)", s.label),
                cumulative(&sampled),
                LineStyle::Points,
                i,
            ));
        }
    }
    Figure {
        title: format!("{name}: the input's gradient by path length"),
        panels: vec![
            Panel {
                title: "‖G_k(0)‖: all paths through k branches (points: C(n,k) × mean sampled single path)".into(),
                x_desc: "path length k (branches taken)".into(),
                y_desc: "‖G_k(0)‖".into(),
                lines: norms,
                ..Default::default()
            },
            Panel {
                title: "cumulative share of Σ_k ‖G_k(0)‖".into(),
                x_desc: "path length k".into(),
                y_desc: "share up to k".into(),
                lines: shares,
                linear: true,
                legend_low: true,
                ..Default::default()
            },
        ],
        notes: vec![
            "geometric mean over replicates at each k; the exact G_k(0) sum to dE/dx_0 (checked to 1e-10 in every cell)".into(),
        ],
        size: (1400, 700),
    }
}

/// The report's paths table: the 90% windows, exact and sampled, and the peak.
pub fn paths_section(t: &Table) -> Option<String> {
    let series = path_series(t);
    if series.is_empty() {
        return None;
    }
    let mut s = String::from("The smallest window of path lengths holding 90% of Σ_k ‖G_k(0)‖ (geometric means over replicates), exact and by Veit et al.'s sampled estimate, and the path length carrying the most:\n\n| variant | replicates | exact 90% window | sampled 90% window | exact peak k | sampled peak k |\n|---|---|---|---|---|---|\n");
    let show = |w: Option<(usize, usize)>| w.map_or("-".into(), |(a, b)| format!("k = {a}..{b}"));
    let peak = |m: &BTreeMap<usize, Vec<f64>>| {
        PathSeries::combined(m)
            .into_iter()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map_or("-".into(), |p| p.0.to_string())
    };
    for p in &series {
        let reps = p.exact.values().map(Vec::len).min().unwrap_or(0);
        let _ = writeln!(
            s,
            "| {} | {reps} | {} | {} | {} | {} |",
            p.label,
            show(PathSeries::window(&p.exact, 0.9)),
            show(PathSeries::window(&p.sampled, 0.9)),
            peak(&p.exact),
            peak(&p.sampled),
        );
    }
    Some(s)
}

/// Per variant: the test errors of each kind of lesion over the replicates.
pub struct LesionStats {
    pub variant: String,
    pub intact: Vec<f64>,
    /// Deleted unit -> test errors over the replicates.
    pub single: BTreeMap<usize, Vec<f64>>,
    /// k -> test errors over replicates and draws.
    pub random: BTreeMap<usize, Vec<f64>>,
}

pub fn lesion_stats(t: &Table) -> Vec<LesionStats> {
    let mut order: Vec<String> = Vec::new();
    let mut map: BTreeMap<String, LesionStats> = BTreeMap::new();
    for r in &t.rows {
        let v = t.variant(r);
        if !map.contains_key(&v) {
            order.push(v.clone());
        }
        let e = map.entry(v.clone()).or_insert_with(|| LesionStats {
            variant: v,
            intact: vec![],
            single: BTreeMap::new(),
            random: BTreeMap::new(),
        });
        let Some(err) = t.f(r, col::TEST_ERROR) else {
            continue;
        };
        let k: usize = t.get(r, col::K).parse().unwrap_or(0);
        match t.get(r, col::KIND) {
            "none" => e.intact.push(err),
            "single" => {
                if let Ok(u) = t.get(r, col::DELETED).parse::<usize>() {
                    e.single.entry(u).or_default().push(err);
                }
            }
            _ => e.random.entry(k).or_default().push(err),
        }
    }
    order.into_iter().map(|v| map.remove(&v).unwrap()).collect()
}

fn median(v: &[f64]) -> f64 {
    crate::stats::median(v).unwrap_or(f64::NAN)
}

/// Test error (%) with one unit deleted, against the unit (median over replicates), the
/// intact net's as a thin flat line.
pub fn lesion_units(t: &Table) -> Figure {
    let name = t.experiment().to_string();
    let mut lines = Vec::new();
    for (i, s) in lesion_stats(t).iter().enumerate() {
        let pts: Vec<(f64, f64)> = s
            .single
            .iter()
            .map(|(&u, v)| (u as f64, 100.0 * median(v)))
            .collect();
        if let (Some(first), Some(last)) = (pts.first(), pts.last()) {
            let base = 100.0 * median(&s.intact);
            lines.push(Line {
                label: format!("{}: intact", s.variant),
                points: vec![(first.0, base), (last.0, base)],
                style: LineStyle::Thin,
                color: i,
                in_legend: false,
            });
        }
        lines.push(line(s.variant.clone(), pts, LineStyle::Solid, i));
    }
    Figure {
        title: format!("{name}: test error with one unit deleted"),
        panels: vec![Panel {
            title: "test error with unit l's branch deleted (thin: the intact net)".into(),
            x_desc: "deleted unit l".into(),
            y_desc: "test error (%)".into(),
            lines,
            linear: true,
            ..Default::default()
        }],
        notes: vec![
            "median over replicates; a plain net's unit is replaced by the identity".into(),
        ],
        size: (1100, 700),
    }
}

/// Test error (%) with k random units deleted: mean over replicates and draws, the band
/// from the smallest to the largest.
pub fn lesion_count(t: &Table) -> Figure {
    let name = t.experiment().to_string();
    let (mut lines, mut bands) = (Vec::new(), Vec::new());
    for (i, s) in lesion_stats(t).iter().enumerate() {
        let stat = |f: &dyn Fn(&[f64]) -> f64| -> Vec<(f64, f64)> {
            s.random
                .iter()
                .map(|(&k, v)| (k as f64, 100.0 * f(v)))
                .collect()
        };
        lines.push(line(
            s.variant.clone(),
            stat(&|v| v.iter().sum::<f64>() / v.len() as f64),
            LineStyle::Solid,
            i,
        ));
        bands.push(Band {
            lower: stat(&|v| v.iter().cloned().fold(f64::INFINITY, f64::min)),
            upper: stat(&|v| v.iter().cloned().fold(f64::NEG_INFINITY, f64::max)),
            color: i,
        });
    }
    Figure {
        title: format!("{name}: test error with k random units deleted"),
        panels: vec![Panel {
            title: "mean over replicates and draws; band: smallest to largest".into(),
            x_desc: "units deleted k".into(),
            y_desc: "test error (%)".into(),
            lines,
            bands,
            linear: true,
            legend_low: true,
            ..Default::default()
        }],
        notes: vec![],
        size: (1100, 700),
    }
}

pub fn lesion_section(t: &Table) -> Option<String> {
    let stats = lesion_stats(t);
    if stats.is_empty() {
        return None;
    }
    let mut s = String::from("Test error (medians over replicates): intact, with one unit deleted (the median over the units, and the worst unit), and with half the units deleted at random (mean over replicates and draws):\n\n| variant | replicates | intact | one unit: median | one unit: worst | k = n/2 random |\n|---|---|---|---|---|---|\n");
    let pct = |v: f64| format!("{:.2}%", 100.0 * v);
    for st in &stats {
        let per_unit: Vec<(usize, f64)> = st.single.iter().map(|(&u, v)| (u, median(v))).collect();
        let meds: Vec<f64> = per_unit.iter().map(|p| p.1).collect();
        let worst = per_unit
            .iter()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map_or("-".into(), |(u, e)| format!("{} (unit {u})", pct(*e)));
        let half = st.random.iter().next_back().map_or("-".into(), |(k, v)| {
            format!("{} (k = {k})", pct(v.iter().sum::<f64>() / v.len() as f64))
        });
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {worst} | {half} |",
            st.variant,
            st.intact.len(),
            pct(median(&st.intact)),
            if meds.is_empty() {
                "-".into()
            } else {
                pct(median(&meds))
            },
        );
    }
    Some(s)
}

/// Shatter cells by family (the variant without its depth), then depth: the mean
/// autocorrelation over the replicates, lag by lag.
pub fn shatter_series(t: &Table) -> Vec<(String, BTreeMap<usize, Vec<f64>>)> {
    let mut order: Vec<String> = Vec::new();
    let mut acc: BTreeMap<String, BTreeMap<usize, BTreeMap<usize, Vec<f64>>>> = BTreeMap::new();
    for r in &t.rows {
        let family = t.variant_except(r, Some(col::UNITS));
        if !acc.contains_key(&family) {
            order.push(family.clone());
        }
        let (Ok(depth), Ok(lag), Some(v)) = (
            t.get(r, col::UNITS).parse::<usize>(),
            t.get(r, col::LAG).parse::<usize>(),
            t.f(r, col::AUTOCORRELATION),
        ) else {
            continue;
        };
        acc.entry(family)
            .or_default()
            .entry(depth)
            .or_default()
            .entry(lag)
            .or_default()
            .push(v);
    }
    order
        .into_iter()
        .map(|f| {
            let depths = acc.remove(&f).unwrap();
            let means = depths
                .into_iter()
                .map(|(d, lags)| {
                    let r: Vec<f64> = lags
                        .values()
                        .map(|v| v.iter().sum::<f64>() / v.len() as f64)
                        .collect();
                    (d, r)
                })
                .collect();
            (f, means)
        })
        .collect()
}

/// The references, seeded and averaged like the nets: white and brown noise.
fn references(replicates: usize) -> (Vec<f64>, Vec<f64>) {
    use crate::analysis::shatter::{mean_autocorrelation, noise};
    let (w, b): (Vec<_>, Vec<_>) = (0..replicates.max(1) as u64).map(noise).unzip();
    (mean_autocorrelation(&w), mean_autocorrelation(&b))
}

const SHOWN_LAGS: usize = 64;

pub fn shatter(t: &Table) -> Figure {
    let name = t.experiment().to_string();
    let (white, brown) = references(8);
    let head = |r: &[f64]| -> Vec<(f64, f64)> {
        r.iter()
            .take(SHOWN_LAGS)
            .enumerate()
            .map(|(l, &v)| (l as f64, v))
            .collect()
    };
    let panels = shatter_series(t)
        .into_iter()
        .take(6)
        .map(|(family, depths)| {
            let mut lines: Vec<Line> = depths
                .iter()
                .enumerate()
                .map(|(i, (d, r))| line(format!("depth {d}"), head(r), LineStyle::Solid, i))
                .collect();
            lines.push(line("white noise".into(), head(&white), LineStyle::Thin, 7));
            lines.push(line(
                "brown noise".into(),
                head(&brown),
                LineStyle::Dashed,
                7,
            ));
            Panel {
                title: family,
                x_desc: "lag (sweep points)".into(),
                y_desc: "autocorrelation".into(),
                lines,
                linear: true,
                ..Default::default()
            }
        })
        .collect();
    Figure {
        title: format!("{name}: autocorrelation of d(output)/d(input) over the sweep"),
        panels,
        notes: vec!["mean over replicates; the references (white noise thin, brown noise dashed) are seeded draws averaged like the nets".into()],
        size: (1400, 900),
    }
}

pub fn shatter_section(t: &Table) -> Option<String> {
    use crate::analysis::shatter::half_lag;
    let series = shatter_series(t);
    if series.is_empty() {
        return None;
    }
    let mut s = String::from("Autocorrelation of the input gradient over the 256-point sweep (mean over replicates): at lag 1 and 4, and the first lag where it falls below 1/2 (white noise: 1; brown noise: tens):\n\n| net | depth | r(1) | r(4) | first lag below 1/2 |\n|---|---|---|---|---|\n");
    let row = |s: &mut String, name: &str, depth: &str, r: &[f64]| {
        let _ = writeln!(
            s,
            "| {name} | {depth} | {:.3} | {:.3} | {} |",
            r.get(1).copied().unwrap_or(f64::NAN),
            r.get(4).copied().unwrap_or(f64::NAN),
            half_lag(r).map_or("never".into(), |l| l.to_string())
        );
    };
    for (family, depths) in &series {
        for (d, r) in depths {
            row(&mut s, family, &d.to_string(), r);
        }
    }
    let (white, brown) = references(8);
    row(&mut s, "white noise (reference)", "", &white);
    row(&mut s, "brown noise (reference)", "", &brown);
    Some(s)
}
