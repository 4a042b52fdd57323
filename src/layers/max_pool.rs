//! Max pooling `(N, C, H, W) -> (N, C, H', W')` over `k x k` windows with stride `s` and `p`
//! rows and columns of padding on each side that never win (`-inf`), as torchvision's ResNet
//! stems use it (k 3, s 2, p 1). `H' = (H + 2p - k) / s + 1`.
//!
//! Backward sends each output's gradient to the input that won its window (the first, in
//! row-major order, when several tie, as PyTorch does); where windows overlap, an input that
//! wins several collects the sum.

use ndarray::IxDyn;

use crate::float::Float;
use crate::kernels::im2col::out_size;
use crate::tensor::Tensor;

#[derive(Debug, Clone, PartialEq)]
pub struct MaxPool {
    pub name: String,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
}

/// Which input won each output's window (its flat index within its plane), and the input's
/// shape.
#[derive(Debug, Clone)]
pub struct MaxPoolCache {
    pub winners: Vec<u32>,
    pub in_shape: Vec<usize>,
}

impl MaxPool {
    /// The output's `(H', W')` for an input plane of `(h, w)`.
    pub fn out_hw(&self, h: usize, w: usize) -> (usize, usize) {
        (
            out_size(h, self.k, self.stride, self.pad),
            out_size(w, self.k, self.stride, self.pad),
        )
    }

    /// Takes the input by value: a standard-layout input is read in place, not copied.
    pub fn forward<T: Float>(&self, x: Tensor<T>) -> (Tensor<T>, MaxPoolCache) {
        let x = crate::tensor::into_standard_layout(x);
        let s = x.shape();
        let (n, c, h, w) = (s[0], s[1], s[2], s[3]);
        let (ho, wo) = self.out_hw(h, w);
        let xs = x.as_slice().expect("standard layout");
        let mut y = Vec::with_capacity(n * c * ho * wo);
        let mut winners = Vec::with_capacity(n * c * ho * wo);
        for plane in xs.chunks_exact(h * w) {
            for oi in 0..ho {
                for oj in 0..wo {
                    let (mut best, mut at) = (T::neg_infinity(), u32::MAX);
                    for di in 0..self.k {
                        let Some(i) = (oi * self.stride + di).checked_sub(self.pad) else {
                            continue;
                        };
                        if i >= h {
                            continue;
                        }
                        for dj in 0..self.k {
                            let Some(j) = (oj * self.stride + dj).checked_sub(self.pad) else {
                                continue;
                            };
                            if j >= w {
                                continue;
                            }
                            let v = plane[i * w + j];
                            // `>` keeps the first of equals; a NaN wins, so it is not hidden.
                            if at == u32::MAX || v > best || (v.is_nan() && !best.is_nan()) {
                                best = v;
                                at = (i * w + j) as u32;
                            }
                        }
                    }
                    y.push(best);
                    winners.push(at);
                }
            }
        }
        let y = Tensor::<T>::from_shape_vec(IxDyn(&[n, c, ho, wo]), y).expect("output shape");
        (
            y,
            MaxPoolCache {
                winners,
                in_shape: s.to_vec(),
            },
        )
    }

    pub fn backward<T: Float>(&self, cache: &MaxPoolCache, grad_y: Tensor<T>) -> Tensor<T> {
        let s = &cache.in_shape;
        let plane = s[2] * s[3];
        let g = crate::tensor::into_standard_layout(grad_y);
        let gs = g.as_slice().expect("standard layout");
        let per_plane = gs.len() / (s[0] * s[1]).max(1);
        let mut gx = vec![T::zero(); s.iter().product()];
        for (p, (gp, wp)) in gs
            .chunks_exact(per_plane.max(1))
            .zip(cache.winners.chunks_exact(per_plane.max(1)))
            .enumerate()
        {
            let out = &mut gx[p * plane..(p + 1) * plane];
            for (&gv, &at) in gp.iter().zip(wp) {
                if at != u32::MAX {
                    out[at as usize] += gv;
                }
            }
        }
        Tensor::<T>::from_shape_vec(IxDyn(s), gx).expect("input shape")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finite_diff::{assert_close, numerical_gradient, quadratic_loss};
    use crate::rng::{gaussian, rng};

    /// Relative error bound for central differences, h = 1e-6, f64: max pooling is linear
    /// where no two inputs of a window are within h of each other (Gaussian inputs).
    const TOL: f64 = 1e-6;

    #[test]
    fn max_pool_backward_matches_finite_differences() {
        for (k, stride, pad, h, w) in [(3, 2, 1, 7, 6), (2, 2, 0, 4, 4), (3, 1, 1, 5, 5)] {
            let pool = MaxPool {
                name: "p".into(),
                k,
                stride,
                pad,
            };
            let mut r = rng(5);
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
            assert_close(&format!("k {k} s {stride} p {pad}"), &gx, &num, TOL);
        }
    }

    #[test]
    fn the_maximum_of_each_window_and_the_first_of_ties() {
        let pool = MaxPool {
            name: "p".into(),
            k: 2,
            stride: 2,
            pad: 0,
        };
        let x = Tensor::from_shape_vec(
            IxDyn(&[1, 1, 2, 4]),
            vec![1.0, 5.0, 2.0, 2.0, 3.0, -1.0, 0.0, 2.0],
        )
        .unwrap();
        let (y, cache) = pool.forward(x.clone());
        assert_eq!(y.iter().copied().collect::<Vec<_>>(), [5.0, 2.0]);
        let g = pool.backward(&cache, Tensor::from_elem(IxDyn(&[1, 1, 1, 2]), 1.0));
        assert_eq!(
            g.iter().copied().collect::<Vec<_>>(),
            [0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
        );
    }
}
