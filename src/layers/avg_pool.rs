//! Average pooling `(N, C, H, W) -> (N, C, H', W')` over `k x k` windows with stride `s` and
//! `p` rows and columns of zero padding on each side, `H' = (H + 2p - k) / s + 1` (no ceil
//! mode). Each output is its window's sum over a count: all `k^2` places when the padding
//! counts (`count_include_pad`, PyTorch's default), only the places on the input otherwise
//! (ONNX's default), so that a border window then averages fewer values.
//!
//! ```text
//! forward:  y[o] = sum_{i in window(o)} x[i] / count(o)
//! backward: dE/dx[i] = sum_{o : i in window(o)} g[o] / count(o)
//! ```
//!
//! The map is linear and its counts depend on the shape alone, so the cache is the input's
//! shape.

use std::ops::Range;

use ndarray::IxDyn;

use crate::float::Float;
use crate::kernels::im2col::out_size;
use crate::tensor::Tensor;

#[derive(Debug, Clone, PartialEq)]
pub struct AvgPool {
    pub name: String,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    /// Whether the padding's zeros count in each window's divisor.
    pub count_include_pad: bool,
}

/// The input's shape `(N, C, H, W)`.
#[derive(Debug, Clone)]
pub struct AvgPoolCache {
    pub in_shape: Vec<usize>,
}

/// The input rows (or columns) that output row `o` averages on an input of `n` rows: its
/// window, clipped to the input (the rest of the window is padding).
fn window(o: usize, k: usize, stride: usize, pad: usize, n: usize) -> Range<usize> {
    let start = o * stride;
    start.saturating_sub(pad).min(n)..(start + k).saturating_sub(pad).min(n)
}

/// What a window of `rows x cols` input places is divided by: `k^2` when the padding counts
/// (without ceil mode no window reaches past the padding), else the places on the input.
fn divisor<T: Float>(
    rows: &Range<usize>,
    cols: &Range<usize>,
    k: usize,
    count_include_pad: bool,
) -> T {
    if count_include_pad {
        T::of_f64((k * k) as f64)
    } else {
        T::of_f64((rows.len() * cols.len()) as f64)
    }
}

impl AvgPool {
    /// The output's `(H', W')` for an input plane of `(h, w)`.
    pub fn out_hw(&self, h: usize, w: usize) -> (usize, usize) {
        (
            out_size(h, self.k, self.stride, self.pad),
            out_size(w, self.k, self.stride, self.pad),
        )
    }

    /// Calls `f(out, rows, cols, divisor)` for each output place of an `h x w` plane, `out`
    /// its flat index in the output plane.
    fn for_each_window<T: Float>(
        &self,
        h: usize,
        w: usize,
        mut f: impl FnMut(usize, Range<usize>, Range<usize>, T),
    ) {
        let (ho, wo) = self.out_hw(h, w);
        for oi in 0..ho {
            let rows = window(oi, self.k, self.stride, self.pad, h);
            for oj in 0..wo {
                let cols = window(oj, self.k, self.stride, self.pad, w);
                let d = divisor(&rows, &cols, self.k, self.count_include_pad);
                f(oi * wo + oj, rows.clone(), cols, d);
            }
        }
    }

    /// Reads a standard-layout input in place.
    pub fn forward<T: Float>(&self, x: Tensor<T>) -> (Tensor<T>, AvgPoolCache) {
        let x = crate::tensor::into_standard_layout(x);
        let s = x.shape().to_vec();
        let (h, w) = (s[2], s[3]);
        let (ho, wo) = self.out_hw(h, w);
        let xs = x.as_slice().expect("standard layout");
        let mut y = vec![T::zero(); s[0] * s[1] * ho * wo];
        for (plane, out) in xs.chunks_exact(h * w).zip(y.chunks_exact_mut(ho * wo)) {
            self.for_each_window(h, w, |o, rows, cols, d| {
                let sum: T = rows
                    .map(|i| {
                        plane[i * w + cols.start..i * w + cols.end]
                            .iter()
                            .sum::<T>()
                    })
                    .sum();
                out[o] = sum / d;
            });
        }
        let y = Tensor::<T>::from_shape_vec(IxDyn(&[s[0], s[1], ho, wo]), y).expect("output shape");
        (y, AvgPoolCache { in_shape: s })
    }

    pub fn backward<T: Float>(&self, cache: &AvgPoolCache, grad_y: Tensor<T>) -> Tensor<T> {
        let s = &cache.in_shape;
        let (h, w) = (s[2], s[3]);
        let (ho, wo) = self.out_hw(h, w);
        let g = crate::tensor::into_standard_layout(grad_y);
        let gs = g.as_slice().expect("standard layout");
        let mut gx = vec![T::zero(); s.iter().product()];
        for (gp, out) in gs.chunks_exact(ho * wo).zip(gx.chunks_exact_mut(h * w)) {
            self.for_each_window(h, w, |o, rows, cols, d| {
                let share = gp[o] / d;
                for i in rows {
                    for v in &mut out[i * w + cols.start..i * w + cols.end] {
                        *v += share;
                    }
                }
            });
        }
        Tensor::<T>::from_shape_vec(IxDyn(s), gx).expect("input shape")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finite_diff::{assert_close, numerical_gradient, quadratic_loss};
    use crate::rng::{gaussian, rng};

    /// Relative error bound for central differences, h = 1e-6, f64: average pooling is
    /// linear, so the differences are exact up to rounding (the quadratic test loss's second
    /// derivative cancels in the central stencil).
    const TOL: f64 = 1e-6;

    #[test]
    fn avg_pool_backward_matches_finite_differences() {
        for (k, stride, pad, h, w) in [
            (3, 2, 1, 7, 6),
            (2, 2, 0, 4, 4),
            (3, 1, 1, 5, 5),
            (2, 1, 1, 3, 4),
            (3, 3, 0, 6, 7),
        ] {
            for count_include_pad in [false, true] {
                let pool = AvgPool {
                    name: "p".into(),
                    k,
                    stride,
                    pad,
                    count_include_pad,
                };
                let mut r = rng(6);
                let x = gaussian(&[2, 3, h, w], 1.0, &mut r);
                let (y, cache) = pool.forward(x.clone());
                let (ho, wo) = pool.out_hw(h, w);
                assert_eq!(y.shape(), &[2, 3, ho, wo]);
                let (a, b) = (
                    gaussian(y.shape(), 1.0, &mut r),
                    gaussian(y.shape(), 1.0, &mut r),
                );
                let gx = pool.backward(&cache, quadratic_loss(&y, &a, &b).1);
                let num = numerical_gradient(
                    |x| quadratic_loss(&pool.forward(x.clone()).0, &a, &b).0,
                    &x,
                    1e-6,
                );
                assert_close(
                    &format!("k {k} s {stride} p {pad} count_include_pad {count_include_pad}"),
                    &gx,
                    &num,
                    TOL,
                );
            }
        }
    }

    /// A corner window of a padded 2x2 pooling holds one input: divided by 1 when the
    /// padding does not count, by 4 when it does.
    #[test]
    fn border_windows_divide_by_their_count_or_by_k_squared() {
        let x = Tensor::from_shape_vec(IxDyn(&[1, 1, 2, 2]), vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        for (count_include_pad, want) in [
            (false, [1.0, 1.5, 2.0, 2.0, 2.5, 3.0, 3.0, 3.5, 4.0]),
            (true, [0.25, 0.75, 0.5, 1.0, 2.5, 1.5, 0.75, 1.75, 1.0]),
        ] {
            let pool = AvgPool {
                name: "p".into(),
                k: 2,
                stride: 1,
                pad: 1,
                count_include_pad,
            };
            let (y, cache) = pool.forward(x.clone());
            assert_eq!(y.shape(), &[1, 1, 3, 3]);
            assert_eq!(y.iter().copied().collect::<Vec<_>>(), want);
            // Each input is in four windows; with the padding counted each gives it 1/4.
            let g = pool.backward(&cache, Tensor::from_elem(IxDyn(&[1, 1, 3, 3]), 1.0));
            if count_include_pad {
                assert!(g.iter().all(|&v| v == 1.0), "{g}");
            }
        }
    }
}
