//! `plots/README.md`, generated from the experiments' CSV: for each experiment the claim, its
//! charts, and numbers measured in this run. Never edited by hand, so it stays true.

use crate::schema::{col, Column};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::table::{geo_mean, Table, UnitRows};

/// What an experiment's section of the report summarises, one per task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// Gradient profiles at initialisation (profile.csv), with the descendants' numbers.
    Profile,
    /// Training runs (train.csv): medians, spread, failures and the paper's ordering.
    Training,
    /// The gradient by path length (paths.csv).
    Paths,
    /// Lesions of trained networks (lesion.csv).
    Lesion,
    /// Shattered gradients (shatter.csv).
    Shatter,
}

/// One experiment's inputs to the report.
pub struct Entry {
    pub name: String,
    pub claim: String,
    pub table: Table,
    /// Chart PNGs, relative to the report's folder.
    pub charts: Vec<PathBuf>,
    pub seconds: Option<f64>,
    /// Cells computed in this run (the others were complete from an earlier run).
    pub computed: usize,
    /// Which numbers follow the charts: what the task measured.
    pub section: Section,
    /// The paper's numbers for the variants, when the spec gives them.
    pub paper: Option<crate::plot::kinds::PaperValues>,
    /// A training experiment's weight-input statistics (`signal.csv`), when the spec draws
    /// them.
    pub signal: Option<Table>,
    /// A training experiment's per-unit gradients over training (`grads.csv`).
    pub grads: Option<Table>,
    /// A profile's weight gradients (`weight_grads.csv`), when the spec records them.
    pub weight_grads: Option<Table>,
    /// The charts the spec asks for (some bring their own measured numbers).
    pub kinds: Vec<crate::plot::kinds::ChartKind>,
}

/// The numbers that go with the descendants' charts, for the charts this entry draws.
fn descendant_sections(e: &Entry) -> Vec<String> {
    use super::descendants as d;
    use crate::plot::kinds::ChartKind;
    let mut out = Vec::new();
    if e.section != Section::Profile {
        return out;
    }
    if e.kinds.contains(&ChartKind::LastWeightGrad) {
        if let Some(s) = e.weight_grads.as_ref().and_then(d::depth_fit_section) {
            out.push(s);
        }
    }
    if e.kinds.contains(&ChartKind::WeightGrads) {
        if let Some(s) = e.weight_grads.as_ref().and_then(d::weight_grads_section) {
            out.push(s);
        }
    }
    if e.kinds.contains(&ChartKind::SquaredNorm) {
        out.extend(d::squared_norm_section(&e.table));
    }
    out.extend(d::post_norm_direct_section(&e.table));
    if e.kinds.contains(&ChartKind::Signal) {
        out.extend(d::signal_section(&e.table));
    }
    out
}

fn training_section(e: &Entry) -> String {
    let mut stats = super::training::variant_stats(&e.table);
    if let Some(g) = &e.grads {
        super::training::attach_initial_gradients(&mut stats, g);
    }
    let counts: std::collections::BTreeSet<usize> =
        stats.iter().map(|v| v.outcomes.len()).collect();
    let reps = counts
        .iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(" or ");
    let sweeps = super::training::lr_sweeps(&e.table);
    if !sweeps.is_empty() {
        return format!(
            "{reps} replicates per variant and rate, the same seeds for every variant and rate.\n\n{}\n{}",
            super::training::lr_sweep_table(&sweeps),
            super::training::lr_sweep_summary(&sweeps)
        );
    }
    let mut s = format!(
        "{reps} replicates per variant, the same seeds for every variant.\n\n{}",
        super::training::stats_table(&stats, e.paper.as_ref())
    );
    if let Some(p) = &e.paper {
        s.push('\n');
        s.push_str(&super::training::ordering_section(&stats, p));
    }
    if let Some(f) = super::training::fig6_section(&stats) {
        s.push('\n');
        s.push_str(&f);
    }
    if let Some(g) = super::training::gap_table(&stats) {
        let _ = write!(s, "\nGeneralisation gap at the end of training:\n\n{g}");
    }
    s.push_str("\nMeasured outside this run, in [docs/training.md](../docs/training.md): the same nets trained by PyTorch with this recipe and at a lower learning rate, and one training step cross-checked against NumPy and PyTorch to 1e-10.\n");
    if let Some(signal) = &e.signal {
        let _ = write!(
            s,
            "\nWhat the weight layers see (the paper's Sec. 4.2 argument: in the original unit the next weight layer gets the unnormalised sum):\n\n{}",
            super::training::signal_table(signal)
        );
    }
    s
}

fn num(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.3e}")
    } else {
        format!("{v}")
    }
}

fn at_unit(t: &Table, rows: &[&Vec<String>], column: Column) -> Option<f64> {
    let vals: Vec<f64> = rows.iter().filter_map(|r| t.f(r, column)).collect();
    (!vals.is_empty()).then(|| geo_mean(&vals))
}

/// The shallowest unit whose stage has units above it (0 for the MLP; 1 in bottleneck ResNets,
/// whose unit 0 changes width so that x_0 is a stage of its own).
fn first_in_stage(t: &Table, units: &UnitRows<'_>) -> Option<usize> {
    units
        .iter()
        .find(|(&u, rows)| {
            rows.iter()
                .any(|r| t.f(r, col::DIRECT_TOP).is_some_and(|top| top as usize > u))
        })
        .map(|(&u, _)| u)
}

/// The per-variant summary table: the shallowest unit's ratios and the batch's worst sample.
fn summary(t: &Table) -> String {
    let mut s = String::from(
        "| variant | ‖∂E/∂x_0‖/‖∂E/∂x_L‖ | l₀ | direct ratio at l₀ | predicted (prod λ) | smallest per-sample ratio | largest ‖x_l‖ |\n|---|---|---|---|---|---|---|\n",
    );
    let mut all_zero = Vec::new();
    for (v, units) in t.by_variant() {
        let first = units.values().next().unwrap();
        // Fixup at step 0: the classifier is 0, so is every dE/dx_l, and no ratio is defined.
        if units
            .values()
            .flatten()
            .all(|r| t.f(r, col::GRAD_NORM) == Some(0.0))
        {
            let _ = writeln!(
                s,
                "| {v} | 0/0 (every ‖∂E/∂x_l‖ = 0) | - | 0/0 | - | 0/0 | {} |",
                num(units
                    .values()
                    .flatten()
                    .filter_map(|r| t.f(r, col::ACT_NORM))
                    .fold(0.0, f64::max))
            );
            all_zero.push(v);
            continue;
        }
        let l0 = first_in_stage(t, &units);
        let at_l0 = |column: Column| {
            l0.and_then(|l| at_unit(t, &units[&l], column))
                .map_or("-".into(), num)
        };
        let min_sample = units
            .values()
            .flatten()
            .filter_map(|r| t.f(r, col::SAMPLE_RATIO_MIN))
            .fold(f64::INFINITY, |a, b| {
                if a.is_nan() || b.is_nan() {
                    f64::NAN
                } else {
                    a.min(b)
                }
            });
        let max_act = units
            .values()
            .flatten()
            .filter_map(|r| t.f(r, col::ACT_NORM))
            .fold(0.0, |a: f64, b| {
                if a.is_nan() || b.is_nan() {
                    f64::NAN
                } else {
                    a.max(b)
                }
            });
        let _ = writeln!(
            s,
            "| {v} | {} | {} | {} | {} | {} | {} |",
            at_unit(t, first, col::GRAD_RATIO).map_or("-".into(), num),
            l0.map_or("-".into(), |l| l.to_string()),
            at_l0(col::DIRECT_RATIO),
            at_l0(col::PREDICTED_DIRECT_RATIO),
            num(min_sample),
            num(max_act),
        );
    }
    s.push_str("\nl₀ is the shallowest unit input with units above it in its stage (0 for the MLP; 1 in bottleneck ResNets, whose unit 0 changes width). The direct ratio is ‖D_l‖ over the stage top's gradient norm.\n");
    if !all_zero.is_empty() {
        let _ = writeln!(
            s,
            "\n{}: every ∂E/∂x_l is exactly 0 at initialisation (Fixup starts the classifier at 0, so the loss does not depend on x_l until the first update has moved the classifier), and every ratio is 0/0. What is defined is the forward signal (the last column, and the signal chart); the gradients after the first steps of training are in train_unnormalised's gradient heatmap.",
            all_zero.join(", ")
        );
    }
    s
}

/// Largest verification errors per variant, when the table has them.
fn verification(t: &Table) -> Option<String> {
    if !t.has(col::ADDITIVE_BACKWARD_ERROR) {
        return None;
    }
    let mut s = String::from("| variant | largest Eq. 5/8 error | largest Eq. 4/7 error | largest prod λ error |\n|---|---|---|---|\n");
    for (v, units) in t.by_variant() {
        let worst = |column: Column| {
            let vals: Vec<f64> = units
                .values()
                .flatten()
                .filter_map(|r| t.f(r, column))
                .collect();
            if vals.is_empty() {
                "n/a".to_string()
            } else {
                num(vals.iter().cloned().fold(0.0, |a: f64, b| {
                    if a.is_nan() || b.is_nan() {
                        f64::NAN
                    } else {
                        a.max(b)
                    }
                }))
            }
        };
        let _ = writeln!(
            s,
            "| {v} | {} | {} | {} |",
            worst(col::ADDITIVE_BACKWARD_ERROR),
            worst(col::FORWARD_SUM_ERROR),
            worst(col::PROD_LAMBDA_ERROR)
        );
    }
    Some(s)
}

pub fn render(entries: &[Entry]) -> String {
    let mut s = String::new();
    s.push_str("# resprop: the gradient-propagation analysis of He et al. (2016), measured\n\n");
    s.push_str(
        "Generated by `cargo run --release` from the experiment files in `experiments/`; every number \
         below was read from this run's CSV in `results/`. Ratios are geometric means over the \
         replicates. \"Direct\" is the part of ∂E/∂x_l carried by shortcut paths only (Eq. 5/8's \
         first term); in conv nets it restarts where a learned projection changes the shape \
         (and carries on across the parameter-free shortcut of `--projection pad`).\n\n",
    );
    for e in entries {
        let _ = writeln!(s, "## {}\n\n{}\n", e.name, e.claim);
        for c in &e.charts {
            let _ = writeln!(s, "![{}]({})\n", c.display(), c.display());
        }
        let analysis = |section: Option<String>| {
            section.unwrap_or_else(|| "no rows (every cell diverged)\n".into())
        };
        let measured = match e.section {
            Section::Profile => summary(&e.table),
            Section::Training => training_section(e),
            Section::Paths => analysis(super::analyses::paths_section(&e.table)),
            Section::Lesion => analysis(super::analyses::lesion_section(&e.table)),
            Section::Shatter => analysis(super::analyses::shatter_section(&e.table)),
        };
        let _ = writeln!(s, "Measured:\n\n{measured}");
        for section in descendant_sections(e) {
            let _ = writeln!(s, "{section}");
        }
        if let Some(v) = verification(&e.table) {
            let _ = writeln!(
                s,
                "Verification (tolerances: 1e-10 for Eq. 4/5/7/8, 1e-12 for prod λ):\n\n{v}"
            );
        }
        if let Some(sec) = e.seconds {
            let cells = e
                .table
                .rows
                .iter()
                .map(|r| e.table.get(r, col::CELL))
                .collect::<std::collections::BTreeSet<_>>()
                .len();
            let _ = if e.computed == cells {
                writeln!(
                    s,
                    "_{cells} cells, computed in {sec:.1} s on this machine._\n"
                )
            } else if e.computed == 0 {
                writeln!(
                    s,
                    "_{cells} cells, all reused from `results/cells/` (delete `results/` to recompute and time them)._\n"
                )
            } else {
                writeln!(s, "_{cells} cells: {} computed in this run ({sec:.1} s), the other {} already in `results/cells/` (shared with another experiment or from an earlier run)._\n", e.computed, cells - e.computed)
            };
        }
    }
    s
}

/// Writes the report to `<dir>/README.md` atomically.
pub fn write(dir: &Path, entries: &[Entry]) -> anyhow::Result<PathBuf> {
    let path = dir.join("README.md");
    crate::output::write_atomic(&path, render(entries).as_bytes())?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_net_whose_every_gradient_is_zero_gets_0_over_0_not_nan_and_a_reason() {
        // Fixup at step 0 (classifier 0): every grad_norm 0, every ratio 0/0 = NaN in the CSV.
        let header = "experiment,cell,net,placement,shortcut,init,replicate,unit,direct_top,act_norm,grad_norm,grad_ratio,direct_ratio,predicted_direct_ratio,sample_ratio_min";
        let row =
            |cell: usize, init: &str, unit: usize, g: &str, r: &str, act: f64| -> Vec<String> {
                format!("x,{cell},mlp,original,identity,{init},0,{unit},2,{act},{g},{r},{r},,{r}")
                    .split(',')
                    .map(String::from)
                    .collect()
            };
        let rows = vec![
            row(0, "he", 0, "2", "2", 1.0),
            row(0, "he", 1, "1.5", "1.5", 2.0),
            row(0, "he", 2, "1", "1", 3.0),
            row(1, "fixup", 0, "0", "NaN", 1.0),
            row(1, "fixup", 1, "0", "NaN", 1.0),
            row(1, "fixup", 2, "0", "NaN", 1.5),
        ];
        let t = Table::new(header.split(',').map(String::from).collect(), rows);
        let s = summary(&t);
        assert!(!s.contains("NaN"), "{s}");
        assert!(
            s.contains("| init fixup | 0/0 (every ‖∂E/∂x_l‖ = 0) | - | 0/0 | - | 0/0 | 1.500e0 |"),
            "{s}"
        );
        assert!(s.contains("| init he | 2.000e0 |"), "{s}");
        assert!(
            s.contains("init fixup: every ∂E/∂x_l is exactly 0 at initialisation"),
            "{s}"
        );
    }
}
