//! `resprop profile`: the per-unit gradient record of one network at one batch.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use crate::analysis::record::{fmt_f64, profile_csv, Profile};
use crate::float::{same_type, Float, Precision};
use crate::jobs::profile::{ProfileJob, ProfileRun};
use crate::output::{emit, write_atomic};

#[derive(Debug, Args)]
pub struct ProfileArgs {
    #[command(flatten)]
    pub job: ProfileJob,
    /// Write the per-unit record as CSV (one row per unit input x_l).
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,
    /// Write parameters, BN state, masks, the batch and every x_l, dE/dx_l as .npz
    /// (layout in docs/formats.md).
    #[arg(long, value_name = "FILE")]
    pub npz: Option<PathBuf>,
    /// Also write `||dE/dW||_F` of every weight layer of every unit as CSV (unit, layer,
    /// weight_grad_norm): the weight-gradient view of Xiong et al. 2020.
    #[arg(long, value_name = "FILE")]
    pub weight_grad_csv: Option<PathBuf>,
    /// Draw the profile as a chart, PNG or SVG by the file's extension: grad_ratio, the direct
    /// part and its prediction (prod lambda, where there is one) against the unit, on a log
    /// axis; an imported model's units named by their modules.
    #[arg(long, value_name = "FILE")]
    pub chart: Option<PathBuf>,
    /// Print every unit's row (default: about 20 evenly spaced rows).
    #[arg(long)]
    pub all_rows: bool,
}

pub fn run(args: &ProfileArgs) -> Result<ExitCode> {
    if let Some(path) = &args.chart {
        crate::plot::Format::of(path).map_err(|e| anyhow::anyhow!("--chart: {e}"))?;
    }
    crate::output::Outputs::new()
        .write("--csv", args.csv.as_deref())
        .write("--chart", args.chart.as_deref())
        .write_npz("--npz", args.npz.as_deref())
        .write("--weight-grad-csv", args.weight_grad_csv.as_deref())
        .read("--weights", args.job.net.weights.as_deref())
        .read("--model", args.job.net.model.as_deref())
        .read_data("--data", args.job.net.data.as_ref())
        .check()?;
    if args.npz.is_some() && !args.job.precision.is_f64() {
        anyhow::bail!("--npz: the state file holds f64 arrays (docs/formats.md); leave out --precision f32 to write it");
    }
    // What the output files need computed and kept.
    let job = ProfileJob {
        weight_grads: args.weight_grad_csv.is_some(),
        npz: args.npz.is_some(),
        ..args.job.clone()
    };
    let stop = crate::interrupt::Interrupt::new();
    match job.precision {
        Precision::F64 => report(args, &job, job.run_as::<f64>(&stop)?),
        Precision::F32 => report(args, &job, job.run_as::<f32>(&stop)?),
    }
}

/// Prints the profile and writes the files asked for, from a run in `T`.
fn report<T: Float>(args: &ProfileArgs, job: &ProfileJob, run: ProfileRun<T>) -> Result<ExitCode> {
    let ProfileRun {
        analysis,
        ctx,
        cache,
        grads,
        param_grads,
        profile,
        ..
    } = run;
    let (net_args, net, input, labels) = (
        &analysis.args,
        &analysis.net,
        &analysis.input,
        &analysis.labels,
    );
    let mut out = net_args.describe("profile", net);
    if !job.precision.is_f64() {
        outln!(
            out,
            "precision: {} (the records are computed in f64 from its values)",
            job.precision
        );
    }
    outln!(out, "loss E = {}", fmt_f64(profile.loss));
    let names = net.row_names();
    print_table(&mut out, &profile, args.all_rows, names.as_deref());
    emit(&out)?;
    report_nonfinite(&profile, net);
    if !job.precision.is_f64() {
        report_f32_range(&profile, &cache);
    }
    let mut out = String::new();

    if let Some(path) = &args.csv {
        let bytes = profile_csv(
            &profile,
            net,
            net_args.arch.placement.name(),
            &net_args.arch.shortcut.to_string(),
        )?;
        write_atomic(path, &bytes)?;
        outln!(
            out,
            "wrote {} rows to {}",
            profile.records.len(),
            path.display()
        );
    }
    if let Some(path) = &args.chart {
        let fig = crate::plot::charts::profile(chart_title(net_args, net), &profile.records, names);
        let not_drawn = crate::plot::save_chart(&fig, path)?;
        if let Some(summary) = not_drawn.summary() {
            eprintln!(
                "note: chart {}: {summary}; listed in the chart's notes",
                path.display()
            );
        }
        outln!(out, "wrote chart to {}", path.display());
    }
    if let Some(path) = &args.weight_grad_csv {
        let rows = crate::analysis::record::weight_grad_rows(net, &param_grads);
        write_atomic(path, &crate::schema::to_csv(&rows, &[])?)?;
        outln!(
            out,
            "wrote {} weight-gradient rows to {}",
            rows.len(),
            path.display()
        );
    }
    if let Some(path) = &args.npz {
        // Refused above for any type but f64.
        let (cache, grads) = (
            same_type(&cache).expect("an f64 run"),
            same_type(&grads).expect("an f64 run"),
        );
        crate::interchange::write_npz(path, net, &ctx, input, labels, cache, grads)?;
        outln!(out, "wrote state to {}", path.display());
    }
    outln!(
        out,
        "memory: estimated {}, peak resident {}",
        crate::net::memory::human(net_args.memory_of(net, job.purpose()).total),
        // VmHWM is in KiB (`peak_rss_mb` gives MiB); the estimate is in bytes.
        crate::cli::bench::peak_rss_mb().map_or("unknown".into(), |mib| {
            crate::net::memory::human(mib * 1024.0 * 1024.0)
        })
    );
    emit(&out)?;
    Ok(ExitCode::SUCCESS)
}

/// Rows to print: all when few, else about 20 evenly spaced including 0 and L.
fn rows_to_show(n: usize, all: bool) -> Vec<usize> {
    if all || n <= 24 {
        return (0..n).collect();
    }
    let step = n.div_ceil(20);
    let mut rows: Vec<usize> = (0..n).step_by(step).collect();
    if *rows.last().unwrap() != n - 1 {
        rows.push(n - 1);
    }
    rows
}

fn short(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v.is_finite() => format!("{v:.3e}"),
        Some(v) => fmt_f64(v),
    }
}

/// The chart's title: the model file (or the built-in network) and the batch.
fn chart_title(args: &crate::jobs::NetRequest, net: &crate::net::Network) -> String {
    let units = net.num_units();
    let what = match &args.model {
        Some(model) => format!(
            "{}, {units} units",
            model
                .file_name()
                .unwrap_or(model.as_os_str())
                .to_string_lossy()
        ),
        None => format!(
            "{}, {units} units, {}, shortcut {}",
            args.arch.net, args.arch.placement, args.arch.shortcut
        ),
    };
    let batch = match &args.data {
        Some(data) => format!("batch {} from {data}", args.batch),
        None => format!("batch {}", args.batch),
    };
    format!("resprop profile: {what}, {batch}")
}

fn print_table(out: &mut String, profile: &Profile, all: bool, names: Option<&[String]>) {
    let name = |i: usize| names.map_or(String::new(), |n| format!("  {}", n[i]));
    outln!(
        out,
        "{:>5} {:>2} {:>10} {:>10} {:>11} {:>10} {:>10} {:>10} {:>8} {:>10} {:>10}{}",
        "unit",
        "st",
        "||x_l||",
        "||F'||",
        "||dE/dx_l||",
        "grad/top",
        "direct/top",
        "predicted",
        "cos_top",
        "sample_min",
        "sample_med",
        names.map_or("", |_| "  name")
    );
    for i in rows_to_show(profile.records.len(), all) {
        let r = &profile.records[i];
        outln!(
            out,
            "{:>5} {:>2} {:>10} {:>10} {:>11} {:>10} {:>10} {:>10} {:>8} {:>10} {:>10}{}",
            r.unit,
            r.stage,
            short(Some(r.act_norm)),
            short(r.branch_norm),
            short(Some(r.grad_norm)),
            short(Some(r.grad_ratio)),
            short(Some(r.direct_ratio)),
            short(r.predicted_direct_ratio),
            r.cos_top.map_or("-".into(), |c| if c.is_finite() {
                format!("{c:.4}")
            } else {
                fmt_f64(c)
            }),
            short(Some(r.sample_ratio_min)),
            short(Some(r.sample_ratio_median)),
            name(i),
        );
    }
}

/// Where an f32 run's gradient left f32's normal range: from the top down, the first unit
/// whose `dE/dx_l` or direct part has a root-mean-square entry below f32's smallest normal
/// value (1.2e-38; below 1.4e-45 an entry is 0). From there on the f32 values have lost
/// precision or vanished where f64 keeps them: said on stderr, with the remedy.
fn report_f32_range<T: Float>(profile: &Profile, cache: &crate::net::NetCache<T>) {
    let rms = |norm: f64, l: usize| norm / (cache.x(l).len() as f64).sqrt();
    let small = |v: f64, l: usize| v.is_finite() && rms(v, l) < f64::from(f32::MIN_POSITIVE);
    let first = profile.records.iter().rev().find_map(|r| {
        if small(r.grad_norm, r.unit) {
            Some(("||dE/dx_l||", r.grad_norm, r.unit))
        } else if small(r.direct_norm, r.unit) {
            Some(("the direct part ||D_l||", r.direct_norm, r.unit))
        } else {
            None
        }
    });
    if let Some((what, value, unit)) = first {
        eprintln!(
            "note: in f32, {what} leaves f32's normal range at unit {unit} ({}, below 1.2e-38 per entry; entries under 1.4e-45 are 0): the values from there down are not those of f64; rerun with --precision f64",
            fmt_f64(value)
        );
    }
    if !profile.nonfinite.is_empty() || !profile.loss.is_finite() {
        eprintln!("note: f32 overflows above 3.4e38 where f64 reaches 1.8e308: rerun with --precision f64");
    }
    // Measured on the bundled experiments (README, "--precision f32"): where the forward map
    // amplifies rounding, f32 and f64 give different samples of the same statistics.
    eprintln!("note: f32 matches f64 to about 1e-4 on ||dE/dx_l|| where the forward pass does not amplify rounding; decaying or gated shortcuts, plain nets and 1000-layer nets amplify it (measured: 1e-2 to 2x apart), so compare one run with --precision f64 before reading small differences");
}

/// Overflow is a result, not an error: say where it happened, on stderr.
/// A norm of the forward signal at which the numbers stop meaning anything: near the square root
/// of f64's largest value (1.3e154), where squares overflow.
const OVERFLOW_NORM: f64 = 1e150;

pub fn report_nonfinite(profile: &Profile, net: &crate::net::Network) {
    // Where the forward signal first reaches values whose squares overflow f64 (a norm's
    // variance, a loss): from there on the numbers mean nothing.
    let overflow = profile.records.iter().find_map(|r| {
        let huge = |v: f64| v.is_nan() || v >= OVERFLOW_NORM;
        if huge(r.act_norm) {
            Some(("||x_l||", r.act_norm, r.unit))
        } else {
            r.branch_norm
                .filter(|&b| huge(b))
                .map(|b| ("the branch's ||F'(x_l)||", b, r.unit))
        }
    });
    if let Some((what, value, unit)) = overflow {
        eprintln!(
            "warning: the forward signal overflows: {what} is {} at unit {unit} (by 1e154 the squares in a norm's variance or the loss exceed f64's 1.8e308); the values from there on are not a gradient profile: use fewer units, a shortcut scale nearer 1, a smaller branch scale, or a normalisation",
            fmt_f64(value)
        );
    }
    let top = profile.records.last().map_or(1.0, |r| r.grad_norm);
    if top == 0.0 && profile.loss.is_finite() {
        let zero_classifier = net
            .param("classifier.w")
            .is_some_and(|w| w.iter().all(|&v| v == 0.0));
        if zero_classifier {
            // Not an overflow: nothing flows back through a zero-started classifier (Fixup).
            eprintln!("note: dE/dx_L is exactly 0 (the classifier starts at 0, as under Fixup): every dE/dx_l is 0, and the ratios to it (grad_ratio, direct_ratio, the sample ratios) are 0/0, written NaN");
        } else {
            eprintln!("warning: dE/dx_L is exactly 0{}: every dE/dx_l is 0, and the ratios to it (grad_ratio, direct_ratio, the sample ratios) are 0/0, written NaN", if overflow.is_some() { ", after the overflow above" } else { "" });
        }
        return;
    }
    for nf in &profile.nonfinite {
        eprintln!(
            "warning: {} is non-finite (inf/NaN) at {} of {} units, first at unit {} (in the order it is computed)",
            nf.column,
            nf.count,
            profile.records.len(),
            nf.first_unit
        );
    }
    if !profile.loss.is_finite() {
        eprintln!(
            "warning: the loss itself is non-finite ({}): the forward signal overflowed",
            fmt_f64(profile.loss)
        );
    }
}
