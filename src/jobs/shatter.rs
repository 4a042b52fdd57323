//! The shatter job: the shattered-gradients comparison of Balduzzi et al. 2017 (`resprop
//! shatter`, Python's `shatter`; see `resprop::analysis::shatter`).

use anyhow::Result;
use clap::Args;
use serde::Serialize;

use crate::analysis::shatter::{study, Study};

#[derive(Debug, Clone, Args, Serialize)]
pub struct ShatterJob {
    /// Depths to compare, in residual units of two dense layers each (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,10,24,50")]
    pub depths: Vec<usize>,
    /// Width of every layer.
    #[arg(long, default_value_t = 200)]
    pub width: usize,
    /// Networks (seeds) per family and depth; the autocorrelations are averaged over them.
    #[arg(long, default_value_t = 8)]
    pub replicates: usize,
    /// Seed of the networks' weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The unit: original (W N ReLU W N, add, ReLU; the paper's), full-preact (N ReLU W N
    /// ReLU W, add) or another of profile's --placement; plain nets are the same unit without
    /// the shortcut.
    #[arg(long, default_value = "original", value_parser = |s: &str| s.parse::<crate::unit::Placement>())]
    #[serde(serialize_with = "crate::util::serialize_display")]
    pub placement: crate::unit::Placement,
    /// Run even when the sweep is estimated to take more than a day.
    #[arg(long)]
    #[serde(skip)]
    pub force: bool,
    /// The element type of the networks' passes: f64, or f32 (each net its f64 twin rounded).
    #[arg(long, default_value = "f64", value_name = "f32|f64")]
    #[serde(skip_serializing_if = "crate::float::Precision::is_f64")]
    pub precision: crate::float::Precision,
}

impl ShatterJob {
    /// Every network's gradient over the sweep and the autocorrelations (the depths' and
    /// widths' errors name their flag).
    pub fn run(&self) -> Result<Study> {
        study(
            &self.depths,
            self.width,
            self.replicates,
            self.placement,
            self.seed,
            self.force,
            self.precision,
        )
        .map_err(|e| anyhow::anyhow!("--{e}"))
    }
}
