//! Numerical verification of the paper's formulas on a built network. What each row proves is
//! written out in `docs/checks.md`.
//!
//! Verification (each number reached by a route that shares no code with the backward pass):
//!
//! 1. Finite differences: directional derivatives of E along random directions at several
//!    `x_l` and parameters, against backprop. Each is estimated by Ridders' extrapolation of
//!    central differences, which also estimates its own error; the differences are taken with
//!    every ReLU frozen at its pattern at the base point (the loss on that point's linear
//!    piece, whose derivative there is the loss's own), so kinks cannot fake a failure.
//! 2. Eq. 5 / 8 term by term, from forward passes only: the direct term along `v` is the
//!    derivative of `<dE/dx_top, S(x_l + t v)>`, `S` the composition of the units' maps with
//!    each branch term held at its value (the shortcut-only path); the branch term is the
//!    derivative of `<dE/dx_top, x_top(x_l + t v) - S(x_l + t v)>`, which for identity units is
//!    the unrolled sum `sum_i F(x_i)` of Eq. 4. Compared with `<D_l, v>` and
//!    `<dE/dx_l - D_l, v>` from backprop.
//!
//! Each comparison is PASS (agrees within the tolerance), FAIL (disagrees by more than the
//! tolerance and by more than four times the difference estimate's own uncertainty), or
//! INCONCLUSIVE (the estimate is too uncertain to tell), with the measured reason.
//!
//! Consistency of the implementation (labelled so; they compare the engine with itself):
//!
//! 3. Forward composition (Eq. 4 / 7): `x_top = Lambda_l x_l + sum_i Fhat_i` from the cached
//!    unit inputs and branch terms.
//! 4. The split adds up: each unit's branch VJP carried down by the shortcut VJPs, plus the
//!    direct part, equals the recursive `dE/dx_l` (for identity units the recursion runs the
//!    engine's fused path, so this compares two different implementations).
//! 5. Constant scaling: `||D_l|| / ||dE/dx_L|| = prod lambda`.
//!
//! A check that does not apply is reported "n/a" with the reason.

use rayon::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::record::{build_records, direct_parts, predicted_direct_ratio, Stages};
use crate::finite_diff::{rel_error_scalar, ridders_twice, Derivative, Difference};
use crate::grads::Grads;
use crate::interrupt::{Interrupt, Interrupted};
use crate::net::{NetCache, Network};
use crate::rng::{derive_seed, gaussian, purpose, rng};
use crate::tensor::{axpy, dot, norm, Tensor};
use crate::unit::{ForwardCtx, ShortcutKind};

pub const FD_TOL: f64 = 1e-6;
pub const FORMULA_TOL: f64 = 1e-10;
pub const PROD_LAMBDA_TOL: f64 = 1e-12;
/// Ridders' first step along a unit-norm direction is chosen so the loss changes by about
/// this much; the extrapolation then shrinks it by 1.4 per step.
pub const FD_LOSS_CHANGE: f64 = 1e-4;
/// Largest first step (the frozen network is smooth, but BatchNorm and the softmax curve it).
pub const FD_MAX_STEP: f64 = 1e-3;
/// Directional derivatives below this are compared in absolute terms: a parameter whose
/// effect a following training-mode BN removes (a `beta` right before the head's BN) has a
/// true derivative of exactly 0, and the relative error of two rounding noises means nothing.
pub const FD_DERIVATIVE_FLOOR: f64 = 1e-5;
/// A disagreement counts as a failure only when it exceeds this many times the estimate's own
/// uncertainty (and the tolerance).
pub const UNCERTAINTY_FACTOR: f64 = 4.0;

/// Ridders' first step for a directional derivative of size about `slope`.
fn fd_step(slope: f64) -> f64 {
    if slope.is_finite() && slope.abs() >= FD_DERIVATIVE_FLOOR {
        (FD_LOSS_CHANGE / slope.abs()).clamp(1e-7, FD_MAX_STEP)
    } else {
        FD_MAX_STEP
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    Pass,
    Fail,
    /// The estimate could not resolve the tolerance; the measured reason.
    Inconclusive(String),
    NotApplicable(String),
}

impl Status {
    /// How `check` prints it: PASS, FAIL, INCONCLUSIVE, n/a.
    pub fn label(&self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Fail => "FAIL",
            Status::Inconclusive(_) => "INCONCLUSIVE",
            Status::NotApplicable(_) => "n/a",
        }
    }
}

/// What a row establishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proof {
    /// An independent route to the number (finite differences of forward passes).
    Verification,
    /// The engine compared with itself: it catches an inconsistency, not a shared mistake.
    Consistency,
}

#[derive(Debug, Clone)]
pub struct CheckRow {
    /// Short name, e.g. "finite differences".
    pub check: String,
    /// What exactly was compared.
    pub what: String,
    /// The worst relative disagreement.
    pub worst: Option<f64>,
    /// The finite-difference estimate's own relative uncertainty at the worst comparison.
    pub uncertainty: Option<f64>,
    pub tolerance: f64,
    pub status: Status,
    pub proof: Proof,
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
            uncertainty: None,
            tolerance,
            status,
            proof: Proof::Consistency,
        }
    }

    fn not_applicable(check: &str, what: String, tolerance: f64, reason: String) -> Self {
        CheckRow {
            check: check.into(),
            what,
            worst: None,
            uncertainty: None,
            tolerance,
            status: Status::NotApplicable(reason),
            proof: Proof::Consistency,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct CheckOptions {
    /// Random directions per finite-difference target.
    pub directions: usize,
    /// Seed of the directions.
    pub seed: u64,
    /// Run even when the estimate says the finite differences take more than a day.
    pub force: bool,
}

/// At most this many directions per target: the false-alarm rate is settled long before, and
/// the jobs are listed before they run.
pub const MAX_DIRECTIONS: usize = 10_000;

/// One comparison of a backprop number with a difference estimate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Comparison {
    pub analytic: f64,
    pub estimate: Derivative,
    /// `|estimate - analytic| / scale`.
    pub error: f64,
    /// `estimate.error / scale`.
    pub uncertainty: f64,
}

/// The verdict of one comparison, before a reason is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail,
    /// The estimate is too uncertain (or not finite) to tell.
    Unresolved,
}

impl Comparison {
    /// `scale` is what the disagreement is measured against.
    pub fn new(analytic: f64, estimate: Derivative, scale: f64) -> Comparison {
        let miss = (estimate.value - analytic).abs();
        let relative = |x: f64| {
            if scale > 0.0 {
                x / scale
            } else if x == 0.0 {
                0.0
            } else {
                f64::INFINITY
            }
        };
        Comparison {
            analytic,
            estimate,
            error: relative(miss),
            uncertainty: relative(estimate.error),
        }
    }

    /// A comparison of one directional derivative of the loss, measured against its own size
    /// (at least [`FD_DERIVATIVE_FLOOR`]).
    pub fn of_derivative(analytic: f64, estimate: Derivative) -> Comparison {
        let scale = estimate
            .value
            .abs()
            .max(analytic.abs())
            .max(FD_DERIVATIVE_FLOOR);
        Comparison::new(analytic, estimate, scale)
    }

    pub fn verdict(&self, tolerance: f64) -> Verdict {
        if !self.analytic.is_finite() {
            return Verdict::Fail;
        }
        if !self.estimate.value.is_finite() || self.estimate.error.is_nan() {
            return Verdict::Unresolved;
        }
        if self.error <= tolerance {
            Verdict::Pass
        } else if self.error > UNCERTAINTY_FACTOR * self.uncertainty {
            Verdict::Fail
        } else {
            Verdict::Unresolved
        }
    }
}

/// Compares a backprop number with Ridders' estimate from first step `h`; when that
/// comparison would fail, estimates once more from a 30 times smaller first step and folds
/// the two estimates' disagreement into the uncertainty: a failure must survive a second,
/// finer look (a first step too large for a strongly curved loss can make one table agree
/// with itself on a wrong value).
fn judged(
    diff: impl Fn(f64) -> Difference,
    h: f64,
    target: f64,
    judge: impl Fn(Derivative) -> Comparison,
) -> Comparison {
    let first = ridders_twice(&diff, h, target);
    let c = judge(first);
    if c.verdict(FD_TOL) != Verdict::Fail {
        return c;
    }
    let second = ridders_twice(&diff, h / 30.0, target);
    let best = if second.error <= first.error {
        second
    } else {
        first
    };
    judge(Derivative {
        value: best.value,
        error: best.error.max((first.value - second.value).abs()),
        evaluations: first.evaluations + second.evaluations,
    })
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
    if vn < 1e-6 {
        // The random part and the gradient's cancel: a one-element tensor (a learned scalar)
        // whose random sign opposed its gradient's. Its one direction is the random one.
        return &r / norm(&r);
    }
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

/// Every check on `net` at this batch. A request on `stop` ends the call with
/// [`Interrupted`] before the next finite-difference job starts (the jobs of a ResNet-110 take
/// minutes in all, each a few seconds).
pub fn run_checks(
    net: &Network,
    input: &Tensor,
    labels: &[usize],
    ctx: &ForwardCtx,
    opts: &CheckOptions,
    stop: &Interrupt,
) -> anyhow::Result<CheckReport> {
    crate::budget::ensure_at_most(
        "--directions",
        opts.directions as u64,
        MAX_DIRECTIONS as u64,
    )?;
    // At least two forward passes per direction at each of the four unit inputs checked.
    crate::budget::ensure_feasible(
        &format!("--directions {}", opts.directions),
        net.pass_work(input.shape()[0], 8.0 * opts.directions as f64 / 3.0),
        opts.force,
    )?;
    let cache = net.forward(input, labels, ctx)?;
    let mut grads = Grads::new();
    let back = net.backward(&cache, labels, Some(&mut grads));
    let stages = Stages::of(net, &cache);
    let frozen = net.with_frozen_relus(&cache);
    let why = Unresolved::of(net, &cache, &back.grad_x);
    let mut rows = finite_difference_rows(
        net,
        &frozen,
        input,
        labels,
        ctx,
        opts,
        &cache,
        &back.grad_x,
        &grads,
        &stages,
        &why,
        stop,
    )?;
    rows.extend(split_rows(
        net,
        &frozen,
        ctx,
        opts,
        &cache,
        &back.grad_x,
        &stages,
        &why,
        stop,
    )?);
    rows.extend(verify_units(net, &cache, &back).1);
    Ok(CheckReport {
        rows,
        notes: conditioning_notes(net, &cache, &back.grad_x),
    })
}

/// What limits finite differences on this network at this point, measured once.
struct Unresolved {
    /// The smallest BatchNorm batch variance, its layer and channel.
    smallest_var: Option<(f64, String, usize)>,
    /// max_l ||dE/dx_l|| / ||dE/dx_L||.
    amplification: f64,
}

impl Unresolved {
    fn of(net: &Network, cache: &NetCache, grad_x: &[Tensor]) -> Unresolved {
        let top = norm(&grad_x[net.num_units()]);
        Unresolved {
            smallest_var: cache.smallest_bn_variance(net),
            amplification: grad_x.iter().map(|g| norm(g) / top).fold(0.0, worse),
        }
    }

    /// The reason a group's worst comparison could not be resolved.
    fn reason(&self, c: &Comparison, tolerance: f64) -> String {
        if !c.estimate.value.is_finite() {
            return "the loss is not finite at the perturbed points".to_string();
        }
        let mut s = format!(
            "the difference estimate's own uncertainty is {:.1e} (relative), its disagreement {:.1e}, against a tolerance of {tolerance:.0e}: the loss is too curved here for finite differences to resolve it",
            c.uncertainty, c.error
        );
        if let Some((v, name, ch)) = &self.smallest_var {
            s.push_str(&format!(
                "; the smallest BatchNorm batch variance is {v:.1e} ({name}, channel {ch})"
            ));
        }
        if self.amplification > AMPLIFICATION_NOTE {
            s.push_str(&format!(
                "; the gradient grows {:.1e}x toward the input",
                self.amplification
            ));
        }
        s
    }
}

fn conditioning_notes(net: &Network, cache: &NetCache, grad_x: &[Tensor]) -> Vec<String> {
    let l_top = net.num_units();
    let mut notes = Vec::new();
    let top = norm(&grad_x[l_top]);
    let amplification = grad_x.iter().map(|g| norm(g) / top).fold(0.0, worse);
    let x_top = norm(cache.x(l_top));
    let x_0 = norm(cache.x(0));
    if top == 0.0 && cache.loss.is_finite() {
        notes.push(
            "dE/dx_L is exactly 0 (a classifier that starts at 0, as under Fixup): every dE/dx_l is 0, and the ratios to it are 0/0".to_string(),
        );
    } else if !cache.loss.is_finite() || !amplification.is_finite() || !x_top.is_finite() {
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

/// One row from a group of comparisons: FAIL if any failed, else INCONCLUSIVE (with the
/// reason of the worst unresolved one) if any could not be resolved, else PASS. The reported
/// error and uncertainty are those of the comparison that decided the row.
fn group_row(
    check: &str,
    what: String,
    results: &[Comparison],
    tolerance: f64,
    why: &Unresolved,
) -> CheckRow {
    let verdicts: Vec<Verdict> = results.iter().map(|c| c.verdict(tolerance)).collect();
    let pick = |v: Verdict| {
        results
            .iter()
            .zip(&verdicts)
            .filter(|(_, &x)| x == v)
            .map(|(c, _)| c)
            .max_by(|a, b| a.error.total_cmp(&b.error))
    };
    let (status, decided) = if let Some(c) = pick(Verdict::Fail) {
        (Status::Fail, c)
    } else if let Some(c) = pick(Verdict::Unresolved) {
        (Status::Inconclusive(why.reason(c, tolerance)), c)
    } else {
        (
            Status::Pass,
            pick(Verdict::Pass).expect("a group has comparisons"),
        )
    };
    CheckRow {
        check: check.into(),
        what,
        worst: Some(decided.error),
        uncertainty: Some(decided.uncertainty),
        tolerance,
        status,
        proof: Proof::Verification,
    }
}

#[allow(clippy::too_many_arguments)]
fn finite_difference_rows(
    net: &Network,
    frozen: &Network,
    input: &Tensor,
    labels: &[usize],
    ctx: &ForwardCtx,
    opts: &CheckOptions,
    cache: &NetCache,
    grad_x: &[Tensor],
    grads: &Grads,
    stages: &Stages,
    why: &Unresolved,
    stop: &Interrupt,
) -> Result<Vec<CheckRow>, Interrupted> {
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
    use crate::net::Part;
    let mut owners = vec![
        ("stem".to_string(), Part::Stem),
        ("unit 0".to_string(), Part::Unit(0)),
        (format!("unit {}", l_top - 1), Part::Unit(l_top - 1)),
        ("head".to_string(), Part::Head),
        ("classifier".to_string(), Part::Classifier),
    ];
    if let Some(l) = (1..l_top).find(|&l| !stages.keeps_shape(l)) {
        owners.insert(2, (format!("unit {l} (shape change)"), Part::Unit(l)));
    }
    let mut seen = Vec::new();
    for (group, part) in owners {
        if seen.contains(&part) {
            continue;
        }
        seen.push(part);
        for name in net.param_names_of(part) {
            for _ in 0..opts.directions {
                jobs.push(FdJob {
                    group: format!("dE/dθ, {group}"),
                    target: name.clone(),
                    unit: None,
                });
            }
        }
    }
    let done = AtomicUsize::new(0);
    let results: Vec<Comparison> = jobs
        .par_iter()
        .enumerate()
        .map(|(j, job)| {
            stop.check(|| {
                format!(
                    "during the finite differences ({} of {} done)",
                    done.load(Ordering::Relaxed),
                    jobs.len()
                )
            })?;
            let seed = derive_seed(opts.seed, &[purpose::DIRECTIONS, j as u64]);
            // Jobs run side by side on rayon's workers: no extra helper thread inside.
            let c = crate::spin_join::without_helper(|| match job.unit {
                Some(l) => {
                    let x = cache.x(l);
                    let v = direction(x.shape(), &grad_x[l], seed);
                    let analytic = dot(&grad_x[l], &v);
                    let loss = |t: f64| {
                        let mut xp = x.clone();
                        axpy(&mut xp, t, &v);
                        frozen.loss_from(l, &xp, labels, ctx)
                    };
                    judged(
                        |t| Difference::of(loss(t), loss(-t)),
                        fd_step(analytic),
                        FD_TOL * analytic.abs() / 10.0,
                        |e| Comparison::of_derivative(analytic, e),
                    )
                }
                None => {
                    let value = net.param(&job.target).expect("parameter exists");
                    let g = grads
                        .get(&job.target)
                        .expect("every parameter has a gradient");
                    let v = direction(value.shape(), g, seed);
                    let analytic = dot(g, &v);
                    let loss = |t: f64| {
                        let mut p = value.clone();
                        axpy(&mut p, t, &v);
                        let perturbed = frozen.with_param(&job.target, &p);
                        perturbed
                            .forward(input, labels, ctx)
                            .map(|c| c.loss)
                            .unwrap_or(f64::NAN)
                    };
                    judged(
                        |t| Difference::of(loss(t), loss(-t)),
                        fd_step(analytic),
                        FD_TOL * analytic.abs() / 10.0,
                        |e| Comparison::of_derivative(analytic, e),
                    )
                }
            });
            done.fetch_add(1, Ordering::Relaxed);
            Ok(c)
        })
        .collect::<Result<_, Interrupted>>()?;
    // One row per group, worst target named.
    let mut rows: Vec<CheckRow> = Vec::new();
    let mut i = 0;
    while i < jobs.len() {
        let group = jobs[i].group.clone();
        let start = i;
        while i < jobs.len() && jobs[i].group == group {
            i += 1;
        }
        let members = &results[start..i];
        let worst = (start..i)
            .max_by(|&a, &b| results[a].error.total_cmp(&results[b].error))
            .unwrap();
        let tensors: std::collections::BTreeSet<&str> =
            jobs[start..i].iter().map(|j| j.target.as_str()).collect();
        let what = if jobs[start].unit.is_some() {
            format!("{group}: {} directions", i - start)
        } else {
            format!(
                "{group}: {} tensors x {} directions, worst {}",
                tensors.len(),
                opts.directions,
                jobs[worst].target
            )
        };
        rows.push(group_row("finite differences", what, members, FD_TOL, why));
    }
    Ok(rows)
}

/// The paper's equation for this net, judged by its last unit (never a projection unit
/// unless every unit is one).
fn eq_name(net: &Network, identity: &str, scaled: &str) -> String {
    match net.units.last().unwrap().shortcut {
        ShortcutKind::Identity => identity.to_string(),
        ShortcutKind::Scale { .. }
        | ShortcutKind::Gate { .. }
        | ShortcutKind::ShortcutGate { .. }
        | ShortcutKind::Conv1x1
        | ShortcutKind::Dropout { .. }
        | ShortcutKind::None
        | ShortcutKind::Alpha { .. }
        | ShortcutKind::LayerScale { .. }
        | ShortcutKind::DeepNorm { .. }
        | ShortcutKind::Pad => scaled.to_string(),
    }
}

/// Check 2: the direct term and the branch term of Eq. 5 / 8 along random directions, from
/// forward passes of the frozen network only, at the shallowest, middle and last unit input
/// that has units above it on its unbroken shortcut path.
#[allow(clippy::too_many_arguments)]
fn split_rows(
    net: &Network,
    frozen: &Network,
    ctx: &ForwardCtx,
    opts: &CheckOptions,
    cache: &NetCache,
    grad_x: &[Tensor],
    stages: &Stages,
    why: &Unresolved,
    stop: &Interrupt,
) -> Result<Vec<CheckRow>, Interrupted> {
    let l_top = net.num_units();
    let covered: Vec<usize> = (0..l_top).filter(|&l| stages.top[l] > l).collect();
    let name = match (
        net.units.last().unwrap().shortcut,
        net.units.last().unwrap().placement.after_add_is_identity(),
    ) {
        (ShortcutKind::Identity, true) => "Eq. 5",
        (ShortcutKind::Scale { .. } | ShortcutKind::None, true) => "Eq. 8",
        (ShortcutKind::Identity | ShortcutKind::Scale { .. } | ShortcutKind::None, false)
        | (
            ShortcutKind::Gate { .. }
            | ShortcutKind::ShortcutGate { .. }
            | ShortcutKind::Conv1x1
            | ShortcutKind::Dropout { .. }
            | ShortcutKind::Alpha { .. }
            | ShortcutKind::LayerScale { .. }
            | ShortcutKind::DeepNorm { .. }
            | ShortcutKind::Pad,
            _,
        ) => "Eq. 8 generalised",
    };
    let what_direct = format!("{name} direct term: <D_l, v> against differences of <dE/dx_top, S(x_l + t v)>, S = the units with their branch terms held (shortcut path only)");
    let what_branch = format!("{name} branch term: <dE/dx_l - D_l, v> against differences of <dE/dx_top, x_top - S> (the unrolled sum of branch terms)");
    if covered.is_empty() {
        let reason = "no unit input has units above it on an unbroken shortcut path".to_string();
        return Ok(vec![
            CheckRow::not_applicable("shortcut path", what_direct, FD_TOL, reason.clone()),
            CheckRow::not_applicable("branch paths", what_branch, FD_TOL, reason),
        ]);
    }
    let mut picks = vec![
        covered[0],
        covered[covered.len() / 2],
        covered[covered.len() - 1],
    ];
    picks.dedup();
    let direct = direct_parts(net, cache, grad_x, stages);
    // Each unit's branch term at the cached point, held fixed on the shortcut-only path.
    let held: Vec<Tensor> = (0..l_top)
        .map(|l| {
            let uc = cache.unit(net, l);
            frozen.units[l].forward_parts(&uc.x, ctx).branch_term
        })
        .collect();
    let jobs: Vec<(usize, u64)> = picks
        .iter()
        .flat_map(|&l| (0..opts.directions as u64).map(move |d| (l, d)))
        .collect();
    let results: Vec<(Comparison, Comparison)> = jobs
        .par_iter()
        .map(|&(l, d)| {
            stop.check(|| "during the shortcut-path and branch-path checks".to_string())?;
            Ok(crate::spin_join::without_helper(|| {
                let top = stages.top[l];
                let x = cache.x(l);
                let g_top = &grad_x[top];
                let seed = derive_seed(opts.seed, &[purpose::DIRECTIONS, 1 << 20, l as u64, d]);
                let v = direction(x.shape(), &grad_x[l], seed);
                let direct_bp = dot(&direct[l], &v);
                let rest_bp = dot(&grad_x[l], &v) - direct_bp;
                let at = |t: f64| {
                    let mut xp = x.clone();
                    axpy(&mut xp, t, &v);
                    xp
                };
                // S: each unit's after-addition function of its shortcut term plus the held
                // branch term.
                let shortcut_path = |mut s: Tensor| {
                    for (i, unit) in frozen.units[l..top].iter().enumerate() {
                        let h = unit.forward_parts(&s, ctx).shortcut;
                        s = unit.apply_after_add(&(&h + &held[l + i]), ctx.mode);
                    }
                    s
                };
                let full_path = |mut s: Tensor| {
                    for unit in &frozen.units[l..top] {
                        s = unit.forward(&s, ctx).0;
                    }
                    s
                };
                let scale_hint = direct_bp.abs().max(rest_bp.abs());
                let step = fd_step(scale_hint);
                let target = FD_TOL * scale_hint / 10.0;
                // Differences of the vectors first, then one inner product with dE/dx_top: the
                // terms are small beside the values they are read from.
                let contract = |plus: Tensor, minus: Tensor| Difference {
                    value: dot(g_top, &(&plus - &minus)),
                    magnitude: g_top
                        .iter()
                        .zip(plus.iter().zip(minus.iter()))
                        .map(|(g, (p, m))| g.abs() * p.abs().max(m.abs()))
                        .sum(),
                };
                // Both terms are judged against the larger of the split's two terms (a direct
                // part that is 0, a plain net's, or tiny is compared in those terms, not its
                // own), and like every directional derivative of the loss, against at least
                // the floor: a gradient a saturated BatchNorm has cut to 1e-23 is 0 here.
                let scale = |e: &Derivative| {
                    direct_bp
                        .abs()
                        .max(rest_bp.abs())
                        .max(e.value.abs())
                        .max(FD_DERIVATIVE_FLOOR)
                };
                let direct = judged(
                    |t| contract(shortcut_path(at(t)), shortcut_path(at(-t))),
                    step,
                    target,
                    |e| Comparison::new(direct_bp, e, scale(&e)),
                );
                let branch_sum = |t: f64| {
                    let xt = at(t);
                    &full_path(xt.clone()) - &shortcut_path(xt)
                };
                let rest = judged(
                    |t| contract(branch_sum(t), branch_sum(-t)),
                    step,
                    target,
                    |e| Comparison::new(rest_bp, e, scale(&e)),
                );
                (direct, rest)
            }))
        })
        .collect::<Result<_, Interrupted>>()?;
    let units = picks
        .iter()
        .map(|l| l.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let directs: Vec<Comparison> = results.iter().map(|r| r.0).collect();
    let rests: Vec<Comparison> = results.iter().map(|r| r.1).collect();
    Ok(vec![
        group_row(
            "shortcut path",
            format!(
                "{what_direct}; l = {units}, {} directions each",
                opts.directions
            ),
            &directs,
            FD_TOL,
            why,
        ),
        group_row(
            "branch paths",
            format!(
                "{what_branch}; l = {units}, {} directions each",
                opts.directions
            ),
            &rests,
            FD_TOL,
            why,
        ),
    ])
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
            // An imported unit's placement is a stand-in; its own ops say what f is.
            let whose = match &net.spec {
                crate::net::NetSpec::Imported(_) => format!("in unit {}", net.unit_label(l)),
                crate::net::NetSpec::Mlp(_) | crate::net::NetSpec::Resnet(_) => {
                    format!("under '{}'", u.placement)
                }
            };
            return Some(format!(
                "f is not the identity {whose} (x_{{l+1}} = f(y_l) with f = {})",
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

/// Check 3, per unit: `||x_top - Lambda_l x_l - sum_{i=l}^{top-1} Fhat_i||` relative to the
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
    let what = format!("{name} forward composition (consistency): x_top = (prod lambda) x_l + sum_i Fhat(x_i) from the cached x_l and branch terms, every l, within each stage");
    if let Some(reason) = unrolling_inapplicable(net, stages) {
        return CheckRow::not_applicable("forward sum", what, FORMULA_TOL, reason);
    }
    let worst = errors.iter().flatten().copied().fold(0.0, worse);
    CheckRow::measured("forward sum", what, worst, FORMULA_TOL)
}

/// Check 4, per unit: every branch contribution carried down separately through the
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
    // acc[l] accumulates D_l + sum_i T_{l,i}(c_i) over the units i >= l on l's shortcut
    // path; max_term[l] the largest term's norm.
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
    let what = format!(
        "{} split (consistency): the direct part plus every branch VJP carried down by the shortcut VJPs equals the recursive dE/dx_l (identity units: the fused backward against the two VJPs)",
        eq_name(net, "Eq. 5", "Eq. 8")
    );
    let worst = errors.iter().copied().fold(0.0, worse);
    CheckRow::measured("split adds up", what, worst, FORMULA_TOL)
}

/// Check 5, per unit: `|direct_ratio - prod lambda|`, relative (absolute when the prediction is 0).
fn prod_lambda_errors(net: &Network, records: &[super::record::UnitRecord]) -> Vec<Option<f64>> {
    records
        .iter()
        .map(|r| {
            // No gradient at the top of the path (a dead ReLU before the classifier): the
            // ratio is 0/0 and says nothing.
            if records[r.direct_top].grad_norm == 0.0 {
                return None;
            }
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
    let what = "Eq. 8 direct ratio (consistency): ||D_l|| / ||dE/dx_top|| = prod_{i=l}^{top-1} lambda_i, every l"
        .to_string();
    if let Some(reason) = unrolling_inapplicable(net, stages) {
        return CheckRow::not_applicable("prod lambda", what, PROD_LAMBDA_TOL, reason);
    }
    if errors.iter().all(|e| e.is_none()) {
        return CheckRow::not_applicable(
            "prod lambda",
            what,
            PROD_LAMBDA_TOL,
            "dE/dx_top is exactly 0 (no gradient reaches the top of the shortcut path)".into(),
        );
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

/// Per-unit errors of checks 3-5 at the cached point, and the check rows built from them.
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

/// True when no check failed (inconclusive and inapplicable rows do not fail).
pub fn all_passed(rows: &[CheckRow]) -> bool {
    rows.iter().all(|r| r.status != Status::Fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn est(value: f64, error: f64) -> Derivative {
        Derivative {
            value,
            error,
            evaluations: 4,
        }
    }

    #[test]
    fn a_requested_stop_ends_the_checks_before_their_first_job() {
        use crate::net::{build_mlp, MlpConfig};
        let net = build_mlp(&MlpConfig {
            units: 2,
            width: 4,
            input_dim: 3,
            classes: 2,
            placement: crate::unit::Placement::FullPreact,
            shortcut: ShortcutKind::Identity,
            norm: crate::layers::NormKind::Batch,
            init: crate::net::Init::He,
            seed: 1,
        })
        .unwrap();
        let (x, y) = crate::analysis::gaussian_batch(&net.input_shape, 4, 2, 1);
        let ctx = ForwardCtx {
            mode: crate::layers::Mode::Train,
            dropout_seed: 0,
            keep_branch: true,
            weight_grads: true,
        };
        let opts = CheckOptions {
            directions: 1,
            seed: 1,
            force: false,
        };
        let stop = Interrupt::new();
        assert!(run_checks(&net, &x, &y, &ctx, &opts, &stop).is_ok());
        stop.request();
        let e = run_checks(&net, &x, &y, &ctx, &opts, &stop).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("interrupted during the finite differences (0 of "),
            "{e}"
        );
    }

    #[test]
    fn verdicts_weigh_the_disagreement_against_the_estimates_uncertainty() {
        // Agreement within the tolerance passes, however uncertain the estimate says it is.
        assert_eq!(
            Comparison::new(1.0, est(1.0 + 5e-7, 1e-3), 1.0).verdict(1e-6),
            Verdict::Pass
        );
        // A disagreement above the tolerance and well above the uncertainty fails.
        assert_eq!(
            Comparison::new(1.0, est(1.0 + 1e-4, 1e-8), 1.0).verdict(1e-6),
            Verdict::Fail
        );
        // Above the tolerance but within four uncertainties: cannot tell.
        assert_eq!(
            Comparison::new(1.0, est(1.0 + 1e-4, 1e-4), 1.0).verdict(1e-6),
            Verdict::Unresolved
        );
        // A non-finite backprop number is a failure; a non-finite estimate is not evidence.
        assert_eq!(
            Comparison::new(f64::NAN, est(1.0, 0.0), 1.0).verdict(1e-6),
            Verdict::Fail
        );
        assert_eq!(
            Comparison::new(1.0, est(f64::NAN, f64::NAN), 1.0).verdict(1e-6),
            Verdict::Unresolved
        );
        // Tiny derivatives are compared against the floor, not their own size.
        let c = Comparison::of_derivative(1e-12, est(3e-12, 1e-13));
        assert_eq!(c.verdict(1e-6), Verdict::Pass, "{c:?}");
        // Two exact zeros agree.
        assert_eq!(
            Comparison::new(0.0, est(0.0, 0.0), 0.0).verdict(1e-6),
            Verdict::Pass
        );
    }
}
