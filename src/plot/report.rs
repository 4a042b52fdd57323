//! `plots/README.md`, generated from the experiments' CSV: for each experiment the claim, its
//! charts, and numbers measured in this run. Never edited by hand, so it stays true.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::table::{geo_mean, Table, UnitRows};

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
    /// A training experiment (its table is train.csv).
    pub training: bool,
    /// The paper's numbers for the variants, when the spec gives them.
    pub paper: Option<crate::experiment::spec::PaperValues>,
}

/// Per variant: final test error (mean over replicates, last epoch), last-epoch mean training
/// loss, and how many replicates stopped early (diverged), with the last step they reached.
fn training_results(t: &Table) -> Vec<(String, f64, f64, Option<String>)> {
    let planned = t
        .rows
        .iter()
        .filter_map(|r| t.f(r, "epoch"))
        .fold(0.0, f64::max);
    let mut order = Vec::new();
    let mut rows_of: std::collections::BTreeMap<String, Vec<&Vec<String>>> = Default::default();
    for r in &t.rows {
        let v = t.variant(r);
        if !rows_of.contains_key(&v) {
            order.push(v.clone());
        }
        rows_of.entry(v).or_default().push(r);
    }
    let mean = |v: &[f64]| {
        if v.is_empty() {
            f64::NAN
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    order
        .into_iter()
        .map(|v| {
            let rows = &rows_of[&v];
            // Replicates that finished: those with a test error at the planned last epoch.
            let mut by_rep: std::collections::BTreeMap<String, Vec<&&Vec<String>>> =
                Default::default();
            for r in rows {
                by_rep
                    .entry(t.get(r, "replicate").to_string())
                    .or_default()
                    .push(r);
            }
            let (mut errs, mut losses, mut stopped) = (Vec::new(), Vec::new(), Vec::new());
            for rep_rows in by_rep.values() {
                let last_epoch = rep_rows
                    .iter()
                    .filter_map(|r| t.f(r, "epoch"))
                    .fold(0.0, f64::max);
                let last: Vec<_> = rep_rows
                    .iter()
                    .filter(|r| t.f(r, "epoch") == Some(last_epoch))
                    .collect();
                match last
                    .iter()
                    .find_map(|r| t.f(r, "test_error"))
                    .filter(|_| last_epoch == planned)
                {
                    Some(e) => {
                        errs.push(e);
                        losses.push(mean(
                            &last
                                .iter()
                                .filter_map(|r| t.f(r, "train_loss"))
                                .collect::<Vec<_>>(),
                        ));
                    }
                    None => stopped.push(
                        rep_rows
                            .iter()
                            .filter_map(|r| t.f(r, "step"))
                            .fold(0.0, f64::max) as usize
                            + 1,
                    ),
                }
            }
            let note = (!stopped.is_empty()).then(|| {
                let steps: Vec<String> = stopped.iter().map(|s| s.to_string()).collect();
                format!(
                    "{} of {} diverged (stopped at step {})",
                    stopped.len(),
                    by_rep.len(),
                    steps.join(", ")
                )
            });
            (v, mean(&errs), mean(&losses), note)
        })
        .collect()
}

fn training_section(t: &Table, paper: &Option<crate::experiment::spec::PaperValues>) -> String {
    let results = training_results(t);
    let mut s = String::from("| variant | final test error | last-epoch training loss |");
    if let Some(p) = paper {
        let _ = write!(s, " paper ({}) |", p.source);
    }
    s.push_str("\n|---|---|---|");
    if paper.is_some() {
        s.push_str("---|");
    }
    s.push('\n');
    let paper_of = |v: &str| {
        paper
            .as_ref()
            .and_then(|p| p.values.iter().find(|(k, _)| k == v).map(|(_, x)| *x))
    };
    for (v, err, loss, note) in &results {
        let err = if err.is_nan() {
            "-".to_string()
        } else {
            format!("{:.2}%", 100.0 * err)
        };
        let err = match note {
            Some(n) => format!("{err} ({n})"),
            None => err,
        };
        let loss = if loss.is_nan() {
            "-".to_string()
        } else {
            num(*loss)
        };
        let _ = write!(s, "| {v} | {err} | {loss} |");
        if paper.is_some() {
            let _ = write!(
                s,
                " {} |",
                paper_of(v).map_or("-".into(), |x| format!("{x}"))
            );
        }
        s.push('\n');
    }
    if let Some(p) = paper {
        // A diverged variant ranks last (its error is undefined).
        let both: Vec<(&str, f64, f64)> = results
            .iter()
            .filter_map(|(v, e, _, _)| {
                paper_of(v).map(|x| (v.as_str(), if e.is_nan() { f64::INFINITY } else { *e }, x))
            })
            .collect();
        let mut measured = both.clone();
        measured.sort_by(|a, b| a.1.total_cmp(&b.1));
        let mut theirs = both.clone();
        theirs.sort_by(|a, b| a.2.total_cmp(&b.2));
        let (mut agree, mut pairs) = (0, 0);
        for i in 0..both.len() {
            for j in i + 1..both.len() {
                pairs += 1;
                if (both[i].1 - both[j].1).signum() == (both[i].2 - both[j].2).signum() {
                    agree += 1;
                }
            }
        }
        let names = |v: &[(&str, f64, f64)]| v.iter().map(|x| x.0).collect::<Vec<_>>().join(" < ");
        let _ = write!(
            s,
            "\nOrdering by final test error, best first. Measured here: {}. Paper ({}): {}. \
             The two orderings agree on {agree} of {pairs} pairs{}.\n",
            names(&measured),
            p.source,
            names(&theirs),
            if agree == pairs {
                ""
            } else {
                "; where they differ, this small CPU-scale run does not reproduce the paper's ranking"
            }
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

fn at_unit(t: &Table, rows: &[&Vec<String>], col: &str) -> Option<f64> {
    let vals: Vec<f64> = rows.iter().filter_map(|r| t.f(r, col)).collect();
    (!vals.is_empty()).then(|| geo_mean(&vals))
}

/// The shallowest unit whose stage has units above it (0 for the MLP; 1 in bottleneck ResNets,
/// whose unit 0 changes width so that x_0 is a stage of its own).
fn first_in_stage(t: &Table, units: &UnitRows<'_>) -> Option<usize> {
    units
        .iter()
        .find(|(&u, rows)| {
            rows.iter()
                .any(|r| t.f(r, "direct_top").is_some_and(|top| top as usize > u))
        })
        .map(|(&u, _)| u)
}

/// The per-variant summary table: the shallowest unit's ratios and the batch's worst sample.
fn summary(t: &Table) -> String {
    let mut s = String::from(
        "| variant | ‖∂E/∂x_0‖/‖∂E/∂x_L‖ | l₀ | direct ratio at l₀ | predicted (prod λ) | smallest per-sample ratio | largest ‖x_l‖ |\n|---|---|---|---|---|---|---|\n",
    );
    for (v, units) in t.by_variant() {
        let first = units.values().next().unwrap();
        let l0 = first_in_stage(t, &units);
        let at_l0 = |col: &str| {
            l0.and_then(|l| at_unit(t, &units[&l], col))
                .map_or("-".into(), num)
        };
        let min_sample = units
            .values()
            .flatten()
            .filter_map(|r| t.f(r, "sample_ratio_min"))
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
            .filter_map(|r| t.f(r, "act_norm"))
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
            at_unit(t, first, "grad_ratio").map_or("-".into(), num),
            l0.map_or("-".into(), |l| l.to_string()),
            at_l0("direct_ratio"),
            at_l0("predicted_direct_ratio"),
            num(min_sample),
            num(max_act),
        );
    }
    s.push_str("\nl₀ is the shallowest unit input with units above it in its stage (0 for the MLP; 1 in bottleneck ResNets, whose unit 0 changes width). The direct ratio is ‖D_l‖ over the stage top's gradient norm.\n");
    s
}

/// Largest verification errors per variant, when the table has them.
fn verification(t: &Table) -> Option<String> {
    if !t.has("additive_backward_error") {
        return None;
    }
    let mut s = String::from("| variant | largest Eq. 5/8 error | largest Eq. 4/7 error | largest prod λ error |\n|---|---|---|---|\n");
    for (v, units) in t.by_variant() {
        let worst = |col: &str| {
            let vals: Vec<f64> = units
                .values()
                .flatten()
                .filter_map(|r| t.f(r, col))
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
            worst("additive_backward_error"),
            worst("forward_sum_error"),
            worst("prod_lambda_error")
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
         first term); with conv nets it restarts at each stage's top.\n\n",
    );
    for e in entries {
        let _ = writeln!(s, "## {}\n\n{}\n", e.name, e.claim);
        for c in &e.charts {
            let _ = writeln!(s, "![{}]({})\n", c.display(), c.display());
        }
        if e.training {
            let _ = writeln!(s, "Measured:\n\n{}", training_section(&e.table, &e.paper));
        } else {
            let _ = writeln!(s, "Measured:\n\n{}", summary(&e.table));
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
                .map(|r| e.table.get(r, "cell"))
                .collect::<std::collections::BTreeSet<_>>()
                .len();
            let _ = if e.computed == cells {
                writeln!(
                    s,
                    "_{cells} cells, computed in {sec:.1} s on this machine._\n"
                )
            } else {
                writeln!(s, "_{cells} cells: {} computed in this run ({sec:.1} s), the rest reused from an earlier run._\n", e.computed)
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
