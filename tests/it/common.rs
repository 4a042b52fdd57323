//! What the end-to-end modules share: running the binary and reading its result, a test's
//! temporary directory ([`Work`]), a command-line builder ([`Argv`]) and the tiny networks and
//! experiment files the tests run.

use std::ffi::OsStr;
use std::fmt::Display;
use std::path::{Path, PathBuf};
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

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
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
pub fn s(p: &Path) -> String {
    p.to_str().expect("a UTF-8 temporary path").to_string()
}

/// Makes a FIFO at `path`.
pub fn mkfifo(path: &Path) {
    assert!(Command::new("mkfifo").arg(path).status().unwrap().success());
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

/// A test's own temporary directory, removed when dropped. Every name is relative to it.
pub struct Work {
    dir: tempfile::TempDir,
}

impl Work {
    pub fn new() -> Work {
        Work {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, name: impl AsRef<Path>) -> PathBuf {
        self.dir.path().join(name)
    }

    /// [`Work::path`] as an argument.
    pub fn arg(&self, name: impl AsRef<Path>) -> String {
        s(&self.path(name))
    }

    /// Writes `contents` to `name` (its folder made if need be); returns its path.
    pub fn write(&self, name: impl AsRef<Path>, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, contents).unwrap();
        path
    }

    pub fn read(&self, name: impl AsRef<Path>) -> String {
        let path = self.path(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    pub fn bytes(&self, name: impl AsRef<Path>) -> Vec<u8> {
        let path = self.path(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    pub fn exists(&self, name: impl AsRef<Path>) -> bool {
        self.path(name).exists()
    }

    /// Makes the folder `name` (it must not exist yet); returns its path.
    pub fn mkdir(&self, name: impl AsRef<Path>) -> PathBuf {
        let path = self.path(name);
        std::fs::create_dir(&path).unwrap();
        path
    }

    /// The names in the directory itself (not below it).
    pub fn entries(&self) -> Vec<std::ffi::OsString> {
        std::fs::read_dir(self.root())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect()
    }

    /// `command <input> --out <out>`, both in this directory: `run` or `merge` a spec, `plot`
    /// a CSV.
    pub fn cmd(&self, command: &str, input: impl AsRef<Path>, out: impl AsRef<Path>) -> Argv {
        Argv::new(command)
            .arg(self.path(input))
            .path("--out", self.path(out))
    }

    /// Writes [`TINY_SPEC`] to `tiny.toml` and runs it into `res`; returns its table,
    /// `res/tiny/profile.csv` (`spec.toml` beside it, the cells in `res/cells`).
    pub fn tiny_results(&self) -> PathBuf {
        self.write("tiny.toml", TINY_SPEC);
        self.cmd("run", "tiny.toml", "res").ok();
        self.path("res/tiny/profile.csv")
    }

    /// The checkpoint folder `ck` of an [`Argv::tiny_train`] run.
    pub fn tiny_checkpoint(&self) -> PathBuf {
        tiny_checkpoint(self.root())
    }
}

/// A `resprop` command line, built up and then run:
/// `Argv::new("profile --units 2").flag("--width", 4).path("--csv", &csv).ok()`.
#[derive(Clone, Debug)]
pub struct Argv(Vec<String>);

impl Argv {
    /// The words of `line`, split at whitespace: a command, or a command and flags whose
    /// values hold no space (a path goes in through [`Argv::path`] or [`Argv::arg`]).
    pub fn new(line: &str) -> Argv {
        Argv(line.split_whitespace().map(String::from).collect())
    }

    /// `command` on the [`TINY`] network.
    pub fn tiny(command: &str) -> Argv {
        Argv::new(command).with(&TINY)
    }

    /// `command` on the [`TINY_MLP`] network.
    pub fn tiny_mlp(command: &str) -> Argv {
        Argv::new(command).with(&TINY_MLP)
    }

    /// `train` on the [`TINY_MLP`] for two epochs on the digits, batch 64, recording no
    /// gradients (seconds to run).
    pub fn tiny_train() -> Argv {
        Argv::tiny_mlp("train").with(&["--epochs", "2", "--batch", "64", "--record-every", "0"])
    }

    /// `name value`.
    pub fn flag(mut self, name: &str, value: impl Display) -> Argv {
        self.0.push(name.to_string());
        self.0.push(value.to_string());
        self
    }

    /// `name` alone: a flag without a value.
    pub fn switch(mut self, name: &str) -> Argv {
        self.0.push(name.to_string());
        self
    }

    /// `name path`.
    pub fn path(self, name: &str, path: impl AsRef<Path>) -> Argv {
        let value = s(path.as_ref());
        self.flag(name, value)
    }

    /// One argument as it is: a positional (a spec, a CSV) or a value.
    pub fn arg(mut self, value: impl AsRef<OsStr>) -> Argv {
        let value = value.as_ref().to_str().expect("a UTF-8 argument");
        self.0.push(value.to_string());
        self
    }

    /// Each of `args` as it is.
    pub fn with(mut self, args: &[impl AsRef<str>]) -> Argv {
        self.0.extend(args.iter().map(|a| a.as_ref().to_string()));
        self
    }

    /// The value after the first `name` replaced by `value`, or `name value` added if `name`
    /// is not given.
    pub fn set(mut self, name: &str, value: impl Display) -> Argv {
        match self.0.iter().position(|a| a == name) {
            Some(i) => {
                self.0[i + 1] = value.to_string();
                self
            }
            None => self.flag(name, value),
        }
    }

    /// For the helpers that take `&[&str]`.
    pub fn as_strs(&self) -> Vec<&str> {
        self.0.iter().map(String::as_str).collect()
    }

    pub fn into_vec(self) -> Vec<String> {
        self.0
    }

    /// Runs it, whatever the outcome.
    pub fn run(&self) -> Output {
        resprop(&self.as_strs())
    }

    /// Runs it and asserts a zero exit ([`ok`]).
    pub fn ok(&self) -> Output {
        let o = self.run();
        ok(&o);
        o
    }

    /// Runs it and asserts a one-line refusal naming `needle` ([`refused`]).
    pub fn refused(&self, needle: &str) {
        refused(&self.as_strs(), needle)
    }
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

/// A training experiment of four one-epoch cells on the digits: an MLP and a one-unit ResNet,
/// each original and fully pre-activated.
pub const TINY_TRAIN_SPEC: &str = r#"
name = "tinytrain"
claim = "a tiny training run"
seed = 3
charts = ["train_curves"]
task = "train"

[train]
data = "digits"
epochs = 1
batch = 64
record_every = 5

[grid]
nets = ["mlp", "resnet:1:basic"]
placements = ["original", "full-preact"]
shortcuts = ["identity"]
units = [2]
replicates = [0]
"#;

/// `train` on a 2-unit MLP of width 4 for two epochs on the digits, with `extra` flags
/// ([`Argv::tiny_train`] as a list).
#[allow(dead_code)] // every caller here moved to `Argv::tiny_train`; kept for the list form
pub fn tiny_train(extra: &[&str]) -> Vec<String> {
    Argv::tiny_train().with(extra).into_vec()
}

/// The checkpoint directory of [`Argv::tiny_train`] in `dir/ck`.
pub fn tiny_checkpoint(dir: &Path) -> PathBuf {
    let ck = dir.join("ck");
    Argv::tiny_train().path("--checkpoint", &ck).ok();
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

/// `train`'s tiny network: a 2-unit MLP of width 4 (on the digits' 64 inputs).
pub const TINY_MLP: [&str; 6] = ["--net", "mlp", "--units", "2", "--width", "4"];

/// `command` on the [`TINY`] network, then `extra` ([`Argv::tiny`] as a list).
#[allow(dead_code)] // every caller here moved to `Argv::tiny`; kept for the list form
pub fn with_tiny<'a>(command: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![command];
    v.extend(TINY);
    v.extend(extra);
    v
}
