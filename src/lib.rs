//! resprop: how gradients travel through deep residual networks.
//!
//! A CPU engine (ndarray, f64) with hand-written forward and backward passes for residual
//! networks, built to reproduce and extend the analysis of He, Zhang, Ren and Sun, "Identity
//! Mappings in Deep Residual Networks" (ECCV 2016).
//!
//! Notation: `N` batch, `D` features (`C, H, W` for conv nets), `L` residual units. A unit
//! computes `y_l = h(x_l) + F(x_l)`, `x_{l+1} = f(y_l)`; `x_0` is the stem's output and `x_L`
//! the head's input.
//!
//! Modules:
//! - [`layers`]: dense, BatchNorm, ReLU, sigmoid, dropout, softmax cross-entropy, each with
//!   forward, hand-written backward and a finite-difference test side by side;
//! - [`unit`](mod@unit): the residual unit, its placements and shortcut variants, and the two
//!   vector-Jacobian products (shortcut only, branch only) whose sum is the backward;
//! - [`net`]: the residual MLP and the CIFAR ResNets;
//! - [`jobs`]: the request layer: [`jobs::NetDescription`], the one description of a network
//!   every front end builds from;
//! - [`analysis`]: per-unit records (direct/rest split) and the formula checks;
//! - [`interchange`]: the `.npz` state file; [`output`]: atomic writes; [`cli`]: the binary;
//! - [`tensor`]: the one GEMM entry point and the fixed-order reductions; [`spin_join`]: the
//!   two-thread fork-join the engine's short parallel sections use.

pub mod analysis;
pub mod budget;
pub mod cli;
pub mod data;
pub mod experiment;
pub mod fault;
pub mod finite_diff;
pub mod float;
pub mod grads;
pub mod import;
pub mod input;
pub mod interchange;
pub mod interrupt;
pub mod jobs;
pub mod kernels;
pub mod layers;
pub mod net;
pub mod output;
pub mod plot;
pub mod rng;
pub mod schema;
pub mod spin_join;
pub mod stats;
pub mod tensor;
pub mod train;
pub mod unit;
pub mod util;
