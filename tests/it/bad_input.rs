//! Careless and hostile input: every flag of every command refused with one line that names it.
//!
//! The table is generated from the command line's own definition (`resprop::cli::command()`):
//! each argument gets an invalid value chosen by its type (a negative count, a NaN, a path
//! through a regular file, a name no parser knows, a value for a switch), on top of a small,
//! valid base command line, so that a new flag is covered the day it is added. Each must fail
//! with exit status 2, exactly one line on stderr, no panic, and the flag's name in the line.

use std::any::TypeId;
use std::path::PathBuf;

use clap::ArgAction;

use crate::common::*;

/// Files a base command line needs: a checkpoint, an experiment file and its results.
struct Fixture {
    w: Work,
    checkpoint: PathBuf,
    spec: PathBuf,
    experiments: PathBuf,
    results_csv: PathBuf,
    /// A regular file: a path through it cannot be opened or created.
    file: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let w = Work::new();
        let ck = w.path("ck");
        Argv::tiny_train()
            .set("--epochs", 1)
            .path("--checkpoint", &ck)
            .ok();
        let experiments = w.mkdir("experiments");
        let spec = w.write("experiments/tiny.toml", TINY_SPEC);
        w.cmd("run", &spec, "results").ok();
        Fixture {
            checkpoint: ck.join("checkpoint.npz"),
            results_csv: w.path("results/tiny/profile.csv"),
            spec,
            experiments,
            file: w.write("a-file", b"not a directory"),
            w,
        }
    }

    /// A valid, quick command line for `command` (flag name -> value, positionals first).
    fn base(&self, command: &str) -> Vec<(String, Option<String>)> {
        let r = |p: &str| self.w.arg(p);
        let flags: &[(&str, String)] = &match command {
            "profile" | "check" | "paths" => vec![
                ("units", "2".into()),
                ("width", "4".into()),
                ("input-dim", "4".into()),
                ("batch", "4".into()),
            ],
            "lesion" => vec![("weights", s(&self.checkpoint)), ("draws", "1".into())],
            "shatter" => vec![
                ("depths", "1".into()),
                ("width", "4".into()),
                ("replicates", "1".into()),
            ],
            "bench" => vec![("workload", "W1".into()), ("repeat", "1".into())],
            "train" => vec![
                ("net", "mlp".into()),
                ("units", "2".into()),
                ("width", "4".into()),
                ("epochs", "1".into()),
                ("batch", "64".into()),
                ("record-every", "0".into()),
            ],
            "run" => vec![("SPEC", s(&self.spec)), ("out", r("r1"))],
            "merge" => vec![
                ("SPEC", s(&self.spec)),
                (
                    "out",
                    s(self.results_csv.parent().unwrap().parent().unwrap()),
                ),
            ],
            "plot" => vec![("CSV", s(&self.results_csv)), ("out", r("p1"))],
            "data" => vec![("data", "digits".into()), ("npz", r("d.npz"))],
            "inspect" => vec![(
                "model",
                concat!(env!("CARGO_MANIFEST_DIR"), "/tests/onnx/basic.onnx").into(),
            )],
            "all" => vec![
                ("experiments", s(&self.experiments)),
                ("results", r("r2")),
                ("plots", r("p2")),
            ],
            "serve" => vec![("port", "0".into())],
            other => panic!("no base command line for '{other}'"),
        };
        flags
            .iter()
            .map(|(k, v)| (k.to_string(), Some(v.clone())))
            .collect()
    }
}

/// An invalid value for `arg`, by its type; `None` for a switch (given `--flag=maybe`).
fn invalid_value(arg: &clap::Arg, fx: &Fixture) -> Option<String> {
    if matches!(arg.get_action(), ArgAction::SetTrue) {
        return None;
    }
    if !arg.get_possible_values().is_empty() {
        return Some("bogus".into());
    }
    let ty = arg.get_value_parser().type_id();
    let is = |t: TypeId| ty == t;
    Some(
        if is(TypeId::of::<usize>()) || is(TypeId::of::<u64>()) || is(TypeId::of::<u32>()) {
            "-1".into()
        } else if is(TypeId::of::<f64>()) {
            "nan".into()
        } else if is(TypeId::of::<PathBuf>()) {
            s(&fx.file.join("x"))
        } else {
            "bogus".into()
        },
    )
}

fn argv(command: &str, args: &[(String, Option<String>)]) -> Vec<String> {
    let mut v = vec![command.to_string()];
    // Positionals (upper-case names) first, then flags.
    for (k, val) in args
        .iter()
        .filter(|(k, _)| k.chars().all(|c| c.is_ascii_uppercase()))
    {
        let _ = k;
        v.push(val.clone().unwrap());
    }
    for (k, val) in args
        .iter()
        .filter(|(k, _)| !k.chars().all(|c| c.is_ascii_uppercase()))
    {
        match val {
            Some(val) => {
                v.push(format!("--{k}"));
                v.push(val.clone());
            }
            None => v.push(format!("--{k}=maybe")),
        }
    }
    v
}

/// Runs `argv` and returns why it is not a one-line refusal naming `needle`, if it is not.
fn refusal_problem(argv: &[String], needle: &str) -> Option<String> {
    let args: Vec<&str> = argv.iter().map(String::as_str).collect();
    let o = resprop(&args);
    let err = stderr(&o);
    let line = err.trim_end();
    if o.status.success() {
        return Some("it succeeded".into());
    }
    if o.status.code() != Some(2) || err.contains("panicked") {
        return Some(format!("exit {:?}: {line}", o.status.code()));
    }
    if line.lines().count() != 1 {
        return Some(format!("{} lines: {line}", line.lines().count()));
    }
    if !line.contains(needle) {
        return Some(format!("'{needle}' not named: {line}"));
    }
    None
}

#[test]
fn every_flag_of_every_command_refuses_an_invalid_value_in_one_line_naming_it() {
    let fx = Fixture::new();
    let mut problems = Vec::new();
    let mut cases = 0;
    for command in resprop::cli::command().get_subcommands() {
        let name = command.get_name();
        let base = fx.base(name);
        for arg in command.get_arguments() {
            let id = arg.get_id().as_str();
            if matches!(id, "help" | "version") {
                continue;
            }
            let (key, needle) = match arg.get_long() {
                Some(long) => (long.to_string(), format!("--{long}")),
                None => {
                    let value_name = arg
                        .get_value_names()
                        .and_then(|v| v.first())
                        .map(|v| v.to_string())
                        .unwrap_or_else(|| id.to_uppercase());
                    (value_name, String::new())
                }
            };
            let value = invalid_value(arg, &fx);
            // A positional is named by its value in the message.
            let needle = if needle.is_empty() {
                value.clone().unwrap()
            } else {
                needle
            };
            let mut args: Vec<(String, Option<String>)> =
                base.iter().filter(|(k, _)| *k != key).cloned().collect();
            args.push((key.clone(), value));
            let argv = argv(name, &args);
            cases += 1;
            if let Some(p) = refusal_problem(&argv, &needle) {
                problems.push(format!("resprop {}: {p}", argv.join(" ")));
            }
        }
    }
    assert!(cases > 100, "only {cases} flags found");
    assert!(
        problems.is_empty(),
        "{} of {cases} flags:\n{}",
        problems.len(),
        problems.join("\n")
    );
}
