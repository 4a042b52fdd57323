//! The integration tier: one test binary (one link, one process) for everything that runs
//! the library or the binary end to end. Module per subject:
//!
//! - `cli`: the binary as a user runs it (files, one-line errors, exit codes, determinism)
//! - `experiments`: spec files, the runner, charts and the report
//! - `formulas`: the paper's formulas on whole networks
//! - `unit_gradients`: every placement x shortcut x projection against central differences
//! - `fusion`: the fused engine against the plain interpreter
//! - `paths`: the exact gradient-by-path-length decomposition
//!
//! The mutation tests (`tests/mutation.rs`) stay a binary of their own: they switch a fault
//! on for the whole process, which no other test may share.

mod architecture;
mod bad_input;
mod cli;
mod common;
mod data;
mod experiments;
mod formats;
mod formulas;
mod fusion;
mod golden;
mod hostile;
mod hostile_files;
mod import;
mod init;
mod paths;
mod precision;
mod serve;
mod unit_gradients;
