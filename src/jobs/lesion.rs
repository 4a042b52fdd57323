//! The lesion job: the test error of a trained network with units deleted (`resprop lesion`,
//! Python's `lesion`; see `resprop::analysis::lesion`).

use anyhow::{bail, Result};
use clap::Args;
use serde::Serialize;

use super::{Analysis, NetRequest};
use crate::analysis::lesion::{deletable, plan, run as run_lesions};

#[derive(Debug, Clone, Args, Serialize)]
pub struct LesionJob {
    #[command(flatten)]
    #[serde(flatten)]
    pub net: NetRequest,
    /// Random draws of k units for each k = 1..n/2.
    #[arg(long, default_value_t = 5)]
    pub draws: usize,
    /// Run even when the lesions are estimated to take more than a day.
    #[arg(long)]
    #[serde(skip)]
    pub force: bool,
    /// The element type of the lesioned networks' forward passes: f64, or f32 (the trained
    /// network rounded).
    #[arg(long, default_value = "f64", value_name = "f32|f64")]
    #[serde(skip_serializing_if = "crate::float::Precision::is_f64")]
    pub precision: crate::float::Precision,
}

/// What `resprop lesion` measures: every lesion of the plan and its test error (the first is
/// the intact net).
pub struct Lesions {
    pub analysis: Analysis,
    pub lesions: Vec<crate::analysis::lesion::Lesion>,
    pub errors: Vec<f64>,
}

impl LesionJob {
    /// Plans and measures the lesions, calling `progress(n)` after each of the n (a request
    /// on `stop` ends the call before the next); also the Python package's `lesion`.
    pub fn run(
        &self,
        progress: &(dyn Fn(usize) + Sync),
        stop: &crate::interrupt::Interrupt,
    ) -> Result<Lesions> {
        if self.net.weights.is_none() && self.net.model.is_none() {
            bail!("lesion needs a trained network: --weights CHECKPOINT (from `resprop train --checkpoint DIR`) or --model FILE.onnx");
        }
        if self.net.model.is_some() && self.net.data.is_none() {
            bail!("lesion --model measures the model's test error: give the data it was trained on with --data");
        }
        if self.draws == 0 {
            bail!("--draws: at least 1");
        }
        // The plan lists every lesion before any runs.
        crate::budget::ensure_at_most("--draws", self.draws as u64, 100_000)?;
        let d = NetRequest::defaults();
        for (id, differs) in [
            ("batch", self.net.batch != d.batch),
            ("bn_mode", self.net.bn_mode != d.bn_mode),
        ] {
            self.net.given.refuse(id, differs, || {
                "lesion measures the error on the whole test split, BatchNorm in evaluation mode"
                    .into()
            })?;
        }
        let analysis = self.net.prepare(crate::net::memory::Purpose::Check)?;
        let Some(data) = &analysis.data else {
            bail!("lesion measures the test error: it needs the checkpoint's data");
        };
        // Each lesion is a forward pass over the test split: the intact net, one per unit and
        // --draws per k = 1..n/2.
        let n = deletable(&analysis.net).len();
        let lesions = 1.0 + n as f64 + self.draws as f64 * (n / 2) as f64;
        crate::budget::ensure_feasible(
            &format!("--draws {} over {n} units", self.draws),
            analysis.net.pass_work(data.test.len(), lesions / 3.0),
            self.force,
        )?;
        let lesions = plan(&analysis.net, self.draws, analysis.args.seed);
        let n = lesions.len();
        let errors = match self.precision {
            crate::float::Precision::F64 => {
                run_lesions(&analysis.net, data, &lesions, &|| progress(n), stop)?
            }
            crate::float::Precision::F32 => run_lesions(
                &analysis.net.cast::<f32>(),
                data,
                &lesions,
                &|| progress(n),
                stop,
            )?,
        };
        Ok(Lesions {
            analysis,
            lesions,
            errors,
        })
    }
}
