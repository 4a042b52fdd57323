pub mod finite_diff;
pub mod grads;
pub mod layers;
pub mod net;
pub mod rng;
pub mod tensor;
pub mod unit;
pub mod util;
