//! Fault injection for the mutation tests of `resprop check`: one hand-written backward at a
//! time gets a wrong factor of `1 + 1e-3` on one of its terms, and the verifier must report a
//! FAIL. Compiled in only with the test-only feature `fault-injection`, which the test suite
//! enables through a dev-dependency on the crate itself: a build a user makes has no switch,
//! and every hook below is a constant `false` there.

use crate::float::Float;

/// The injectable faults, each one term of one backward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Fault {
    /// Dense layer: `dE/dx = g W^T` (the separate layer and the fused BN-ReLU-dense op).
    DenseInputGrad = 1,
    /// Dense layer: `dE/dW = x^T g` (both paths).
    DenseWeightGrad,
    /// Dense layer: `dE/db = sum g`.
    DenseBiasGrad,
    /// Convolution: the input gradient `col2im(W^T g)` of each sample.
    ConvInputGrad,
    /// Convolution: `dE/dW = sum_n g_n cols_n^T`.
    ConvWeightGrad,
    /// Convolution: `dE/db` (the gate's 1x1 convolution).
    ConvBiasGrad,
    /// BatchNorm, training mode: the mean term `gamma inv_std grad_beta / M`.
    BnMeanTerm,
    /// BatchNorm, training mode: the variance term `xhat grad_gamma / M`.
    BnVarianceTerm,
    /// BatchNorm: `dE/dgamma`.
    BnGammaGrad,
    /// BatchNorm: `dE/dbeta`.
    BnBetaGrad,
    /// BatchNorm, evaluation mode: the factor `gamma / sqrt(running_var + eps)`.
    BnEvalScale,
    /// ReLU on its own: the gradient where the output is positive.
    ReluGrad,
    /// The gate's sigmoid: `g (1 - g)`.
    SigmoidGrad,
    /// Global average pooling: `g / (H W)`.
    PoolGrad,
    /// The option-A shortcut's transpose.
    PadShortcutGrad,
    /// Softmax cross-entropy: `(p - onehot) / N`.
    LossGrad,
    /// The paper's unit on the engine's fused path: the identity shortcut's `dE/dx_{l+1}`
    /// added in the branch's last pass.
    FusedIdentityResidual,
    /// Shortcut-only VJP of the identity (what the direct part is carried by).
    IdentityShortcutVjp,
    /// Shortcut-only VJP of `scale:L`: the factor `lambda`.
    ScaleShortcutVjp,
    /// Branch-only VJP of `scale:L:B`: the factor `B`.
    ScaleBranchVjp,
    /// Gated shortcuts' VJP: the direct factor `1 - g`.
    GateDirectFactor,
    /// Gated shortcuts' VJP: the path through the gate, `d/dg [(1 - g) x] = -x`.
    GatePathTerm,
    /// Exclusive gate, branch VJP: the factor `g` on `dE/dF`.
    ExclusiveGateBranchFactor,
    /// Exclusive gate, branch VJP: the gate's own term, `d/dg [g F] = F`.
    ExclusiveGateBranchTerm,
    /// Projection (and padded) shortcuts' VJP: the shortcut layers' backward.
    ProjectionShortcutVjp,
    /// Dropout shortcut's VJP: the mask.
    DropoutShortcutVjp,
    /// LayerNorm: the mean term `mean_n(gamma g)`.
    LnMeanTerm,
    /// LayerNorm: the variance term `xhat mean_n(gamma g xhat)`.
    LnVarianceTerm,
    /// LayerNorm: `dE/dgamma`.
    LnGammaGrad,
    /// A learned branch scale (`alpha`, `layerscale`): `dE/da = sum g F`.
    BranchScaleGrad,
    /// A learned branch scale: `dE/dF = a g`.
    BranchScaleInputGrad,
    /// Fixup's scalar bias: `dE/db = sum g`.
    ScalarBiasGrad,
}

impl Fault {
    pub const ALL: [Fault; 32] = [
        Fault::DenseInputGrad,
        Fault::DenseWeightGrad,
        Fault::DenseBiasGrad,
        Fault::ConvInputGrad,
        Fault::ConvWeightGrad,
        Fault::ConvBiasGrad,
        Fault::BnMeanTerm,
        Fault::BnVarianceTerm,
        Fault::BnGammaGrad,
        Fault::BnBetaGrad,
        Fault::BnEvalScale,
        Fault::ReluGrad,
        Fault::SigmoidGrad,
        Fault::PoolGrad,
        Fault::PadShortcutGrad,
        Fault::LossGrad,
        Fault::FusedIdentityResidual,
        Fault::IdentityShortcutVjp,
        Fault::ScaleShortcutVjp,
        Fault::ScaleBranchVjp,
        Fault::GateDirectFactor,
        Fault::GatePathTerm,
        Fault::ExclusiveGateBranchFactor,
        Fault::ExclusiveGateBranchTerm,
        Fault::ProjectionShortcutVjp,
        Fault::DropoutShortcutVjp,
        Fault::LnMeanTerm,
        Fault::LnVarianceTerm,
        Fault::LnGammaGrad,
        Fault::BranchScaleGrad,
        Fault::BranchScaleInputGrad,
        Fault::ScalarBiasGrad,
    ];
}

/// The wrong factor an active fault puts on its term.
pub const FACTOR: f64 = 1.0 + 1e-3;

#[cfg(feature = "fault-injection")]
static ACTIVE: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Whether `fault` is the one injected now (always false without `fault-injection`).
#[inline(always)]
pub fn active(fault: Fault) -> bool {
    #[cfg(feature = "fault-injection")]
    {
        ACTIVE.load(std::sync::atomic::Ordering::Relaxed) == fault as u8
    }
    #[cfg(not(feature = "fault-injection"))]
    {
        let _ = fault;
        false
    }
}

/// Injects `fault` (or none) for the whole process.
#[cfg(feature = "fault-injection")]
pub fn inject(fault: Option<Fault>) {
    ACTIVE.store(
        fault.map_or(0, |f| f as u8),
        std::sync::atomic::Ordering::Relaxed,
    );
}

/// Multiplies `values` by [`FACTOR`] when `fault` is injected.
#[inline(always)]
pub fn perturb_slice<T: Float>(fault: Fault, values: &mut [T]) {
    if active(fault) {
        values.iter_mut().for_each(|v| *v *= T::of_f64(FACTOR));
    }
}

/// Multiplies `t` by [`FACTOR`] when `fault` is injected.
#[inline(always)]
pub fn perturb<T: Float, D: ndarray::Dimension>(fault: Fault, t: &mut ndarray::Array<T, D>) {
    if active(fault) {
        t.mapv_inplace(|v| v * T::of_f64(FACTOR));
    }
}

/// `v` times [`FACTOR`] when `fault` is injected.
#[inline(always)]
pub fn factor<T: Float>(fault: Fault, v: T) -> T {
    if active(fault) {
        v * T::of_f64(FACTOR)
    } else {
        v
    }
}
