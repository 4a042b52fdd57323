//! Central finite differences, the ground truth every hand-written backward is tested against.
//!
//! Two stencils: the classic 2-point `(f(h) - f(-h)) / 2h` for element-wise gradients of small
//! layers, and the 4th-order 5-point stencil `(-f(2h) + 8f(h) - 8f(-h) + f(-2h)) / 12h` for
//! directional derivatives of a whole network, whose truncation error `O(h^4)` lets a step
//! small enough to avoid ReLU kinks still sit far above rounding noise.

use crate::tensor::{norm, Tensor};

/// Relative error `||a - b|| / max(||a||, ||b||)` (0 when both are 0).
pub fn rel_error(a: &Tensor, b: &Tensor) -> f64 {
    let diff = norm(&(a - b));
    let scale = norm(a).max(norm(b));
    if scale == 0.0 {
        diff
    } else {
        diff / scale
    }
}

/// Panics, naming `what` and the error, unless `rel_error(got, want) < tol`: the one
/// comparison every gradient test makes.
#[track_caller]
pub fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: f64) {
    assert_eq!(got.shape(), want.shape(), "{what}: shapes differ");
    let e = rel_error(got, want);
    assert!(
        e < tol,
        "{what}: relative error {e:.3e} is not below {tol:.0e}"
    );
}

/// Relative error of two scalars.
pub fn rel_error_scalar(a: f64, b: f64) -> f64 {
    let scale = a.abs().max(b.abs());
    if scale == 0.0 {
        0.0
    } else {
        (a - b).abs() / scale
    }
}

/// `d/dt f(t)` at 0 with the 5-point central stencil.
pub fn directional_derivative(f: impl Fn(f64) -> f64, h: f64) -> f64 {
    (-f(2.0 * h) + 8.0 * f(h) - 8.0 * f(-h) + f(-2.0 * h)) / (12.0 * h)
}

/// A derivative estimated from differences, with the estimate's own uncertainty.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Derivative {
    pub value: f64,
    /// How far the estimate can be trusted: the larger of the disagreement between the
    /// chosen estimate and its neighbours in the extrapolation table and the rounding noise
    /// of the differences it was built from (NaN or inf when it cannot be trusted at all).
    pub error: f64,
    /// Function evaluations spent.
    pub evaluations: usize,
}

/// One symmetric difference `f(h) - f(-h)`, with the size of the values it subtracts (their
/// rounding, about `2^-52` of that size each, is what the difference cannot resolve).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Difference {
    pub value: f64,
    pub magnitude: f64,
}

impl Difference {
    /// The difference of two scalars.
    pub fn of(plus: f64, minus: f64) -> Difference {
        Difference {
            value: plus - minus,
            magnitude: plus.abs().max(minus.abs()),
        }
    }
}

/// Ridders' method (Numerical Recipes, 3rd ed., Sec. 5.7): central differences at steps
/// `h, h/1.4, h/1.4^2, ...`, extrapolated to step 0 in a Neville table (each column removes
/// the next even power of `h` from the truncation error), returning the table entry whose
/// disagreement with its neighbours is smallest. `diff(h)` gives `f(h) - f(-h)`: a caller
/// that can subtract before reducing (two vectors, then one inner product) loses less to
/// rounding than two scalars would. The error is at least the rounding noise of the
/// smallest step used so far (8 ulps of the values subtracted, over `2h`). It stops when the
/// error is below `target` (after at least five steps), when going on makes the error grow
/// (rounding has taken over), or after 16 steps.
pub fn ridders(diff: impl Fn(f64) -> Difference, h: f64, target: f64) -> Derivative {
    const SHRINK: f64 = 1.4;
    const SHRINK2: f64 = SHRINK * SHRINK;
    const STEPS: usize = 16;
    const SAFE: f64 = 2.0;
    const MIN_STEPS: usize = 4;
    let central = |h: f64| {
        let d = diff(h);
        (
            d.value / (2.0 * h),
            8.0 * f64::EPSILON * d.magnitude / (2.0 * h),
        )
    };
    let mut table = [[0.0f64; STEPS]; STEPS];
    let mut hh = h;
    let (first, mut noise) = central(hh);
    table[0][0] = first;
    let mut best = Derivative {
        value: first,
        error: f64::INFINITY,
        evaluations: 2,
    };
    for i in 1..STEPS {
        hh /= SHRINK;
        let (d, n) = central(hh);
        table[0][i] = d;
        noise = noise.max(n);
        best.evaluations += 2;
        let mut fac = SHRINK2;
        for j in 1..=i {
            table[j][i] = (table[j - 1][i] * fac - table[j - 1][i - 1]) / (fac - 1.0);
            fac *= SHRINK2;
            let e = (table[j][i] - table[j - 1][i])
                .abs()
                .max((table[j][i] - table[j - 1][i - 1]).abs())
                .max(noise);
            if e <= best.error {
                best.error = e;
                best.value = table[j][i];
            }
        }
        // The target ends it only after five steps: over the first few the table's columns
        // can agree by chance while the step is still too large.
        if (table[i][i] - table[i - 1][i - 1]).abs() >= SAFE * best.error
            || (best.error <= target && i >= MIN_STEPS)
        {
            break;
        }
    }
    best
}

/// [`ridders`] from two first steps, `h` and `h / 3.7` (not a power of the shrink factor, so
/// the two tables share no step): the better estimate, with the two estimates' disagreement
/// folded into its error. One table's columns can agree by chance while its steps are still
/// too large; two tables agreeing by the same chance on the same wrong value is unlikely.
pub fn ridders_twice(diff: impl Fn(f64) -> Difference, h: f64, target: f64) -> Derivative {
    let a = ridders(&diff, h, target);
    let b = ridders(&diff, h / 3.7, target);
    let best = if a.error <= b.error { a } else { b };
    Derivative {
        value: best.value,
        error: best.error.max((a.value - b.value).abs()),
        evaluations: a.evaluations + b.evaluations,
    }
}

/// [`ridders_twice`] of a scalar function.
pub fn ridders_scalar(f: impl Fn(f64) -> f64, h: f64, target: f64) -> Derivative {
    ridders_twice(|h| Difference::of(f(h), f(-h)), h, target)
}

/// Element-wise gradient of `f` at `x` with the 2-point central stencil.
pub fn numerical_gradient(f: impl Fn(&Tensor) -> f64, x: &Tensor, h: f64) -> Tensor {
    let mut grad = Tensor::zeros(x.raw_dim());
    let mut probe = x.clone();
    for (i, g) in grad.iter_mut().enumerate() {
        let orig = x.as_slice().expect("standard layout")[i];
        probe.as_slice_mut().unwrap()[i] = orig + h;
        let plus = f(&probe);
        probe.as_slice_mut().unwrap()[i] = orig - h;
        let minus = f(&probe);
        probe.as_slice_mut().unwrap()[i] = orig;
        *g = (plus - minus) / (2.0 * h);
    }
    grad
}

/// A fixed non-linear test loss `E(y) = sum(a*y + 0.5*b*y^2)` with its gradient `a + b*y`.
/// A linear loss would let a wrong BatchNorm backward pass (its gradient of `sum(y)` is 0).
pub fn quadratic_loss(y: &Tensor, a: &Tensor, b: &Tensor) -> (f64, Tensor) {
    let e = y
        .iter()
        .zip(a.iter())
        .zip(b.iter())
        .fold(0.0, |acc, ((&y, &a), &b)| acc + a * y + 0.5 * b * y * y);
    let g = a + &(b * y);
    (e, g)
}

/// The finite-difference harness every layer test shares: the input gradient and every
/// parameter gradient of the non-linear test loss [`quadratic_loss`] (random `a`, `b` from
/// `seed`) against 2-point central differences with step `h`, each to relative error `tol`
/// (`assert_close`). `forward(layer, x)` is the layer's output; `backward(layer, x, grad_y,
/// grads)` returns the input gradient and accumulates the parameter gradients under the names
/// `visit(layer, f)` gives the parameters. The names it checks are returned.
#[allow(clippy::too_many_arguments)]
pub fn check_layer<L: Clone>(
    what: &str,
    layer: &L,
    x: &Tensor,
    h: f64,
    tol: f64,
    seed: u64,
    forward: impl Fn(&L, &Tensor) -> Tensor,
    backward: impl Fn(&L, &Tensor, &Tensor, &mut crate::grads::Grads) -> Tensor,
    visit: impl Fn(&mut L, &mut dyn FnMut(String, &mut Tensor)),
) -> Vec<String> {
    let y = forward(layer, x);
    let mut r = crate::rng::rng(seed);
    let a = crate::rng::gaussian(y.shape(), 1.0, &mut r);
    let b = crate::rng::gaussian(y.shape(), 1.0, &mut r);
    let loss = |l: &L, x: &Tensor| quadratic_loss(&forward(l, x), &a, &b).0;
    let mut grads = crate::grads::Grads::new();
    let gx = backward(layer, x, &quadratic_loss(&y, &a, &b).1, &mut grads);
    assert_close(
        &format!("{what}: grad_x"),
        &gx,
        &numerical_gradient(|x| loss(layer, x), x, h),
        tol,
    );
    let mut names = Vec::new();
    visit(&mut layer.clone(), &mut |name, p| {
        names.push((name, p.clone()))
    });
    for (name, value) in &names {
        // The loss as a function of this parameter alone.
        let of_param = |t: &Tensor| {
            let mut l = layer.clone();
            visit(&mut l, &mut |n, p| {
                if &n == name {
                    *p = t.clone();
                }
            });
            loss(&l, x)
        };
        let got = grads
            .get(name)
            .unwrap_or_else(|| panic!("{what}: no gradient for {name}"));
        assert_close(
            &format!("{what}: grad {name}"),
            got,
            &numerical_gradient(of_param, value, h),
            tol,
        );
    }
    names.into_iter().map(|(n, _)| n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_point_stencil_is_fourth_order() {
        // d/dt exp(3t) at 0 = 3.
        let d = directional_derivative(|t| (3.0 * t).exp(), 1e-3);
        assert!((d - 3.0).abs() < 1e-10, "{d}");
    }

    #[test]
    fn ridders_is_accurate_and_knows_it() {
        // d/dt exp(3t) at 0 = 3, from a step far too large for a plain difference.
        let d = ridders_scalar(|t| (3.0 * t).exp(), 0.5, 0.0);
        assert!((d.value - 3.0).abs() < 1e-12, "{d:?}");
        assert!(
            d.error < 1e-10 && d.error >= (d.value - 3.0).abs() / 10.0,
            "{d:?}"
        );
        // A target ends it early.
        let quick = ridders_scalar(|t| (3.0 * t).exp(), 0.5, 1e-3);
        assert!(quick.evaluations < d.evaluations, "{quick:?} {d:?}");
        // Noise the size of 1e-6 cannot be differenced to 1e-9: the error says so.
        let noisy = ridders_scalar(
            |t| t + 1e-6 * ((t * 1e9).sin() + (t * 3.7e8).cos()),
            1e-3,
            0.0,
        );
        // A value of 1e8 with a slope of 1: rounding alone (ulp 1.5e-8) bounds the estimate.
        let big = ridders_scalar(|t| 1e8 + t, 1e-3, 0.0);
        assert!(
            big.error >= 8.0 * f64::EPSILON * 1e8 / 2e-3 * 0.9,
            "{big:?}"
        );
        assert!(
            noisy.error >= (noisy.value - 1.0).abs() / 10.0,
            "the error covers the miss: {noisy:?}"
        );
    }

    #[test]
    fn rel_error_detects_difference() {
        let a = Tensor::from_elem(ndarray::IxDyn(&[3]), 1.0);
        let b = Tensor::from_elem(ndarray::IxDyn(&[3]), 1.1);
        assert!(rel_error(&a, &b) > 0.05);
        assert_eq!(rel_error(&a, &a), 0.0);
    }

    #[test]
    #[should_panic(expected = "grad: relative error")]
    fn assert_close_fails_on_a_difference() {
        let a = Tensor::from_elem(ndarray::IxDyn(&[3]), 1.0);
        let b = Tensor::from_elem(ndarray::IxDyn(&[3]), 1.0 + 1e-5);
        assert_close("grad", &a, &a, 1e-12);
        assert_close("grad", &a, &b, 1e-6);
    }

    /// `y = w x` elementwise: the harness passes its right gradients and catches a wrong one.
    #[derive(Clone)]
    struct Scale {
        w: Tensor,
    }

    fn check_scale(wrong: f64) {
        let x = crate::rng::gaussian(&[4, 3], 1.0, &mut crate::rng::rng(1));
        let layer = Scale {
            w: crate::rng::gaussian(&[4, 3], 1.0, &mut crate::rng::rng(2)),
        };
        check_layer(
            "scale",
            &layer,
            &x,
            1e-6,
            1e-6,
            3,
            |l, x| &l.w * x,
            |l, x, gy, g| {
                g.accumulate("s.w", gy * x * wrong);
                gy * &l.w
            },
            |l, f| f("s.w".into(), &mut l.w),
        );
    }

    #[test]
    fn check_layer_passes_right_gradients() {
        check_scale(1.0);
    }

    #[test]
    #[should_panic(expected = "scale: grad s.w")]
    fn check_layer_fails_on_a_wrong_parameter_gradient() {
        check_scale(1.001);
    }
}
