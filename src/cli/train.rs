//! `resprop train`: SGD on real data, recording losses, errors and per-unit gradients.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use crate::jobs::train::TrainJob;
use crate::output::{emit, write_atomic};
use crate::schema::to_csv;
use crate::train::checkpoint;

#[derive(Debug, Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub job: TrainJob,
    /// Per-step CSV: step, epoch, lr, train loss and error, test loss and error (at epoch ends).
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,
    /// Per-unit gradients over training (default: `<csv>.grads.csv` next to --csv).
    #[arg(long, value_name = "FILE")]
    pub grad_csv: Option<PathBuf>,
}

impl TrainArgs {
    /// Where the per-unit gradients go: --grad-csv, or `<csv>.grads.csv` beside --csv (none
    /// when --csv is a device or a FIFO: `/dev/null.grads.csv` is no place the user named).
    fn grad_path(&self) -> Option<PathBuf> {
        self.grad_csv.clone().or_else(|| {
            self.csv
                .as_ref()
                .filter(|c| !crate::output::is_stream_path(c))
                .map(|c| c.with_extension("grads.csv"))
        })
    }

    /// Checks every file the run will write (and the checkpoint directory) before it starts.
    fn check_outputs(&self) -> Result<()> {
        if self.job.record_every == 0 && self.grad_csv.is_some() {
            bail!("--grad-csv: --record-every 0 records no gradients to write");
        }
        let checkpoint = self
            .job
            .checkpoint
            .as_ref()
            .map(|d| d.join(checkpoint::FILE));
        if let Some(dir) = &self.job.checkpoint {
            if dir.exists() && !dir.is_dir() {
                bail!(
                    "--checkpoint: '{}' is not a directory (the checkpoint is written to DIR/{})",
                    dir.display(),
                    checkpoint::FILE
                );
            }
            if !self.job.resume {
                crate::output::create_dir("--checkpoint", dir)?;
            }
            // What a run killed while saving left behind.
            crate::output::sweep_stale_temps(dir, None);
        }
        let mut outputs = crate::output::Outputs::new()
            .read_data("--data", Some(&self.job.data))
            .write("--csv", self.csv.as_deref())
            .write(
                if self.grad_csv.is_some() {
                    "--grad-csv"
                } else {
                    "the gradients CSV beside --csv"
                },
                self.grad_path().as_deref(),
            );
        // The checkpoint file is both read (with --resume) and rewritten; it only has to differ
        // from the CSVs.
        if checkpoint
            .as_ref()
            .is_some_and(|c| c.parent().is_some_and(Path::is_dir))
        {
            outputs = outputs.write_npz("--checkpoint's checkpoint.npz", checkpoint.as_deref());
        }
        outputs.check()
    }
}

pub fn run(args: &TrainArgs) -> Result<ExitCode> {
    args.check_outputs()?;
    let job = &args.job;
    let grad_path = args.grad_path();
    if grad_path.is_none() && args.csv.is_some() && job.record_every > 0 {
        eprintln!(
            "note: --csv is a device or a FIFO, so the per-unit gradients have no file beside it: give --grad-csv FILE to keep them"
        );
    }
    let mut t = job.prepare()?;
    let (net, data) = (&t.net, &t.data);
    emit(&format!(
        "resprop train: {} ({} units, {} parameters), {} placement, shortcut {}{}, on {} ({} train / {} test), {} epoch{} of batch {}\n",
        job.arch.net,
        net.num_units(),
        net.param_count(),
        job.arch.placement,
        job.arch.shortcut,
        match &net.spec {
            crate::net::NetSpec::Resnet(c) => format!(", projection {}", c.projection),
            _ => String::new(),
        },
        data.name,
        data.train.len(),
        data.test.len(),
        job.epochs,
        if job.epochs == 1 { "" } else { "s" },
        job.batch
    ))?;
    if let (true, Some(dir)) = (job.resume, &job.checkpoint) {
        emit(&format!(
            "resuming after epoch {} from {}\n",
            t.resume.epoch,
            dir.join(checkpoint::FILE).display()
        ))?;
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "epoch {msg} [{bar:30}] {pos}/{len} steps ({per_sec}, eta {eta})",
        )
        .unwrap(),
    );
    let resumed_steps = t.resume.history.steps.len();
    let start = Instant::now();
    let mut lines = String::new();
    let history = job.train_prepared(
        &mut t,
        |row: &crate::train::StepRow, total: usize| {
            bar.set_length(total as u64);
            bar.set_message(format!(
                "{}/{}, loss {:.3}",
                row.epoch + 1,
                job.epochs,
                row.train_loss
            ));
            bar.inc(1);
            if let Some((tl, te)) = row.test {
                let line = format!(
                "epoch {:>3}: lr {:.0e}, last batch loss {:.4}, test loss {tl:.4}, test error {:.2}%\n",
                row.epoch + 1,
                row.lr,
                row.train_loss,
                100.0 * te
            );
                bar.suspend(|| {
                    let _ = emit(&line);
                });
                lines.push_str(&line);
            }
            Ok(())
        },
    )?;
    let net = &t.net;
    bar.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    // A resumed run's history holds the checkpoint's steps too: the rate is of this run's.
    let taken = history.steps.len() - resumed_steps;
    let mut out = format!(
        "{taken} steps in {secs:.1} s ({:.1} steps/s){}\n",
        taken as f64 / secs.max(1e-9),
        if resumed_steps > 0 {
            format!(", after the checkpoint's {resumed_steps}")
        } else {
            String::new()
        }
    );
    if let Some(p) = &args.csv {
        write_atomic(p, &to_csv(&history.steps, &[])?)?;
        out.push_str(&format!(
            "wrote {} steps to {}\n",
            history.steps.len(),
            p.display()
        ));
    }
    if let Some(p) = &grad_path {
        // Always written, empty when nothing was recorded, so that the pair beside --csv never
        // holds an earlier run's gradients.
        write_atomic(p, &to_csv(&history.grads, &[])?)?;
        out.push_str(&format!(
            "wrote per-unit gradients at {} steps to {}\n",
            history.grads.len() / (net.num_units() + 1),
            p.display()
        ));
    }
    emit(&out)?;
    match &history.diverged {
        // What was recorded so far is kept (written above); the run itself failed.
        Some(msg) => bail!("{msg}"),
        None => Ok(ExitCode::SUCCESS),
    }
}
