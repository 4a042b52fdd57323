//! im2col and col2im: one sample's input `(C, H, W)` laid out as the columns of a
//! convolution's GEMM, `(C k k, Ho Wo)`, and the adjoint that sums such columns back.
//!
//! Two implementations of each: one output row at a time (any stride and padding), and, for
//! the size-keeping 3x3 convolutions of every ResNet stage, one shifted plane at a time.
//! [`super::reference`] has the definition as plain index loops; the tests hold all three
//! equal bit for bit (they copy the same values and add in the same order).

use crate::float::Float;
use std::mem::MaybeUninit;
use std::ops::Range;

/// Output spatial size.
pub fn out_size(size: usize, k: usize, stride: usize, pad: usize) -> usize {
    (size + 2 * pad - k) / stride + 1
}

/// The shape of one sample's convolution: input `(c, h, w)`, kernel `k`, stride `s`, pad `p`.
#[derive(Debug, Clone, Copy)]
pub struct Geometry {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub k: usize,
    pub s: usize,
    pub p: usize,
}

impl Geometry {
    pub fn out(&self) -> (usize, usize) {
        (
            out_size(self.h, self.k, self.s, self.p),
            out_size(self.w, self.k, self.s, self.p),
        )
    }

    /// Row `ih` of the input for output row `oh` and kernel row `ki`, if inside the image.
    pub(crate) fn in_row(&self, oh: usize, ki: usize) -> Option<usize> {
        let ih = (oh * self.s + ki) as isize - self.p as isize;
        (0..self.h as isize).contains(&ih).then_some(ih as usize)
    }
}

/// Output columns `ow` whose input column `ow s + kj - p` lies inside the image.
fn valid_cols(g: &Geometry, wo: usize, kj: usize) -> std::ops::Range<usize> {
    let lo = g.p.saturating_sub(kj).div_ceil(g.s);
    let hi = if g.w + g.p > kj {
        ((g.w + g.p - kj - 1) / g.s + 1).min(wo)
    } else {
        0
    };
    lo.min(hi)..hi
}

/// `x_n: (C, H, W)` -> `cols: (C k k, Ho Wo)`, row `r` at `cols[r * pitch..][..Ho Wo]`
/// (`pitch = Ho Wo` for one sample alone; a group of samples side by side has a longer
/// pitch); every element of those rows is written.
pub(crate) fn im2col<T: Float>(x: &[T], g: Geometry, cols: &mut [T], pitch: usize) {
    if keeps_size(&g) {
        im2col_shifted(x, g, cols, pitch)
    } else {
        im2col_rows(x, g, cols, pitch)
    }
}

/// `x_n = col2im(cols)`: the adjoint of im2col, `cols: (C k k, Ho Wo)` (rows `pitch` apart)
/// summed back into a fresh `x_n: (C, H, W)` (every element is written); `cols` is scratch
/// and may be changed.
pub(crate) fn col2im_into<'x, T: Float>(
    cols: &mut [T],
    g: Geometry,
    x: &'x mut [MaybeUninit<T>],
    pitch: usize,
) -> &'x mut [T] {
    if keeps_size(&g) {
        return col2im_shifted(cols, g, x, pitch);
    }
    let x = crate::tensor::init_fill(x, T::zero());
    col2im_rows(cols, g, x, pitch);
    x
}

/// Whether the shifted-plane im2col and col2im apply: a stride-1 convolution that keeps the
/// image size (`2p = k - 1`, the 3x3 convolutions with padding 1 of every ResNet stage).
/// There, row `(ci, ki, kj)` of `cols` is channel `ci`'s plane shifted by
/// `d = (ki - p) W + (kj - p)` positions, with the rows and columns that fall outside the
/// image zero: one contiguous copy (or addition) per kernel position and channel, plus a few
/// scalar fix-ups per row, instead of one short copy per output row (the 8- and 16-wide rows
/// of the later stages cost more in loop and call overhead than in data). Every element
/// gets the same value (im2col) or the same additions in the same order (col2im) as the
/// row-by-row versions, which the tests check bit for bit.
fn keeps_size(g: &Geometry) -> bool {
    g.s == 1 && 2 * g.p + 1 == g.k && g.p < g.w && g.p < g.h
}

/// Where kernel position `(ki, kj)` of a size-keeping convolution reads its plane.
struct Shift {
    /// Column shift `kj - p`.
    dc: isize,
    /// Flat shift `(ki - p) W + (kj - p)`: output position `i` reads input position `i + d`.
    d: isize,
    /// Output rows whose input row is inside the image.
    rows: Range<usize>,
    /// Flat output positions of those rows whose source `i + d` lies inside the plane.
    flat: Range<usize>,
}

impl Shift {
    pub(crate) fn of(g: &Geometry, ki: usize, kj: usize) -> Shift {
        let (h, w) = (g.h as isize, g.w as isize);
        let dr = ki as isize - g.p as isize;
        let dc = kj as isize - g.p as isize;
        let d = dr * w + dc;
        let rows = (-dr).max(0) as usize..(h - dr).min(h) as usize;
        let lo = (rows.start as isize * w).max(-d);
        let hi = (rows.end as isize * w).min(h * w - d);
        let flat = lo.max(0) as usize..hi.max(lo).max(0) as usize;
        Shift { dc, d, rows, flat }
    }

    /// Every kernel position's shift, in `(ki, kj)` order. Made once per sample: working
    /// each out inside the channel loop measured 15% slower in W2's backward pass (0.213 ->
    /// 0.249 s).
    pub(crate) fn all(g: &Geometry) -> Vec<Shift> {
        (0..g.k * g.k)
            .map(|kk| Shift::of(g, kk / g.k, kk % g.k))
            .collect()
    }

    /// First input position read: that of `flat.start`.
    pub(crate) fn from(&self) -> usize {
        (self.flat.start as isize + self.d) as usize
    }

    /// Output columns whose source column wrapped into the neighbouring row.
    pub(crate) fn bad_columns(&self, w: usize) -> Range<usize> {
        if self.dc < 0 {
            0..(-self.dc) as usize
        } else {
            w - self.dc as usize..w
        }
    }
}

/// Zeroes a slice that is usually a few elements long (the wrapped columns of a shifted plane,
/// one per row for a 3x3 kernel): stores for short ones, since a `memset` call per element
/// was 10% of a training step on 8x8 images.
#[inline(always)]
fn zero<T: Float>(xs: &mut [T]) {
    match xs.len() {
        0 => {}
        1 => xs[0] = T::zero(),
        2 => {
            xs[0] = T::zero();
            xs[1] = T::zero();
        }
        _ => xs.fill(T::zero()),
    }
}

/// [`im2col`] of a size-keeping convolution, one shifted plane at a time.
fn im2col_shifted<T: Float>(x: &[T], g: Geometry, cols: &mut [T], pitch: usize) {
    let (k, w, plane) = (g.k, g.w, g.h * g.w);
    let shifts = Shift::all(&g);
    for ci in 0..g.c {
        let src = &x[ci * plane..(ci + 1) * plane];
        for (kk, sh) in shifts.iter().enumerate() {
            let out = &mut cols[(ci * k * k + kk) * pitch..][..plane];
            zero(&mut out[..sh.flat.start]);
            zero(&mut out[sh.flat.end..]);
            out[sh.flat.clone()].copy_from_slice(&src[sh.from()..][..sh.flat.len()]);
            let bad = sh.bad_columns(w);
            for oh in sh.rows.clone() {
                zero(&mut out[oh * w..][bad.clone()]);
            }
        }
    }
}

/// [`col2im_into`] of a size-keeping convolution. Sums `cols` into `x` (which it initialises)
/// and leaves `cols` with its wrapped positions zeroed. Each kernel position is one
/// contiguous pass: the first writes `0.0 + v` and zeroes the rest of the plane (what adding
/// into a zeroed plane gives, without the zeroing pass), the others add. The positions whose
/// source column wrapped into the neighbouring row are set to zero first, so they add `+0.0`
/// to an element that gets no contribution at this kernel position. That changes no bit:
/// `v + 0.0 = v` for every `v` but `-0.0`, and a sum that starts at `+0.0` never becomes
/// `-0.0` in round-to-nearest.
fn col2im_shifted<'x, T: Float>(
    cols: &mut [T],
    g: Geometry,
    x: &'x mut [MaybeUninit<T>],
    pitch: usize,
) -> &'x mut [T] {
    let (k, w, plane) = (g.k, g.w, g.h * g.w);
    let shifts = Shift::all(&g);
    for (ci, dst) in x.chunks_exact_mut(plane).take(g.c).enumerate() {
        for (kk, sh) in shifts.iter().enumerate() {
            let row = &mut cols[(ci * k * k + kk) * pitch..][..plane];
            let bad = sh.bad_columns(w);
            if !bad.is_empty() {
                for oh in sh.rows.clone() {
                    zero(&mut row[oh * w..][bad.clone()]);
                }
            }
            let (from, to) = (sh.from(), sh.from() + sh.flat.len());
            let src = &row[sh.flat.clone()];
            if kk == 0 {
                let (head, rest) = dst.split_at_mut(from);
                let (body, tail) = rest.split_at_mut(to - from);
                for e in head.iter_mut().chain(tail) {
                    e.write(T::zero());
                }
                for (o, &v) in body.iter_mut().zip(src) {
                    o.write(T::zero() + v);
                }
            } else {
                let body = &mut dst[from..to];
                // SAFETY: the first kernel position wrote every element of the plane.
                let body = unsafe { &mut *(body as *mut [MaybeUninit<T>] as *mut [T]) };
                for (o, &v) in body.iter_mut().zip(src) {
                    *o += v;
                }
            }
        }
    }
    // SAFETY: every plane was written in full at its first kernel position, and the planes
    // cover `x` (`x` holds `c` planes).
    unsafe { &mut *(x as *mut [MaybeUninit<T>] as *mut [T]) }
}

/// [`im2col`] one output row at a time (any stride and padding).
pub(crate) fn im2col_rows<T: Float>(x: &[T], g: Geometry, cols: &mut [T], pitch: usize) {
    let (ho, wo) = g.out();
    let (k, h, w, s) = (g.k, g.h, g.w, g.s);
    for ci in 0..g.c {
        for ki in 0..k {
            for kj in 0..k {
                let row = &mut cols[((ci * k + ki) * k + kj) * pitch..][..ho * wo];
                let valid = valid_cols(&g, wo, kj);
                for oh in 0..ho {
                    let out = &mut row[oh * wo..(oh + 1) * wo];
                    let Some(ih) = g.in_row(oh, ki) else {
                        out.fill(T::zero());
                        continue;
                    };
                    let src = &x[(ci * h + ih) * w..][..w];
                    out[..valid.start].fill(T::zero());
                    out[valid.end..].fill(T::zero());
                    // Input column of output column `valid.start`.
                    let first = valid.start * s + kj - g.p;
                    if s == 1 {
                        out[valid.clone()].copy_from_slice(&src[first..first + valid.len()]);
                    } else {
                        for (o, &v) in out[valid.clone()]
                            .iter_mut()
                            .zip(src[first..].iter().step_by(s))
                        {
                            *o = v;
                        }
                    }
                }
            }
        }
    }
}

/// Adds `cols: (C k k, Ho Wo)` back into `x_n: (C, H, W)` (the adjoint of im2col), one
/// contiguous (stride 1) or strided run of valid columns at a time.
pub(crate) fn col2im_rows<T: Float>(cols: &[T], g: Geometry, x: &mut [T], pitch: usize) {
    let (ho, wo) = g.out();
    let (k, h, w, s) = (g.k, g.h, g.w, g.s);
    for ci in 0..g.c {
        for ki in 0..k {
            for kj in 0..k {
                let row = &cols[((ci * k + ki) * k + kj) * pitch..][..ho * wo];
                let valid = valid_cols(&g, wo, kj);
                if valid.is_empty() {
                    continue;
                }
                // Input column of output column `valid.start`.
                let first = valid.start * s + kj - g.p;
                for oh in 0..ho {
                    let Some(ih) = g.in_row(oh, ki) else { continue };
                    let dst = &mut x[(ci * h + ih) * w..][..w];
                    let src = &row[oh * wo + valid.start..oh * wo + valid.end];
                    if s == 1 {
                        for (d, &v) in dst[first..first + src.len()].iter_mut().zip(src) {
                            *d += v;
                        }
                    } else {
                        for (d, &v) in dst[first..].iter_mut().step_by(s).zip(src) {
                            *d += v;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::reference;
    use crate::rng::{gaussian, rng};

    fn bits_equal(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(a, b)| a.to_bits() == b.to_bits())
    }

    /// Both im2col paths and both col2im paths give the definition's bits, for every
    /// convolution shape the ResNets use (3x3 pad 1 stride 1 and 2, 1x1 stride 1 and 2) and
    /// a few others.
    #[test]
    fn im2col_and_col2im_equal_the_definition_bit_for_bit() {
        let mut r = rng(9);
        for (c, h, w, k, s, p) in [
            (2, 8, 8, 3, 1, 1),
            (2, 8, 8, 3, 2, 1),
            (3, 5, 7, 3, 2, 1),
            (2, 6, 6, 1, 1, 0),
            (2, 6, 6, 1, 2, 0),
            (1, 4, 4, 5, 1, 2),
            (2, 7, 5, 3, 1, 0),
        ] {
            let g = Geometry { c, h, w, k, s, p };
            let (ho, wo) = g.out();
            let x = gaussian(&[c * h * w], 1.0, &mut r)
                .into_raw_vec_and_offset()
                .0;
            let want = reference::im2col(&x, g);
            let mut cols = vec![f64::NAN; want.len()];
            im2col(&x, g, &mut cols, ho * wo);
            assert!(bits_equal(&cols, &want), "im2col {g:?}");
            let mut rows = vec![f64::NAN; want.len()];
            im2col_rows(&x, g, &mut rows, ho * wo);
            assert!(bits_equal(&rows, &want), "im2col_rows {g:?}");

            let grad = gaussian(&[want.len()], 1.0, &mut r)
                .into_raw_vec_and_offset()
                .0;
            let want = reference::col2im(&grad, g);
            let mut fresh = vec![MaybeUninit::new(f64::NAN); c * h * w];
            let got = col2im_into(&mut grad.clone(), g, &mut fresh, ho * wo);
            assert!(bits_equal(got, &want), "col2im {g:?}");
            let mut rows = vec![0.0; c * h * w];
            col2im_rows(&grad, g, &mut rows, ho * wo);
            assert!(bits_equal(&rows, &want), "col2im_rows {g:?}");
        }
    }

    /// A sample inside a group writes its columns at an offset with a longer pitch: the
    /// same values as alone.
    #[test]
    fn grouped_columns_equal_one_sample_alone() {
        let mut r = rng(2);
        let g = Geometry {
            c: 2,
            h: 4,
            w: 4,
            k: 3,
            s: 1,
            p: 1,
        };
        let hw = 16;
        let x = gaussian(&[2 * hw], 1.0, &mut r).into_raw_vec_and_offset().0;
        let alone = reference::im2col(&x, g);
        let pitch = 3 * hw;
        let mut grouped = vec![f64::NAN; 2 * 9 * pitch];
        im2col(&x, g, &mut grouped[hw..], pitch);
        for row in 0..18 {
            assert!(bits_equal(
                &grouped[hw + row * pitch..][..hw],
                &alone[row * hw..][..hw]
            ));
        }
    }

    /// The plane-shift im2col and col2im give the row-by-row versions' bits, on square and
    /// non-square images, 3x3 and 5x5 kernels, single-pixel rows and a random starting `x`
    /// (Gaussian, so never `-0.0`).
    #[test]
    fn plane_shift_matches_rows_bit_for_bit() {
        let mut r = rng(5);
        for (c, h, w, k) in [
            (2, 8, 8, 3),
            (3, 32, 32, 3),
            (2, 16, 16, 3),
            (2, 4, 7, 3),
            (1, 2, 2, 3),
            (2, 6, 5, 5),
            (2, 3, 3, 1),
        ] {
            let g = Geometry {
                c,
                h,
                w,
                k,
                s: 1,
                p: k / 2,
            };
            assert!(keeps_size(&g), "{g:?}");
            let x = gaussian(&[c * h * w], 1.0, &mut r)
                .into_raw_vec_and_offset()
                .0;
            let len = c * k * k * h * w;
            let (mut fast, mut rows) = (vec![f64::NAN; len], vec![f64::NAN; len]);
            im2col(&x, g, &mut fast, h * w);
            im2col_rows(&x, g, &mut rows, h * w);
            assert!(
                fast.iter()
                    .zip(&rows)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{g:?}"
            );
            let mut cols = gaussian(&[len], 1.0, &mut r).into_raw_vec_and_offset().0;
            // A `-0.0` the first kernel position adds (the last output pixel of channel 0's
            // first row of `cols`): `0.0 + (-0.0)` must still give `+0.0`.
            cols[h * w - 1] = -0.0;
            let mut rows = vec![0.0; c * h * w];
            col2im_rows(&cols, g, &mut rows, h * w);
            let mut fresh = vec![MaybeUninit::new(f64::NAN); c * h * w];
            let fast = col2im_into(&mut cols, g, &mut fresh, h * w);
            assert!(
                fast.iter()
                    .zip(&rows)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{g:?}"
            );
        }
        // Strided or shrinking convolutions keep the row-by-row path.
        let strided = Geometry {
            c: 1,
            h: 8,
            w: 8,
            k: 3,
            s: 2,
            p: 1,
        };
        assert!(!keeps_size(&strided));
        assert!(!keeps_size(&Geometry {
            p: 0,
            s: 1,
            ..strided
        }));
    }
}
