//! Declarative experiments: TOML specs under `experiments/`, run cell by cell in parallel,
//! written as tidy CSV next to the resolved spec.

pub mod analyses;
pub mod runner;
pub mod spec;

pub use runner::run_experiment;
pub use spec::{load_spec, parse_spec, Cell, ChartKind, Measure, Spec, Task};
