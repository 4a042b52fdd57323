//! Tensors, deterministic reductions and the one GEMM entry point.
//!
//! Every activation is an `ArrayD<T>` (`T` = f64 or f32, see [`crate::float`]) whose axis 0
//! is the batch (N). Dense layers see
//! `(N, D)`, conv layers `(N, C, H, W)`. Reductions run in a fixed order on one thread so
//! that a number never depends on how many threads rayon has.

use std::mem::MaybeUninit;

use ndarray::{ArrayD, ArrayView2, ArrayViewD, ArrayViewMut2, Axis};

use crate::float::Float;

/// An activation, gradient or parameter array (f64 unless said, any rank, standard layout).
pub type Tensor<T = f64> = ArrayD<T>;

/// The same tensor in standard (row-major, contiguous) layout, copying only if it is not.
/// (`as_standard_layout().into_owned()` would copy even an already-standard array.)
pub fn into_standard_layout<T: Float>(x: Tensor<T>) -> Tensor<T> {
    if x.is_standard_layout() {
        x
    } else {
        x.as_standard_layout().into_owned()
    }
}

/// `x` in another element type (rounded to nearest when narrowing); no copy when the type is
/// the same.
pub fn cast<T: Float, U: Float>(x: Tensor<T>) -> Tensor<U> {
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<U>() {
        // SAFETY: T and U are the same type.
        return unsafe { std::mem::transmute::<Tensor<T>, Tensor<U>>(x) };
    }
    x.mapv(|v| U::of_f64(v.as_f64()))
}

/// A copy of `x` in another element type (rounded to nearest when narrowing).
pub fn cast_ref<T: Float, U: Float>(x: &Tensor<T>) -> Tensor<U> {
    x.mapv(|v| U::of_f64(v.as_f64()))
}

/// Sum of squares in logical (row-major) order.
pub fn sum_sq<T: Float>(a: &ArrayViewD<T>) -> T {
    a.iter().fold(T::zero(), |acc, &v| acc + v * v)
}

/// Sum of `f(v)` over `xs` in eight interleaved lanes, then the lanes in order. The order is
/// fixed (so are the bits), but the adds are independent, so the loop vectorises; a plain
/// fold is one long dependency chain, four times slower on a plane of a conv activation.
#[inline]
pub fn lane_sum<T: Float>(xs: &[T], f: impl Fn(T) -> T) -> T {
    let mut acc = [T::zero(); 8];
    let chunks = xs.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for k in 0..8 {
            acc[k] += f(c[k]);
        }
    }
    for (k, &v) in tail.iter().enumerate() {
        acc[k] += f(v);
    }
    acc.iter().sum()
}

/// `v` where `keep`, else +0.0 ([`Float::select`]).
#[inline(always)]
pub fn select<T: Float>(keep: bool, v: T) -> T {
    T::select(keep, v)
}

/// `max(z, 0)` that lets NaN through (`z <= 0` is false for NaN); `f64::max` would map NaN to
/// 0 and hide an overflow upstream. The ReLU layer's and the fused kernels' one definition.
#[inline(always)]
#[allow(clippy::neg_cmp_op_on_partial_ord)] // the NaN case is the point
pub fn relu<T: Float>(z: T) -> T {
    select(!(z <= T::zero()), z)
}

/// `(sum g, sum g (x - m))` over a run, `g` zeroed where `mask` is false, in eight lanes
/// (then the lanes in order): BatchNorm's backward reduction, shared by the fused ops so their
/// bits match the plain layers'.
#[inline]
pub fn grad_sums<T: Float>(g: &[T], x: &[T], mask: Option<&[bool]>, m: T) -> (T, T) {
    let (mut sb, mut sg) = ([T::zero(); 8], [T::zero(); 8]);
    let n = g.len();
    let (g, x) = (&g[..n], &x[..n]);
    let whole = n / 8 * 8;
    match mask {
        Some(mask) => {
            let mask = &mask[..n];
            for ((g8, x8), m8) in g[..whole]
                .chunks_exact(8)
                .zip(x[..whole].chunks_exact(8))
                .zip(mask[..whole].chunks_exact(8))
            {
                for k in 0..8 {
                    let gi = select(m8[k], g8[k]);
                    sb[k] += gi;
                    sg[k] += gi * (x8[k] - m);
                }
            }
            for (k, i) in (whole..n).enumerate() {
                let gi = select(mask[i], g[i]);
                sb[k] += gi;
                sg[k] += gi * (x[i] - m);
            }
        }
        None => {
            for (g8, x8) in g[..whole].chunks_exact(8).zip(x[..whole].chunks_exact(8)) {
                for k in 0..8 {
                    sb[k] += g8[k];
                    sg[k] += g8[k] * (x8[k] - m);
                }
            }
            for (k, i) in (whole..n).enumerate() {
                sb[k] += g[i];
                sg[k] += g[i] * (x[i] - m);
            }
        }
    }
    (sb.iter().sum(), sg.iter().sum())
}

/// `a += b` element-wise, in parallel over fixed chunks (any split gives the same bits).
pub fn add_assign<T: Float>(a: &mut Tensor<T>, b: &Tensor<T>) {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 15;
    assert_eq!(a.shape(), b.shape(), "add_assign: shape mismatch");
    match (a.as_slice_mut(), b.as_slice()) {
        (Some(a), Some(b)) => {
            a.par_chunks_mut(CHUNK)
                .zip(b.par_chunks(CHUNK))
                .for_each(|(a, b)| {
                    a.iter_mut().zip(b).for_each(|(a, &b)| *a += b);
                })
        }
        _ => *a += b,
    }
}

/// Runs `f` with two of this thread's scratch buffers, of `len_a` and `len_b` elements. The
/// buffers persist between calls (grown, never shrunk or cleared), so a per-sample loop
/// neither allocates nor zero-fills: every user must overwrite what it reads (im2col columns,
/// a sample's activation, a GEMM output). `f` must not start parallel work, which could run
/// another scratch user on this thread.
pub fn with_scratch<T: Float, R>(
    len_a: usize,
    len_b: usize,
    f: impl FnOnce(&mut [T], &mut [T]) -> R,
) -> R {
    with_scratch3(len_a, len_b, 0, |a, b, _| f(a, b))
}

/// As [`with_scratch`], with three buffers.
pub fn with_scratch3<T: Float, R>(
    len_a: usize,
    len_b: usize,
    len_c: usize,
    f: impl FnOnce(&mut [T], &mut [T], &mut [T]) -> R,
) -> R {
    T::scratch().with(|cell| {
        let mut bufs = cell.borrow_mut();
        let [a, b, c] = &mut *bufs;
        for (buf, len) in [(&mut *a, len_a), (&mut *b, len_b), (&mut *c, len_c)] {
            if buf.len() < len {
                buf.resize(len, T::zero());
            }
        }
        f(&mut a[..len_a], &mut b[..len_b], &mut c[..len_c])
    })
}

/// Euclidean norm scaled by the largest magnitude (as LAPACK's dnrm2), so that entries up
/// to f64::MAX do not overflow the sum of squares; NaN in, NaN out. In f64 whatever the
/// element type.
pub fn scaled_norm<'a, T: Float>(values: impl Iterator<Item = &'a T> + Clone) -> f64 {
    let values = values.map(|v| v.as_f64());
    let max = values.clone().fold(0.0f64, |m, v| {
        if v.is_nan() || m.is_nan() {
            f64::NAN
        } else {
            m.max(v.abs())
        }
    });
    if max == 0.0 || !max.is_finite() {
        return max;
    }
    max * values
        .fold(0.0, |acc, v| acc + (v / max) * (v / max))
        .sqrt()
}

/// Euclidean norm over every element (in f64).
pub fn norm<T: Float>(a: &Tensor<T>) -> f64 {
    scaled_norm(a.iter())
}

/// Cosine of the angle between `a` and `b`, computed on normalised entries so it cannot overflow.
pub fn cosine<T: Float>(a: &Tensor<T>, b: &Tensor<T>) -> f64 {
    assert_eq!(a.shape(), b.shape(), "cosine: shape mismatch");
    let (na, nb) = (norm(a), norm(b));
    a.iter().zip(b.iter()).fold(0.0, |acc, (&x, &y)| {
        acc + (x.as_f64() / na) * (y.as_f64() / nb)
    })
}

/// Inner product over every element, in logical order (in f64).
pub fn dot<T: Float>(a: &Tensor<T>, b: &Tensor<T>) -> f64 {
    assert_eq!(a.shape(), b.shape(), "dot: shape mismatch");
    a.iter()
        .zip(b.iter())
        .fold(0.0, |acc, (&x, &y)| acc + x.as_f64() * y.as_f64())
}

/// Norm of each sample (row of axis 0).
pub fn per_sample_norms<T: Float>(a: &Tensor<T>) -> Vec<f64> {
    a.axis_iter(Axis(0))
        .map(|s| scaled_norm(s.iter()))
        .collect()
}

/// True when no element is NaN or infinite.
pub fn all_finite<T: Float>(a: &Tensor<T>) -> bool {
    a.iter().all(|v| v.is_finite())
}

/// `a += alpha * b`.
pub fn axpy<T: Float>(a: &mut Tensor<T>, alpha: T, b: &Tensor<T>) {
    a.zip_mut_with(b, |x, &y| *x += alpha * y);
}

/// Below this many multiply-adds a GEMM runs on the calling thread: splitting
/// small products costs more than it saves.
const PARALLEL_GEMM_MIN_FLOPS: usize = 64 * 64 * 64;

/// How a product `(m,k) · (k,n)` is split between the two threads: the axis of `c` it is cut
/// along (the longer side: each thread then packs only its half of the other operand, a
/// dense layer's weights when the batch is the shorter side) and where (a multiple of 8), or
/// `None` for one piece. Shape only, never the thread count (one thread runs the two pieces
/// in turn): a piece can round differently from the whole product, because the kernel
/// switches to dot-product ("horizontal") kernels for blocks of at most 256 elements, so the
/// same shape must always be cut the same way. The fused dense ops cut where this says.
pub fn gemm_split(m: usize, k: usize, n: usize) -> Option<(Axis, usize)> {
    if m * k * n < PARALLEL_GEMM_MIN_FLOPS || m.max(n) < 2 * SPLIT_MIN_ROWS {
        return None;
    }
    Some(if n > m {
        (Axis(1), crate::spin_join::split_point(n, 8))
    } else {
        (Axis(0), crate::spin_join::split_point(m, 8))
    })
}

/// `c = a · b` (or `c += a · b` when `accumulate`), shapes `(m,k) · (k,n) -> (m,n)`.
///
/// The only place the crate calls the `gemm` crate's unsafe kernel. Any strides are
/// accepted (transposed views run without copies). Products that [`gemm_split`] cuts run as
/// two serial kernels, one per thread: on the engine's shapes that beat the kernel's own
/// threading (`grad_y W^T`, every dense backward, ran at 66 GFLOP/s threaded against 113
/// split, and a W1 training step took 0.179 s split against 0.197 threaded). The bits do not
/// depend on the thread count.
pub fn matmul_into<T: Float>(
    c: &mut ArrayViewMut2<T>,
    a: &ArrayView2<T>,
    b: &ArrayView2<T>,
    accumulate: bool,
) {
    let Some((axis, mid)) = gemm_split(a.nrows(), a.ncols(), b.ncols()) else {
        return gemm_call(c, a, b, accumulate);
    };
    let (mut c0, mut c1) = c.view_mut().split_at(axis, mid);
    let ((a0, b0), (a1, b1)) = if axis == Axis(1) {
        let (b0, b1) = b.view().split_at(axis, mid);
        ((a.view(), b0), (a.view(), b1))
    } else {
        let (a0, a1) = a.view().split_at(axis, mid);
        ((a0, b.view()), (a1, b.view()))
    };
    crate::spin_join::join(
        || gemm_call(&mut c0, &a0, &b0, accumulate),
        || gemm_call(&mut c1, &a1, &b1, accumulate),
    );
}

/// Rows (or columns) per half below which splitting a GEMM in two is not worth a task.
const SPLIT_MIN_ROWS: usize = 16;

/// As [`matmul_into`], always on the calling thread: for GEMMs that already run inside a
/// parallel loop (one per sample of a convolution), so parallelism is never nested.
pub fn matmul_into_serial<T: Float>(
    c: &mut ArrayViewMut2<T>,
    a: &ArrayView2<T>,
    b: &ArrayView2<T>,
    accumulate: bool,
) {
    gemm_call(c, a, b, accumulate);
}

/// The one place that calls the `gemm` crate, always on the calling thread.
fn gemm_call<T: Float>(
    c: &mut ArrayViewMut2<T>,
    a: &ArrayView2<T>,
    b: &ArrayView2<T>,
    accumulate: bool,
) {
    let (m, k) = a.dim();
    let (k2, n) = b.dim();
    assert_eq!(k, k2, "matmul: inner dimensions {k} and {k2} differ");
    assert_eq!(
        c.dim(),
        (m, n),
        "matmul: output shape {:?} is not ({m}, {n})",
        c.dim()
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c.fill(T::zero());
        }
        return;
    }
    let (c_rs, c_cs) = (c.strides()[0], c.strides()[1]);
    let (a_rs, a_cs) = (a.strides()[0], a.strides()[1]);
    let (b_rs, b_cs) = (b.strides()[0], b.strides()[1]);
    if is_dot_product_gemm(m, n, a_cs, b_rs) {
        return dot_product_gemm(c, a, b, accumulate);
    }
    // SAFETY: the shapes were checked above; the pointers come from live ndarray views whose
    // strides (in elements) describe exactly the (m,n), (m,k), (k,n) matrices passed, and `c`
    // is a unique mutable borrow so it cannot alias `a` or `b`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            c_cs,
            c_rs,
            accumulate,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            T::one(),
            T::one(),
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// True when the `gemm` crate would compute `c = a · b` with its dot-product ("horizontal")
/// kernels: at most 256 outputs, rows of `a` and columns of `b` contiguous
/// (gemm-common 0.19, `gemm_basic_generic`; the condition is the same whichever way the crate
/// transposes the problem). Those kernels sum in as many lanes as the CPU's vectors hold (four
/// with AVX2, eight with AVX-512), so their bits would depend on the machine.
fn is_dot_product_gemm(m: usize, n: usize, a_cs: isize, b_rs: isize) -> bool {
    a_cs == 1 && b_rs == 1 && m * n <= 256
}

/// Lanes of [`dot_product_gemm`]: the AVX2 kernel's, so results match the `gemm` crate on a
/// machine without AVX-512 bit for bit.
const DOT_LANES: usize = 4;

/// Depth of one pass of [`dot_product_gemm`]: the `gemm` crate's dot-product kernels add each
/// 1024-deep block's sum into `c` before the next.
const DOT_BLOCK: usize = 1024;

/// The products [`is_dot_product_gemm`] picks out, computed here the same way on every
/// machine: each output is a dot product in [`DOT_LANES`] fused multiply-add lanes (lane `r`
/// takes terms `r, r + 4, ...`; the lanes past a short tail add `0 * 0`), reduced as
/// `(l0 + l2) + (l1 + l3)`, then added to `c` once per [`DOT_BLOCK`] (`c` is overwritten by the
/// first block unless `accumulate`). This is the order of the `gemm` crate's AVX2 kernel, so
/// the numbers are those of every earlier build on a machine without AVX-512, and the same on
/// one with it. `f64::mul_add` rounds once, whether the CPU or the library computes it.
fn dot_product_gemm<T: Float>(
    c: &mut ArrayViewMut2<T>,
    a: &ArrayView2<T>,
    b: &ArrayView2<T>,
    accumulate: bool,
) {
    let k = a.ncols();
    for (i, row) in a.outer_iter().enumerate() {
        for (j, col) in b.axis_iter(Axis(1)).enumerate() {
            let (row, col) = (row.as_slice(), col.as_slice());
            let (row, col) = (
                row.expect("a's rows are contiguous"),
                col.expect("b's columns are contiguous"),
            );
            let mut add = accumulate;
            for start in (0..k).step_by(DOT_BLOCK) {
                let end = (start + DOT_BLOCK).min(k);
                let sum = dot_in_lanes(&row[start..end], &col[start..end]);
                let out = &mut c[[i, j]];
                *out = if add { sum + *out } else { sum };
                add = true;
            }
        }
    }
}

/// `sum x_i y_i` in [`DOT_LANES`] fused lanes, reduced pairwise (see [`dot_product_gemm`]).
fn dot_in_lanes<T: Float>(x: &[T], y: &[T]) -> T {
    let mut lanes = [T::zero(); DOT_LANES];
    let whole = x.len() / DOT_LANES * DOT_LANES;
    for (xs, ys) in x[..whole]
        .chunks_exact(DOT_LANES)
        .zip(y[..whole].chunks_exact(DOT_LANES))
    {
        for r in 0..DOT_LANES {
            lanes[r] = xs[r].mul_add(ys[r], lanes[r]);
        }
    }
    if whole < x.len() {
        // The kernel's masked load reads zeros past the end: those lanes add 0 * 0 (which
        // turns a -0 into +0, as the hardware does).
        for (r, lane) in lanes.iter_mut().enumerate() {
            let (xv, yv) = x
                .get(whole + r)
                .zip(y.get(whole + r))
                .map_or((T::zero(), T::zero()), |(a, b)| (*a, *b));
            *lane = xv.mul_add(yv, *lane);
        }
    }
    (lanes[0] + lanes[2]) + (lanes[1] + lanes[3])
}

/// `c = a · b` written into uninitialised row-major memory of `shape = (m, n)`, on the calling
/// thread; returns `c`, now initialised. For per-sample GEMMs that write straight into their
/// slice of a fresh output tensor, so the tensor is never filled first (a full extra pass).
pub fn matmul_uninit_serial<'c, T: Float>(
    c: &'c mut [MaybeUninit<T>],
    shape: (usize, usize),
    a: &ArrayView2<T>,
    b: &ArrayView2<T>,
) -> &'c mut [T] {
    assert_eq!(c.len(), shape.0 * shape.1, "matmul: output length");
    if a.ncols() == 0 {
        return init_fill(c, T::zero());
    }
    // SAFETY: `MaybeUninit<f64>` has the layout of `f64`; the view covers exactly the
    // `m * n` elements of `c`, which the non-accumulating kernel only writes (k > 0, so every
    // element is written; `gemm_call` checks the shapes).
    let mut view = unsafe { ArrayViewMut2::from_shape_ptr(shape, c.as_mut_ptr().cast::<T>()) };
    gemm_call(&mut view, a, b, false);
    // SAFETY: every element was written by the kernel.
    unsafe { &mut *(c as *mut [MaybeUninit<T>] as *mut [T]) }
}

/// `c = a · b` into an uninitialised block `c` (any positive strides, e.g. a column block of
/// a row-major matrix), on the calling thread; returns the block, now initialised.
pub fn matmul_uninit_view<'c, T: Float>(
    mut c: ArrayViewMut2<'c, MaybeUninit<T>>,
    a: &ArrayView2<T>,
    b: &ArrayView2<T>,
) -> ArrayViewMut2<'c, T> {
    use ndarray::ShapeBuilder;
    let (m, n) = c.dim();
    let (rs, cs) = (c.strides()[0], c.strides()[1]);
    assert!(rs >= 0 && cs >= 0, "matmul: negative output strides");
    if a.ncols() == 0 {
        c.map_inplace(|e| {
            e.write(T::zero());
        });
    }
    // SAFETY: `MaybeUninit<f64>` has the layout of `f64`, and the view has `c`'s shape, strides
    // and lifetime (`c` is consumed, so nothing else reaches the memory). Every element is
    // written before it is read: by the fill above when k = 0, otherwise by the
    // non-accumulating kernel (`gemm_call` checks the shapes).
    let mut view = unsafe {
        ArrayViewMut2::from_shape_ptr(
            (m, n).strides((rs as usize, cs as usize)),
            c.as_mut_ptr().cast::<T>(),
        )
    };
    if a.ncols() > 0 {
        gemm_call(&mut view, a, b, false);
    }
    view
}

/// Fills uninitialised memory with `v`; returns it initialised.
pub fn init_fill<T: Float>(c: &mut [MaybeUninit<T>], v: T) -> &mut [T] {
    c.iter_mut().for_each(|e| {
        e.write(v);
    });
    // SAFETY: every element was just written.
    unsafe { &mut *(c as *mut [MaybeUninit<T>] as *mut [T]) }
}

/// `a · b` into a new array.
pub fn matmul<T: Float>(a: &ArrayView2<T>, b: &ArrayView2<T>) -> ndarray::Array2<T> {
    let (m, n) = (a.nrows(), b.ncols());
    if a.ncols() == 0 || m == 0 || n == 0 {
        return ndarray::Array2::zeros((m, n));
    }
    // The kernel overwrites every element when it does not read the destination, so the
    // output is not zero-filled first (that would be a full extra pass over memory).
    let mut c = ndarray::Array2::<T>::uninit((m, n));
    // SAFETY: `MaybeUninit<f64>` has the layout of `f64`; `c` is a fresh standard-layout
    // (m, n) array, so the view covers exactly its elements; the kernel only writes them.
    let mut out =
        unsafe { ndarray::ArrayViewMut2::from_shape_ptr((m, n), c.as_mut_ptr().cast::<T>()) };
    matmul_into(&mut out, a, b, false);
    // SAFETY: k > 0 and a non-accumulating call (`read_dst = false`) writes all m x n elements.
    unsafe { c.assume_init() }
}

/// Median of finite-or-not values (NaN sorts last); `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    #[test]
    fn small_products_sum_in_four_lanes_reduced_pairwise() {
        // Terms 1, 1e16, 1, -1e16: the lanes hold them apart and give (1 + 1) + (1e16 - 1e16)
        // = 2, where a running sum gives ((1 + 1e16) + 1) - 1e16 = 0 and eight lanes also 2.
        // A fifth term 3 lands in lane 0 as the tail.
        let a = Array2::from_shape_vec((1, 5), vec![1.0, 1e16, 1.0, -1e16, 3.0]).unwrap();
        let b = Array2::from_elem((5, 1), 1.0);
        let mut c = Array2::from_elem((1, 1), 10.0);
        assert!(is_dot_product_gemm(1, 1, 1, 1));
        matmul_into(&mut c.view_mut(), &a.view(), &b.view(), false);
        assert_eq!(c[[0, 0]], 5.0);
        matmul_into(&mut c.view_mut(), &a.view(), &b.view(), true);
        assert_eq!(c[[0, 0]], 10.0);
        // A tail lane that adds 0 * 0 turns -0 into +0, as the hardware's masked lanes do.
        assert_eq!(
            dot_in_lanes::<f64>(&[-0.0], &[1.0]).to_bits(),
            0.0f64.to_bits()
        );
        // Past 1024 terms, each block's sum is added into c in turn.
        let long = vec![1.0; 1030];
        assert_eq!(dot_in_lanes(&long, &long), 1030.0);
        let a = Array2::from_elem((2, 2048), 0.5);
        let b = Array2::from_elem((2048, 3), 2.0);
        let mut c = Array2::zeros((2, 3));
        matmul_into(
            &mut c.view_mut(),
            &a.view(),
            &b.t().as_standard_layout().t(),
            false,
        );
        assert!(c.iter().all(|&v| v == 2048.0));
    }

    #[test]
    fn small_products_agree_with_a_plain_sum() {
        use rand::{Rng, SeedableRng};
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for (m, k, n) in [(8, 10, 16), (1, 3, 1), (16, 37, 16), (3, 1030, 5)] {
            let a = Array2::from_shape_fn((m, k), |_| r.random_range(-1.0..1.0));
            let bt = Array2::from_shape_fn((n, k), |_| r.random_range(-1.0..1.0));
            // b as the transposed view of a row-major (n, k): its columns are contiguous.
            let b = bt.t();
            assert!(is_dot_product_gemm(m, n, a.strides()[1], b.strides()[0]));
            let got = matmul(&a.view(), &b);
            let want = naive(&a, &b.to_owned());
            for (g, w) in got.iter().zip(&want) {
                // Both sum k terms of size <= 1; the two orders differ by a few ulps of k.
                assert!((g - w).abs() <= 1e-13 * k as f64, "{m}x{k}x{n}: {g} vs {w}");
            }
        }
    }

    fn naive(a: &Array2<f64>, b: &Array2<f64>) -> Array2<f64> {
        let mut c = Array2::zeros((a.nrows(), b.ncols()));
        for i in 0..a.nrows() {
            for j in 0..b.ncols() {
                let mut s = 0.0;
                for p in 0..a.ncols() {
                    s += a[[i, p]] * b[[p, j]];
                }
                c[[i, j]] = s;
            }
        }
        c
    }

    #[test]
    fn matmul_matches_naive_for_plain_and_transposed_views() {
        let a = Array2::from_shape_fn((37, 70), |(i, j)| ((i * 7 + j * 3) % 11) as f64 - 5.0);
        let b = Array2::from_shape_fn((70, 90), |(i, j)| ((i * 5 + j) % 13) as f64 * 0.25);
        let want = naive(&a, &b);
        assert_eq!(matmul(&a.view(), &b.view()), want);
        // The same product from transposed (column-major) views of stored transposes.
        let bt = b.t().to_owned();
        let at = a.t().to_owned();
        let got_t = matmul(&at.t(), &bt.t());
        assert_eq!(got_t, want);
        // accumulate adds on top.
        let mut c = want.clone();
        matmul_into(&mut c.view_mut(), &a.view(), &b.view(), true);
        assert_eq!(c, &want * 2.0);
    }

    /// Large products split across threads give the bits of the one-thread product.
    #[test]
    fn parallel_matmul_is_bit_identical_to_serial() {
        let a = Array2::from_shape_fn((130, 200), |(i, j)| {
            ((i * 31 + j * 17) % 101) as f64 / 7.0 - 6.0
        });
        let b = Array2::from_shape_fn((200, 90), |(i, j)| {
            ((i * 13 + j * 29) % 97) as f64 / 11.0 - 4.0
        });
        let bt = b.t().to_owned();
        // A wide product (more columns than rows) is split by columns, a tall one by rows.
        let wide = Array2::from_shape_fn((200, 150), |(i, j)| ((i * 7 + j * 3) % 89) as f64 / 9.0);
        let short = a.slice(ndarray::s![..60, ..]).to_owned();
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let plain = matmul(&a.view(), &b.view());
                let transposed_rhs = matmul(&a.view(), &bt.t());
                let mut acc = plain.clone();
                matmul_into(&mut acc.view_mut(), &a.view(), &bt.t(), true);
                let by_columns = matmul(&short.view(), &wide.view());
                (plain, transposed_rhs, acc, by_columns)
            })
        };
        assert_eq!(run(1), run(2));
        assert_eq!(run(1), run(3));
    }

    #[test]
    #[should_panic(expected = "inner dimensions")]
    fn matmul_rejects_mismatched_shapes() {
        let a = Array2::<f64>::zeros((2, 3));
        let b = Array2::<f64>::zeros((4, 2));
        let _ = matmul(&a.view(), &b.view());
    }

    #[test]
    fn norm_does_not_overflow_below_f64_max() {
        let big = Tensor::from_elem(ndarray::IxDyn(&[4]), 1e200);
        assert!((norm(&big) - 2e200).abs() / 2e200 < 1e-15);
        let mut with_nan = big.clone();
        with_nan[[2]] = f64::NAN;
        assert!(norm(&with_nan).is_nan());
        with_nan[[2]] = f64::INFINITY;
        assert_eq!(norm(&with_nan), f64::INFINITY);
        assert_eq!(norm(&Tensor::<f64>::zeros(ndarray::IxDyn(&[3]))), 0.0);
        assert!((cosine(&big, &big) - 1.0).abs() < 1e-15);
    }

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }
}
