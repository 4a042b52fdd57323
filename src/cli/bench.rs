//! `resprop bench`: time the benchmark workloads (listed in README.md's Performance section).
//!
//! One step = forward through the whole network recording every unit input, softmax
//! cross-entropy, and backward giving every `dE/dx_l`; in `train` mode every parameter
//! gradient as well. Setup (building the net, drawing the batch) is outside the timing.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Result;
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use crate::analysis::gaussian_batch;
use crate::float::{Float, Precision};
use crate::grads::Grads;
use crate::layers::Mode;
use crate::net::workloads::{workload, About};
use crate::net::Keep;
use crate::net::Network;
use crate::output::{emit, write_atomic};
use crate::tensor::Tensor;
use crate::unit::ForwardCtx;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchMode {
    /// Input gradients only (what a gradient profile needs).
    Profile,
    /// Input and parameter gradients (what a training step needs).
    Train,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Workload: W1 (MLP, 100 units, width 256, batch 128), W1b (1000
    /// units), W2 (ResNet-110, batch 32), W3 (ResNet-164, batch 16), W4 (ResNet-1001, batch 16);
    /// D1 and D2 (ResNet-110 and ResNet-164 on 1x8x8 images, batch 64: a training step on the
    /// bundled digits); `check-sweep` (`resprop check` on --configs random small networks:
    /// how many false FAILs and inconclusive rows a correct engine gets); or `gemm`: the engine's GEMM on W1's layer shapes, with weights from memory and from
    /// cache (GFLOP/s). --configs applies to check-sweep only; --mode, --low-memory and
    /// --unfused to the network workloads only.
    #[arg(long, default_value = "W1")]
    pub workload: String,
    #[arg(long, value_enum, default_value_t = BenchMode::Profile)]
    pub mode: BenchMode,
    /// Timed steps (after one untimed warm-up step).
    #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..))]
    pub repeat: u32,
    /// Write the timings as CSV.
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,
    /// Worker threads (default: all cores).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub threads: Option<u32>,
    /// Keep only unit inputs in the forward pass and recompute each unit during backward.
    #[arg(long)]
    pub low_memory: bool,
    /// `--workload check-sweep`: how many random configurations to check.
    #[arg(long, default_value_t = 1000)]
    pub configs: u64,
    /// The element type of the timed steps (the network is the f64 workload, rounded).
    #[arg(long, default_value = "f64", value_name = "f32|f64")]
    pub precision: Precision,
    /// Time the plain layer-by-layer interpreter instead of the fused engine.
    #[arg(long)]
    pub unfused: bool,
    /// The flags given on the command line (filled after parsing).
    #[arg(skip)]
    pub given: super::Given,
}

/// W1's layer products, `x W` (forward) and `g W^T` (backward input gradient), 128x256x256,
/// through the engine's GEMM entry point: over 100 distinct weight matrices in turn (104 MB,
/// so each comes from memory, as in a W1 step) and over one (in cache). Each timed repeat runs
/// the 100 products; the median per product is reported.
fn run_gemm(args: &BenchArgs) -> Result<ExitCode> {
    use ndarray::Array2;
    const MATRICES: usize = 100;
    let (m, k, n) = (128, 256, 256);
    let mut r = crate::rng::rng(0);
    let weights: Vec<Array2<f64>> = (0..MATRICES)
        .map(|_| {
            crate::rng::gaussian(&[k, n], 0.1, &mut r)
                .into_dimensionality()
                .expect("2-D")
        })
        .collect();
    let x: Array2<f64> = crate::rng::gaussian(&[m, k], 1.0, &mut r)
        .into_dimensionality()
        .expect("2-D");
    let flop = 2.0 * (m * k * n) as f64;
    let threads = rayon::current_num_threads();
    let mut out = String::new();
    let mut csv = String::from("case,threads,repeat,median_us,gflops\n");
    for (case, cold, backward) in [
        ("x W, weights from memory", true, false),
        ("g W^T, weights from memory", true, true),
        ("x W, weights in cache", false, false),
        ("g W^T, weights in cache", false, true),
    ] {
        let mut times = Vec::with_capacity(args.repeat as usize);
        for rep in 0..=args.repeat {
            let t = Instant::now();
            for w in &weights {
                let w = if cold { w } else { &weights[0] };
                let y = if backward {
                    crate::tensor::matmul(&x.view(), &w.t())
                } else {
                    crate::tensor::matmul(&x.view(), &w.view())
                };
                std::hint::black_box(y);
            }
            if rep > 0 {
                // The first pass is a warm-up.
                times.push(t.elapsed().as_secs_f64() / MATRICES as f64);
            }
        }
        let median = crate::tensor::median(&times).unwrap();
        outln!(
            out,
            "gemm {m}x{k}x{n} {case}, {threads} threads: median {:.1} us, {:.1} GFLOP/s",
            median * 1e6,
            flop / median / 1e9
        );
        csv.push_str(&format!(
            "{case},{threads},{},{},{}\n",
            args.repeat,
            median * 1e6,
            flop / median / 1e9
        ));
    }
    emit(&out)?;
    if let Some(path) = &args.csv {
        write_atomic(path, csv.as_bytes())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `check` on `--configs` random small networks (see `analysis::sweep`), in parallel.
fn run_check_sweep(args: &BenchArgs) -> Result<ExitCode> {
    use rayon::prelude::*;
    let bar = ProgressBar::new(args.configs);
    bar.set_style(
        ProgressStyle::with_template(
            "check-sweep [{bar:30}] {pos}/{len} configurations ({elapsed}, eta {eta})",
        )
        .unwrap(),
    );
    let t = Instant::now();
    let results: Vec<crate::analysis::sweep::SweepResult> = (0..args.configs)
        .into_par_iter()
        .map(|i| {
            let r = crate::analysis::sweep::run_one(0, i);
            bar.inc(1);
            r
        })
        .collect::<Result<_>>()?;
    bar.finish_and_clear();
    let secs = t.elapsed().as_secs_f64();
    let failed: Vec<_> = results.iter().filter(|r| !r.failed.is_empty()).collect();
    let inconclusive: Vec<_> = results
        .iter()
        .filter(|r| !r.inconclusive.is_empty())
        .collect();
    let rows: usize = results.iter().map(|r| r.inconclusive.len()).sum();
    let mut out = String::new();
    outln!(
        out,
        "check-sweep: {} configurations in {secs:.1} s ({} MLP, {} conv): {} with a FAIL, {} with an inconclusive row ({rows} rows)",
        results.len(),
        results.iter().filter(|r| r.config.arch.net == crate::net::NetChoice::Mlp).count(),
        results.iter().filter(|r| r.config.arch.net != crate::net::NetChoice::Mlp).count(),
        failed.len(),
        inconclusive.len(),
    );
    for r in &failed {
        outln!(out, "FAIL: {}", r.config.command());
        for f in &r.failed {
            outln!(out, "    {f}");
        }
    }
    for r in &inconclusive {
        outln!(out, "inconclusive: {}", r.config.command());
        for f in &r.inconclusive {
            outln!(out, "    {f}");
        }
    }
    emit(&out)?;
    if let Some(path) = &args.csv {
        let mut csv = String::from(
            "configurations,seconds,failed,inconclusive_configurations,inconclusive_rows\n",
        );
        csv.push_str(&format!(
            "{},{secs},{},{},{rows}\n",
            results.len(),
            failed.len(),
            inconclusive.len()
        ));
        write_atomic(path, csv.as_bytes())?;
    }
    Ok(if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Peak resident set size of this process in MB (Linux), from /proc/self/status VmHWM.
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// What `bench` measures: a network's step, the GEMM alone, or `check`'s false-alarm rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Step,
    Gemm,
    CheckSweep,
}

/// At most this many timed steps or configurations (a benchmark's medians settle long before).
const MAX_REPEAT: u32 = 10_000;
const MAX_CONFIGS: u64 = 1_000_000;

impl BenchArgs {
    fn kind(&self) -> Kind {
        if self.workload.eq_ignore_ascii_case("gemm") {
            Kind::Gemm
        } else if self.workload.eq_ignore_ascii_case("check-sweep") {
            Kind::CheckSweep
        } else {
            Kind::Step
        }
    }

    /// Refuses counts out of range and the flags given that the workload does not use.
    fn refuse_inapplicable(&self) -> Result<()> {
        let g = &self.given;
        let kind = self.kind();
        let name = self.workload.as_str();
        let not_for = |what: &str| format!("does not apply to --workload {name} ({what})");
        if kind != Kind::CheckSweep {
            g.refuse("configs", false, || not_for("a step's timing"))?;
        }
        if kind != Kind::Step {
            let what = match kind {
                Kind::Gemm => "the GEMM alone",
                _ => "check on random configurations",
            };
            for id in ["mode", "low_memory", "unfused", "precision"] {
                g.refuse(id, false, || not_for(what))?;
            }
        }
        if kind == Kind::CheckSweep {
            g.refuse("repeat", false, || not_for("one pass over --configs"))?;
            if !(1..=MAX_CONFIGS).contains(&self.configs) {
                anyhow::bail!(
                    "--configs: between 1 and {MAX_CONFIGS}, got {}",
                    self.configs
                );
            }
        }
        if self.repeat > MAX_REPEAT {
            anyhow::bail!("--repeat: at most {MAX_REPEAT}, got {}", self.repeat);
        }
        Ok(())
    }
}

pub fn run(args: &BenchArgs) -> Result<ExitCode> {
    args.refuse_inapplicable()?;
    crate::output::Outputs::new()
        .write("--csv", args.csv.as_deref())
        .check()?;
    match args.kind() {
        Kind::Gemm => return run_gemm(args),
        Kind::CheckSweep => return run_check_sweep(args),
        Kind::Step => {}
    }
    let mut w = workload(&args.workload).map_err(|e| {
        anyhow::anyhow!("--workload: {e}; or gemm, check-sweep (the engine's GEMM alone, `check` on random networks)")
    })?;
    w.net
        .set_fusion(crate::unit::Fusion::from_unfused(args.unfused));
    match args.precision {
        Precision::F64 => time_steps(args, &w.about(), &w.net),
        Precision::F32 => {
            // The f64 network is not kept beside its rounded copy.
            let about = w.about();
            let net = w.net.cast::<f32>();
            drop(w);
            time_steps(args, &about, &net)
        }
    }
}

/// Times `args.repeat` steps of `net` (the workload `w`, in `T`) and reports them.
fn time_steps<T: Float>(args: &BenchArgs, w: &About, net: &Network<T>) -> Result<ExitCode> {
    let (input, labels) = gaussian_batch(&net.input_shape, w.batch, net.classes, 0);
    let input: Tensor<T> = crate::tensor::cast(input);
    let ctx = ForwardCtx::forward_only(Mode::Train)
        .with_weight_grads(matches!(args.mode, BenchMode::Train));
    // Seconds for the whole step and for its forward pass.
    let step = || -> Result<(f64, f64)> {
        let t = Instant::now();
        let keep = if args.low_memory {
            Keep::Inputs
        } else {
            Keep::All
        };
        let cache = net.forward_with(&input, &labels, &ctx, keep)?;
        let forward = t.elapsed().as_secs_f64();
        let grads = match args.mode {
            BenchMode::Profile => net.backward(&cache, &labels, None),
            BenchMode::Train => {
                let mut g = Grads::new();
                let out = net.backward(&cache, &labels, Some(&mut g));
                std::hint::black_box(&g);
                out
            }
        };
        std::hint::black_box(&grads);
        Ok((t.elapsed().as_secs_f64(), forward))
    };
    let threads = rayon::current_num_threads();
    let bar = ProgressBar::new(args.repeat as u64 + 1);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} steps ({elapsed})").unwrap(),
    );
    bar.set_message(format!("{} {:?}", w.id, args.mode).to_lowercase());
    step()?; // warm-up
    bar.inc(1);
    let mut times = Vec::with_capacity(args.repeat as usize);
    let mut forward_times = Vec::with_capacity(args.repeat as usize);
    for _ in 0..args.repeat {
        let (total, forward) = step()?;
        times.push(total);
        forward_times.push(forward);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let median = crate::tensor::median(&times).unwrap();
    let min = times.iter().cloned().fold(f64::INFINITY, f64::min);
    let max = times.iter().cloned().fold(0.0, f64::max);
    let rss = peak_rss_mb();
    let mode = format!(
        "{:?}{}{}{}",
        args.mode,
        if args.low_memory { ", low memory" } else { "" },
        if args.unfused { ", unfused" } else { "" },
        if args.precision.is_f64() { "" } else { ", f32" }
    )
    .to_lowercase();
    let mut out = String::new();
    outln!(
        out,
        "{} ({}, batch {}), mode {mode}, {threads} threads, {} steps: median {median:.4} s, min {min:.4} s, max {max:.4} s, peak RSS {}",
        w.id,
        w.description,
        w.batch,
        args.repeat,
        rss.map_or("unknown".to_string(), |r| format!("{r:.0} MB"))
    );
    let backward_times: Vec<f64> = times
        .iter()
        .zip(&forward_times)
        .map(|(t, f)| t - f)
        .collect();
    outln!(
        out,
        "  forward median {:.4} s, backward median {:.4} s",
        crate::tensor::median(&forward_times).unwrap(),
        crate::tensor::median(&backward_times).unwrap()
    );
    emit(&out)?;
    if let Some(path) = &args.csv {
        let csv = format!(
            "workload,mode,threads,repeat,median_s,min_s,max_s,peak_rss_mb\n{},{mode},{threads},{},{median},{min},{max},{}\n",
            w.id,
            args.repeat,
            rss.map_or(String::new(), |r| r.to_string())
        );
        write_atomic(path, csv.as_bytes())?;
    }
    Ok(ExitCode::SUCCESS)
}
