//! The statistics of a training experiment, read from its `train.csv` (and `signal.csv`):
//! per replicate its outcome, per variant medians, spread and failures, and the comparison
//! with the paper's ordering by a rank test. The report's training sections are rendered
//! from these, so every sentence follows from the numbers it prints.

use crate::schema::{col, Column};
use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::table::Table;
use crate::plot::kinds::PaperValues;
use crate::stats::{mann_whitney, median, quartiles};

/// A replicate *failed to train* when it diverged, or its last epoch's mean training loss is
/// above this (chance on 10 classes is ln 10 = 2.30) ...
pub const FAILED_TRAIN_LOSS: f64 = 1.0;
/// ... or its final test error is above this.
pub const FAILED_TEST_ERROR: f64 = 0.5;
/// Two variants are called distinguishable when the two-sided Mann-Whitney p is below this.
pub const ALPHA: f64 = 0.05;

pub const FAILURE_RULE: &str = "diverged, or last-epoch training loss above 1.0 (chance: ln 10 = 2.30), or final test error above 50%";

/// How one replicate ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub replicate: String,
    /// Test error at the planned last epoch (`None`: the run diverged before it).
    pub test_error: Option<f64>,
    pub test_loss: Option<f64>,
    /// Mean of the last completed epoch's batch losses (training mode).
    pub train_loss: Option<f64>,
    /// Loss and error on the fixed training images, BN in evaluation mode, at the last epoch.
    pub train_eval: Option<(f64, f64)>,
    /// The step a diverged run stopped at.
    pub diverged_at: Option<usize>,
}

impl Outcome {
    pub fn failed(&self) -> bool {
        self.diverged_at.is_some()
            // NaN fails too: only a number at or below the bound passes.
            || !self.train_loss.is_some_and(|l| l <= FAILED_TRAIN_LOSS)
            || !self.test_error.is_some_and(|e| e <= FAILED_TEST_ERROR)
    }

    /// The error a rank test sees: a run that never reached its last epoch ranks last.
    fn rank_error(&self) -> f64 {
        self.test_error.unwrap_or(f64::INFINITY)
    }
}

/// One variant's replicates, summarised.
#[derive(Debug, Clone, PartialEq)]
pub struct VariantStats {
    pub variant: String,
    pub outcomes: Vec<Outcome>,
    /// Median over replicates of `||dE/dx_0|| / ||dE/dx_L||` at the first recorded step (from
    /// `grads.csv`, when attached).
    pub initial_grad_ratio: Option<f64>,
}

impl VariantStats {
    fn values(&self, f: impl Fn(&Outcome) -> Option<f64>) -> Vec<f64> {
        self.outcomes.iter().filter_map(f).collect()
    }

    /// Median final test error over the replicates that reached the last epoch.
    pub fn median_error(&self) -> Option<f64> {
        median(&self.values(|o| o.test_error))
    }

    pub fn error_quartiles(&self) -> Option<(f64, f64)> {
        quartiles(&self.values(|o| o.test_error))
    }

    pub fn median_train_loss(&self) -> Option<f64> {
        median(&self.values(|o| o.train_loss))
    }

    pub fn failed(&self) -> usize {
        self.outcomes.iter().filter(|o| o.failed()).count()
    }

    pub fn diverged(&self) -> usize {
        self.outcomes
            .iter()
            .filter(|o| o.diverged_at.is_some())
            .count()
    }

    /// Median final generalisation gaps: test minus training loss, test minus training error
    /// (training numbers on the fixed training images, evaluation mode).
    pub fn median_gaps(&self) -> Option<(f64, f64)> {
        let loss = self.values(|o| Some(o.test_loss? - o.train_eval?.0));
        let err = self.values(|o| Some(o.test_error? - o.train_eval?.1));
        Some((median(&loss)?, median(&err)?))
    }

    fn rank_errors(&self) -> Vec<f64> {
        self.outcomes.iter().map(Outcome::rank_error).collect()
    }
}

/// Every variant of a `train.csv`, in first-appearance order, with each replicate's outcome.
pub fn variant_stats(t: &Table) -> Vec<VariantStats> {
    let planned = t
        .rows
        .iter()
        .filter_map(|r| t.f(r, col::EPOCH))
        .fold(0.0, f64::max);
    let mut order: Vec<String> = Vec::new();
    let mut groups: BTreeMap<String, BTreeMap<u64, Vec<&Vec<String>>>> = BTreeMap::new();
    for r in &t.rows {
        let v = t.variant(r);
        if !groups.contains_key(&v) {
            order.push(v.clone());
        }
        let rep = t.get(r, col::REPLICATE).parse().unwrap_or(0);
        groups.entry(v).or_default().entry(rep).or_default().push(r);
    }
    let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    order
        .into_iter()
        .map(|v| {
            let outcomes = groups[&v]
                .iter()
                .map(|(rep, rows)| {
                    let last_epoch = rows
                        .iter()
                        .filter_map(|r| t.f(r, col::EPOCH))
                        .fold(0.0, f64::max);
                    let ended: Vec<&&Vec<String>> = rows
                        .iter()
                        .filter(|r| t.f(r, col::TEST_ERROR).is_some())
                        .collect();
                    let end = ended
                        .iter()
                        .rfind(|r| t.f(r, col::EPOCH) == Some(planned))
                        .filter(|_| last_epoch == planned);
                    // The last completed epoch's batch losses.
                    let done_epoch = ended.last().and_then(|r| t.f(r, col::EPOCH));
                    let losses: Vec<f64> = rows
                        .iter()
                        .filter(|r| done_epoch.is_some() && t.f(r, col::EPOCH) == done_epoch)
                        .filter_map(|r| t.f(r, col::TRAIN_LOSS))
                        .collect();
                    let opt_col = |column: Column| {
                        if t.has(column) {
                            end.and_then(|r| t.f(r, column))
                        } else {
                            None
                        }
                    };
                    let train_eval =
                        opt_col(col::TRAIN_EVAL_LOSS).zip(opt_col(col::TRAIN_EVAL_ERROR));
                    let diverged_at = end.is_none().then(|| {
                        rows.iter()
                            .filter_map(|r| t.f(r, col::STEP))
                            .fold(0.0, f64::max) as usize
                            + 1
                    });
                    Outcome {
                        replicate: rep.to_string(),
                        test_error: end.and_then(|r| t.f(r, col::TEST_ERROR)),
                        test_loss: end.and_then(|r| t.f(r, col::TEST_LOSS)),
                        train_loss: end.and(mean(&losses)),
                        train_eval,
                        diverged_at,
                    }
                })
                .collect();
            VariantStats {
                variant: v,
                outcomes,
                initial_grad_ratio: None,
            }
        })
        .collect()
}

/// One variant trained at each rate of a learning-rate sweep (a grid's `lrs`): the paper's
/// optimisation argument in a measurable form, the largest rate at which the variant trains.
#[derive(Debug, Clone, PartialEq)]
pub struct LrSweep {
    /// The variant's label without its rate.
    pub variant: String,
    /// Each swept rate (ascending) with the replicates trained at it.
    pub points: Vec<(f64, VariantStats)>,
}

impl LrSweep {
    /// The largest rate at which most replicates trained (did not fail), if any.
    pub fn largest_training_lr(&self) -> Option<f64> {
        self.points
            .iter()
            .filter(|(_, v)| 2 * v.failed() < v.outcomes.len())
            .map(|(lr, _)| *lr)
            .fold(None, |m: Option<f64>, lr| Some(m.map_or(lr, |m| m.max(lr))))
    }
}

/// The learning-rate sweeps of a `train.csv` whose cells differ in their base rate (none when
/// the grid has one rate or none).
pub fn lr_sweeps(t: &Table) -> Vec<LrSweep> {
    if !t.has(col::BASE_LR) {
        return Vec::new();
    }
    let mut rates: Vec<f64> = t.rows.iter().filter_map(|r| t.f(r, col::BASE_LR)).collect();
    rates.sort_by(f64::total_cmp);
    rates.dedup();
    if rates.len() < 2 {
        return Vec::new();
    }
    // Each full label (rate included) to its label without the rate, and the rate.
    let mut of: BTreeMap<String, (String, f64)> = BTreeMap::new();
    for r in &t.rows {
        if let Some(lr) = t.f(r, col::BASE_LR) {
            of.entry(t.variant(r))
                .or_insert_with(|| (t.variant_except(r, Some(col::BASE_LR)), lr));
        }
    }
    let mut sweeps: Vec<LrSweep> = Vec::new();
    for v in variant_stats(t) {
        let Some((base, lr)) = of.get(&v.variant).cloned() else {
            continue;
        };
        match sweeps.iter_mut().find(|s| s.variant == base) {
            Some(s) => s.points.push((lr, v)),
            None => sweeps.push(LrSweep {
                variant: base,
                points: vec![(lr, v)],
            }),
        }
    }
    for s in &mut sweeps {
        s.points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    sweeps
}

/// The sweep as a table: per variant and rate, the median final test error and the failures,
/// and the largest rate at which the variant trains.
pub fn lr_sweep_table(sweeps: &[LrSweep]) -> String {
    let mut rates: Vec<f64> = sweeps
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .collect();
    rates.sort_by(f64::total_cmp);
    rates.dedup();
    let mut s = String::from("| variant |");
    for lr in &rates {
        let _ = write!(s, " lr {lr} |");
    }
    s.push_str(" largest rate that trains |\n|---|");
    for _ in &rates {
        s.push_str("---|");
    }
    s.push_str("---|\n");
    for sw in sweeps {
        let _ = write!(s, "| {} |", sw.variant);
        for lr in &rates {
            let cell = sw
                .points
                .iter()
                .find(|p| p.0 == *lr)
                .map_or("-".into(), |(_, v)| {
                    format!(
                        "{} ({} of {} failed)",
                        v.median_error().map_or("-".into(), pct),
                        v.failed(),
                        v.outcomes.len()
                    )
                });
            let _ = write!(s, " {cell} |");
        }
        let _ = writeln!(
            s,
            " {} |",
            sw.largest_training_lr()
                .map_or("none".into(), |lr| lr.to_string())
        );
    }
    let _ = writeln!(
        s,
        "\nEach cell: the median final test error over the replicates that reached the last epoch, and how many failed to train ({FAILURE_RULE}). A rate *trains* a variant when most of its replicates did not fail."
    );
    s
}

/// The variants grouped by the largest rate at which they train, largest first (a sentence).
pub fn lr_sweep_summary(sweeps: &[LrSweep]) -> String {
    let mut groups: Vec<(Option<f64>, Vec<&str>)> = Vec::new();
    for sw in sweeps {
        let lr = sw.largest_training_lr();
        match groups.iter_mut().find(|g| g.0 == lr) {
            Some(g) => g.1.push(&sw.variant),
            None => groups.push((lr, vec![&sw.variant])),
        }
    }
    // Largest rate first, "at no rate" last.
    groups.sort_by(|a, b| match (a.0, b.0) {
        (Some(x), Some(y)) => y.total_cmp(&x),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => std::cmp::Ordering::Equal,
    });
    let parts: Vec<String> = groups
        .iter()
        .map(|(lr, vs)| match lr {
            Some(lr) => format!("up to {lr}: {}", vs.join(", ")),
            None => format!("at none of the rates: {}", vs.join(", ")),
        })
        .collect();
    format!(
        "The largest rate at which each variant trains: {}.\n",
        parts.join("; ")
    )
}

/// Adds each variant's gradient ratio at unit 0 at the first recorded step, from `grads.csv`.
pub fn attach_initial_gradients(stats: &mut [VariantStats], grads: &Table) {
    let first = grads
        .rows
        .iter()
        .filter_map(|r| grads.f(r, col::STEP))
        .fold(f64::INFINITY, f64::min);
    for v in stats.iter_mut() {
        let ratios: Vec<f64> = grads
            .rows
            .iter()
            .filter(|r| {
                grads.variant(r) == v.variant
                    && grads.f(r, col::STEP) == Some(first)
                    && grads.f(r, col::UNIT) == Some(0.0)
            })
            .filter_map(|r| grads.f(r, col::GRAD_RATIO))
            .collect();
        v.initial_grad_ratio = median(&ratios);
    }
}

/// What a comparison of two variants found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// The first is better, distinguishably (p < ALPHA).
    FirstBetter,
    SecondBetter,
    /// p >= ALPHA (or nothing to compare).
    NotDistinguishable,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Comparison {
    pub p: Option<f64>,
    pub verdict: Verdict,
}

/// Mann-Whitney on the final test errors (a run that diverged ranks last).
pub fn compare(a: &VariantStats, b: &VariantStats) -> Comparison {
    let (ea, eb) = (a.rank_errors(), b.rank_errors());
    match mann_whitney(&ea, &eb) {
        Some(t) if t.p < ALPHA => Comparison {
            p: Some(t.p),
            // U counts pairs where a's error is larger: below half, a is better.
            verdict: if t.u < (ea.len() * eb.len()) as f64 / 2.0 {
                Verdict::FirstBetter
            } else {
                Verdict::SecondBetter
            },
        },
        Some(t) => Comparison {
            p: Some(t.p),
            verdict: Verdict::NotDistinguishable,
        },
        None => Comparison {
            p: None,
            verdict: Verdict::NotDistinguishable,
        },
    }
}

fn pct(v: f64) -> String {
    if v.is_finite() {
        format!("{:.2}%", 100.0 * v)
    } else {
        "-".into()
    }
}

fn num(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.3}")
    } else {
        format!("{v}")
    }
}

fn sci(v: f64) -> String {
    if v.is_finite() && (0.01..1000.0).contains(&v.abs()) {
        format!("{v:.3}")
    } else {
        format!("{v:.2e}")
    }
}

fn p_text(p: Option<f64>) -> String {
    match p {
        Some(p) if p < 0.001 => format!("p = {p:.1e}"),
        Some(p) => format!("p = {p:.3}"),
        None => "no test possible".into(),
    }
}

/// The per-variant table.
pub fn stats_table(stats: &[VariantStats], paper: Option<&PaperValues>) -> String {
    let mut s = String::from(
        "| variant | replicates | median final test error | IQR | median last-epoch training loss | failed to train |",
    );
    if let Some(p) = paper {
        let _ = write!(s, " paper ({}) |", p.source);
    }
    s.push_str("\n|---|---|---|---|---|---|");
    if paper.is_some() {
        s.push_str("---|");
    }
    s.push('\n');
    for v in stats {
        let n = v.outcomes.len();
        let reached = n - v.diverged();
        let reps = if reached == n {
            n.to_string()
        } else {
            format!("{n} ({} diverged)", n - reached)
        };
        let iqr = v
            .error_quartiles()
            .map_or("-".into(), |(a, b)| format!("{}–{}", pct(a), pct(b)));
        let _ = write!(
            s,
            "| {} | {reps} | {} | {iqr} | {} | {} of {n} |",
            v.variant,
            v.median_error().map_or("-".into(), pct),
            v.median_train_loss().map_or("-".into(), num),
            v.failed(),
        );
        if let Some(p) = paper {
            let x = p.values.iter().find(|(k, _)| *k == v.variant);
            let _ = write!(s, " {} |", x.map_or("-".into(), |(_, x)| format!("{x}")));
        }
        s.push('\n');
    }
    let _ = writeln!(
        s,
        "\nFailed to train: {FAILURE_RULE}. The IQR is the range of the middle half of the replicates' final test errors."
    );
    s
}

/// What was measured that bears on a reversed pair: failures, training losses, gaps.
fn explain(better_here: &VariantStats, worse_here: &VariantStats) -> String {
    let mut parts = Vec::new();
    let (fb, fw) = (better_here.failed(), worse_here.failed());
    if fw > fb {
        parts.push(format!(
            "{} failed to train in {fw} of {} replicates, {} in {fb} of {}",
            worse_here.variant,
            worse_here.outcomes.len(),
            better_here.variant,
            better_here.outcomes.len()
        ));
    }
    if let (Some(lb), Some(lw)) = (
        better_here.median_train_loss(),
        worse_here.median_train_loss(),
    ) {
        if lb < lw {
            parts.push(format!(
                "{} also reaches the lower training loss (median {} against {}): here it optimises better",
                better_here.variant,
                num(lb),
                num(lw)
            ));
        } else {
            parts.push(format!(
                "{} reaches the lower training loss (median {} against {}) yet the higher test error: the difference here is in generalisation, not optimisation",
                worse_here.variant,
                num(lw),
                num(lb)
            ));
        }
    }
    // The gradient's growth toward the input at the first step, where it differs by more
    // than a factor of two (a smaller difference says nothing about the outcome).
    if let Some((rb, rw)) = better_here
        .initial_grad_ratio
        .zip(worse_here.initial_grad_ratio)
        .filter(|(rb, rw)| rb / rw > 2.0 || rw / rb > 2.0)
    {
        parts.push(format!(
            "at the first step ||dE/dx_0|| / ||dE/dx_L|| is {} for {} against {} for {} (median over replicates)",
            sci(rw),
            worse_here.variant,
            sci(rb),
            better_here.variant
        ));
    }
    if let (Some((_, gb)), Some((_, gw))) = (better_here.median_gaps(), worse_here.median_gaps()) {
        parts.push(format!(
            "median generalisation gap (test minus training error) {} for {} against {} for {}",
            pct(gw),
            worse_here.variant,
            pct(gb),
            better_here.variant
        ));
    }
    parts.join("; ")
}

/// The comparison with the paper's ordering, pair by pair.
pub fn ordering_section(stats: &[VariantStats], paper: &PaperValues) -> String {
    let of = |name: &str| stats.iter().find(|v| v.variant == name);
    let mut ranked: Vec<(&VariantStats, f64)> = paper
        .values
        .iter()
        .filter_map(|(k, x)| of(k).map(|v| (v, *x)))
        .collect();
    ranked.sort_by(|a, b| a.1.total_cmp(&b.1));
    let mut s = format!(
        "Compared with the paper's ordering ({}), pair by pair: a two-sided Mann-Whitney U test on the replicates' final test errors (a run that diverged ranks last); a pair is distinguishable at this scale when p < {ALPHA}.\n\n",
        paper.source
    );
    let (mut agree, mut reversed, mut open) = (0, 0, 0);
    for i in 0..ranked.len() {
        for j in i + 1..ranked.len() {
            let (a, b) = (ranked[i].0, ranked[j].0);
            if ranked[i].1 == ranked[j].1 {
                continue;
            }
            let c = compare(a, b);
            let medians = format!(
                "medians {} and {}",
                a.median_error().map_or("-".into(), pct),
                b.median_error().map_or("-".into(), pct)
            );
            let line = match c.verdict {
                Verdict::FirstBetter => {
                    agree += 1;
                    format!("agrees ({medians}, {})", p_text(c.p))
                }
                Verdict::SecondBetter => {
                    reversed += 1;
                    format!(
                        "**reversed** ({medians}, {}). Measured: {}",
                        p_text(c.p),
                        explain(b, a)
                    )
                }
                Verdict::NotDistinguishable => {
                    open += 1;
                    format!(
                        "not distinguishable at this scale ({medians}, {})",
                        p_text(c.p)
                    )
                }
            };
            let _ = writeln!(
                s,
                "- paper: {} < {} ({} < {}); measured: {line}.",
                a.variant, b.variant, ranked[i].1, ranked[j].1
            );
        }
    }
    let _ = writeln!(
        s,
        "\nOf {} pairs: {agree} {} with the paper, {reversed} {} reversed and {open} {} not distinguishable at this scale.",
        agree + reversed + open,
        if agree == 1 { "agrees" } else { "agree" },
        if reversed == 1 { "is" } else { "are" },
        if open == 1 { "is" } else { "are" },
    );
    s
}

/// Fig. 6 of the paper: pre-activation ends with a slightly higher training loss but a lower
/// test error than the original unit. Stated for the variants `original` and `full-preact`
/// when both are present.
pub fn fig6_section(stats: &[VariantStats]) -> Option<String> {
    let of = |name: &str| stats.iter().find(|v| v.variant == name);
    let (orig, pre) = (of("original")?, of("full-preact")?);
    let losses = |v: &VariantStats| v.values(|o| o.train_loss);
    let loss_test = mann_whitney(&losses(pre), &losses(orig));
    let err = compare(pre, orig);
    let (lp, lo) = (pre.median_train_loss()?, orig.median_train_loss()?);
    let (ep, eo) = (pre.median_error()?, orig.median_error()?);
    let loss_side = match loss_test {
        Some(t) if t.p < ALPHA && lp > lo => "higher, as in Fig. 6",
        Some(t) if t.p < ALPHA => "lower, unlike Fig. 6",
        _ => "not distinguishable",
    };
    let error_side = match err.verdict {
        Verdict::FirstBetter => "lower, as in Fig. 6",
        Verdict::SecondBetter => "higher, unlike Fig. 6",
        Verdict::NotDistinguishable => "not distinguishable",
    };
    let verdict = match (
        loss_side.ends_with("as in Fig. 6"),
        error_side.ends_with("as in Fig. 6"),
    ) {
        (true, true) => "reproduced",
        (false, false) => "not reproduced",
        _ => "half reproduced",
    };
    Some(format!(
        "Fig. 6 (pre-activation ends with a slightly higher training loss but a lower test error): full-preact's median last-epoch training loss is {} against {} for original ({}: {loss_side}), its median final test error {} against {} ({}: {error_side}). The pattern is {verdict} here.\n",
        num(lp),
        num(lo),
        p_text(loss_test.map(|t| t.p)),
        pct(ep),
        pct(eo),
        p_text(err.p),
    ))
}

/// The generalisation gaps at the end of training, per variant.
pub fn gap_table(stats: &[VariantStats]) -> Option<String> {
    if stats.iter().all(|v| v.median_gaps().is_none()) {
        return None;
    }
    let mut s = String::from(
        "| variant | median test − training loss | median test − training error |\n|---|---|---|\n",
    );
    for v in stats {
        let (l, e) = v
            .median_gaps()
            .map_or(("-".into(), "-".into()), |(l, e)| (num(l), pct(e)));
        let _ = writeln!(s, "| {} | {l} | {e} |", v.variant);
    }
    let _ = writeln!(
        s,
        "\nTraining numbers on {} fixed training images, BN in evaluation mode like the test numbers, at the last epoch; medians over the replicates that reached it.",
        crate::train::TRAIN_EVAL_IMAGES
    );
    Some(s)
}

/// Per variant and snapshot: the median over replicates and units of the input mean and
/// variance of each weight layer, from `signal.csv`.
pub fn signal_table(t: &Table) -> String {
    // (variant, when, layer) -> (means, vars)
    type Key = (String, String, String);
    let mut order: Vec<Key> = Vec::new();
    let mut vals: BTreeMap<Key, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    for r in &t.rows {
        let key = (
            t.variant(r),
            t.get(r, col::WHEN).to_string(),
            t.get(r, col::LAYER).to_string(),
        );
        if !vals.contains_key(&key) {
            order.push(key.clone());
        }
        let e = vals.entry(key).or_default();
        if let (Some(m), Some(v)) = (t.f(r, col::MEAN), t.f(r, col::VAR)) {
            e.0.push(m);
            e.1.push(v);
        }
    }
    let mut s = String::from("| variant | when | weight layer | median input mean | median input variance | largest input variance |\n|---|---|---|---|---|---|\n");
    for key in order {
        let (m, v) = &vals[&key];
        let largest = v.iter().copied().fold(f64::NAN, f64::max);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            key.0,
            key.1,
            key.2,
            median(m).map_or("-".into(), num),
            median(v).map_or("-".into(), num),
            num(largest)
        );
    }
    s.push_str("\nMean and variance of each weight layer's input over the batch, the channels and the pixels, on the fixed training images with BN in training mode, before the first step (init) and after the last (trained); medians over the units and replicates. A BN-ReLU output with gamma 1 and beta 0 has mean 0.40 and variance 0.34.\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A train.csv with two variants of 3 replicates, 2 epochs of 2 steps.
    fn table(errors: [[f64; 3]; 2], losses: [[f64; 3]; 2]) -> Table {
        let header = "experiment,cell,net,placement,shortcut,projection,units,replicate,step,epoch,lr,train_loss,train_error,test_loss,test_error,train_eval_loss,train_eval_error";
        let mut rows = Vec::new();
        for (v, name) in ["original", "full-preact"].iter().enumerate() {
            for rep in 0..3 {
                for step in 0..4 {
                    let epoch = step / 2;
                    let end = step % 2 == 1;
                    let loss = if epoch == 1 { losses[v][rep] } else { 2.0 };
                    let (tl, te, el, ee) = if end {
                        let e = if epoch == 1 { errors[v][rep] } else { 0.9 };
                        (
                            format!("{}", 2.0 * e),
                            format!("{e}"),
                            format!("{}", e),
                            format!("{}", e / 2.0),
                        )
                    } else {
                        Default::default()
                    };
                    rows.push(
                        format!("x,{},mlp,{name},identity,,3,{rep},{step},{epoch},0.1,{loss},0.5,{tl},{te},{el},{ee}", v * 3 + rep)
                            .split(',')
                            .map(String::from)
                            .collect(),
                    );
                }
            }
        }
        Table::new(header.split(',').map(String::from).collect(), rows)
    }

    /// A learning-rate sweep: two placements at base rates 0.01 and 0.3, 3 replicates, one
    /// epoch of 2 steps; `errors[placement][rate]` is every replicate's final test error.
    fn sweep_table(errors: [[f64; 2]; 2]) -> Table {
        let header = "experiment,cell,net,placement,shortcut,base_lr,units,replicate,step,epoch,lr,train_loss,train_error,test_loss,test_error";
        let mut rows = Vec::new();
        let mut cell = 0;
        for (v, name) in ["original", "full-preact"].iter().enumerate() {
            for (k, lr) in ["0.01", "0.3"].iter().enumerate() {
                for rep in 0..3 {
                    let e = errors[v][k] + 0.01 * rep as f64;
                    // A failed run's training loss stays at chance.
                    let loss = if e > 0.5 { 2.3 } else { 0.2 };
                    for step in 0..2 {
                        let tail = if step == 1 {
                            format!("{loss},{e}")
                        } else {
                            ",".to_string()
                        };
                        rows.push(
                            format!("x,{cell},mlp,{name},identity,{lr},3,{rep},{step},0,{lr},{loss},0.5,{tail}")
                                .split(',')
                                .map(String::from)
                                .collect(),
                        );
                    }
                    cell += 1;
                }
            }
        }
        Table::new(header.split(',').map(String::from).collect(), rows)
    }

    #[test]
    fn a_sweep_groups_each_variant_by_its_rate_and_finds_the_largest_that_trains() {
        // The original unit fails at 0.3, full pre-activation trains at both rates.
        let t = sweep_table([[0.10, 0.90], [0.05, 0.03]]);
        let sweeps = lr_sweeps(&t);
        assert_eq!(sweeps.len(), 2);
        assert_eq!(sweeps[0].variant, "original");
        let rates: Vec<f64> = sweeps[0].points.iter().map(|p| p.0).collect();
        assert_eq!(rates, [0.01, 0.3]);
        assert_eq!(sweeps[0].points[1].1.failed(), 3);
        assert_eq!(sweeps[0].largest_training_lr(), Some(0.01));
        assert_eq!(sweeps[1].largest_training_lr(), Some(0.3));
        let md = lr_sweep_table(&sweeps);
        assert!(
            md.contains("| variant | lr 0.01 | lr 0.3 | largest rate that trains |"),
            "{md}"
        );
        assert!(
            md.contains("| original | 11.00% (0 of 3 failed) | 91.00% (3 of 3 failed) | 0.01 |"),
            "{md}"
        );
        assert_eq!(
            lr_sweep_summary(&sweeps),
            "The largest rate at which each variant trains: up to 0.3: full-preact; up to 0.01: original.\n"
        );
        // One rate is no sweep.
        let one = Table::new(
            t.header.clone(),
            t.rows.iter().filter(|r| r[5] == "0.3").cloned().collect(),
        );
        assert!(lr_sweeps(&one).is_empty());
    }

    #[test]
    fn outcomes_medians_and_failures_follow_the_rows() {
        let t = table(
            [[0.10, 0.60, 0.20], [0.02, 0.03, 0.04]],
            [[0.3, 0.2, 1.5], [0.1, 0.2, 0.3]],
        );
        let stats = variant_stats(&t);
        assert_eq!(stats[0].variant, "original");
        let o = &stats[0];
        assert_eq!(o.median_error(), Some(0.20));
        let (q1, q3) = o.error_quartiles().unwrap();
        assert!(
            (q1 - 0.15).abs() < 1e-12 && (q3 - 0.40).abs() < 1e-12,
            "{q1} {q3}"
        );
        // Replicate 1: test error 60% > 50%; replicate 2: training loss 1.5 > 1.0.
        assert_eq!(o.failed(), 2);
        assert_eq!(o.median_train_loss(), Some(0.3));
        // Gaps: test loss 2e - train_eval loss e = e; test error e - e/2 = e/2.
        let (gl, ge) = o.median_gaps().unwrap();
        assert!((gl - 0.20).abs() < 1e-12 && (ge - 0.10).abs() < 1e-12);
        let p = &stats[1];
        assert_eq!(p.failed(), 0);
        // Every full-preact error below every original one: U = 0, exact p = 2 / C(6, 3) =
        // 0.1, which 3 replicates against 3 cannot get below: not distinguishable.
        let c = compare(p, o);
        assert_eq!(c.verdict, Verdict::NotDistinguishable);
        assert!((c.p.unwrap() - 0.1).abs() < 1e-12);
    }

    #[test]
    fn the_ordering_says_agree_reverse_or_not_distinguishable() {
        // With 3 against 3 the smallest two-sided p is 0.1: nothing is distinguishable.
        let t = table(
            [[0.10, 0.12, 0.14], [0.02, 0.03, 0.04]],
            [[0.3, 0.2, 0.4], [0.1, 0.2, 0.3]],
        );
        let stats = variant_stats(&t);
        let paper = PaperValues {
            source: "test".into(),
            values: vec![("original".into(), 6.61), ("full-preact".into(), 6.37)],
        };
        let s = ordering_section(&stats, &paper);
        assert!(s.contains("not distinguishable at this scale"), "{s}");
        assert!(
            s.contains("0 agree with the paper, 0 are reversed and 1 is not distinguishable"),
            "{s}"
        );
        let table = stats_table(&stats, Some(&paper));
        assert!(
            table.contains("| original | 3 | 12.00% | 11.00%–13.00% | 0.300 | 0 of 3 | 6.61 |"),
            "{table}"
        );
    }

    #[test]
    fn a_diverged_replicate_counts_as_failed_and_ranks_last() {
        let t = table(
            [[0.10, 0.12, 0.14], [0.02, 0.03, 0.04]],
            [[0.3, 0.2, 0.4], [0.1, 0.2, 0.3]],
        );
        // Replicate 0 of original stops after its first step.
        let rows = t
            .rows
            .iter()
            .filter(|r| !(r[3] == "original" && r[7] == "0" && r[8] != "0"))
            .cloned()
            .collect();
        let t = Table::new(t.header.clone(), rows);
        let stats = variant_stats(&t);
        assert_eq!(stats[0].outcomes[0].diverged_at, Some(1));
        assert_eq!(stats[0].failed(), 1);
        assert_eq!(stats[0].median_error(), Some(0.13));
        assert!(stats_table(&stats, None).contains("| original | 3 (1 diverged) |"));
    }
}
