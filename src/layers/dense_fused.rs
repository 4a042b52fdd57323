//! Dense layers fused with the BatchNorms around them, by column blocks.
//!
//! In a residual MLP each dense layer sits between BatchNorms. Output column `j` of `x W`
//! needs all of `x` but only column `j` of `W`, and a BatchNorm works column by column: its
//! statistics, its affine map and its backward are per channel. So one thread computes a
//! block of the GEMM's output columns and goes straight on to the BatchNorm of those columns
//! while they are in its cache; the other thread does the same with the other block. Each
//! fused op is one fork-join instead of two or three, and the BatchNorm passes read data the
//! same thread has just written instead of memory written by both.
//!
//! - [`forward_bn`]: `h = x W`, then `relu(BN(h))` (or `BN(h)`), statistics included;
//! - [`forward_then`]: `x W` and an [`Epilogue`] on each column block: a tensor added (a
//!   unit's last layer adding its identity shortcut) and the per-column statistics the next
//!   BatchNorm uses ([`Moments::Columns`]);
//! - [`backward_bn`]: backward through `BN(-ReLU)` then `W`: `grad_a = g W^T` and the
//!   BatchNorm's backward for the same columns (plus a tensor added, when given).
//!
//! The results are the bits of the separate layers. The ops apply only where the separate
//! layer's GEMM is itself cut into two column blocks ([`gemm_split`]), and they cut at the
//! same column, so each block is the very same kernel call; the BatchNorm helpers
//! (`column_stats`, `column_grad_sums`, the row kernels) are the ones the separate layer
//! runs. Cutting anywhere else is not safe: the kernel rounds a block of at most 256
//! elements differently (dot-product kernels), which a 16x32x32 product cut in two showed.
//! The tests below check each op against the layers it replaces on several shapes (W1's
//! among them, and inner dimensions longer than the kernel's depth block);
//! `tests/it/fusion.rs` checks whole networks. Smaller blocks handed out dynamically were
//! tried: slower on W1 (0.084 s against 0.079 s a step).

use std::mem::MaybeUninit;
use std::ops::Range;
use std::sync::Arc;

use ndarray::{s, Array2, ArrayView2, ArrayViewMut2, Axis, Ix2};

use super::batch_norm::{BatchNorm, BatchNormCache};
use super::dense::{Dense, DenseCache};
use super::relu::ReluCache;
use super::Mode;
use crate::fault::{self, Fault};
use crate::float::Float;
use crate::grads::Grads;
use crate::kernels::norm::{
    affine_row, column_grad_sums, column_stats, eval_grad_row, scales, train_grad_coefficients,
    train_grad_row, Affine, Moments,
};
use crate::kernels::Epilogue;
use crate::spin_join;
use crate::tensor::{gemm_split, matmul_uninit_view, Tensor};

/// Where the fused ops cut a product `(rows, k) · (k, n)`: the column at which the separate
/// layer's GEMM cuts it too ([`gemm_split`]), so each block is the very same kernel call;
/// `None` when that GEMM is not cut into column blocks (the fused ops then do not apply).
fn column_split(rows: usize, k: usize, n: usize) -> Option<usize> {
    match gemm_split(rows, k, n) {
        Some((Axis(1), mid)) => Some(mid),
        _ => None,
    }
}

/// Whether the fused ops handle a dense layer on an input of shape `in_shape`: no bias, a
/// 2-D input of the layer's width, a product the separate layer would cut into column blocks
/// (wider than the batch and large enough to split), and (for the BatchNorm fusions) a
/// BatchNorm of the layer's width that can normalise the batch. A function of the shapes
/// alone, so a plan can be made before any data is seen; anything else runs the layers one
/// by one.
pub fn applies<T: Float>(
    d: &Dense<T>,
    in_shape: &[usize],
    bn: Option<(&BatchNorm<T>, Mode)>,
) -> bool {
    let shape_ok = d.b.is_none()
        && in_shape.len() == 2
        && in_shape[1] == d.d_in()
        && d.w.is_standard_layout()
        && column_split(in_shape[0], d.d_in(), d.d_out()).is_some();
    match bn {
        None => shape_ok,
        Some((bn, mode)) => {
            shape_ok && bn.channels() == d.d_out() && (mode == Mode::Eval || in_shape[0] > 1)
        }
    }
}

/// Whether [`backward_bn`] handles these caches (2-D, standard layout, the shapes of a
/// dense layer after a BatchNorm of its input width), with the products cut as the separate
/// layers cut them: `g W^T` into column blocks and, for `weight_grads`, `x^T g` into row
/// blocks at the same channel. The output gradient is `(rows, d_out)`, rows from the cache.
pub fn backward_applies<T: Float>(
    d: &Dense<T>,
    d_cache: &DenseCache<T>,
    bn_cache: &BatchNormCache<T>,
    weight_grads: bool,
) -> bool {
    let two_d = |t: &Tensor<T>| t.ndim() == 2 && t.is_standard_layout();
    let rows = bn_cache.x.shape()[0];
    let mid = column_split(rows, d.d_out(), d.d_in());
    let weight_split_ok = !weight_grads
        || (mid.is_some() && gemm_split(d.d_in(), rows, d.d_out()) == mid.map(|m| (Axis(0), m)));
    mid.is_some()
        && weight_split_ok
        && d.b.is_none()
        && d.w.is_standard_layout()
        && d_cache
            .x
            .as_ref()
            .is_none_or(|x| two_d(x) && x.shape() == bn_cache.x.shape())
        && two_d(&bn_cache.x)
        && bn_cache.x.shape()[1] == d.d_in()
        && bn_cache.mean.len() == d.d_in()
}

/// The two column blocks of a product that [`column_split`] cuts.
fn halves(rows: usize, k: usize, n: usize) -> (Range<usize>, Range<usize>) {
    let mid =
        column_split(rows, k, n).expect("the fused ops apply only to products cut in columns");
    (0..mid, mid..n)
}

fn as_2d<T: Float>(t: &Tensor<T>) -> ArrayView2<'_, T> {
    t.view().into_dimensionality::<Ix2>().expect("a 2-D tensor")
}

/// `y = relu(BN(x W))` (or `BN(x W)` when `relu` is false), as [`Dense::forward`] then
/// [`BatchNorm::forward_relu`] give it, with their caches.
pub fn forward_bn<T: Float>(
    d: &Dense<T>,
    bn: &BatchNorm<T>,
    x: Tensor<T>,
    mode: Mode,
    relu: bool,
    keep_input: bool,
) -> (
    Tensor<T>,
    DenseCache<T>,
    BatchNormCache<T>,
    Option<ReluCache>,
) {
    // The kernels walk contiguous rows (a no-op for every tensor the engine makes).
    let x = crate::tensor::into_standard_layout(x);
    let (rows, n) = (x.shape()[0], d.d_out());
    let x2 = as_2d(&x);
    let w = as_2d(&d.w);
    let mut h = Array2::<T>::uninit((rows, n));
    let mut y = Array2::<T>::uninit((rows, n));
    // Written in full by the row kernels (not zero-filled first).
    let mut mask = Array2::<bool>::uninit(if relu { (rows, n) } else { (0, 0) });
    let (left, right) = halves(rows, d.d_in(), n);
    // One column block: its GEMM, its statistics, its normalisation. Returns the block's
    // (mean, variance used, inverse standard deviation).
    let block = |cols: Range<usize>,
                 h: ArrayViewMut2<MaybeUninit<T>>,
                 mut y: ArrayViewMut2<MaybeUninit<T>>,
                 mut mask: ArrayViewMut2<MaybeUninit<bool>>| {
        let h = matmul_uninit_view(h, &x2, &w.slice(s![.., cols.clone()]));
        let (mean, var) = match mode {
            Mode::Train => column_stats(h.view()),
            Mode::Eval => (
                bn.running_mean.as_slice().unwrap()[cols.clone()].to_vec(),
                bn.running_var.as_slice().unwrap()[cols.clone()].to_vec(),
            ),
        };
        let inv_std = bn.inv_std(&var);
        let Affine { a, b } = bn.affine_from(cols.start, &mean, &inv_std);
        for (r, h_row) in h.rows().into_iter().enumerate() {
            let mut y_row = y.row_mut(r);
            let out = y_row.as_slice_mut().expect("rows are contiguous");
            let src = h_row.to_slice().expect("rows are contiguous");
            if relu {
                let mut m_row = mask.row_mut(r);
                affine_row(out, src, m_row.as_slice_mut().unwrap(), &a, &b);
            } else {
                affine_row(out, src, &mut [], &a, &b);
            }
        }
        (mean, var, inv_std)
    };
    let (h0, h1) = h.view_mut().split_at(Axis(1), left.end);
    let (y0, y1) = y.view_mut().split_at(Axis(1), left.end);
    let (m0, m1) = if relu {
        mask.view_mut().split_at(Axis(1), left.end)
    } else {
        (
            mask.view_mut(),
            ArrayViewMut2::from_shape((0, 0), &mut []).unwrap(),
        )
    };
    let (mut out0, mut out1) = (None, None);
    spin_join::join(
        || out0 = Some(block(left, h0, y0, m0)),
        || out1 = Some(block(right, h1, y1, m1)),
    );
    let ((mut mean, mut var, mut inv_std), (mean1, var1, inv_std1)) =
        (out0.unwrap(), out1.unwrap());
    mean.extend(mean1);
    var.extend(var1);
    inv_std.extend(inv_std1);
    // SAFETY: the two blocks cover every column; each block's GEMM wrote all of its part of
    // `h` and each row kernel all of its part of `y` (and of the mask, with `relu`; without
    // it the mask is empty).
    let (h, y, mask) = unsafe { (h.assume_init(), y.assume_init(), mask.assume_init()) };
    let cache = BatchNormCache {
        mode,
        x: Arc::new(h.into_dyn()),
        mean,
        inv_std,
        batch_var: if mode == Mode::Train { var } else { Vec::new() },
        count: rows,
    };
    let relu_cache = relu.then(|| ReluCache {
        positive: mask.into_dyn(),
    });
    let x = keep_input.then_some(x);
    (y.into_dyn(), DenseCache { x }, cache, relu_cache)
}

/// `y = x W`, then the epilogue: `y += add` and the per-column statistics of `y` when asked
/// (a training-mode BatchNorm reads `y` next); the bits of [`Dense::forward`] then the
/// addition and the BatchNorm's own statistics pass.
pub fn forward_then<T: Float>(
    d: &Dense<T>,
    x: Tensor<T>,
    epilogue: Epilogue<'_, T>,
    keep_input: bool,
) -> (Tensor<T>, DenseCache<T>, Option<Moments<T>>) {
    let x = crate::tensor::into_standard_layout(x);
    let (rows, n) = (x.shape()[0], d.d_out());
    if let Some(r) = epilogue.add {
        assert_eq!(r.shape(), [rows, n], "{}: epilogue tensor's shape", d.name);
    }
    let x2 = as_2d(&x);
    let w = as_2d(&d.w);
    let r = epilogue.add.map(as_2d);
    let mut y = Array2::<T>::uninit((rows, n));
    let (left, right) = halves(rows, d.d_in(), n);
    let block = |cols: Range<usize>, y: ArrayViewMut2<MaybeUninit<T>>| {
        let mut y = matmul_uninit_view(y, &x2, &w.slice(s![.., cols.clone()]));
        if let Some(r) = &r {
            y += &r.slice(s![.., cols]);
        }
        epilogue.moments.then(|| column_stats(y.view()))
    };
    let (y0, y1) = y.view_mut().split_at(Axis(1), left.end);
    let (mut out0, mut out1) = (None, None);
    spin_join::join(
        || out0 = Some(block(left, y0)),
        || out1 = Some(block(right, y1)),
    );
    // SAFETY: the two blocks' GEMMs wrote every element.
    let y = unsafe { y.assume_init() };
    let moments = match (out0.unwrap(), out1.unwrap()) {
        (Some((mut mean, mut var)), Some((mean1, var1))) => {
            mean.extend(mean1);
            var.extend(var1);
            Some(Moments::Columns { mean, var })
        }
        _ => None,
    };
    let x = keep_input.then_some(x);
    (y.into_dyn(), DenseCache { x }, moments)
}

/// Backward through `BN(-ReLU)` then `W` (the forward order `x -> BN -> ReLU -> W`), from
/// the gradient `g` of the dense output: as [`Dense::backward`] then
/// [`BatchNorm::backward_relu`] give it, plus `add` added to the result. Accumulates the
/// weight, gamma and beta gradients when `grads` is given.
#[allow(clippy::too_many_arguments)]
pub fn backward_bn<T: Float>(
    bn: &BatchNorm<T>,
    bn_cache: &BatchNormCache<T>,
    relu: Option<&ReluCache>,
    d: &Dense<T>,
    d_cache: &DenseCache<T>,
    g: &Tensor<T>,
    grads: Option<&mut Grads<T>>,
    add: Option<&Tensor<T>>,
) -> Tensor<T> {
    let (rows, c) = (g.shape()[0], d.d_in());
    assert_eq!(
        g.shape(),
        [bn_cache.x.shape()[0], d.d_out()],
        "{}: output gradient",
        d.name
    );
    let g = g.as_standard_layout();
    let g2 = g.view().into_dimensionality::<Ix2>().expect("a 2-D tensor");
    let w = as_2d(&d.w);
    let x = as_2d(&bn_cache.x);
    let a = match (&grads, &d_cache.x) {
        (Some(_), None) => panic!("{}: {}", d.name, super::dense::NO_INPUT),
        (_, x) => x.as_ref().map(as_2d),
    };
    let mask = relu.map(|r| {
        r.positive
            .view()
            .into_dimensionality::<Ix2>()
            .expect("a 2-D mask")
    });
    let r = add.map(as_2d);
    let weight_grads = grads.is_some();
    let need_sums = bn_cache.mode == Mode::Train || weight_grads;
    let m = T::of_f64(bn_cache.count as f64);
    let gamma = bn.gamma.as_slice().unwrap();
    let (mean, inv_std) = (&bn_cache.mean, &bn_cache.inv_std);
    let mut gx = Array2::<T>::uninit((rows, c));
    let mut gw = Array2::<T>::uninit(if weight_grads { (c, d.d_out()) } else { (0, 0) });
    let (left, right) = halves(rows, d.d_out(), c);
    // One block of the BatchNorm's channels (rows of W): its part of `g W^T` and of the weight
    // gradient, then the BatchNorm backward of those channels. Returns (grad_beta, sum_gx).
    let block = |cols: Range<usize>,
                 gx: ArrayViewMut2<MaybeUninit<T>>,
                 gw: Option<ArrayViewMut2<MaybeUninit<T>>>| {
        let mut gx = matmul_uninit_view(gx, &g2, &w.slice(s![cols.clone(), ..]).t());
        if fault::active(Fault::DenseInputGrad) {
            gx.mapv_inplace(|v| v * T::of_f64(fault::FACTOR));
        }
        if let (Some(gw), Some(a)) = (gw, &a) {
            let mut gw = matmul_uninit_view(gw, &a.slice(s![.., cols.clone()]).t(), &g2);
            if fault::active(Fault::DenseWeightGrad) {
                gw.mapv_inplace(|v| v * T::of_f64(fault::FACTOR));
            }
        }
        let x = x.slice(s![.., cols.clone()]);
        let mask = mask.as_ref().map(|mk| mk.slice(s![.., cols.clone()]));
        let mean = &mean[cols.clone()];
        let sums = if need_sums {
            column_grad_sums(gx.view(), x, mask, mean)
        } else {
            (Vec::new(), Vec::new())
        };
        let inv_std = &inv_std[cols.clone()];
        let mut scale = scales(&gamma[cols.clone()], inv_std);
        if bn_cache.mode == Mode::Eval {
            fault::perturb_slice(Fault::BnEvalScale, &mut scale);
        }
        let coefficients = (bn_cache.mode == Mode::Train)
            .then(|| train_grad_coefficients(&scale, inv_std, &sums.0, &sums.1, m));
        for (row, mut g_row) in gx.rows_mut().into_iter().enumerate() {
            let g_row = g_row.as_slice_mut().expect("rows are contiguous");
            let x_row = x.row(row);
            let x_row = x_row.to_slice().expect("rows are contiguous");
            let m_row = mask.as_ref().map(|mk| mk.row(row));
            let m_row = m_row.as_ref().map(|mk| mk.to_slice().unwrap());
            match &coefficients {
                Some((c1, c2)) => train_grad_row(g_row, x_row, m_row, [&scale, c1, c2, mean]),
                None => eval_grad_row(g_row, m_row, &scale),
            }
            if let Some(r) = &r {
                let r_row = r.slice(s![row, cols.clone()]);
                g_row
                    .iter_mut()
                    .zip(r_row.to_slice().unwrap())
                    .for_each(|(g, &r)| *g += r);
            }
        }
        sums
    };
    let (gx0, gx1) = gx.view_mut().split_at(Axis(1), left.end);
    let (gw0, gw1) = if weight_grads {
        let (w0, w1) = gw.view_mut().split_at(Axis(0), left.end);
        (Some(w0), Some(w1))
    } else {
        (None, None)
    };
    let (mut out0, mut out1) = (None, None);
    spin_join::join(
        || out0 = Some(block(left, gx0, gw0)),
        || out1 = Some(block(right, gx1, gw1)),
    );
    let ((mut grad_beta, mut sum_gx), (beta1, sum1)) = (out0.unwrap(), out1.unwrap());
    grad_beta.extend(beta1);
    sum_gx.extend(sum1);
    if let Some(grads) = grads {
        // SAFETY: the two row blocks of the weight gradient were written by their GEMMs.
        let gw = unsafe { gw.assume_init() };
        grads.accumulate(&format!("{}.w", d.name), gw.into_dyn());
        let grad_gamma: Vec<T> = sum_gx.iter().zip(inv_std).map(|(&s, &i)| s * i).collect();
        bn.accumulate_affine_grads(grads, grad_gamma, grad_beta);
    }
    // SAFETY: the two column blocks' GEMMs wrote every element of `gx`.
    unsafe { gx.assume_init() }.into_dyn()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finite_diff::{
        assert_close, directional_derivative, numerical_gradient, quadratic_loss, rel_error_scalar,
    };
    use crate::layers::batch_norm::tests::layer_with_random_affine;
    use crate::rng::{gaussian, rng};
    use crate::tensor::{add_assign, dot};

    fn same_bits(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
    }

    /// The separate layers' forward pass: BatchNorm, then ReLU when `relu`.
    fn bn_then_relu(
        bn: &BatchNorm,
        x: Tensor,
        mode: Mode,
        relu: bool,
    ) -> (Tensor, BatchNormCache, Option<ReluCache>) {
        if relu {
            let (y, c, r) = bn.forward_relu(x, mode);
            (y, c, Some(r))
        } else {
            let (y, c) = bn.forward(x, mode);
            (y, c, None)
        }
    }

    fn t_bits(a: &Tensor, b: &Tensor) -> bool {
        a.shape() == b.shape() && same_bits(a.as_slice().unwrap(), b.as_slice().unwrap())
    }

    /// `(rows, d_in, d_out)` where the fused ops apply: uneven halves (152 -> 72 + 80, 200 ->
    /// 96 + 104), inner dimensions longer than the kernel's depth block (520, 264), and W1's
    /// layer.
    const CASES: [(usize, usize, usize); 5] = [
        (64, 128, 128),
        (48, 96, 72),
        (100, 200, 152),
        (24, 520, 264),
        (128, 256, 256),
    ];

    #[test]
    fn small_products_run_unfused() {
        // Below the size at which the separate layer splits its GEMM, a split could round
        // differently (the kernel switches to dot-product kernels for small blocks).
        let mut r = rng(2);
        let d = Dense::with_std("d", 32, 32, 0.4, None, &mut r);
        let bn = layer_with_random_affine(32, 3);
        let x = gaussian(&[16, 32], 1.0, &mut r);
        assert!(!applies(&d, x.shape(), Some((&bn, Mode::Train))));
        // Batch wider than the layer: the separate GEMM splits rows, not columns.
        let d = Dense::with_std("d", 64, 64, 0.4, None, &mut r);
        let x = gaussian(&[256, 64], 1.0, &mut r);
        assert!(!applies(&d, x.shape(), None));
    }

    #[test]
    fn forward_bn_equals_dense_then_batch_norm_bit_for_bit() {
        for (rows, d_in, d_out) in CASES {
            for mode in [Mode::Train, Mode::Eval] {
                for relu in [true, false] {
                    let mut r = rng(3);
                    let d = Dense::with_std("d", d_in, d_out, 0.4, None, &mut r);
                    let bn = layer_with_random_affine(d_out, 4);
                    let x = gaussian(&[rows, d_in], 1.0, &mut r);
                    assert!(applies(&d, x.shape(), Some((&bn, mode))));
                    let (y, dc, bc, rc) = forward_bn(&d, &bn, x.clone(), mode, relu, true);
                    let (h, dc_ref) = d.forward(x);
                    let (y_ref, bc_ref, rc_ref) = bn_then_relu(&bn, h, mode, relu);
                    assert!(t_bits(&y, &y_ref), "output, {mode:?} relu {relu}");
                    assert!(t_bits(dc.x.as_ref().unwrap(), dc_ref.x.as_ref().unwrap()));
                    assert!(t_bits(&bc.x, &bc_ref.x), "BN input");
                    assert!(same_bits(&bc.mean, &bc_ref.mean));
                    assert!(same_bits(&bc.inv_std, &bc_ref.inv_std));
                    assert!(same_bits(&bc.batch_var, &bc_ref.batch_var));
                    assert_eq!(bc.count, bc_ref.count);
                    assert_eq!(rc.map(|r| r.positive), rc_ref.map(|r| r.positive), "mask");
                }
            }
        }
    }

    #[test]
    fn forward_then_equals_dense_then_addition_and_its_statistics_match() {
        for (rows, d_in, d_out) in CASES {
            let mut r = rng(5);
            let d = Dense::with_std("d", d_in, d_out, 0.4, None, &mut r);
            let x = gaussian(&[rows, d_in], 1.0, &mut r);
            let res = gaussian(&[rows, d_out], 1.0, &mut r);
            let epilogue = Epilogue {
                add: Some(&res),
                moments: true,
            };
            let (y, _, moments) = forward_then(&d, x.clone(), epilogue, true);
            let (mut y_ref, _) = d.forward(x);
            add_assign(&mut y_ref, &res);
            assert!(t_bits(&y, &y_ref));
            // The next BatchNorm gives the same bits with the handed-over statistics as with
            // its own pass.
            let bn = layer_with_random_affine(d_out, 6);
            let shared = Arc::new(y);
            let (a, ca, _) = bn.forward_shared(Arc::clone(&shared), Mode::Train, true, None);
            let (b, cb, _) = bn.forward_shared(shared, Mode::Train, true, moments.as_ref());
            assert!(t_bits(&a, &b));
            assert!(same_bits(&ca.batch_var, &cb.batch_var));
        }
    }

    #[test]
    fn backward_bn_equals_dense_then_batch_norm_backward_bit_for_bit() {
        for (rows, d_in, d_out) in CASES {
            for mode in [Mode::Train, Mode::Eval] {
                for relu in [true, false] {
                    for with_grads in [true, false] {
                        let mut r = rng(7);
                        // Forward order: x -> BN -> (ReLU) -> W.
                        let bn = layer_with_random_affine(d_in, 8);
                        let d = Dense::with_std("d", d_in, d_out, 0.4, None, &mut r);
                        let x = gaussian(&[rows, d_in], 1.0, &mut r);
                        let (a, bc, rc) = bn_then_relu(&bn, x, mode, relu);
                        let (_, dc) = d.forward(a);
                        let g = gaussian(&[rows, d_out], 1.0, &mut r);
                        let res = gaussian(&[rows, d_in], 1.0, &mut r);

                        assert!(backward_applies(&d, &dc, &bc, with_grads));
                        let mut grads = Grads::new();
                        let gx = backward_bn(
                            &bn,
                            &bc,
                            rc.as_ref(),
                            &d,
                            &dc,
                            &g,
                            with_grads.then_some(&mut grads),
                            Some(&res),
                        );
                        let mut grads_ref = Grads::new();
                        let ga = d.backward(&dc, &g, with_grads.then_some(&mut grads_ref));
                        let mut gx_ref = match &rc {
                            Some(rc) => {
                                bn.backward_relu(&bc, rc, ga, with_grads.then_some(&mut grads_ref))
                            }
                            None => bn.backward(&bc, ga, with_grads.then_some(&mut grads_ref)),
                        };
                        add_assign(&mut gx_ref, &res);
                        assert!(t_bits(&gx, &gx_ref), "{mode:?} relu {relu}");
                        let names: Vec<_> = grads.iter().map(|(n, _)| n.clone()).collect();
                        let names_ref: Vec<_> = grads_ref.iter().map(|(n, _)| n.clone()).collect();
                        assert_eq!(names, names_ref);
                        for (name, g) in grads.iter() {
                            assert!(t_bits(g, grads_ref.get(name).unwrap()), "{name}");
                        }
                    }
                }
            }
        }
    }

    /// The fused forward and backward against central differences, in training mode with the
    /// ReLU: the input gradient element by element, the weight, gamma and beta gradients
    /// along random directions. The smallest kind of shape the fused ops apply to (8 rows,
    /// 256 -> 128). Bound for 2-point differences with h = 1e-6 in f64: 1e-6 relative.
    #[test]
    fn fused_backward_matches_finite_differences() {
        const TOL: f64 = 1e-6;
        let (rows, d_in, d_out) = (8, 256, 128);
        let mut r = rng(21);
        // x -> BN -> ReLU -> W -> BN2 -> ReLU: both fused ops in the chain.
        let bn = layer_with_random_affine(d_in, 22);
        let d = Dense::with_std("d", d_in, d_out, 0.1, None, &mut r);
        let mut bn2 = layer_with_random_affine(d_out, 23);
        bn2.name = "bn2".into();
        let x = gaussian(&[rows, d_in], 1.0, &mut r);
        let (a, b) = (
            gaussian(&[rows, d_out], 1.0, &mut r),
            gaussian(&[rows, d_out], 1.0, &mut r),
        );
        let run = |x: &Tensor, d: &Dense, bn: &BatchNorm, bn2: &BatchNorm| {
            let (act, bc, rc) = bn.forward_relu(x.clone(), Mode::Train);
            assert!(applies(d, act.shape(), Some((bn2, Mode::Train))));
            let (y, dc, bc2, rc2) = forward_bn(d, bn2, act, Mode::Train, true, true);
            (y, bc, rc, dc, bc2, rc2.unwrap())
        };
        let loss = |x: &Tensor, d: &Dense, bn: &BatchNorm| {
            quadratic_loss(&run(x, d, bn, &bn2).0, &a, &b).0
        };
        let (y, bc, rc, dc, bc2, rc2) = run(&x, &d, &bn, &bn2);
        let gy = quadratic_loss(&y, &a, &b).1;
        let mut grads = Grads::new();
        let g_h = bn2.backward_relu(&bc2, &rc2, gy, Some(&mut grads));
        assert!(backward_applies(&d, &dc, &bc, true));
        let gx = backward_bn(&bn, &bc, Some(&rc), &d, &dc, &g_h, Some(&mut grads), None);

        let num = numerical_gradient(|x| loss(x, &d, &bn), &x, 1e-6);
        assert_close("dE/dx", &gx, &num, TOL);

        let along = |name: &str, value: &Tensor, perturbed: &dyn Fn(&Tensor) -> f64| {
            let v = gaussian(value.shape(), 1.0, &mut rng(24));
            let analytic = dot(grads.get(name).unwrap(), &v);
            let fd = directional_derivative(
                |t| {
                    let mut p = value.clone();
                    p.scaled_add(t, &v);
                    perturbed(&p)
                },
                1e-6,
            );
            let err = rel_error_scalar(analytic, fd);
            assert!(err < TOL, "{name}: {err}");
        };
        along("d.w", &d.w, &|w| {
            let mut d = d.clone();
            d.w = w.clone();
            loss(&x, &d, &bn)
        });
        along("bn.gamma", &bn.gamma, &|g| {
            let mut bn = bn.clone();
            bn.gamma = g.clone();
            loss(&x, &d, &bn)
        });
        along("bn.beta", &bn.beta, &|b| {
            let mut bn = bn.clone();
            bn.beta = b.clone();
            loss(&x, &d, &bn)
        });
    }
}
