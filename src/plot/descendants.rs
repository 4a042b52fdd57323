//! The charts and report numbers of the paper's descendants (Xiong et al. 2020 on Pre- and
//! Post-LN, the branch scalings): the weight-gradient view, the last unit's weight gradient
//! against the depth with its fitted power law, `E||x_l||^2 / d` against Lemma 2's bounds,
//! the direct part under a LayerNorm after the addition, and the forward-signal predictions
//! against what was measured. Each figure and its report section read the same functions.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::table::{geo_mean, Table};
use super::{Figure, LineStyle, Panel};
use crate::schema::col;
use crate::stats::log_log_slope;
use crate::unit::{Placement, ShortcutKind};

const UNIT_AXIS: &str = "unit l";

use super::charts::labelled as line;

fn placement_of(t: &Table, row: &[String]) -> Option<Placement> {
    t.get(row, col::PLACEMENT).parse().ok()
}

fn norm_of<'a>(t: &Table, row: &'a [String]) -> &'a str {
    if t.has(col::NORM) {
        t.get(row, col::NORM)
    } else {
        "batch"
    }
}

/// `E||x_l||^2 / d` of a profile row: the channel squared mean plus the channel variance,
/// averaged over channels (for an MLP, the mean over features of `E x^2`).
fn squared_norm_per_dim(t: &Table, row: &[String]) -> Option<f64> {
    Some(t.f(row, col::ACT_MEAN_SQ)? + t.f(row, col::ACT_VAR)?)
}

/// The rows of the deepest nets only, when the table sweeps the depth (per-unit views of
/// several depths at once are unreadable), and the depth kept (`None`: no sweep).
fn deepest(t: &Table) -> (Table, Option<usize>) {
    let depth = |r: &Vec<String>| t.get(r, col::UNITS).parse::<usize>().unwrap_or(0);
    let max = t.rows.iter().map(depth).max().unwrap_or(0);
    if t.rows.iter().all(|r| depth(r) == max) {
        return (t.clone(), None);
    }
    let rows = t.rows.iter().filter(|r| depth(r) == max).cloned().collect();
    (Table::new(t.header.clone(), rows), Some(max))
}

fn depth_note(depth: Option<usize>) -> String {
    depth.map_or(String::new(), |l| format!(", the L = {l} nets"))
}

/// The weight layers in first-appearance order.
fn layers(t: &Table) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in &t.rows {
        let l = t.get(r, col::LAYER);
        if !out.iter().any(|o| o == l) {
            out.push(l.to_string());
        }
    }
    out
}

/// Xiong et al.'s Fig. 3 view: ||dE/dW||_F of each weight layer against the unit, one panel
/// per layer (w1, w2, ...), one line per variant, replicates combined by the geometric mean.
pub fn weight_grads(t: &Table) -> Figure {
    let name = t.experiment().to_string();
    let (t, depth) = deepest(t);
    let t = &t;
    let variants = t.by_variant();
    let panels = layers(t)
        .into_iter()
        .take(4)
        .map(|layer| {
            let lines = variants
                .iter()
                .enumerate()
                .map(|(i, (v, units))| {
                    let pts = super::charts::series_where(t, units, col::WEIGHT_GRAD_NORM, |r| {
                        t.get(r, col::LAYER) == layer
                    });
                    line(v.clone(), pts, LineStyle::Solid, i)
                })
                .collect();
            Panel {
                title: format!("‖∂E/∂W‖_F of each unit's {layer}"),
                x_desc: UNIT_AXIS.into(),
                y_desc: "‖∂E/∂W‖_F".into(),
                lines,
                ..Default::default()
            }
        })
        .collect();
    Figure {
        title: format!(
            "{name}: weight gradients per unit at initialisation{}",
            depth_note(depth)
        ),
        panels,
        notes: vec![],
        size: (1400, 700),
    }
}

/// What Xiong et al.'s Theorem 1 says about a variant's last-unit weight gradient against the
/// depth: the exponent of its bound, with its label. Post-LN: independent of L; Pre-LN:
/// `O(sqrt(1/L))`.
fn theorem1(placement: Placement, norm: &str) -> Option<(&'static str, f64)> {
    match (placement, norm) {
        (Placement::PostNorm, "layer") => Some(("Xiong Thm 1, Post-LN: L^0", 0.0)),
        (Placement::PreNorm, "layer") => Some(("Xiong Thm 1, Pre-LN: L^(-1/2)", -0.5)),
        // The theorem is about LayerNorm in the Transformer's two units.
        (
            Placement::Original
            | Placement::BnAfterAdd
            | Placement::ReluBeforeAdd
            | Placement::ReluPreact
            | Placement::FullPreact
            | Placement::PostNorm
            | Placement::PreNorm,
            _,
        ) => None,
    }
}

/// One variant's last-unit weight gradient against the depth.
pub struct DepthFit {
    pub variant: String,
    /// (L, geometric mean over replicates of ||dE/dW|| of the last unit's last branch weight).
    pub points: Vec<(f64, f64)>,
    /// Replicates per depth (the smallest count).
    pub replicates: usize,
    pub slope: Option<f64>,
    pub theory: Option<(&'static str, f64)>,
    /// The weight layer measured (the last of the branch: `w2` in a two-layer branch).
    pub layer: String,
}

/// The last unit's last branch weight (the highest `w<k>`) of every cell, grouped by the
/// variant without its depth, with the power law fitted over the depths.
pub fn depth_fits(t: &Table) -> Vec<DepthFit> {
    // The last branch weight of each cell's last unit.
    let mut last: BTreeMap<&str, (usize, String)> = BTreeMap::new();
    for r in &t.rows {
        let (Ok(units), Ok(unit)) = (
            t.get(r, col::UNITS).parse::<usize>(),
            t.get(r, col::UNIT).parse::<usize>(),
        ) else {
            continue;
        };
        let layer = t.get(r, col::LAYER);
        if unit + 1 != units || !layer.starts_with('w') {
            continue;
        }
        let e = last
            .entry(t.get(r, col::CELL))
            .or_insert((unit, layer.to_string()));
        if layer > e.1.as_str() {
            e.1 = layer.to_string();
        }
    }
    let mut order: Vec<String> = Vec::new();
    /// Per variant: the values by depth, the theorem that applies, the layer measured.
    type Group = (
        BTreeMap<usize, Vec<f64>>,
        Option<(&'static str, f64)>,
        String,
    );
    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    for r in &t.rows {
        let Some((unit, layer)) = last.get(t.get(r, col::CELL)) else {
            continue;
        };
        if t.get(r, col::UNIT).parse::<usize>().ok() != Some(*unit) || t.get(r, col::LAYER) != layer
        {
            continue;
        }
        let Some(g) = t.f(r, col::WEIGHT_GRAD_NORM) else {
            continue;
        };
        let v = t.variant_except(r, Some(col::UNITS));
        if !groups.contains_key(&v) {
            order.push(v.clone());
        }
        let theory = placement_of(t, r).and_then(|p| theorem1(p, norm_of(t, r)));
        groups
            .entry(v)
            .or_insert_with(|| (BTreeMap::new(), theory, layer.clone()))
            .0
            .entry(unit + 1)
            .or_default()
            .push(g);
    }
    order
        .into_iter()
        .map(|v| {
            let (by_depth, theory, layer) = groups.remove(&v).unwrap();
            let points: Vec<(f64, f64)> = by_depth
                .iter()
                .map(|(&l, vals)| (l as f64, geo_mean(vals)))
                .collect();
            let replicates = by_depth.values().map(Vec::len).min().unwrap_or(0);
            let slope = (points.len() >= 2)
                .then(|| log_log_slope(&points))
                .flatten();
            DepthFit {
                variant: v,
                points,
                replicates,
                slope,
                theory,
                layer,
            }
        })
        .collect()
}

/// The last unit's weight gradient against L on log-log axes, the fitted slope in each label,
/// the theorem's exponent dashed from the shallowest measured point.
pub fn last_weight_grad(t: &Table) -> Figure {
    let name = t.experiment().to_string();
    let mut lines = Vec::new();
    let mut layer = String::from("w2");
    for (i, fit) in depth_fits(t).into_iter().enumerate() {
        layer = fit.layer.clone();
        let slope = fit
            .slope
            .map_or("no fit".to_string(), |s| format!("fitted slope {s:+.2}"));
        if let (Some((label, exponent)), Some(&(l0, g0))) = (fit.theory, fit.points.first()) {
            let pts = fit
                .points
                .iter()
                .map(|&(l, _)| (l, g0 * (l / l0).powf(exponent)))
                .collect();
            lines.push(line(
                format!("{}: {label}", fit.variant),
                pts,
                LineStyle::Dashed,
                i,
            ));
        }
        lines.push(line(
            format!("{}: {slope}", fit.variant),
            fit.points,
            LineStyle::Solid,
            i,
        ));
    }
    Figure {
        title: format!("{name}: the last unit's ‖∂E/∂{layer}‖_F against the depth"),
        panels: vec![Panel {
            title: format!(
                "last unit's ‖∂E/∂{layer}‖_F (log-log; dashed: the theorem's exponent)"
            ),
            x_desc: "units L".into(),
            y_desc: format!("‖∂E/∂{layer}‖_F"),
            lines,
            log_x: true,
            ..Default::default()
        }],
        notes: vec![
            "geometric mean over replicates at each depth; slope: least squares of ln ‖∂E/∂W‖ on ln L".into(),
        ],
        size: (1100, 700),
    }
}

/// Lemma 2's bounds on `E||x_l||^2 / d` for Pre-LN, from the measured `x_0`:
/// `v_0 + l/2 <= . <= v_0 + 3l/2` (Xiong et al. start from `v_0 = 1`).
fn lemma2_bounds(v0: f64, l: f64) -> (f64, f64) {
    (v0 + l / 2.0, v0 + 1.5 * l)
}

fn is_pre_ln(t: &Table, row: &[String]) -> bool {
    placement_of(t, row) == Some(Placement::PreNorm) && norm_of(t, row) == "layer"
}

/// `E||x_l||^2 / d` per variant, with Lemma 2's bounds dashed over the Pre-LN variants.
pub fn squared_norm(t: &Table) -> Figure {
    let name = t.experiment().to_string();
    let (t, depth) = deepest(t);
    let t = &t;
    let mut lines = Vec::new();
    for (i, (v, units)) in t.by_variant().iter().enumerate() {
        let pts: Vec<(f64, f64)> = units
            .iter()
            .filter_map(|(&u, rows)| {
                let vals: Vec<f64> = rows
                    .iter()
                    .filter_map(|r| squared_norm_per_dim(t, r))
                    .collect();
                (!vals.is_empty()).then(|| (u as f64, geo_mean(&vals)))
            })
            .collect();
        let pre_ln = units
            .values()
            .next()
            .and_then(|rows| rows.first())
            .is_some_and(|r| is_pre_ln(t, r));
        if let (true, Some(&(_, v0))) = (pre_ln, pts.first()) {
            let (lo, hi): (Vec<_>, Vec<_>) = pts
                .iter()
                .map(|&(l, _)| {
                    let (a, b) = lemma2_bounds(v0, l);
                    ((l, a), (l, b))
                })
                .unzip();
            lines.push(line(
                format!("{v}: Lemma 2 lower bound, v_0 + l/2"),
                lo,
                LineStyle::Dashed,
                i,
            ));
            lines.push(line(
                format!("{v}: Lemma 2 upper bound, v_0 + 3l/2"),
                hi,
                LineStyle::Dashed,
                i,
            ));
        }
        lines.push(line(v.clone(), pts, LineStyle::Solid, i));
    }
    Figure {
        title: format!("{name}: E‖x_l‖² / d against the unit{}", depth_note(depth)),
        panels: vec![Panel {
            title: "E‖x_l‖² / d (dashed: Xiong et al.'s Lemma 2 bounds for Pre-LN, from the measured x_0)".into(),
            x_desc: UNIT_AXIS.into(),
            y_desc: "E‖x_l‖² / d".into(),
            lines,
            legend_low: true,
            ..Default::default()
        }],
        notes: vec![
            "Lemma 2 assumes Xavier initialisation; a Post-LN x_l is LayerNorm's output (1 by construction): its lemma value 3d/2 is the sum before it".into(),
        ],
        size: (1100, 700),
    }
}

fn num(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.3}")
    } else {
        format!("{v}")
    }
}

/// The report's table of fitted slopes.
pub fn depth_fit_section(t: &Table) -> Option<String> {
    let fits = depth_fits(t);
    if fits.is_empty() {
        return None;
    }
    let depths: Vec<f64> = fits[0].points.iter().map(|p| p.0).collect();
    let mut s = format!(
        "The last unit's ‖∂E/∂{}‖_F (geometric mean over replicates) against the depth L, and the least-squares slope of its logarithm on ln L:\n\n| variant | {} | fitted slope | Theorem 1 | replicates |\n|---|{}---|---|---|\n",
        fits[0].layer,
        depths
            .iter()
            .map(|l| format!("L={l}"))
            .collect::<Vec<_>>()
            .join(" | "),
        "---|".repeat(depths.len()),
    );
    for f in &fits {
        let by_l: BTreeMap<u64, f64> = f.points.iter().map(|&(l, g)| (l as u64, g)).collect();
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            f.variant,
            depths
                .iter()
                .map(|l| by_l.get(&(*l as u64)).map_or("-".into(), |g| num(*g)))
                .collect::<Vec<_>>()
                .join(" | "),
            f.slope.map_or("-".into(), |s| format!("{s:+.3}")),
            f.theory
                .map_or("-".into(), |(_, e)| format!("{e:+.1} (a bound)")),
            f.replicates,
        );
    }
    Some(s)
}

/// The report's Fig. 3 numbers: per variant (the deepest nets), ||dE/dW||_F of each layer at
/// the first, middle and last unit and the last over the first (Xiong et al.: Post-LN's grows
/// with the unit, Pre-LN's stays flat).
pub fn weight_grads_section(t: &Table) -> Option<String> {
    let (t, depth) = deepest(t);
    let t = &t;
    let mut s = format!("‖∂E/∂W‖_F per unit{} (geometric mean over replicates; Xiong et al.'s Fig. 3: growing with l for Post-LN, flat for Pre-LN):\n\n| variant | layer | unit 0 | unit L/2 | unit L−1 | last / first |\n|---|---|---|---|---|---|\n", depth_note(depth));
    let mut any = false;
    for (v, units) in t.by_variant() {
        for layer in layers(t).iter().filter(|l| l.starts_with('w')) {
            let at = |u: usize| -> Option<f64> {
                let vals: Vec<f64> = units
                    .get(&u)?
                    .iter()
                    .filter(|r| t.get(r, col::LAYER) == layer)
                    .filter_map(|r| t.f(r, col::WEIGHT_GRAD_NORM))
                    .collect();
                (!vals.is_empty()).then(|| geo_mean(&vals))
            };
            let Some(&last) = units.keys().last() else {
                continue;
            };
            let (first, mid, end) = (at(0), at(last / 2), at(last));
            let ratio = match (first, end) {
                (Some(a), Some(b)) => num(b / a),
                _ => "-".into(),
            };
            let cell = |x: Option<f64>| x.map_or("-".into(), num);
            let _ = writeln!(
                s,
                "| {v} | {layer} | {} | {} | {} | {ratio} |",
                cell(first),
                cell(mid),
                cell(end)
            );
            any = true;
        }
    }
    any.then_some(s)
}

/// The report's Lemma 2 table: `E||x_l||^2 / d` at a few units of the deepest cell of each
/// variant, the Pre-LN bounds beside it, and the branch variance (Lemma 2's Post-LN
/// `3d/2 = d + d/2` is `d` plus it under Xavier).
pub fn squared_norm_section(t: &Table) -> Option<String> {
    if !t.has(col::ACT_MEAN_SQ) {
        return None;
    }
    let (t, depth) = deepest(t);
    let t = &t;
    let mut s = format!("E‖x_l‖²/d at units 0, L/4, L/2 and L of each variant{} (geometric mean over replicates), Lemma 2's Pre-LN bounds from the measured x_0, and E‖F(x_l)‖²/d averaged over the units (Lemma 2: the sum x_l + F(x_l) has 1 + 1/2 under Post-LN with Xavier weights, the 3d/2 of its statement; He's weights double the branch's 1/2; Pre-LN grows by it per unit):\n\n| variant | L | l=0 | l=L/4 | l=L/2 | l=L | Lemma 2 at L (Pre-LN) | mean E‖F‖²/d |\n|---|---|---|---|---|---|---|---|\n", depth_note(depth));
    let mut any = false;
    for (v, units) in t.by_variant() {
        let Some(&top) = units.keys().last() else {
            continue;
        };
        let at = |l: usize| -> Option<f64> {
            let vals: Vec<f64> = units
                .get(&l)?
                .iter()
                .filter_map(|r| squared_norm_per_dim(t, r))
                .collect();
            (!vals.is_empty()).then(|| geo_mean(&vals))
        };
        let first = units.values().next().and_then(|r| r.first());
        let pre_ln = first.is_some_and(|r| is_pre_ln(t, r));
        let bounds = match (pre_ln, at(0)) {
            (true, Some(v0)) => {
                let (lo, hi) = lemma2_bounds(v0, top as f64);
                format!("{} to {}", num(lo), num(hi))
            }
            _ => "-".into(),
        };
        let branch: Vec<f64> = units
            .values()
            .flatten()
            .filter_map(|r| branch_squared_norm_per_dim(t, r))
            .collect();
        let mean_branch = if branch.is_empty() {
            "-".into()
        } else {
            num(branch.iter().sum::<f64>() / branch.len() as f64)
        };
        let cell = |l: usize| at(l).map_or("-".into(), num);
        let _ = writeln!(
            s,
            "| {v} | {top} | {} | {} | {} | {} | {bounds} | {mean_branch} |",
            cell(0),
            cell(top / 4),
            cell(top / 2),
            cell(top),
        );
        any = true;
    }
    any.then_some(s)
}

/// Under a norm after the addition the shortcut-only path passes every unit's `J_N`; for
/// LayerNorm `J_LN(y) = (gamma / sigma(y)) (I - 1 1^T/d - y^ y^T/d)`, so each unit scales the
/// direct part by about `a / sigma(y_l)`, `sigma(y_l)^2 ~ a^2 E||x_l||^2/d + E||F(x_l)||^2/d`
/// (derived; the cross term and the per-sample mean left out). The estimate of the direct
/// ratio at unit l is the product over the units above it in its stage.
fn direct_factor(t: &Table, row: &[String], a: f64) -> Option<f64> {
    let m_x = squared_norm_per_dim(t, row)?;
    Some(a / (a * a * m_x + branch_squared_norm_per_dim(t, row)?).sqrt())
}

/// `E||F'(x_l)||^2 / d` of a profile row, for a unit that keeps the shape: `||F'||^2` over the
/// batch per element, x_l's element count being `||x_l||^2 / (E||x_l||^2 / d)`.
fn branch_squared_norm_per_dim(t: &Table, row: &[String]) -> Option<f64> {
    let m_x = squared_norm_per_dim(t, row)?;
    let elements = t.f(row, col::ACT_NORM)?.powi(2) / m_x;
    Some(t.f(row, col::BRANCH_NORM)?.powi(2) / elements)
}

pub fn post_norm_direct_section(t: &Table) -> Option<String> {
    let (t, depth) = deepest(t);
    let t = &t;
    let mut s = format!("The direct part under a norm after the addition (Post-LN, DeepNorm): the shortcut-only path passes each unit's LayerNorm, whose Jacobian is (γ/σ(y))(I − 11ᵀ/d − ŷŷᵀ/d), so each unit scales it by about a/σ(y_l), σ(y_l)² ≈ a² E‖x_l‖²/d + E‖F(x_l)‖²/d (a = 1, or DeepNorm's (2L)^(1/4); the cross term and the per-sample mean left out), rather than by a λ: about (1 + 1/2)^(-1/2) per unit with Xavier weights, (1 + 2)^(-1/2) with He's. Measured direct ratio at unit 0 (over the top of its stage) against that product over the stage's units{} (geometric means over replicates):\n\n| variant | L | direct ratio at 0 | ∏ estimate | measured / estimate | gradient ratio at 0 |\n|---|---|---|---|---|---|\n", depth_note(depth));
    let mut any = false;
    for (v, units) in t.by_variant() {
        let Some(first) = units.values().next().and_then(|r| r.first()) else {
            continue;
        };
        if placement_of(t, first) != Some(Placement::PostNorm) {
            continue;
        }
        let shortcut: Option<ShortcutKind> = t.get(first, col::SHORTCUT).parse().ok();
        let Some(&top) = units.keys().last() else {
            continue;
        };
        let a = match shortcut {
            Some(ShortcutKind::DeepNorm { .. }) => crate::unit::shortcut::deepnorm_constants(top).0,
            // Every other kind, and a shortcut that does not parse, taken as adding x itself.
            Some(
                ShortcutKind::Identity
                | ShortcutKind::Scale { .. }
                | ShortcutKind::Gate { .. }
                | ShortcutKind::ShortcutGate { .. }
                | ShortcutKind::Conv1x1
                | ShortcutKind::Dropout { .. }
                | ShortcutKind::None
                | ShortcutKind::Alpha { .. }
                | ShortcutKind::LayerScale { .. }
                | ShortcutKind::Pad,
            )
            | None => 1.0,
        };
        let mean_at = |l: usize, c: crate::schema::Column| -> Option<f64> {
            let vals: Vec<f64> = units.get(&l)?.iter().filter_map(|r| t.f(r, c)).collect();
            (!vals.is_empty()).then(|| geo_mean(&vals))
        };
        // The direct part restarts where a projection changes the shape: the product runs
        // over unit 0's stage.
        let stage_top = mean_at(0, col::DIRECT_TOP).map_or(top, |d| d as usize);
        let estimate: Option<f64> = (0..stage_top)
            .map(|l| {
                let vals: Vec<f64> = units
                    .get(&l)?
                    .iter()
                    .filter_map(|r| direct_factor(t, r, a))
                    .collect();
                (!vals.is_empty()).then(|| geo_mean(&vals))
            })
            .product();
        let measured = mean_at(0, col::DIRECT_RATIO);
        let ratio = match (measured, estimate) {
            (Some(m), Some(e)) => num(m / e),
            _ => "-".into(),
        };
        let sci = |x: Option<f64>| x.map_or("-".into(), |x| format!("{x:.3e}"));
        let _ = writeln!(
            s,
            "| {v} | {top} | {} | {} | {ratio} | {} |",
            sci(measured),
            sci(estimate),
            sci(mean_at(0, col::GRAD_RATIO)),
        );
        any = true;
    }
    any.then_some(s)
}

/// The forward-signal predictions against the measurement: per variant with a prediction,
/// `Var(x_l)` at the last unit of the first stage, measured and predicted from the stage's
/// first unit, and the measured growth per unit.
pub fn signal_section(t: &Table) -> Option<String> {
    if !t.has(col::ACT_VAR) {
        return None;
    }
    let mut s = String::from("Forward signal (average channel variance of x_l; geometric means over replicates) over the first stage, against the prediction that applies:\n\n| variant | units in stage | Var(x) first | Var(x) last | prediction at last | measured / predicted | growth per unit |\n|---|---|---|---|---|---|---|\n");
    for (v, units) in t.by_variant() {
        let Some(first) = units.values().next().and_then(|r| r.first()) else {
            continue;
        };
        let stage_of = |rows: &Vec<&Vec<String>>| -> Option<String> {
            rows.first().map(|r| t.get(r, col::STAGE).to_string())
        };
        let stage0 = stage_of(units.values().next().unwrap());
        let in_stage: Vec<(usize, f64)> = units
            .iter()
            .take_while(|(_, rows)| stage_of(rows) == stage0)
            .filter_map(|(&u, rows)| {
                let vals: Vec<f64> = rows.iter().filter_map(|r| t.f(r, col::ACT_VAR)).collect();
                (!vals.is_empty()).then(|| (u, geo_mean(&vals)))
            })
            .collect();
        let (Some(&(u0, v0)), Some(&(u1, v1))) = (in_stage.first(), in_stage.last()) else {
            continue;
        };
        let n = (u1 - u0) as f64;
        let prediction = super::charts::signal_prediction(t, first);
        let (pred, ratio) = match prediction {
            Some((label, f)) => {
                let p = f(v0, n);
                (format!("{} ({label})", num(p)), num(v1 / p))
            }
            None => ("none applies".into(), "-".into()),
        };
        let growth = if n > 0.0 {
            format!("×{:.3} (+{:.3})", (v1 / v0).powf(1.0 / n), (v1 - v0) / n)
        } else {
            "-".into()
        };
        let _ = writeln!(
            s,
            "| {v} | {} | {} | {} | {pred} | {ratio} | {growth} |",
            u1 - u0 + 1,
            num(v0),
            num(v1),
        );
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wg_table(rows: &[(&str, &str, usize, usize, &str, f64)]) -> Table {
        let header = [
            "experiment",
            "cell",
            "net",
            "placement",
            "shortcut",
            "norm",
            "init",
            "warmup",
            "projection",
            "units",
            "replicate",
            "unit",
            "layer",
            "weight_grad_norm",
        ]
        .map(String::from)
        .to_vec();
        let rows = rows
            .iter()
            .map(|&(cell, placement, units, unit, layer, g)| {
                [
                    "e",
                    cell,
                    "mlp",
                    placement,
                    "identity",
                    "layer",
                    "he",
                    "",
                    "",
                    &units.to_string(),
                    "0",
                    &unit.to_string(),
                    layer,
                    &g.to_string(),
                ]
                .map(String::from)
                .to_vec()
            })
            .collect();
        Table::new(header, rows)
    }

    #[test]
    fn depth_fit_reads_the_last_units_last_weight() {
        // Pre-LN: 2 at L=4, 1 at L=16 (slope -1/2); the other layers and units are noise that
        // must be ignored.
        let t = wg_table(&[
            ("0", "pre-norm", 4, 2, "w2", 99.0),
            ("0", "pre-norm", 4, 3, "w1", 99.0),
            ("0", "pre-norm", 4, 3, "w2", 2.0),
            ("1", "pre-norm", 16, 15, "w2", 1.0),
            ("1", "pre-norm", 16, 15, "w1", 99.0),
            ("2", "post-norm", 4, 3, "w2", 3.0),
            ("3", "post-norm", 16, 15, "w2", 3.0),
        ]);
        let fits = depth_fits(&t);
        assert_eq!(fits.len(), 2);
        assert_eq!(fits[0].variant, "pre-norm");
        assert_eq!(fits[0].points, vec![(4.0, 2.0), (16.0, 1.0)]);
        assert!((fits[0].slope.unwrap() + 0.5).abs() < 1e-12);
        assert_eq!(fits[0].theory.unwrap().1, -0.5);
        assert_eq!(fits[1].slope.unwrap(), 0.0);
        assert!(depth_fit_section(&t)
            .unwrap()
            .contains("| pre-norm | 2.000 | 1.000 | -0.500 |"));
    }

    #[test]
    fn lemma2_bounds_from_x0() {
        assert_eq!(lemma2_bounds(1.0, 10.0), (6.0, 16.0));
    }
}
