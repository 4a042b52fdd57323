//! The profile job: the per-unit gradient record of one network at one batch (`resprop
//! profile`, Python's `profile`, an experiment's profile cells).

use anyhow::Result;
use clap::Args;
use serde::Serialize;

use super::{Analysis, NetRequest};
use crate::analysis::record::{build_records_until_stopped, Profile};
use crate::float::{same_type, Float, Precision};
use crate::grads::Grads;
use crate::interrupt::Interrupt;
use crate::net::memory::Purpose;
use crate::net::{Keep, NetCache, NetGrads, Network};
use crate::tensor::{cast_ref, Tensor};
use crate::unit::ForwardCtx;

#[derive(Debug, Clone, Args, Serialize)]
pub struct ProfileJob {
    #[command(flatten)]
    #[serde(flatten)]
    pub net: NetRequest,
    /// Keep only each unit's input and re-run its forward pass during backward: the same
    /// numbers (bit for bit) in a fraction of the memory, for about one more forward pass.
    #[arg(long)]
    pub low_memory: bool,
    /// Also the weight gradients `||dE/dW||` (the command line's `--weight-grad-csv`).
    #[arg(skip)]
    pub weight_grads: bool,
    /// Keep what `--npz` writes (the memory estimate counts its copies).
    #[arg(skip)]
    #[serde(skip)]
    pub npz: bool,
    /// The element type of the forward and backward passes: f64 (the reference) or f32 (half
    /// the memory, faster; the network is its f64 twin rounded, and the records are computed
    /// in f64 from the f32 values).
    #[arg(long, default_value = "f64", value_name = "f32|f64")]
    #[serde(skip_serializing_if = "Precision::is_f64")]
    pub precision: Precision,
}

/// What the profile job computed: the network and batch (resolved against a checkpoint; in
/// f64), the forward cache and the gradients they produced (in `T`), and the records.
pub struct ProfileRun<T: Float = f64> {
    pub analysis: Analysis,
    /// The network in `T` when `T` is not f64 (see [`ProfileRun::net`]).
    cast_net: Option<Network<T>>,
    pub ctx: ForwardCtx,
    pub cache: NetCache<T>,
    pub grads: NetGrads<T>,
    /// The weight gradients (empty unless [`ProfileJob::weight_grads`]).
    pub param_grads: Grads<T>,
    pub profile: Profile,
}

impl<T: Float> ProfileRun<T> {
    /// The network the passes ran: the analysis's, or its copy in `T`.
    pub fn net(&self) -> &Network<T> {
        self.cast_net
            .as_ref()
            .or_else(|| same_type(&self.analysis.net))
            .expect("the network in T")
    }
}

impl ProfileJob {
    /// The job's memory purpose (what the estimate counts).
    pub fn purpose(&self) -> Purpose {
        Purpose::Profile {
            low_memory: self.low_memory,
            weight_grads: self.weight_grads,
            npz: self.npz,
        }
    }

    /// Builds the network and batch, runs one forward and backward pass and records them. A
    /// request on `stop` ends the job with [`crate::interrupt::Interrupted`] before the next
    /// unit of either pass or of the records.
    pub fn run(&self, stop: &Interrupt) -> Result<ProfileRun> {
        self.run_as::<f64>(stop)
    }

    /// [`ProfileJob::run`] in the element type `T` (the caller dispatches on
    /// [`ProfileJob::precision`]).
    pub fn run_as<T: Float>(&self, stop: &Interrupt) -> Result<ProfileRun<T>> {
        let analysis = self.net.prepare(self.purpose())?;
        self.run_prepared(analysis, stop)
    }

    /// [`ProfileJob::run_as`] on a network and batch built already (in f64; an f32 run rounds
    /// them).
    pub fn run_prepared<T: Float>(
        &self,
        analysis: Analysis,
        stop: &Interrupt,
    ) -> Result<ProfileRun<T>> {
        // Input gradients only, unless the weight gradients are asked for: weight layers then
        // need not keep their inputs.
        let ctx = analysis.args.ctx().with_weight_grads(self.weight_grads);
        let keep = if self.low_memory {
            Keep::Inputs
        } else {
            Keep::All
        };
        let cast_net = same_type::<_, Network<T>>(&analysis.net)
            .is_none()
            .then(|| analysis.net.cast());
        let input_t;
        let net: &Network<T> = cast_net
            .as_ref()
            .or_else(|| same_type(&analysis.net))
            .expect("the network in T");
        let input: &Tensor<T> = match same_type(&analysis.input) {
            Some(input) => input,
            None => {
                input_t = cast_ref(&analysis.input);
                &input_t
            }
        };
        let labels = &analysis.labels;
        let cache = net.forward_until_stopped(input, labels, &ctx, keep, stop)?;
        let mut param_grads = Grads::new();
        let grads = net.backward_until_stopped(
            &cache,
            labels,
            self.weight_grads.then_some(&mut param_grads),
            stop,
        )?;
        let profile = build_records_until_stopped(net, &cache, &grads, stop)?;
        Ok(ProfileRun {
            analysis,
            cast_net,
            ctx,
            cache,
            grads,
            param_grads,
            profile,
        })
    }
}
