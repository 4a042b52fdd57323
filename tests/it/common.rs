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

/// A path as an argument.
pub fn s(p: &std::path::Path) -> String {
    p.to_str().expect("a UTF-8 temporary path").to_string()
}

/// A bad input refused: exit status 2, one line on stderr naming `needle`, no panic.
pub fn refused(args: &[&str], needle: &str) {
    let o = resprop(args);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
    assert!(err.contains(needle), "{args:?}: '{needle}' not in: {err}");
}

/// A profile experiment of two cells on a 2-unit MLP of width 4 (milliseconds to run).
pub const TINY_SPEC: &str = r#"
name = "tiny"
claim = "a tiny profile"
seed = 1
batch = 4
charts = ["grad_ratio"]

[net]
units = 2
width = 4

[grid]
nets = ["mlp"]
placements = ["full-preact"]
shortcuts = ["identity", "scale:0.5"]
replicates = [0]
"#;

/// `train` on a 2-unit MLP of width 4 for two epochs on the digits, with `extra` flags.
pub fn tiny_train(extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "train",
        "--net",
        "mlp",
        "--units",
        "2",
        "--width",
        "4",
        "--epochs",
        "2",
        "--batch",
        "64",
        "--record-every",
        "0",
    ]
    .map(String::from)
    .to_vec();
    v.extend(extra.iter().map(|a| a.to_string()));
    v
}

/// The checkpoint directory of [`tiny_train`] in `dir/ck`.
pub fn tiny_checkpoint(dir: &std::path::Path) -> std::path::PathBuf {
    let ck = dir.join("ck");
    let args = tiny_train(&["--checkpoint", &s(&ck)]);
    ok(&resprop(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    ));
    ck
}

/// A profile-sized MLP in a few flags: 2 units of width 4 on 4 inputs, batch 4.
pub const TINY: [&str; 8] = [
    "--units",
    "2",
    "--width",
    "4",
    "--input-dim",
    "4",
    "--batch",
    "4",
];

/// `command` on the [`TINY`] network, then `extra`.
pub fn with_tiny<'a>(command: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![command];
    v.extend(TINY);
    v.extend(extra);
    v
}
