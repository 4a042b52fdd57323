//! The engine's element type: `f64` (the default everywhere, the reference for every check)
//! or `f32` (`--precision f32`, where it is enough). One engine serves both: layers, kernels
//! and networks take the element type as a parameter that defaults to `f64`.
//!
//! Reductions that leave the engine (norms, cosines, the recorded statistics) are computed
//! in f64 from either type's values, so an f32 record differs from its f64 twin only by what
//! the f32 forward and backward passes themselves rounded.

use std::cell::RefCell;
use std::thread::LocalKey;

/// A float the engine computes in. `of_f64` rounds to nearest; `as_f64` is exact.
pub trait Float:
    ndarray::NdFloat
    + Default
    + std::iter::Sum
    + for<'a> std::iter::Sum<&'a Self>
    + serde::Serialize
    + 'static
{
    /// "f32" or "f64", as `--precision` spells it.
    const NAME: &'static str;
    /// Bytes per element (the memory estimate counts them).
    const BYTES: usize;

    fn of_f64(v: f64) -> Self;
    fn as_f64(self) -> f64;

    /// `v` where `keep`, else +0.0, as a bit mask rather than a branch: ReLU signs are random,
    /// so a branch mispredicts half the time (measured 4 ns per element against 0.3 ns).
    fn select(keep: bool, v: Self) -> Self;

    /// This thread's scratch buffers of this type (see [`crate::tensor::with_scratch`]).
    fn scratch() -> &'static LocalKey<RefCell<[Vec<Self>; 3]>>;
}

thread_local! {
    static SCRATCH_F64: RefCell<[Vec<f64>; 3]> = const { RefCell::new([Vec::new(), Vec::new(), Vec::new()]) };
    static SCRATCH_F32: RefCell<[Vec<f32>; 3]> = const { RefCell::new([Vec::new(), Vec::new(), Vec::new()]) };
}

impl Float for f64 {
    const NAME: &'static str = "f64";
    const BYTES: usize = 8;

    #[inline(always)]
    fn of_f64(v: f64) -> f64 {
        v
    }

    #[inline(always)]
    fn as_f64(self) -> f64 {
        self
    }

    #[inline(always)]
    fn select(keep: bool, v: f64) -> f64 {
        f64::from_bits(v.to_bits() & (keep as u64).wrapping_neg())
    }

    fn scratch() -> &'static LocalKey<RefCell<[Vec<f64>; 3]>> {
        &SCRATCH_F64
    }
}

impl Float for f32 {
    const NAME: &'static str = "f32";
    const BYTES: usize = 4;

    #[inline(always)]
    fn of_f64(v: f64) -> f32 {
        v as f32
    }

    #[inline(always)]
    fn as_f64(self) -> f64 {
        f64::from(self)
    }

    #[inline(always)]
    fn select(keep: bool, v: f32) -> f32 {
        f32::from_bits(v.to_bits() & (keep as u32).wrapping_neg())
    }

    fn scratch() -> &'static LocalKey<RefCell<[Vec<f32>; 3]>> {
        &SCRATCH_F32
    }
}

/// The element type a command runs in (`--precision f32|f64`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    F32,
    #[default]
    F64,
}

impl Precision {
    pub fn is_f64(&self) -> bool {
        *self == Precision::F64
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => f32::NAME,
            Precision::F64 => f64::NAME,
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(Precision::F32),
            "f64" => Ok(Precision::F64),
            _ => Err(format!("unknown precision '{s}' (expected f32 or f64)")),
        }
    }
}

/// `x` itself as a `&B` when `A` and `B` are the same type (an f64 run's network, used as it
/// is rather than copied); `None` otherwise.
pub fn same_type<A: 'static, B: 'static>(x: &A) -> Option<&B> {
    (x as &dyn std::any::Any).downcast_ref::<B>()
}

/// `v` in the element type: constants in generic code (`c::<T>(0.5)`).
#[inline(always)]
pub fn c<T: Float>(v: f64) -> T {
    T::of_f64(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn select_keeps_or_zeroes_every_value_of_both_types() {
        for v in [1.5, -2.0, f64::NAN, f64::INFINITY, -0.0] {
            assert_eq!(f64::select(true, v).to_bits(), v.to_bits());
            assert_eq!(f64::select(false, v).to_bits(), 0.0f64.to_bits());
            let w = v as f32;
            assert_eq!(f32::select(true, w).to_bits(), w.to_bits());
            assert_eq!(f32::select(false, w).to_bits(), 0.0f32.to_bits());
        }
    }

    #[test]
    fn conversions_round_to_nearest_and_widen_exactly() {
        assert_eq!(f32::of_f64(0.1), 0.1f32);
        assert_eq!(f32::of_f64(0.1).as_f64(), f64::from(0.1f32));
        // Below f32's smallest subnormal a value rounds to 0: the underflow the notes report.
        assert_eq!(f32::of_f64(1e-50), 0.0);
        assert_eq!(f64::of_f64(1e-50), 1e-50);
    }
}
