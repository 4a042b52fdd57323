//! `resprop data`: the training and test split exactly as `train` uses it, for other tools.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, Result};
use clap::Args;
use ndarray::Array1;
use ndarray_npy::NpzWriter;

use crate::output::{emit, write_atomic_with};

#[derive(Debug, Args)]
pub struct DataArgs {
    /// `digits` (bundled UCI handwritten digits) or `cifar10:<dir>` (the binary version).
    #[arg(long, default_value = "digits", value_parser = |s: &str| s.parse::<crate::data::DataSpec>())]
    pub data: crate::data::DataSpec,
    /// Write `train_x`, `train_y`, `test_x`, `test_y` (images `(N, C, H, W)` float64 after
    /// resprop's normalisation, labels int64) and `sha256` (the digest results record).
    #[arg(long, value_name = "FILE")]
    pub npz: PathBuf,
}

pub fn run(args: &DataArgs) -> Result<ExitCode> {
    crate::output::Outputs::new()
        .write_npz("--npz", Some(&args.npz))
        .read_data("--data", Some(&args.data))
        .check()?;
    let data = crate::data::load(&args.data)?;
    let digest = data.fingerprint();
    write_atomic_with(&args.npz, |w| {
        let mut npz = NpzWriter::new_compressed(w);
        let err = |e: ndarray_npy::WriteNpzError| anyhow!("writing '{}': {e}", args.npz.display());
        for (name, set) in [("train", &data.train), ("test", &data.test)] {
            npz.add_array(format!("{name}_x"), &set.images)
                .map_err(err)?;
            let labels = Array1::from_iter(set.labels.iter().map(|&l| l as i64));
            npz.add_array(format!("{name}_y"), &labels).map_err(err)?;
        }
        npz.add_array("sha256", &Array1::from(digest.clone().into_bytes()))
            .map_err(err)?;
        npz.finish().map_err(err)?;
        Ok(())
    })?;
    emit(&format!(
        "wrote {} ({} training and {} test images, sha256 {digest}) to {}\n",
        data.name,
        data.train.len(),
        data.test.len(),
        args.npz.display()
    ))?;
    Ok(ExitCode::SUCCESS)
}
