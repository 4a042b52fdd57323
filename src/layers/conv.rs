//! 2-D convolution, NCHW: `x: (N, C_in, H, W)`, `w: (C_out, C_in, k, k)`, stride `s`, zero
//! padding `p`, optional bias; `H_out = (H + 2p - k) / s + 1`.
//!
//! Per sample, with `cols = im2col(x_n): (C_in k k, H_out W_out)` and `W2 = w` viewed as
//! `(C_out, C_in k k)`:
//!
//! ```text
//! forward:  y_n      = W2 · cols
//! backward: grad_x_n = col2im(W2^T · grad_y_n)
//!           grad_W2 += grad_y_n · cols^T,   grad_b += sum_{h,w} grad_y_n
//! ```
//!
//! A 1x1 convolution with stride 1 needs no im2col: `cols` is `x_n` itself. Samples run in
//! parallel (each GEMM on one thread: one level of parallelism); weight gradients are summed
//! over fixed chunks of samples and the chunks added in order, so the bits do not depend on
//! the thread count.

use ndarray::{Array2, ArrayView2, ArrayViewMut2, Ix4, IxDyn};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::fault::{self, Fault};
use crate::grads::Grads;
use crate::kernels::im2col::{col2im_into, im2col, Geometry};
use crate::kernels::norm::Moments;
use crate::kernels::{Epilogue, Prologue};
use crate::rng::gaussian;
use std::mem::MaybeUninit;

use crate::float::Float;
use crate::tensor::{
    matmul_into_serial, matmul_uninit_serial, with_scratch, with_scratch3, Tensor,
};

/// Samples per weight-gradient partial sum (fixed, so the summation order is too).
const GRAD_CHUNK: usize = 4;

/// Columns a convolution's GEMM should have at least: small feature maps (the last stages,
/// 8x8 inputs) put this many samples' pixels side by side in one product instead of running
/// one thin GEMM per sample (a 2x2 map gives products 4 columns wide, where the kernel's
/// edge cases and its packing of the weights per call dominate).
const GROUP_COLUMNS: usize = 256;

/// Samples per GEMM for an output of `hw_out` pixels: a function of the shape alone, so the
/// summation order (and every bit) never depends on the thread count. 1 for maps of 16x16
/// and more, which keep the one-GEMM-per-sample path.
fn group_size(hw_out: usize) -> usize {
    (GROUP_COLUMNS / hw_out.max(1)).max(1)
}

/// `(size, c, hw)` samples -> `(c, size hw)`: sample `s`'s plane `c` to row `c`, columns
/// `s hw ..`.
fn gather_samples<T: Float>(src: &[T], c: usize, hw: usize, dst: &mut [T]) {
    let size = src.len() / (c * hw);
    let pitch = size * hw;
    for (s, sample) in src.chunks_exact(c * hw).enumerate() {
        for (ci, plane) in sample.chunks_exact(hw).enumerate() {
            dst[ci * pitch + s * hw..][..hw].copy_from_slice(plane);
        }
    }
}

#[derive(Debug, Clone)]
pub struct Conv2d<T: Float = f64> {
    pub name: String,
    /// (C_out, C_in, k, k)
    pub w: Tensor<T>,
    /// (C_out), when the layer has a bias (the gate's 1x1 convolution).
    pub b: Option<Tensor<T>>,
    pub stride: usize,
    pub pad: usize,
}

/// The input: im2col is recomputed in backward rather than kept (memory matters more than
/// the copy for ResNet-1001).
#[derive(Debug, Clone)]
pub struct ConvCache<T: Float = f64> {
    /// (N, C_in, H, W)
    pub x: Tensor<T>,
}

pub use crate::kernels::im2col::out_size;

impl Conv2d {
    /// He initialisation on fan-out, `w ~ N(0, 2 / (k k C_out))`, as in the paper's code.
    #[allow(clippy::too_many_arguments)]
    pub fn he_fan_out(
        name: &str,
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        pad: usize,
        bias: Option<f64>,
        rng: &mut ChaCha8Rng,
    ) -> Self {
        let std = (2.0 / (k * k * c_out) as f64).sqrt();
        Self::with_std(name, c_in, c_out, k, stride, pad, std, bias, rng)
    }

    /// `w ~ N(0, std^2)`, bias filled with the given value when present.
    #[allow(clippy::too_many_arguments)]
    pub fn with_std(
        name: &str,
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        pad: usize,
        std: f64,
        bias: Option<f64>,
        rng: &mut ChaCha8Rng,
    ) -> Self {
        Conv2d {
            name: name.to_string(),
            w: gaussian(&[c_out, c_in, k, k], std, rng),
            b: bias.map(|v| Tensor::from_elem(IxDyn(&[c_out]), v)),
            stride,
            pad,
        }
    }
}

impl<T: Float> Conv2d<T> {
    /// The layer in another element type, its parameters rounded to nearest.
    pub fn cast<U: Float>(&self) -> Conv2d<U> {
        Conv2d {
            name: self.name.clone(),
            w: crate::tensor::cast_ref(&self.w),
            b: self.b.as_ref().map(crate::tensor::cast_ref),
            stride: self.stride,
            pad: self.pad,
        }
    }

    pub fn c_out(&self) -> usize {
        self.w.shape()[0]
    }
    pub fn c_in(&self) -> usize {
        self.w.shape()[1]
    }
    pub fn k(&self) -> usize {
        self.w.shape()[2]
    }

    /// True when `cols` is the input itself.
    fn is_pointwise(&self) -> bool {
        self.k() == 1 && self.stride == 1 && self.pad == 0
    }

    /// `w` as `(C_out, C_in k k)`.
    fn w2(&self) -> ArrayView2<'_, T> {
        let (co, rest) = (self.c_out(), self.c_in() * self.k() * self.k());
        self.w.view().into_shape_with_order((co, rest)).unwrap()
    }

    /// Output shape for an input shape `(N, C, H, W)`.
    pub fn out_shape(&self, in_shape: &[usize]) -> [usize; 4] {
        let (k, s, p) = (self.k(), self.stride, self.pad);
        [
            in_shape[0],
            self.c_out(),
            out_size(in_shape[2], k, s, p),
            out_size(in_shape[3], k, s, p),
        ]
    }

    pub fn apply(&self, x: &Tensor<T>) -> Tensor<T> {
        let x = x
            .view()
            .into_dimensionality::<Ix4>()
            .expect("conv input must be (N, C, H, W)");
        let x = x.as_standard_layout();
        self.forward_from(
            Prologue::Plain(x.as_slice().unwrap()),
            x.shape(),
            Epilogue::NONE,
        )
        .0
    }

    /// The geometry of one sample of an `(N, C, H, W)` input.
    fn geometry(&self, in_shape: &[usize]) -> Geometry {
        assert_eq!(in_shape.len(), 4, "conv input must be (N, C, H, W)");
        assert_eq!(in_shape[1], self.c_in(), "{}: input channels", self.name);
        Geometry {
            c: in_shape[1],
            h: in_shape[2],
            w: in_shape[3],
            k: self.k(),
            s: self.stride,
            p: self.pad,
        }
    }

    /// Forward over a batch of shape `in_shape` whose samples `input` provides, then the
    /// `epilogue` on each sample while it is in cache; returns the output's plane moments when
    /// the epilogue asks for them.
    pub(crate) fn forward_from(
        &self,
        input: Prologue<'_, T>,
        in_shape: &[usize],
        epilogue: Epilogue<'_, T>,
    ) -> (Tensor<T>, Option<Moments<T>>) {
        let g = self.geometry(in_shape);
        let out = self.out_shape(in_shape);
        let (co, hw_out) = (out[1], out[2] * out[3]);
        let (sample_in, ckk) = (g.c * g.h * g.w, g.c * g.k * g.k);
        let w2 = self.w2();
        let pointwise = self.is_pointwise();
        let group = group_size(hw_out);
        let mut y = Tensor::<T>::uninit(IxDyn(&out));
        let sample_out = co * hw_out;
        let add = epilogue.add_slice(y.len(), &self.name);
        // After the GEMM, per sample while it is in cache: the bias, then the epilogue.
        let finish = |n: usize, y_n: &mut [T]| {
            if let Some(b) = &self.b {
                for (row, &bv) in y_n.chunks_exact_mut(hw_out).zip(b.iter()) {
                    row.iter_mut().for_each(|v| *v += bv);
                }
            }
            epilogue.finish_sample(add, n, y_n, hw_out)
        };
        let per_sample: Vec<Vec<(T, T)>> = y
            .as_slice_mut()
            .unwrap()
            .par_chunks_mut(group * sample_out)
            .enumerate()
            .flat_map_iter(|(gi, y_g)| {
                let (n0, size) = (gi * group, y_g.len() / sample_out);
                let cols_rows = if pointwise { g.c } else { ckk };
                let (cols_len, out_len) = match (size, pointwise) {
                    (1, true) => (0, 0),
                    (1, false) => (ckk * hw_out, 0),
                    _ => (cols_rows * size * hw_out, co * size * hw_out),
                };
                with_scratch3(
                    input.scratch_len(sample_in),
                    cols_len,
                    out_len,
                    |act, cols, buf| {
                        if size == 1 {
                            // One sample: its GEMM writes straight into its slice of `y`.
                            let x_n = input.sample(n0, sample_in, act);
                            let cols = if pointwise {
                                ArrayView2::from_shape((g.c, g.h * g.w), x_n).unwrap()
                            } else {
                                im2col(x_n, g, cols, hw_out);
                                ArrayView2::from_shape((ckk, hw_out), &cols[..]).unwrap()
                            };
                            let y_n = matmul_uninit_serial(y_g, (co, hw_out), &w2, &cols);
                            return vec![finish(n0, y_n)];
                        }
                        // A group: the samples' columns side by side, one GEMM, then each sample's
                        // block of the product copied to its place in `y`.
                        let pitch = size * hw_out;
                        for s in 0..size {
                            let x_n = input.sample(n0 + s, sample_in, act);
                            if pointwise {
                                for (ci, plane) in x_n.chunks_exact(hw_out).enumerate() {
                                    cols[ci * pitch + s * hw_out..][..hw_out]
                                        .copy_from_slice(plane);
                                }
                            } else {
                                im2col(x_n, g, &mut cols[s * hw_out..], pitch);
                            }
                        }
                        let cols = ArrayView2::from_shape((cols_rows, pitch), &cols[..]).unwrap();
                        let mut prod =
                            ArrayViewMut2::from_shape((co, pitch), &mut buf[..]).unwrap();
                        matmul_into_serial(&mut prod, &w2, &cols, false);
                        y_g.chunks_exact_mut(sample_out)
                            .enumerate()
                            .map(|(s, y_n)| {
                                for (c, dst) in y_n.chunks_exact_mut(hw_out).enumerate() {
                                    for (d, &v) in
                                        dst.iter_mut().zip(&buf[c * pitch + s * hw_out..][..hw_out])
                                    {
                                        d.write(v);
                                    }
                                }
                                // SAFETY: every element of the sample was just written.
                                let y_n =
                                    unsafe { &mut *(y_n as *mut [MaybeUninit<T>] as *mut [T]) };
                                finish(n0 + s, y_n)
                            })
                            .collect()
                    },
                )
            })
            .collect();
        // SAFETY: the groups cover `y` and each sample is written in full above.
        let y = unsafe { y.assume_init() };
        (
            y,
            epilogue
                .moments
                .then(|| Moments::Planes(per_sample.concat())),
        )
    }

    /// Takes the input by value: it moves into the cache.
    pub fn forward(&self, x: Tensor<T>) -> (Tensor<T>, ConvCache<T>) {
        let x = crate::tensor::into_standard_layout(x);
        (self.apply(&x), ConvCache { x })
    }

    pub fn backward(
        &self,
        cache: &ConvCache<T>,
        grad_y: &Tensor<T>,
        grads: Option<&mut Grads<T>>,
    ) -> Tensor<T> {
        let input = Prologue::Plain(cache.x.as_slice().unwrap());
        if let Some(grads) = grads {
            self.weight_grads(input, cache.x.shape(), grad_y, grads);
        }
        self.input_grad(grad_y, cache.x.shape())
    }

    /// `dE/dx` for an input of shape `in_shape` (the input's values are not needed).
    pub(crate) fn input_grad(&self, grad_y: &Tensor<T>, in_shape: &[usize]) -> Tensor<T> {
        self.input_grad_then(grad_y, in_shape, |_, _| ()).0
    }

    /// As [`Conv2d::input_grad`], running `then(n, grad_x_n)` on each sample's gradient while
    /// it is still in cache; returns the per-sample results in sample order.
    pub(crate) fn input_grad_then<R: Send>(
        &self,
        grad_y: &Tensor<T>,
        in_shape: &[usize],
        then: impl Fn(usize, &mut [T]) -> R + Sync,
    ) -> (Tensor<T>, Vec<R>) {
        let gy = grad_y.as_standard_layout();
        let gys = gy.as_slice().unwrap();
        let g = self.geometry(in_shape);
        let out = self.out_shape(in_shape);
        let (co, hw_out) = (out[1], out[2] * out[3]);
        let (sample_in, ckk) = (g.c * g.h * g.w, g.c * g.k * g.k);
        let w2 = self.w2();
        let sample_out = co * hw_out;
        let pointwise = self.is_pointwise();
        let group = group_size(hw_out);
        let mut gx = Tensor::<T>::uninit(IxDyn(in_shape));
        let results = gx
            .as_slice_mut()
            .unwrap()
            .par_chunks_mut(group * sample_in)
            .enumerate()
            .flat_map_iter(|(gi, gx_g)| {
                let (n0, size) = (gi * group, gx_g.len() / sample_in);
                let gy_g = &gys[n0 * sample_out..(n0 + size) * sample_out];
                let cols_rows = if pointwise { g.c } else { ckk };
                let (gy_len, gcols_len) = match (size, pointwise) {
                    (1, true) => (0, 0),
                    (1, false) => (0, ckk * hw_out),
                    _ => (co * size * hw_out, cols_rows * size * hw_out),
                };
                with_scratch(gy_len, gcols_len, |gy_buf, gcols| {
                    if size == 1 {
                        let gy_n = ArrayView2::from_shape((co, hw_out), gy_g).unwrap();
                        let gx_n = if pointwise {
                            matmul_uninit_serial(gx_g, (g.c, g.h * g.w), &w2.t(), &gy_n)
                        } else {
                            let mut gc =
                                ArrayViewMut2::from_shape((ckk, hw_out), &mut gcols[..]).unwrap();
                            matmul_into_serial(&mut gc, &w2.t(), &gy_n, false);
                            col2im_into(gcols, g, gx_g, hw_out)
                        };
                        fault::perturb_slice(Fault::ConvInputGrad, gx_n);
                        return vec![then(n0, gx_n)];
                    }
                    // A group: the samples' output gradients side by side, one GEMM, then each
                    // sample's columns summed back into its input gradient.
                    let pitch = size * hw_out;
                    gather_samples(gy_g, co, hw_out, gy_buf);
                    let gy_m = ArrayView2::from_shape((co, pitch), &gy_buf[..]).unwrap();
                    let mut gc =
                        ArrayViewMut2::from_shape((cols_rows, pitch), &mut gcols[..]).unwrap();
                    matmul_into_serial(&mut gc, &w2.t(), &gy_m, false);
                    gx_g.chunks_exact_mut(sample_in)
                        .enumerate()
                        .map(|(s, gx_n)| {
                            let gx_n = if pointwise {
                                for (ci, dst) in gx_n.chunks_exact_mut(hw_out).enumerate() {
                                    for (d, &v) in dst
                                        .iter_mut()
                                        .zip(&gcols[ci * pitch + s * hw_out..][..hw_out])
                                    {
                                        d.write(v);
                                    }
                                }
                                // SAFETY: every element of the sample was just written.
                                unsafe { &mut *(gx_n as *mut [MaybeUninit<T>] as *mut [T]) }
                            } else {
                                col2im_into(&mut gcols[s * hw_out..], g, gx_n, pitch)
                            };
                            fault::perturb_slice(Fault::ConvInputGrad, gx_n);
                            then(n0 + s, gx_n)
                        })
                        .collect()
                })
            })
            .collect();
        // SAFETY: the groups cover `gx` and each sample is written in full above.
        (unsafe { gx.assume_init() }, results)
    }

    /// Accumulates the weight (and bias) gradients into `grads`. Fixed chunks of samples are
    /// each summed in order on one thread, then the chunks in order: `GRAD_CHUNK` samples one
    /// GEMM each for large maps, one group's single GEMM for small ones.
    pub(crate) fn weight_grads(
        &self,
        input: Prologue<'_, T>,
        in_shape: &[usize],
        grad_y: &Tensor<T>,
        grads: &mut Grads<T>,
    ) {
        let gy = grad_y.as_standard_layout();
        let gys = gy.as_slice().unwrap();
        let g = self.geometry(in_shape);
        let n_batch = in_shape[0];
        let out = self.out_shape(in_shape);
        let (co, hw_out) = (out[1], out[2] * out[3]);
        let (sample_in, ckk) = (g.c * g.h * g.w, g.c * g.k * g.k);
        let sample_out = co * hw_out;
        let pointwise = self.is_pointwise();
        let group = group_size(hw_out);
        let chunk_len = if group == 1 { GRAD_CHUNK } else { group };
        let partials: Vec<(Array2<T>, Vec<T>)> = (0..n_batch.div_ceil(chunk_len))
            .into_par_iter()
            .map(|chunk| {
                let mut gw = Array2::<T>::zeros((co, ckk));
                let mut gb = vec![T::zero(); co];
                let samples = chunk * chunk_len..((chunk + 1) * chunk_len).min(n_batch);
                for n in samples.clone() {
                    let gy_n = &gys[n * sample_out..(n + 1) * sample_out];
                    for (g, row) in gb.iter_mut().zip(gy_n.chunks_exact(hw_out)) {
                        // ndarray's summation, as for every bias gradient before.
                        *g += ndarray::aview1(row).sum();
                    }
                }
                if group == 1 {
                    let cols_len = if pointwise { 0 } else { ckk * hw_out };
                    for n in samples {
                        with_scratch(input.scratch_len(sample_in), cols_len, |act, cols| {
                            let gy_n = ArrayView2::from_shape(
                                (co, hw_out),
                                &gys[n * sample_out..(n + 1) * sample_out],
                            )
                            .unwrap();
                            let x_n = input.sample(n, sample_in, act);
                            if pointwise {
                                let cols = ArrayView2::from_shape((g.c, g.h * g.w), x_n).unwrap();
                                matmul_into_serial(&mut gw.view_mut(), &gy_n, &cols.t(), true);
                            } else {
                                im2col(x_n, g, cols, hw_out);
                                let cols =
                                    ArrayView2::from_shape((ckk, hw_out), &cols[..]).unwrap();
                                matmul_into_serial(&mut gw.view_mut(), &gy_n, &cols.t(), true);
                            }
                        });
                    }
                    return (gw, gb);
                }
                // A group: its samples' columns and output gradients side by side, one GEMM
                // over all their pixels.
                let size = samples.len();
                let pitch = size * hw_out;
                let cols_rows = if pointwise { g.c } else { ckk };
                with_scratch3(
                    input.scratch_len(sample_in),
                    cols_rows * pitch,
                    co * pitch,
                    |act, cols, gy_buf| {
                        for (s, n) in samples.clone().enumerate() {
                            let x_n = input.sample(n, sample_in, act);
                            if pointwise {
                                for (ci, plane) in x_n.chunks_exact(hw_out).enumerate() {
                                    cols[ci * pitch + s * hw_out..][..hw_out]
                                        .copy_from_slice(plane);
                                }
                            } else {
                                im2col(x_n, g, &mut cols[s * hw_out..], pitch);
                            }
                        }
                        let gy_g = &gys[samples.start * sample_out..samples.end * sample_out];
                        gather_samples(gy_g, co, hw_out, gy_buf);
                        let cols = ArrayView2::from_shape((cols_rows, pitch), &cols[..]).unwrap();
                        let gy_m = ArrayView2::from_shape((co, pitch), &gy_buf[..]).unwrap();
                        matmul_into_serial(&mut gw.view_mut(), &gy_m, &cols.t(), false);
                    },
                );
                (gw, gb)
            })
            .collect();
        let mut gw = Array2::<T>::zeros((co, ckk));
        let mut gb = vec![T::zero(); co];
        for (pw, pb) in &partials {
            gw += pw;
            gb.iter_mut().zip(pb).for_each(|(a, &b)| *a += b);
        }
        fault::perturb(Fault::ConvWeightGrad, &mut gw);
        fault::perturb_slice(Fault::ConvBiasGrad, &mut gb);
        grads.accumulate(
            &format!("{}.w", self.name),
            gw.into_shape_with_order(self.w.raw_dim()).unwrap(),
        );
        if self.b.is_some() {
            grads.accumulate(
                &format!("{}.b", self.name),
                Tensor::<T>::from_shape_vec(IxDyn(&[co]), gb).unwrap(),
            );
        }
    }

    pub fn visit_params(&self, f: &mut dyn FnMut(String, &Tensor<T>)) {
        f(format!("{}.w", self.name), &self.w);
        if let Some(b) = &self.b {
            f(format!("{}.b", self.name), b);
        }
    }

    pub fn visit_params_mut(&mut self, f: &mut dyn FnMut(String, &mut Tensor<T>)) {
        f(format!("{}.w", self.name), &mut self.w);
        if let Some(b) = &mut self.b {
            f(format!("{}.b", self.name), b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::finite_diff::{check_layer, rel_error};
    use crate::rng::{gaussian, rng};

    /// Relative error bound for 2-point central differences, h = 1e-6, f64.
    const TOL: f64 = 1e-6;

    fn check(
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        pad: usize,
        bias: bool,
        hw: usize,
    ) {
        let mut r = rng(21 + k as u64 * 10 + stride as u64);
        let mut layer = Conv2d::he_fan_out(
            "c",
            c_in,
            c_out,
            k,
            stride,
            pad,
            bias.then_some(0.0),
            &mut r,
        );
        if bias {
            layer.b = Some(gaussian(&[c_out], 0.5, &mut r));
        }
        let x = gaussian(&[3, c_in, hw, hw], 1.0, &mut r);
        let tag = format!("k{k} s{stride} p{pad} bias {bias}");
        let checked = check_layer(
            &tag,
            &layer,
            &x,
            1e-6,
            TOL,
            22,
            |l, x| l.apply(x),
            |l, x, gy, g| l.backward(&l.forward(x.clone()).1, gy, Some(g)),
            |l, f| l.visit_params_mut(f),
        );
        assert_eq!(checked.len(), 1 + usize::from(bias), "{tag}: {checked:?}");
    }

    #[test]
    fn conv3x3_pad1_stride1() {
        check(2, 3, 3, 1, 1, false, 5);
    }

    #[test]
    fn conv3x3_pad1_stride2() {
        check(2, 3, 3, 2, 1, false, 6);
    }

    #[test]
    fn conv1x1_stride1_with_bias() {
        check(3, 2, 1, 1, 0, true, 4);
    }

    #[test]
    fn conv1x1_stride2() {
        check(3, 4, 1, 2, 0, false, 5);
    }

    #[test]
    fn conv_matches_direct_sum() {
        // One output value computed by the definition.
        let mut r = rng(3);
        let layer = Conv2d::he_fan_out("c", 2, 2, 3, 2, 1, None, &mut r);
        let x = gaussian(&[1, 2, 5, 5], 1.0, &mut r);
        let y = layer.apply(&x);
        assert_eq!(y.shape(), &[1, 2, 3, 3]);
        let (co, oh, ow) = (1, 1, 2);
        let mut want = 0.0;
        for ci in 0..2 {
            for ki in 0..3 {
                for kj in 0..3 {
                    let (ih, iw) = ((oh * 2 + ki) as isize - 1, (ow * 2 + kj) as isize - 1);
                    if (0..5).contains(&ih) && (0..5).contains(&iw) {
                        want += layer.w[[co, ci, ki, kj]] * x[[0, ci, ih as usize, iw as usize]];
                    }
                }
            }
        }
        assert!((y[[0, co, oh, ow]] - want).abs() < 1e-14);
    }

    /// The convolution by its definition, and its two gradients by theirs: the plain
    /// reference beside the engine's GEMM paths.
    fn reference(layer: &Conv2d, x: &Tensor, gy: &Tensor) -> (Tensor, Tensor, Tensor) {
        let (n, c, h, w) = (x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]);
        let out = layer.out_shape(x.shape());
        let (k, s, p) = (layer.k(), layer.stride as isize, layer.pad as isize);
        let mut y = Tensor::zeros(IxDyn(&out));
        let mut gx = Tensor::zeros(x.raw_dim());
        let mut gw = Tensor::zeros(layer.w.raw_dim());
        for b in 0..n {
            for o in 0..out[1] {
                for oh in 0..out[2] {
                    for ow in 0..out[3] {
                        for ci in 0..c {
                            for ki in 0..k {
                                for kj in 0..k {
                                    let ih = oh as isize * s + ki as isize - p;
                                    let iw = ow as isize * s + kj as isize - p;
                                    if ih < 0 || iw < 0 || ih >= h as isize || iw >= w as isize {
                                        continue;
                                    }
                                    let (ih, iw) = (ih as usize, iw as usize);
                                    let wv = layer.w[[o, ci, ki, kj]];
                                    y[[b, o, oh, ow]] += wv * x[[b, ci, ih, iw]];
                                    gx[[b, ci, ih, iw]] += wv * gy[[b, o, oh, ow]];
                                    gw[[o, ci, ki, kj]] += x[[b, ci, ih, iw]] * gy[[b, o, oh, ow]];
                                }
                            }
                        }
                    }
                }
            }
        }
        (y, gx, gw)
    }

    /// Small maps put several samples in one GEMM, large ones run a GEMM per sample: both agree
    /// with the definition to rounding (1e-12 relative), with several groups and a short last
    /// one (7 samples of 8x8: groups of 4), for 3x3, strided and pointwise convolutions.
    #[test]
    fn grouped_and_per_sample_gemms_agree_with_the_definition() {
        let mut r = rng(8);
        for (c_in, c_out, k, stride, pad, hw, n) in [
            (3, 4, 3, 1, 1, 8, 7),
            (2, 3, 3, 2, 1, 8, 5),
            (3, 5, 1, 1, 0, 4, 6),
            (2, 3, 1, 2, 0, 6, 3),
            (2, 2, 3, 1, 1, 16, 2),
            (2, 3, 1, 1, 0, 17, 2),
        ] {
            let layer = Conv2d::he_fan_out("c", c_in, c_out, k, stride, pad, None, &mut r);
            let out = layer.out_shape(&[n, c_in, hw, hw]);
            assert_eq!(
                group_size(out[2] * out[3]) > 1,
                out[2] * out[3] < GROUP_COLUMNS,
                "the cases cover both paths"
            );
            let x = gaussian(&[n, c_in, hw, hw], 1.0, &mut r);
            let gy = gaussian(&out, 1.0, &mut r);
            let (y_ref, gx_ref, gw_ref) = reference(&layer, &x, &gy);
            let (y, cache) = layer.forward(x.clone());
            let mut grads = Grads::new();
            let gx = layer.backward(&cache, &gy, Some(&mut grads));
            let tag = format!("{c_in}->{c_out} k{k} s{stride} {hw}x{hw} batch {n}");
            assert!(rel_error(&y, &y_ref) < 1e-12, "{tag}: forward");
            assert!(rel_error(&gx, &gx_ref) < 1e-12, "{tag}: input gradient");
            assert!(
                rel_error(grads.get("c.w").unwrap(), &gw_ref) < 1e-12,
                "{tag}: weight gradient"
            );
        }
    }
}
