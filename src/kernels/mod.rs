//! Kernels: the vectorised inner loops the layers run (normalisation passes, the
//! shifted-plane im2col and col2im, the per-sample epilogue), apart from the layers that
//! call them. Each fast kernel has a plain-ndarray reference in [`reference`], written for
//! clarity alone, and a test that holds the two equal.

pub mod epilogue;
pub mod im2col;
pub mod norm;
pub mod prologue;
pub mod reference;

pub use epilogue::Epilogue;
pub(crate) use prologue::Prologue;
