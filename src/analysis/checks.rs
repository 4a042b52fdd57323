//! Numerical verification of the paper's formulas on a built network.
//!
//! 1. Finite differences: directional derivatives of E along random directions at several
//!    `x_l` and parameters, 5-point central stencil, against backprop. The differences are
//!    taken with every ReLU frozen at its pattern at the base point (the loss on that point's
//!    linear piece, whose derivative there is the loss's own), so kinks cannot fake a failure.
//! 2. Forward unrolling (Eq. 4 / 7): `x_L = Lambda_l x_l + sum_i Fhat_i` when f is the
//!    identity and h a constant scaling, `Fhat_i = (prod_{j>i} lambda_j) F'_i`.
//! 3. Additive backward (Eq. 5 / 8): `dE/dx_l = D_l + sum_{i>=l} T_{l,i}(c_i)`, where
//!    `c_i = (branch VJP of unit i)(dE/dx_{i+1})` is carried down to `l` by the shortcut VJPs
//!    alone. This is a telescoping identity of linear maps, so it holds for every variant; with
//!    identity shortcuts and f = identity it is exactly `dE/dx_L + sum_i c_i`.
//! 4. Constant scaling: `||D_l|| / ||dE/dx_L|| = prod lambda` (Eq. 8's first term).
//!
//! A check that does not apply is reported "n/a" with the reason.

use rayon::prelude::*;

use super::record::{build_records, direct_parts, predicted_direct_ratio, Stages};
use crate::finite_diff::{directional_derivative, rel_error_scalar};
use crate::grads::Grads;
use crate::net::{NetCache, Network};
use crate::rng::{derive_seed, gaussian, purpose, rng};
use crate::tensor::{axpy, dot, norm, Tensor};
use crate::unit::{ForwardCtx, ShortcutKind};

pub const FD_TOL: f64 = 1e-6;
pub const FORMULA_TOL: f64 = 1e-10;
pub const PROD_LAMBDA_TOL: f64 = 1e-12;
/// The 5-point stencil's step `h` along a unit-norm direction is chosen so the loss changes by
/// about this much: rounding in E (amplified to ~1e-13 at the shallow end of deep nets) then
/// costs ~1e-9 of the derivative. Differences are taken on the frozen-ReLU copy of the net,
/// so no kink limits the step.
pub const FD_LOSS_CHANGE: f64 = 1e-4;
/// Largest step. Measured over 5 placements x 10 shortcuts x 3 seeds (20 units): with caps of
/// 1e-4, 1e-3 and 1e-2 the worst error was 9.7e-7, 4.8e-8 and 6.3e-8; small slopes (a BN
/// gamma whose effect the next BN nearly removes) need the larger step to beat rounding.
pub const FD_MAX_STEP: f64 = 1e-3;
/// Directional derivatives below this are compared in absolute terms: a parameter whose
/// effect a following training-mode BN removes (a `beta` right before the head's BN) has a
/// true derivative of exactly 0, and the relative error of two rounding noises means nothing.
pub const FD_DERIVATIVE_FLOOR: f64 = 1e-5;

/// The step for a directional derivative of size about `slope`.
fn fd_step(slope: f64) -> f64 {
    if slope.is_finite() && slope.abs() >= FD_DERIVATIVE_FLOOR {
        (FD_LOSS_CHANGE / slope.abs()).clamp(1e-9, FD_MAX_STEP)
    } else {
        FD_MAX_STEP
    }
}

/// `|fd - analytic| / max(|fd|, |analytic|, FD_DERIVATIVE_FLOOR)`.
fn fd_error(fd: f64, analytic: f64) -> f64 {
    (fd - analytic).abs() / fd.abs().max(analytic.abs()).max(FD_DERIVATIVE_FLOOR)
}

#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    Pass,
    Fail,
    NotApplicable(String),
}

#[derive(Debug, Clone)]
pub struct CheckRow {
    /// Short name, e.g. "finite differences".
    pub check: String,
    /// What exactly was compared.
    pub what: String,
    pub worst: Option<f64>,
    pub tolerance: f64,
    pub status: Status,
}

impl CheckRow {
    fn measured(check: &str, what: String, worst: f64, tolerance: f64) -> Self {
        // A NaN error is a failure, never a pass.
        let status = if worst <= tolerance {
            Status::Pass
        } else {
            Status::Fail
        };
        CheckRow {
            check: check.into(),
            what,
            worst: Some(worst),
            tolerance,
            status,
        }
    }

    fn not_applicable(check: &str, what: String, tolerance: f64, reason: String) -> Self {
        CheckRow {
            check: check.into(),
            what,
            worst: None,
            tolerance,
            status: Status::NotApplicable(reason),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct CheckOptions {
    /// Random directions per finite-difference target.
    pub directions: usize,
    /// Seed of the directions.
    pub seed: u64,
}

/// A unit-norm direction mixing a random vector with the analytic gradient, so the
/// directional derivative is not tiny relative to rounding (a wrong gradient still shows:
/// the finite difference measures the true derivative along whatever direction is used).
fn direction(shape: &[usize], grad: &Tensor, seed: u64) -> Tensor {
    let r = gaussian(shape, 1.0, &mut rng(seed));
    let mut v = &r / norm(&r);
    let gn = norm(grad);
    if gn > 0.0 && gn.is_finite() {
        axpy(&mut v, 1.0 / gn, grad);
    }
    let vn = norm(&v);
    v / vn
}

struct FdJob {
    group: String,
    target: String,
    /// `Some(l)` for x_l, `None` for a parameter.
    unit: Option<usize>,
}

/// The checks' rows plus notes on how well-conditioned the network is.
#[derive(Debug, Clone)]
pub struct CheckReport {
    pub rows: Vec<CheckRow>,
    /// Sentences explaining conditions under which finite differences lose digits.
    pub notes: Vec<String>,
}

/// Above this `||dE/dx_0|| / ||dE/dx_L||`, rounding of the forward pass reaches E amplified
/// by about the same factor, and finite differences lose that many digits.
pub const AMPLIFICATION_NOTE: f64 = 1e4;

pub fn run_checks(
    net: &Network,
    input: &Tensor,
    labels: &[usize],
    ctx: &ForwardCtx,
    opts: &CheckOptions,
) -> anyhow::Result<CheckReport> {
    let cache = net.forward(input, labels, ctx)?;
    let mut grads = Grads::new();
    let back = net.backward(&cache, labels, Some(&mut grads));
    let stages = Stages::of(net, &cache);
    let mut rows = finite_difference_rows(
        net,
        input,
        labels,
        ctx,
        opts,
        &cache,
        &back.grad_x,
        &grads,
        &stages,
    );
    rows.extend(verify_units(net, &cache, &back).1);
    Ok(CheckReport {
        rows,
        notes: conditioning_notes(net, &cache, &back.grad_x),
    })
}

fn conditioning_notes(net: &Network, cache: &NetCache, grad_x: &[Tensor]) -> Vec<String> {
    let l_top = net.num_units();
    let mut notes = Vec::new();
    let top = norm(&grad_x[l_top]);
    let amplification = grad_x.iter().map(|g| norm(g) / top).fold(0.0, worse);
    let x_top = norm(cache.x(l_top));
    let x_0 = norm(cache.x(0));
    if !cache.loss.is_finite() || !amplification.is_finite() || !x_top.is_finite() {
        notes.push(format!(
            "the network overflowed (E = {:e}, ||x_L|| = {x_top:e}, max ||dE/dx_l|| / ||dE/dx_L|| = {amplification:e}); finite differences are meaningless here",
            cache.loss
        ));
    } else if cache.loss.abs() > 1e6 || x_top > 1e6 * x_0 {
        notes.push(format!(
            "the forward signal exploded (||x_0|| = {x_0:.3e}, ||x_L|| = {x_top:.3e}, E = {:.3e}): rounding in E is about {:.0e}, which bounds what finite differences can resolve",
            cache.loss,
            f64::EPSILON * cache.loss.abs()
        ));
    } else if amplification > AMPLIFICATION_NOTE {
        notes.push(format!(
            "the gradient grows {amplification:.2e}x from x_L down to the shallowest unit: forward rounding reaches E amplified about as much, so finite differences at the shallow end lose about {:.0} digits",
            amplification.log10()
        ));
    }
    notes
}

#[allow(clippy::too_many_arguments)]
fn finite_difference_rows(
    net: &Network,
    input: &Tensor,
    labels: &[usize],
    ctx: &ForwardCtx,
    opts: &CheckOptions,
    cache: &NetCache,
    grad_x: &[Tensor],
    grads: &Grads,
    stages: &Stages,
) -> Vec<CheckRow> {
    let l_top = net.num_units();
    let mut units = vec![0, l_top / 2, l_top.saturating_sub(1), l_top];
    units.dedup();
    let mut jobs = Vec::new();
    for &l in &units {
        for _ in 0..opts.directions {
            jobs.push(FdJob {
                group: format!("dE/dx_l at l = {l}"),
                target: format!("x_{l}"),
                unit: Some(l),
            });
        }
    }
    // Parameters of the stem, the first and last unit, the first unit that changes shape
    // (projection, shared pre-activation), and the head.
    let mut owners = vec![
        ("stem".to_string(), "stem.".to_string()),
        ("unit 0".to_string(), "unit0.".to_string()),
        (format!("unit {}", l_top - 1), format!("unit{}.", l_top - 1)),
        ("head".to_string(), "head.".to_string()),
        ("classifier".to_string(), "classifier.".to_string()),
    ];
    if let Some(l) = (1..l_top).find(|&l| !stages.keeps_shape(l)) {
        owners.insert(2, (format!("unit {l} (shape change)"), format!("unit{l}.")));
    }
    let names = net.param_names();
    let mut seen_groups = Vec::new();
    for (group, prefix) in owners {
        if seen_groups.contains(&prefix) {
            continue;
        }
        seen_groups.push(prefix.clone());
        for name in names.iter().filter(|n| n.starts_with(&prefix)) {
            for _ in 0..opts.directions {
                jobs.push(FdJob {
                    group: format!("dE/dθ, {group}"),
                    target: name.clone(),
                    unit: None,
                });
            }
        }
    }
    let frozen = net.with_frozen_relus(cache);
    let results: Vec<f64> = jobs
        .par_iter()
        .enumerate()
        .map(|(j, job)| {
            let seed = derive_seed(opts.seed, &[purpose::DIRECTIONS, j as u64]);
            // Jobs run side by side on rayon's workers: no extra helper thread inside.
            crate::spin_join::without_helper(|| match job.unit {
                Some(l) => {
                    let x = cache.x(l);
                    let v = direction(x.shape(), &grad_x[l], seed);
                    let analytic = dot(&grad_x[l], &v);
                    let fd = directional_derivative(
                        |t| {
                            let mut xp = x.clone();
                            axpy(&mut xp, t, &v);
                            frozen.loss_from(l, &xp, labels, ctx)
                        },
                        fd_step(analytic),
                    );
                    fd_error(fd, analytic)
                }
                None => {
                    let value = net.param(&job.target).expect("parameter exists");
                    let g = grads
                        .get(&job.target)
                        .expect("every parameter has a gradient");
                    let v = direction(value.shape(), g, seed);
                    let analytic = dot(g, &v);
                    let fd = directional_derivative(
                        |t| {
                            let mut p = value.clone();
                            axpy(&mut p, t, &v);
                            let perturbed = frozen.with_param(&job.target, &p);
                            perturbed
                                .forward(input, labels, ctx)
                                .map(|c| c.loss)
                                .unwrap_or(f64::NAN)
                        },
                        fd_step(analytic),
                    );
                    fd_error(fd, analytic)
                }
            })
        })
        .collect();
    // One row per group: the worst error and which tensor it came from.
    let mut rows: Vec<CheckRow> = Vec::new();
    let mut i = 0;
    while i < jobs.len() {
        let group = &jobs[i].group;
        let mut worst = 0.0f64;
        let mut worst_target = jobs[i].target.clone();
        let mut tensors = Vec::new();
        let mut count = 0;
        while i < jobs.len() && &jobs[i].group == group {
            let e = results[i];
            if !worst.is_nan() && (e.is_nan() || e > worst) {
                worst_target = jobs[i].target.clone();
            }
            worst = worse(worst, e);
            if !tensors.contains(&jobs[i].target) {
                tensors.push(jobs[i].target.clone());
            }
            count += 1;
            i += 1;
        }
        let what = if jobs[i - 1].unit.is_some() {
            format!("{group}: {count} directions")
        } else {
            format!(
                "{group}: {} tensors x {} directions, worst {worst_target}",
                tensors.len(),
                opts.directions
            )
        };
        rows.push(CheckRow::measured(
            "finite differences",
            what,
            worst,
            FD_TOL,
        ));
    }
    rows
}

/// Why Eq. 3-4 (and 7) do not describe this network's stages, if they do not: every unit
/// inside a stage needs an identity `f` and a constant-scaling shortcut.
fn unrolling_inapplicable(net: &Network, stages: &Stages) -> Option<String> {
    if !(0..net.num_units()).any(|l| stages.keeps_shape(l)) {
        return Some(
            "every unit changes the shape, so no stage has a unit the derivation covers"
                .to_string(),
        );
    }
    for (l, u) in net
        .units
        .iter()
        .enumerate()
        .filter(|(l, _)| stages.keeps_shape(*l))
    {
        if !u.placement.after_add_is_identity() {
            return Some(format!(
                "f is not the identity under '{}' (x_{{l+1}} = f(y_l) with f = {})",
                u.placement,
                u.after_add
                    .iter()
                    .map(|o| o.label())
                    .collect::<Vec<_>>()
                    .join("-")
            ));
        }
        if u.shortcut.constant_lambda().is_none() {
            return Some(format!(
                "h of unit {l} is not a constant scaling ('{}'); its factor depends on x or a mask",
                u.shortcut
            ));
        }
    }
    None
}

/// The paper's equation for this net, judged by its last unit (never a projection unit
/// unless every unit is one).
fn eq_name(net: &Network, identity: &str, scaled: &str) -> String {
    match net.units.last().unwrap().shortcut {
        ShortcutKind::Identity => identity.to_string(),
        _ => scaled.to_string(),
    }
}

/// Check 2, per unit: `||x_top - Lambda_l x_l - sum_{i=l}^{top-1} Fhat_i||` relative to the
/// largest term, for every `x_l` below its stage's top (`None` at the tops).
fn forward_unrolling_errors(net: &Network, cache: &NetCache, stages: &Stages) -> Vec<Option<f64>> {
    let mut errors = vec![None; net.num_units() + 1];
    let mut tops: Vec<usize> = stages.shape_top.clone();
    tops.dedup();
    for top in tops {
        let x_top = cache.x(top);
        let mut sum_fhat = Tensor::zeros(x_top.raw_dim());
        let mut above = 1.0; // prod_{j=i+1}^{top-1} lambda_j
        let mut max_fhat = 0.0f64;
        // Units i = top-1, top-2, ... down to the stage's bottom.
        for i in (0..top).rev().take_while(|&i| stages.keeps_shape(i)) {
            let unit = &net.units[i];
            let fhat = unit.branch_term(&cache.unit(net, i)) * above;
            max_fhat = max_fhat.max(norm(&fhat));
            sum_fhat += &fhat;
            let lambda_l = above * unit.shortcut.constant_lambda().unwrap();
            let scaled_x = cache.x(i) * lambda_l;
            let residual = x_top - &scaled_x - &sum_fhat;
            let scale = norm(x_top).max(norm(&scaled_x)).max(max_fhat);
            errors[i] = Some(if scale == 0.0 {
                0.0
            } else {
                norm(&residual) / scale
            });
            above = lambda_l;
        }
    }
    errors
}

fn forward_unrolling(net: &Network, errors: &[Option<f64>], stages: &Stages) -> CheckRow {
    let name = eq_name(net, "Eq. 4", "Eq. 7");
    let what = format!("{name} forward unrolling: x_top = (prod lambda) x_l + sum_i Fhat(x_i), every l, within each stage");
    if let Some(reason) = unrolling_inapplicable(net, stages) {
        return CheckRow::not_applicable("forward sum", what, FORMULA_TOL, reason);
    }
    let worst = errors.iter().flatten().copied().fold(0.0, worse);
    CheckRow::measured("forward sum", what, worst, FORMULA_TOL)
}

/// Check 3, per unit: every branch contribution carried down separately through the stage's
/// shortcut VJPs, plus the direct part, against the recursive `dE/dx_l`; relative to the
/// largest term.
fn additive_backward_errors(
    net: &Network,
    cache: &NetCache,
    grad_x: &[Tensor],
    stages: &Stages,
) -> Vec<f64> {
    let l_top = net.num_units();
    let direct = direct_parts(net, cache, grad_x, stages);
    // acc[l] accumulates D_l + sum_i T_{l,i}(c_i) over the stage's units i >= l; max_term[l]
    // the largest term's norm.
    let mut acc: Vec<Tensor> = direct.clone();
    let mut max_term: Vec<f64> = direct.iter().map(norm).collect();
    for i in (0..l_top).rev().filter(|&i| stages.carries_direct(i)) {
        let mut carried = net.units[i].vjp_branch(&cache.unit(net, i), &grad_x[i + 1]);
        acc[i] += &carried;
        max_term[i] = max_term[i].max(norm(&carried));
        for l in (0..i).rev().take_while(|&l| stages.carries_direct(l)) {
            carried = net.units[l].vjp_shortcut(&cache.unit(net, l), &carried);
            acc[l] += &carried;
            max_term[l] = max_term[l].max(norm(&carried));
        }
    }
    (0..=l_top)
        .map(|l| {
            let scale = max_term[l].max(norm(&grad_x[l]));
            if scale == 0.0 {
                0.0
            } else {
                norm(&(&acc[l] - &grad_x[l])) / scale
            }
        })
        .collect()
}

fn additive_backward(net: &Network, errors: &[f64]) -> CheckRow {
    let last = net.units.last().unwrap();
    let name = match (last.shortcut, last.placement.after_add_is_identity()) {
        (ShortcutKind::Identity, true) => {
            "Eq. 5 additive backward: dE/dx_l = dE/dx_L + sum_{i>=l} (branch VJP of unit i)".to_string()
        }
        (ShortcutKind::Scale { .. } | ShortcutKind::None, true) => {
            "Eq. 8 additive backward: dE/dx_l = (prod lambda) dE/dx_L + sum_i carried branch terms".to_string()
        }
        _ => "Eq. 8 generalised (direct term = prod of shortcut VJPs, f included) + carried branch terms".to_string(),
    };
    let worst = errors.iter().copied().fold(0.0, worse);
    CheckRow::measured("additive backward", name, worst, FORMULA_TOL)
}

/// Check 4, per unit: `|direct_ratio - prod lambda|`, relative (absolute when the prediction is 0).
fn prod_lambda_errors(net: &Network, records: &[super::record::UnitRecord]) -> Vec<Option<f64>> {
    records
        .iter()
        .map(|r| {
            predicted_direct_ratio(net, r.unit, r.direct_top).map(|predicted| {
                if predicted == 0.0 {
                    r.direct_ratio.abs()
                } else {
                    rel_error_scalar(r.direct_ratio, predicted)
                }
            })
        })
        .collect()
}

fn prod_lambda(net: &Network, errors: &[Option<f64>], stages: &Stages) -> CheckRow {
    let what = "Eq. 8 direct term: ||D_l|| / ||dE/dx_top|| = prod_{i=l}^{top-1} lambda_i, every l"
        .to_string();
    if let Some(reason) = unrolling_inapplicable(net, stages) {
        return CheckRow::not_applicable("prod lambda", what, PROD_LAMBDA_TOL, reason);
    }
    let worst = errors.iter().flatten().copied().fold(0.0, worse);
    CheckRow::measured("prod lambda", what, worst, PROD_LAMBDA_TOL)
}

/// The formula checks' errors at one unit input `x_l` (`None` where a check does not apply).
#[derive(Debug, Clone, PartialEq)]
pub struct UnitVerification {
    pub unit: usize,
    /// Eq. 4 / 7.
    pub forward_sum: Option<f64>,
    /// Eq. 5 / 8.
    pub additive_backward: f64,
    /// `direct_ratio` against `prod lambda`.
    pub prod_lambda: Option<f64>,
}

/// Per-unit errors of checks 2-4 at the cached point, and the check rows built from them.
pub fn verify_units(
    net: &Network,
    cache: &NetCache,
    back: &crate::net::NetGrads,
) -> (Vec<UnitVerification>, Vec<CheckRow>) {
    let stages = Stages::of(net, cache);
    let applies = unrolling_inapplicable(net, &stages).is_none();
    // Eq. 4/7 needs a constant lambda at every unit inside a stage: only computed where it applies.
    let forward = if applies {
        forward_unrolling_errors(net, cache, &stages)
    } else {
        vec![None; net.num_units() + 1]
    };
    let additive = additive_backward_errors(net, cache, &back.grad_x, &stages);
    let records = build_records(net, cache, back).records;
    let prod = prod_lambda_errors(net, &records);
    let rows = vec![
        forward_unrolling(net, &forward, &stages),
        additive_backward(net, &additive),
        prod_lambda(net, &prod, &stages),
    ];
    let units = (0..=net.num_units())
        .map(|l| UnitVerification {
            unit: l,
            forward_sum: forward[l].filter(|_| applies),
            additive_backward: additive[l],
            prod_lambda: prod[l].filter(|_| applies),
        })
        .collect();
    (units, rows)
}

/// The larger error, NaN winning: a NaN anywhere must fail the check, never be overwritten.
fn worse(w: f64, e: f64) -> f64 {
    if w.is_nan() || e.is_nan() {
        f64::NAN
    } else {
        w.max(e)
    }
}

/// True when no measured check failed.
pub fn all_passed(rows: &[CheckRow]) -> bool {
    rows.iter().all(|r| r.status != Status::Fail)
}
