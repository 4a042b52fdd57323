//! `resprop inspect`: what resprop makes of an ONNX model, before any analysis runs.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use crate::import::{self, Graph};

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The ONNX model to read (see docs/import.md for exporting one from PyTorch).
    #[arg(long, value_name = "FILE.onnx")]
    pub model: PathBuf,
}

pub fn run(args: &InspectArgs) -> Result<ExitCode> {
    let graph = Graph::load(&args.model, "--model")?;
    let structure = import::find(&graph)
        .map_err(|e| anyhow::anyhow!("--model {}: {e:#}", args.model.display()))?;
    print!("{}", import::describe(&graph, &structure));
    Ok(ExitCode::SUCCESS)
}
