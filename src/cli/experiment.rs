//! `resprop run`, `resprop plot` and `resprop all` (the default: every experiment, its charts
//! and the report).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::experiment::runner::HowToRun;
use crate::experiment::spec::{charts_of_results, parse_charts};
use crate::experiment::{load_spec, run_experiment, ChartKind};
use crate::output::emit;
use crate::plot::draw_charts as draw;
use crate::plot::report::{self, Entry};
use crate::plot::table::Table;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Experiment file (TOML; see experiments/ and docs/experiments.md).
    pub spec: PathBuf,
    /// Results go to `<OUT>/<name>/profile.csv`, with the resolved spec.toml beside it.
    #[arg(long, default_value = "results")]
    pub out: PathBuf,
    /// Also draw the experiment's charts into this folder.
    #[arg(long, value_name = "DIR")]
    pub plots: Option<PathBuf>,
    /// Worker threads (default: all cores). Results do not depend on it.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub threads: Option<u32>,
    /// Compute only the cells with index % N == I (0-based: a Slurm array's
    /// SLURM_ARRAY_TASK_ID, a Kubernetes Indexed Job's JOB_COMPLETION_INDEX) into
    /// `<OUT>/cells/`; `resprop merge` assembles the experiment once every shard is done.
    #[arg(long, value_name = "I/N", value_parser = |s: &str| s.parse::<crate::experiment::runner::Shard>())]
    pub shard: Option<crate::experiment::runner::Shard>,
    /// Run even when the cells to compute are estimated to take more than a day.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct MergeArgs {
    /// Experiment file whose shards ran (`resprop run SPEC --shard I/N`).
    pub spec: PathBuf,
    /// The folder the shards wrote to: `<OUT>/cells/`; the CSVs go to `<OUT>/<name>/`.
    #[arg(long, default_value = "results")]
    pub out: PathBuf,
    /// Also draw the experiment's charts into this folder.
    #[arg(long, value_name = "DIR")]
    pub plots: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct PlotArgs {
    /// An experiment's CSV (`results/<name>/profile.csv`).
    pub csv: PathBuf,
    /// Folder for the PNG and SVG charts.
    #[arg(long, default_value = "plots")]
    pub out: PathBuf,
    /// Charts to draw (default: those the experiment's spec.toml asks for).
    #[arg(long, value_delimiter = ',')]
    pub charts: Vec<String>,
}

#[derive(Debug, Args)]
pub struct AllArgs {
    /// Folder of experiment files; each *.toml runs in name order.
    #[arg(long, default_value = "experiments")]
    pub experiments: PathBuf,
    #[arg(long, default_value = "results")]
    pub results: PathBuf,
    /// Charts and the generated README.md go here.
    #[arg(long, default_value = "plots")]
    pub plots: PathBuf,
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub threads: Option<u32>,
    /// Run even when an experiment's cells are estimated to take more than a day.
    #[arg(long)]
    pub force: bool,
}

impl Default for AllArgs {
    fn default() -> Self {
        AllArgs {
            experiments: "experiments".into(),
            results: "results".into(),
            plots: "plots".into(),
            threads: None,
            force: false,
        }
    }
}

pub fn run(args: &RunArgs) -> Result<ExitCode> {
    if args.shard.is_some() && args.plots.is_some() {
        bail!("--plots: a shard computes only some cells, so there is nothing to chart yet; give --plots to `resprop merge` once every shard is done");
    }
    let spec = load_spec(&args.spec)?;
    crate::output::create_dir("--out", &args.out)?;
    if let Some(plots) = &args.plots {
        crate::output::create_dir("--plots", plots)?;
    }
    let t = Instant::now();
    if let Some(shard) = args.shard {
        let computed = crate::experiment::runner::compute_cells(
            &spec,
            &args.out,
            &HowToRun {
                progress: true,
                shard: Some(shard),
                force: args.force,
            },
            &crate::interrupt::Interrupt::new(),
        )?;
        let owned = spec.cells().iter().filter(|c| shard.owns(c.index)).count();
        emit(&format!(
            "{}: shard {}/{}: {owned} of {} cells ({computed} computed now) in {:.1} s -> {}; when every shard is done: resprop merge {} --out {}\n",
            spec.name,
            shard.index,
            shard.count,
            spec.cells().len(),
            t.elapsed().as_secs_f64(),
            crate::experiment::runner::cell_store(&args.out).display(),
            args.spec.display(),
            args.out.display()
        ))?;
        return Ok(ExitCode::SUCCESS);
    }
    let how = HowToRun {
        progress: true,
        force: args.force,
        ..HowToRun::default()
    };
    let (csv, computed) = run_experiment(&spec, &args.out, &how)?;
    let mut out = format!(
        "{}: {} cells ({computed} computed now) in {:.1} s -> {}\n",
        spec.name,
        spec.cells().len(),
        t.elapsed().as_secs_f64(),
        csv.display()
    );
    draw_listed(&csv, &spec, args.plots.as_deref(), &mut out)?;
    emit(&out)?;
    Ok(ExitCode::SUCCESS)
}

/// With `--plots DIR`, draws the experiment's charts there and lists each in `out`.
fn draw_listed(
    csv: &std::path::Path,
    spec: &crate::experiment::spec::Spec,
    plots: Option<&std::path::Path>,
    out: &mut String,
) -> Result<()> {
    if let Some(dir) = plots {
        for p in draw(csv, &spec.charts, dir, "--plots")? {
            out.push_str(&format!("chart: {}\n", p.display()));
        }
    }
    Ok(())
}

/// `resprop merge`: the experiment's tables from its shards' cells, once all are there.
pub fn merge(args: &MergeArgs) -> Result<ExitCode> {
    let spec = load_spec(&args.spec)?;
    if !args.out.is_dir() {
        bail!(
            "--out: '{}' is not a results folder (the shards' `--out`, holding cells/)",
            args.out.display()
        );
    }
    let csv = crate::experiment::runner::assemble(&spec, &args.out)?;
    let mut out = format!(
        "{}: {} cells merged -> {}\n",
        spec.name,
        spec.cells().len(),
        csv.display()
    );
    draw_listed(&csv, &spec, args.plots.as_deref(), &mut out)?;
    emit(&out)?;
    Ok(ExitCode::SUCCESS)
}

pub fn plot(args: &PlotArgs) -> Result<ExitCode> {
    Table::read(&args.csv)?;
    let kinds = if args.charts.is_empty() {
        charts_of_results(&args.csv)?.0
    } else {
        parse_charts(&args.charts).map_err(|e| anyhow::anyhow!("--charts: {e}"))?
    };
    if kinds.is_empty() {
        bail!("no charts to draw: the spec lists none and --charts was not given");
    }
    let mut out = String::new();
    for p in draw(&args.csv, &kinds, &args.out, "--out")? {
        out.push_str(&format!("chart: {}\n", p.display()));
    }
    emit(&out)?;
    for note in sibling_notes(&args.csv, &kinds) {
        eprintln!("note: {note}");
    }
    Ok(ExitCode::SUCCESS)
}

/// By design every chart is drawn from its own table (`ChartKind::table`), read beside the CSV
/// given to `plot`: `train_curves` from `train.csv` even when `grads.csv` is named. Where that
/// table is not the given file, one note per table says which file the charts read, so a chart
/// never silently comes from a file the command line did not name.
fn sibling_notes(csv: &std::path::Path, kinds: &[ChartKind]) -> Vec<String> {
    let mut tables: Vec<&str> = kinds.iter().map(|k| k.table().name).collect();
    tables.sort();
    tables.dedup();
    tables
        .into_iter()
        .filter_map(|table| {
            let path = csv.with_file_name(format!("{table}.csv"));
            if path.file_name() == csv.file_name() {
                return None;
            }
            let names: Vec<String> = kinds
                .iter()
                .filter(|k| k.table().name == table)
                .map(|k| format!("'{}'", k.name()))
                .collect();
            Some(format!(
                "chart{} {} read{} '{}', the experiment's {table} table beside '{}' (each chart is drawn from its own table)",
                if names.len() == 1 { "" } else { "s" },
                names.join(", "),
                if names.len() == 1 { "s" } else { "" },
                path.display(),
                csv.display()
            ))
        })
        .collect()
}

pub fn all(args: &AllArgs) -> Result<ExitCode> {
    if !args.experiments.exists() && args.experiments == AllArgs::default().experiments {
        bail!(
            "no experiments folder here: `resprop` without a command runs every experiment file in ./experiments (run it in resprop's folder, give --experiments DIR, or see `resprop --help`)"
        );
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(&args.experiments)
        .with_context(|| {
            format!(
                "--experiments: cannot read the experiments folder '{}'",
                args.experiments.display()
            )
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!(
            "--experiments: no *.toml experiment files in '{}'",
            args.experiments.display()
        );
    }
    // Validate every file before running any, so a typo in the last one fails fast.
    let specs = files
        .iter()
        .map(|f| load_spec(f))
        .collect::<Result<Vec<_>>>()?;
    // The data sets the training studies read must be there before the first experiment
    // runs, not minutes later when the study that needs one comes up.
    for (file, spec) in files.iter().zip(&specs) {
        if let Some(t) = spec.task.train_spec() {
            t.data
                .parse::<crate::data::DataSpec>()
                .map_err(anyhow::Error::msg)
                .and_then(|d| check_present(&d))
                .with_context(|| format!("{}: train.data = \"{}\"", file.display(), t.data))?;
        }
    }
    // Each experiment's results go to <results>/<name>/: two files with one name would
    // overwrite each other's tables and charts.
    for (i, spec) in specs.iter().enumerate() {
        if let Some(j) = specs[..i].iter().position(|s| s.name == spec.name) {
            bail!(
                "--experiments: '{}' and '{}' are both named '{}': their results would overwrite each other; rename one",
                files[j].display(),
                files[i].display(),
                spec.name
            );
        }
    }
    crate::output::create_dir("--results", &args.results)?;
    crate::output::create_dir("--plots", &args.plots)?;
    let mut entries = Vec::new();
    let start = Instant::now();
    for spec in &specs {
        let t = Instant::now();
        let how = HowToRun {
            progress: true,
            force: args.force,
            ..HowToRun::default()
        };
        let (csv, computed) = run_experiment(spec, &args.results, &how)?;
        let seconds = t.elapsed().as_secs_f64();
        let table = Table::read(&csv)?;
        let pngs = draw(&csv, &spec.charts, &args.plots, "--plots")?;
        let charts = pngs
            .iter()
            .map(|p| PathBuf::from(p.file_name().unwrap()))
            .collect();
        emit(&format!(
            "{}: {} cells ({computed} computed now) in {seconds:.1} s, {} chart{}\n",
            spec.name,
            spec.cells().len(),
            spec.charts.len(),
            if spec.charts.len() == 1 { "" } else { "s" }
        ))?;
        entries.push(Entry {
            name: spec.name.clone(),
            claim: spec.claim.clone(),
            table,
            charts,
            seconds: Some(seconds),
            computed,
            section: spec.task.report_section(),
            paper: spec.paper.clone(),
            signal: if spec.charts.contains(&ChartKind::WeightInputs) {
                Some(Table::read(&csv.with_file_name("signal.csv"))?)
            } else {
                None
            },
            weight_grads: if spec.weight_grads {
                Some(Table::read(&csv.with_file_name("weight_grads.csv"))?)
            } else {
                None
            },
            kinds: spec.charts.clone(),
            grads: match &spec.task {
                crate::experiment::Task::Train(_) => {
                    Some(Table::read(&csv.with_file_name("grads.csv"))?)
                }
                _ => None,
            },
        });
    }
    let report = report::write(&args.plots, &entries)?;
    emit(&format!(
        "report: {} ({:.1} s in all)\n",
        report.display(),
        start.elapsed().as_secs_f64()
    ))?;
    Ok(ExitCode::SUCCESS)
}

/// Whether a data set is where `data::load` reads it, without reading it when it is: a missing
/// or incomplete set gets `load`'s one-line error, which says how to install it. For the check
/// before the main job's first experiment (its training studies come after its profiles).
fn check_present(d: &crate::data::DataSpec) -> Result<()> {
    use crate::data::{fashion_mnist_dir, idx, DataSpec};
    let present = match d {
        DataSpec::Digits => true,
        DataSpec::FashionMnist(dir) => idx::complete(&fashion_mnist_dir(dir.as_deref())),
        DataSpec::Mnist(dir) => idx::complete(dir),
        DataSpec::Cifar10(_) | DataSpec::Npz(_) => d.files().iter().all(|f| f.is_file()),
    };
    if present {
        Ok(())
    } else {
        crate::data::load(d).map(|_| ())
    }
}
