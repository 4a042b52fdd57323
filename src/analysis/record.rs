//! The per-unit record: for each unit input `x_l` (`l = 0..=L`) the forward signal, the
//! gradient `dE/dx_l`, and its split into the direct part (Eq. 5/8's first term)
//!
//! ```text
//! D_L = dE/dx_L,   D_l = (shortcut VJP of unit l)(D_{l+1})
//! ```
//!
//! and the rest `dE/dx_l - D_l` (everything that passed through at least one branch).
//!
//! The derivation holds along an unbroken shortcut path. Within one feature-map shape (the
//! whole MLP; a stage of a CIFAR ResNet) every unit's shortcut is such a path. Where a unit
//! changes shape through a learned 1x1 projection the path breaks: the direct part restarts
//! at that unit's input, `D_top = dE/dx_top`, rather than pretending the formulas hold across a
//! projection. The option-A shortcut (`--projection pad`) is a fixed linear map that keeps the
//! old channels' values at the sampled pixels, so the direct part carries on through it,
//! `D_l = P^T D_{l+1}`: its norm is the part of `D_{l+1}` that sits on the old channels at
//! the sampled pixels, and `direct_ratio` is measured against `dE/dx_L` throughout.

use serde::Serialize;

use super::signal::channel_stats;
use crate::float::Float;
use crate::interrupt::{Interrupt, Interrupted};
use crate::net::{NetCache, NetGrads, Network};
use crate::schema::{self, col, Column, Row, Schema};
use crate::tensor::{cosine, norm, per_sample_norms, Tensor};
use crate::unit::ShortcutKind;

/// Which unit inputs share a shape, and where each one's direct part starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Stages {
    /// Stage (feature-map shape) of each `x_l`, `l = 0..=L`, counting from the input.
    pub stage: Vec<usize>,
    /// The top (largest `l`) of the stage of each `x_l`.
    pub shape_top: Vec<usize>,
    /// Where the direct part of each `x_l` starts: the top of its unbroken shortcut path
    /// (`shape_top`, or beyond it across padded shortcuts).
    pub top: Vec<usize>,
    /// Per unit: whether the direct part passes through it.
    carries: Vec<bool>,
}

impl Stages {
    pub fn of<T: Float>(net: &Network<T>, cache: &NetCache<T>) -> Stages {
        let units = net.num_units();
        let mut stage = vec![0; units + 1];
        for l in 1..=units {
            stage[l] = stage[l - 1] + usize::from(cache.x(l).shape() != cache.x(l - 1).shape());
        }
        let carries: Vec<bool> = (0..units)
            .map(|l| stage[l] == stage[l + 1] || net.units[l].shortcut == ShortcutKind::Pad)
            .collect();
        let (mut shape_top, mut top) = (vec![units; units + 1], vec![units; units + 1]);
        for l in (0..units).rev() {
            shape_top[l] = if stage[l] == stage[l + 1] {
                shape_top[l + 1]
            } else {
                l
            };
            top[l] = if carries[l] { top[l + 1] } else { l };
        }
        Stages {
            stage,
            shape_top,
            top,
            carries,
        }
    }

    /// True when unit `l` keeps the shape (an internal unit of a stage).
    pub fn keeps_shape(&self, l: usize) -> bool {
        self.stage[l] == self.stage[l + 1]
    }

    /// True when the direct part passes through unit `l` (it keeps the shape, or changes it
    /// through the padded identity).
    pub fn carries_direct(&self, l: usize) -> bool {
        self.carries[l]
    }
}

/// One row of the profile CSV.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UnitRecord {
    pub unit: usize,
    /// Stage of `x_l` (0 for the MLP).
    pub stage: usize,
    /// Where the direct part starts: the stage's top, or across padded shape changes the
    /// top of the run of units they connect (`L` when every shape change is padded).
    pub direct_top: usize,
    /// True for a unit whose output has another shape than its input (projection units).
    pub shape_change: bool,
    /// ||x_l||
    pub act_norm: f64,
    /// ||F'(x_l)||, the term the branch adds (none for row L).
    pub branch_norm: Option<f64>,
    /// ||dE/dx_l|| over the batch.
    pub grad_norm: f64,
    /// ||D_l||
    pub direct_norm: f64,
    /// ||dE/dx_l - D_l||
    pub rest_norm: f64,
    /// ||dE/dx_l|| / ||dE/dx_L||
    pub grad_ratio: f64,
    /// ||D_l|| / ||dE/dx_top|| (top = `direct_top`; L for the MLP)
    pub direct_ratio: f64,
    /// The paper's prediction for `direct_ratio` where it has one.
    pub predicted_direct_ratio: Option<f64>,
    /// cos(dE/dx_l, dE/dx_top), when the two have the same shape.
    pub cos_top: Option<f64>,
    /// Per-sample `||dE/dx_l[n]|| / ||dE/dx_L[n]||`: min, median, max over the batch.
    pub sample_ratio_min: f64,
    pub sample_ratio_median: f64,
    pub sample_ratio_max: f64,
    /// Signal propagation (Brock et al. 2021): the average over channels of `x_l`'s squared
    /// channel mean, and of its channel variance.
    pub act_mean_sq: f64,
    pub act_var: f64,
    /// The average channel variance of the branch term `F'(x_l)` (none for row L).
    pub branch_var: Option<f64>,
}

/// A column that went non-finite, and where it first did (in the direction it is computed:
/// upward for forward quantities, downward from `L` for gradients).
#[derive(Debug, Clone, PartialEq)]
pub struct NonFinite {
    pub column: Column,
    pub first_unit: usize,
    pub count: usize,
}

#[derive(Debug, Clone)]
pub struct Profile {
    pub records: Vec<UnitRecord>,
    pub loss: f64,
    pub nonfinite: Vec<NonFinite>,
}

/// The direct parts `D_0 ..= D_L`, restarting where the shortcut path breaks.
pub fn direct_parts<T: Float>(
    net: &Network<T>,
    cache: &NetCache<T>,
    grad_x: &[Tensor<T>],
    stages: &Stages,
) -> Vec<Tensor<T>> {
    direct_parts_and_branch_terms(net, cache, grad_x, stages, false, &Interrupt::new())
        .unwrap_or_else(|_| unreachable!("a stop no one can request"))
        .0
}

/// `(||F'(x_l)||, its average channel variance)`.
type BranchTerm = (f64, f64);

/// The direct parts and, when asked, `(||F'(x_l)||, its average channel variance)` per unit
/// (which needs a forward pass made with `keep_branch`), in one pass over the units (a cache
/// that kept only the inputs re-runs each unit once).
fn direct_parts_and_branch_terms<T: Float>(
    net: &Network<T>,
    cache: &NetCache<T>,
    grad_x: &[Tensor<T>],
    stages: &Stages,
    branch_terms: bool,
    stop: &Interrupt,
) -> Result<(Vec<Tensor<T>>, Vec<BranchTerm>), Interrupted> {
    let l_top = net.num_units();
    let mut parts = vec![grad_x[l_top].clone(); l_top + 1];
    let mut norms = vec![(0.0, 0.0); l_top];
    for l in (0..l_top).rev() {
        stop.check(|| format!("while recording unit {l} of {l_top}"))?;
        let uc = cache.unit(net, l);
        if branch_terms {
            let term = net.units[l].branch_term(&uc);
            norms[l] = (norm(&term), channel_stats(&term).var);
        }
        parts[l] = if stages.carries_direct(l) {
            net.units[l].vjp_shortcut(&uc, &parts[l + 1])
        } else {
            grad_x[l].clone()
        };
    }
    Ok((parts, norms))
}

/// Per unit input: `(||dE/dx_l||, ||dE/dx_l|| / ||dE/dx_L||, ||D_l|| / ||dE/dx_top||)`, what
/// training records as it goes; unlike [`build_records`] it needs no `keep_branch` pass, so a
/// recorded training step runs the engine's fused path like any other.
pub fn gradient_ratios<T: Float>(
    net: &Network<T>,
    cache: &NetCache<T>,
    grads: &NetGrads<T>,
) -> Vec<(f64, f64, f64)> {
    let l_top = net.num_units();
    let stages = Stages::of(net, cache);
    let direct = direct_parts(net, cache, &grads.grad_x, &stages);
    let top_norm = norm(&grads.grad_x[l_top]);
    (0..=l_top)
        .map(|l| {
            let g = norm(&grads.grad_x[l]);
            let d = norm(&direct[l]) / norm(&grads.grad_x[stages.top[l]]);
            (g, g / top_norm, d)
        })
        .collect()
}

/// `prod_{i=l}^{top-1} lambda_i` when the paper predicts the direct part exactly: constant
/// shortcut scaling (identity: 1, plain: 0) and an identity after-addition function.
pub fn predicted_direct_ratio<T: Float>(net: &Network<T>, l: usize, top: usize) -> Option<f64> {
    net.units[l..top].iter().try_fold(1.0, |acc, u| {
        if !u.placement.after_add_is_identity() {
            return None;
        }
        u.shortcut.constant_lambda().map(|lambda| acc * lambda)
    })
}

/// Builds the records from a forward cache and its backward.
pub fn build_records<T: Float>(
    net: &Network<T>,
    cache: &NetCache<T>,
    grads: &NetGrads<T>,
) -> Profile {
    build_records_until_stopped(net, cache, grads, &Interrupt::new())
        .unwrap_or_else(|_| unreachable!("a stop no one can request"))
}

/// [`build_records`], checking `stop` before each unit (ResNet-110's records take a second).
pub fn build_records_until_stopped<T: Float>(
    net: &Network<T>,
    cache: &NetCache<T>,
    grads: &NetGrads<T>,
    stop: &Interrupt,
) -> Result<Profile, Interrupted> {
    let l_top = net.num_units();
    let g_top = &grads.grad_x[l_top];
    let top_norm = norm(g_top);
    let top_samples = per_sample_norms(g_top);
    let stages = Stages::of(net, cache);
    let (direct, branch_terms) =
        direct_parts_and_branch_terms(net, cache, &grads.grad_x, &stages, true, stop)?;
    let records: Vec<UnitRecord> = (0..=l_top)
        .map(|l| {
            stop.check(|| format!("while recording unit {l} of {l_top}"))?;
            let top = stages.top[l];
            let g_stage_top = &grads.grad_x[top];
            let stage_top_norm = norm(g_stage_top);
            let g = &grads.grad_x[l];
            let grad_norm = norm(g);
            let act = channel_stats(cache.x(l));
            let direct_norm = norm(&direct[l]);
            let sample_ratios: Vec<f64> = per_sample_norms(g)
                .iter()
                .zip(&top_samples)
                .map(|(&a, &b)| a / b)
                .collect();
            let (min, max) =
                sample_ratios
                    .iter()
                    .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
                        if v.is_nan() {
                            (f64::NAN, f64::NAN)
                        } else {
                            (lo.min(v), hi.max(v))
                        }
                    });
            Ok(UnitRecord {
                unit: l,
                stage: stages.stage[l],
                direct_top: top,
                shape_change: l < l_top && !stages.keeps_shape(l),
                act_norm: norm(cache.x(l)),
                branch_norm: (l < l_top).then(|| branch_terms[l].0),
                grad_norm,
                direct_norm,
                rest_norm: norm(&(g - &direct[l])),
                grad_ratio: grad_norm / top_norm,
                direct_ratio: direct_norm / stage_top_norm,
                predicted_direct_ratio: predicted_direct_ratio(net, l, top),
                cos_top: (g.shape() == g_stage_top.shape()).then(|| cosine(g, g_stage_top)),
                sample_ratio_min: min,
                sample_ratio_median: crate::tensor::median(&sample_ratios).unwrap_or(f64::NAN),
                sample_ratio_max: max,
                act_mean_sq: act.mean_sq,
                act_var: act.var,
                branch_var: (l < l_top).then(|| branch_terms[l].1),
            })
        })
        .collect::<Result<_, Interrupted>>()?;
    let nonfinite = find_nonfinite(&records);
    Ok(Profile {
        records,
        loss: cache.loss,
        nonfinite,
    })
}

fn find_nonfinite(records: &[UnitRecord]) -> Vec<NonFinite> {
    type Getter = fn(&UnitRecord) -> Option<f64>;
    let forward: [(Column, Getter); 2] = [
        (col::ACT_NORM, |r| Some(r.act_norm)),
        (col::BRANCH_NORM, |r| r.branch_norm),
    ];
    let backward: [(Column, Getter); 4] = [
        (col::GRAD_NORM, |r| Some(r.grad_norm)),
        (col::DIRECT_NORM, |r| Some(r.direct_norm)),
        (col::REST_NORM, |r| Some(r.rest_norm)),
        (col::GRAD_RATIO, |r| Some(r.grad_ratio)),
    ];
    let bad = |get: Getter| -> Vec<usize> {
        records
            .iter()
            .filter(|r| get(r).is_some_and(|v| !v.is_finite()))
            .map(|r| r.unit)
            .collect()
    };
    let mut out = Vec::new();
    for (column, get) in forward {
        let units = bad(get);
        if let Some(&first) = units.first() {
            out.push(NonFinite {
                column,
                first_unit: first,
                count: units.len(),
            });
        }
    }
    for (column, get) in backward {
        let units = bad(get);
        if let Some(&first) = units.last() {
            out.push(NonFinite {
                column,
                first_unit: first,
                count: units.len(),
            });
        }
    }
    out
}

/// A float as the CSV writes it: shortest round-trip in exponent form, `inf`/`-inf`/`NaN`.
pub fn fmt_f64(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "inf" } else { "-inf" }.into()
    } else {
        format!("{v:e}")
    }
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map(fmt_f64).unwrap_or_default()
}

impl Row for UnitRecord {
    const SCHEMA: &'static Schema = &schema::PROFILE;

    fn fields(&self) -> Vec<String> {
        vec![
            self.unit.to_string(),
            self.stage.to_string(),
            self.direct_top.to_string(),
            u8::from(self.shape_change).to_string(),
            fmt_f64(self.act_norm),
            fmt_opt(self.branch_norm),
            fmt_f64(self.grad_norm),
            fmt_f64(self.direct_norm),
            fmt_f64(self.rest_norm),
            fmt_f64(self.grad_ratio),
            fmt_f64(self.direct_ratio),
            fmt_opt(self.predicted_direct_ratio),
            fmt_opt(self.cos_top),
            fmt_f64(self.sample_ratio_min),
            fmt_f64(self.sample_ratio_median),
            fmt_f64(self.sample_ratio_max),
            fmt_f64(self.act_mean_sq),
            fmt_f64(self.act_var),
            fmt_opt(self.branch_var),
        ]
    }
}

/// The whole profile of `net` as CSV bytes: the header, then one row per unit input, each
/// ending in [`profile_tail`]'s columns.
pub fn profile_csv<T: Float>(
    profile: &Profile,
    net: &Network<T>,
    placement: &str,
    shortcut: &str,
) -> anyhow::Result<Vec<u8>> {
    let tail = profile_tail(net, profile.records.len(), placement, shortcut);
    schema::to_csv(&profile.records, &tail)
}

/// The columns a profile's `rows` rows end in, after the record's (the CSV's and Python's):
/// what the network is. A built-in network's rows end in its `placement` and `shortcut` as
/// given. An imported network has no placement of resprop's: its rows end in `imported`, the
/// unit's shortcut as the importer found it (empty for the head's input) and the row's name
/// (the unit's module, `top` for the head's input).
pub fn profile_tail<T: Float>(
    net: &Network<T>,
    rows: usize,
    placement: &str,
    shortcut: &str,
) -> Vec<(Column, Vec<String>)> {
    match &net.spec {
        crate::net::NetSpec::Imported(spec) => {
            let mut shortcuts = spec.shortcuts.clone();
            shortcuts.push(String::new());
            vec![
                (col::PLACEMENT, vec!["imported".to_string(); rows]),
                (col::SHORTCUT, shortcuts),
                (col::NAME, net.row_names().unwrap_or_default()),
            ]
        }
        crate::net::NetSpec::Mlp(_) | crate::net::NetSpec::Resnet(_) => vec![
            (col::PLACEMENT, vec![placement.to_string(); rows]),
            (col::SHORTCUT, vec![shortcut.to_string(); rows]),
        ],
    }
}

/// The weight-gradient view of Xiong et al. 2020 (and most of the Transformer literature):
/// `||dE/dW||_F` of every weight layer of every unit.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightGradRow {
    pub unit: usize,
    /// The layer's short name: `w1`, `w2`, `w3` (branch), `proj`, `gate` (shortcut).
    pub layer: String,
    pub weight_grad_norm: f64,
}

impl Row for WeightGradRow {
    const SCHEMA: &'static Schema = &schema::WEIGHT_GRADS;

    fn fields(&self) -> Vec<String> {
        vec![
            self.unit.to_string(),
            self.layer.clone(),
            fmt_f64(self.weight_grad_norm),
        ]
    }
}

/// One row per weight (a parameter named `...<layer>.w`) of every unit, from the parameter
/// gradients of a backward pass.
pub fn weight_grad_rows<T: Float, G: Float>(
    net: &Network<T>,
    grads: &crate::grads::Grads<G>,
) -> Vec<WeightGradRow> {
    let mut rows = Vec::new();
    for l in 0..net.num_units() {
        for name in net.param_names_of(crate::net::Part::Unit(l)) {
            let Some(layer) = name.strip_suffix(".w") else {
                continue;
            };
            let Some(g) = grads.get(&name) else { continue };
            rows.push(WeightGradRow {
                unit: l,
                layer: layer.rsplit('.').next().unwrap_or(layer).to_string(),
                weight_grad_norm: norm(g),
            });
        }
    }
    rows
}
