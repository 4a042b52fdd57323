//! An imported ONNX model against PyTorch's autograd on the same batch: per mode (train,
//! eval) and kind of quantity (loss, softmax of the logits, dE/dx_l, direct part D_l,
//! parameter gradients), the largest relative error `max |a - b| / max |b|` over the arrays,
//! and pass or fail at 1e-10. The reference `.npz` is what tests/onnx/make_fixtures.py and
//! tests/onnx/compare_torchvision.py write (layout in src/import/reference.rs).
//!
//! ```text
//! cargo run --release --example compare_onnx -- MODEL.onnx REF.npz
//! ```
//!
//! Exits 1 when any array is above the bound or any reference array was not compared.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Result};
use resprop::import::reference::{compare, load_model, Reference};

/// The issue's bound, as in the lib tests.
const REL: f64 = 1e-10;

fn main() -> Result<ExitCode> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, npz] = &args[..] else {
        bail!("usage: compare_onnx MODEL.onnx REF.npz");
    };
    let start = Instant::now();
    let (graph, found, net) = load_model(Path::new(model))?;
    let reference = Reference::load(Path::new(npz))?;
    let loaded = start.elapsed().as_secs_f64();
    let cmp = compare(&graph, &found, &net, &reference)?;
    let total = start.elapsed().as_secs_f64();
    println!(
        "{model}: {} units, batch {}, {} arrays compared (load {loaded:.1} s, compare {:.1} s)",
        found.units.len(),
        reference.labels.len(),
        cmp.differences.len(),
        total - loaded
    );
    print!("{}", cmp.table(REL));
    let failures = cmp.failures(REL);
    if failures.is_empty() && cmp.unused.is_empty() {
        println!("pass: every array within {REL:e} relative");
        Ok(ExitCode::SUCCESS)
    } else {
        for d in &failures {
            println!("above: {} {:.3e}", d.key, d.rel);
        }
        println!(
            "FAIL: {} arrays above {REL:e} relative, {} not compared",
            failures.len(),
            cmp.unused.len()
        );
        Ok(ExitCode::FAILURE)
    }
}
