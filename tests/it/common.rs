//! What the end-to-end modules share: running the binary and reading its result.

use std::process::{Command, Output};

/// Runs the built `resprop` binary with `args`.
pub fn resprop(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_resprop"))
        .args(args)
        .output()
        .expect("binary runs")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts a zero exit, printing both streams otherwise.
pub fn ok(o: &Output) {
    assert!(
        o.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}
