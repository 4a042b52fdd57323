//! The gradient by path length, exactly. Veit, Wilber and Belongie (NIPS 2016) read a network
//! of n residual units as an ensemble of 2^n paths, a path choosing at every unit either the
//! shortcut or the branch, and estimated by sampling single paths that almost all of the
//! gradient travels along short ones. Every unit's backward splits into a shortcut-only map
//! `S_l` and a branch-only map `B_l` (both linear in the upstream gradient, the after-addition
//! function included, at the forward pass's cached point), so the gradient carried by all
//! paths that take exactly k branches above unit l obeys
//!
//! ```text
//! G_0(L) = dE/dx_L,   G_k(L) = 0 for k > 0,
//! G_k(l) = S_l G_k(l+1) + B_l G_{k-1}(l+1),
//! ```
//!
//! and `sum_k G_k(l) = dE/dx_l` exactly (up to rounding). A projection unit's shortcut is a
//! shortcut, as in Veit et al. The cost: at unit l one split backward per path length still
//! possible, about `(L + 1) / 2` backward passes in all.
//!
//! Veit's estimate, for comparison: the mean norm over S sampled single paths of length k
//! (k branches chosen uniformly among the n units, shortcuts elsewhere) of the gradient they
//! carry to the input `x_0`, times the number of such paths `C(n, k)`.

use anyhow::{bail, Result};
use rand::seq::index::sample;
use rayon::prelude::*;

use crate::net::{NetCache, NetGrads, Network};
use crate::rng::{derive_seed, rng};
use crate::schema::{self, Row, Schema};
use crate::tensor::{norm, Tensor};

/// `C(n, k)` as a float (exact below 2^53, e.g. every `C(54, k)`).
pub fn binomial(n: usize, k: usize) -> f64 {
    if k > n {
        return 0.0;
    }
    let k = k.min(n - k);
    (0..k).fold(1.0, |acc, i| acc * (n - i) as f64 / (i + 1) as f64)
}

/// One row of the paths CSV: unit input `x_l`, path length `k`.
#[derive(Debug, Clone, PartialEq)]
pub struct PathRow {
    pub unit: usize,
    pub k: usize,
    /// `C(n, k)`, n = the units above l.
    pub paths: f64,
    /// `||G_k(l)||`.
    pub exact_norm: f64,
    /// `||G_k(l)|| / sum_j ||G_j(l)||`.
    pub exact_share: f64,
    /// Veit's estimate at the input (unit 0, with `--sample`): the mean norm of a sampled
    /// single path's gradient, and `C(n, k)` times it.
    pub sampled_path_norm: Option<f64>,
    pub sampled_total: Option<f64>,
}

/// `NaN` stands for the empty sampled fields (every unit but the input, or no `--sample`).
impl crate::schema::NumericRow for PathRow {
    fn numbers(&self) -> Vec<f64> {
        vec![
            self.unit as f64,
            self.k as f64,
            self.paths,
            self.exact_norm,
            self.exact_share,
            self.sampled_path_norm.unwrap_or(f64::NAN),
            self.sampled_total.unwrap_or(f64::NAN),
        ]
    }

    fn from_numbers(r: &[f64]) -> PathRow {
        PathRow {
            unit: r[0] as usize,
            k: r[1] as usize,
            paths: r[2],
            exact_norm: r[3],
            exact_share: r[4],
            sampled_path_norm: (!r[5].is_nan()).then_some(r[5]),
            sampled_total: (!r[6].is_nan()).then_some(r[6]),
        }
    }
}

impl Row for PathRow {
    const SCHEMA: &'static Schema = &schema::PATHS_TABLE;

    fn fields(&self) -> Vec<String> {
        use crate::analysis::record::fmt_f64;
        let opt = |x: Option<f64>| x.map(fmt_f64).unwrap_or_default();
        vec![
            self.unit.to_string(),
            self.k.to_string(),
            fmt_f64(self.paths),
            fmt_f64(self.exact_norm),
            fmt_f64(self.exact_share),
            opt(self.sampled_path_norm),
            opt(self.sampled_total),
        ]
    }
}

/// The exact decomposition: `norms[l][k] = ||G_k(l)||` for l = 0..=L, k = 0..=L-l, and per
/// unit input the relative error `||sum_k G_k(l) - dE/dx_l|| / ||dE/dx_l||` (the absolute
/// error where `dE/dx_l` is 0, as at Fixup's start).
pub struct Decomposition {
    pub norms: Vec<Vec<f64>>,
    pub sum_error: Vec<f64>,
    /// `G_k(0)`, k = 0..=L: the input's gradient by path length.
    pub at_input: Vec<Tensor>,
}

impl Decomposition {
    pub fn max_sum_error(&self) -> f64 {
        self.sum_error.iter().cloned().fold(0.0, f64::max)
    }
}

fn relative_error(sum: &Tensor, grad: &Tensor) -> f64 {
    let diff = norm(&(sum - grad));
    let scale = norm(grad);
    if scale > 0.0 {
        diff / scale
    } else {
        diff
    }
}

/// `G_k(l)` for every k at unit input `l`, from those at `l + 1`: one split backward per k,
/// the path lengths in parallel (each is its own computation: no order dependence).
fn step_down(net: &Network, cache: &NetCache, l: usize, above: &[Tensor]) -> Vec<Tensor> {
    let uc = cache.unit(net, l);
    let unit = &net.units[l];
    let split: Vec<(Tensor, Tensor)> = above
        .par_iter()
        .map(|g| crate::spin_join::without_helper(|| unit.backward_split(&uc, g)))
        .collect();
    let mut out = Vec::with_capacity(above.len() + 1);
    let mut split = split.into_iter();
    let mut carried: Option<Tensor> = None;
    for _ in 0..above.len() {
        let (s, b) = split.next().unwrap();
        // G_k(l) = S G_k(l+1) + B G_{k-1}(l+1).
        out.push(match carried.take() {
            Some(prev_b) => s + &prev_b,
            None => s,
        });
        carried = Some(b);
    }
    out.push(carried.expect("at least one path length above"));
    out
}

/// Decomposes the backward pass of `cache`/`grads` by path length, from the top down.
pub fn decompose(net: &Network, cache: &NetCache, grads: &NetGrads) -> Decomposition {
    let l_top = net.num_units();
    let mut level = vec![grads.grad_x[l_top].clone()];
    let mut norms = vec![Vec::new(); l_top + 1];
    let mut sum_error = vec![0.0; l_top + 1];
    norms[l_top] = vec![norm(&level[0])];
    for l in (0..l_top).rev() {
        level = step_down(net, cache, l, &level);
        // `level` is G_k(l), k = 0..=L-l.
        norms[l] = level.iter().map(norm).collect();
        let mut sum = level[0].clone();
        for g in &level[1..] {
            sum += g;
        }
        sum_error[l] = relative_error(&sum, &grads.grad_x[l]);
    }
    Decomposition {
        norms,
        sum_error,
        at_input: level,
    }
}

/// The gradient one path carries to the input: the branch at the units where `take` is
/// true, the shortcut elsewhere.
pub fn single_path(net: &Network, cache: &NetCache, grads: &NetGrads, take: &[bool]) -> Tensor {
    let n = net.num_units();
    let mut g = grads.grad_x[n].clone();
    for l in (0..n).rev() {
        let uc = cache.unit(net, l);
        g = if take[l] {
            net.units[l].vjp_branch(&uc, &g)
        } else {
            net.units[l].vjp_shortcut(&uc, &g)
        };
    }
    g
}

/// Veit's estimate at the input: for each k, the mean over `samples` single paths of length k
/// of `||path gradient at x_0||`. Path s of length k takes the branch at the k units of a
/// uniform draw seeded by `(seed, k, s)`, so the estimate does not depend on the threads.
pub fn sample_paths(
    net: &Network,
    cache: &NetCache,
    grads: &NetGrads,
    samples: usize,
    seed: u64,
    progress: &(dyn Fn() + Sync),
    stop: &crate::interrupt::Interrupt,
) -> Result<Vec<f64>, crate::interrupt::Interrupted> {
    let n = net.num_units();
    (0..=n)
        .map(|k| {
            let norms: Vec<f64> = (0..samples)
                .into_par_iter()
                .map(|s| {
                    stop.check(|| format!("while sampling paths of length {k} of 0..={n}"))?;
                    Ok(crate::spin_join::without_helper(|| {
                        let mut r = rng(derive_seed(
                            seed,
                            &[crate::rng::purpose::PATHS, k as u64, s as u64],
                        ));
                        let mut take = vec![false; n];
                        for i in sample(&mut r, n, k) {
                            take[i] = true;
                        }
                        norm(&single_path(net, cache, grads, &take))
                    }))
                })
                .collect::<Result<_, _>>()?;
            progress();
            Ok(norms.iter().sum::<f64>() / samples as f64)
        })
        .collect()
}

/// The rows of the paths CSV: every (unit input, path length), the sampled columns at unit 0.
pub fn path_rows(net: &Network, d: &Decomposition, sampled: Option<&[f64]>) -> Vec<PathRow> {
    let l_top = net.num_units();
    let mut rows = Vec::new();
    for l in 0..=l_top {
        let n = l_top - l;
        let total: f64 = d.norms[l].iter().sum();
        for (k, &g) in d.norms[l].iter().enumerate() {
            let paths = binomial(n, k);
            let mean = sampled.filter(|_| l == 0).map(|s| s[k]);
            rows.push(PathRow {
                unit: l,
                k,
                paths,
                exact_norm: g,
                exact_share: g / total,
                sampled_path_norm: mean,
                sampled_total: mean.map(|m| m * paths),
            });
        }
    }
    rows
}

/// The smallest window of path lengths `[k0, k1]` whose exact norms hold at least `share` of
/// `sum_k ||G_k||` (Veit: "effective paths"), from one unit's norms.
pub fn effective_window(norms: &[f64], share: f64) -> Option<(usize, usize)> {
    let total: f64 = norms.iter().sum();
    if total.is_nan() || total <= 0.0 || !total.is_finite() {
        return None;
    }
    let mut best: Option<(usize, usize)> = None;
    for k0 in 0..norms.len() {
        let mut acc = 0.0;
        for (k1, &g) in norms.iter().enumerate().skip(k0) {
            acc += g;
            if acc >= share * total {
                if best.is_none_or(|(a, b)| k1 - k0 < b - a) {
                    best = Some((k0, k1));
                }
                break;
            }
        }
    }
    best
}

/// Refuses what the decomposition cannot describe.
pub fn check_samples(samples: Option<usize>) -> Result<()> {
    if samples == Some(0) {
        bail!("--sample: needs at least 1 path per length");
    }
    // Each length's sampled norms are held at once.
    crate::budget::ensure_at_most("--sample", samples.unwrap_or(0) as u64, 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binomials() {
        assert_eq!(binomial(54, 0), 1.0);
        assert_eq!(binomial(54, 27), 1_946_939_425_648_112.0);
        assert_eq!(binomial(5, 2), 10.0);
        assert_eq!(binomial(3, 4), 0.0);
    }

    #[test]
    fn windows() {
        assert_eq!(
            effective_window(&[0.0, 1.0, 8.0, 1.0, 0.0], 0.8),
            Some((2, 2))
        );
        assert_eq!(effective_window(&[1.0, 1.0, 1.0, 1.0], 0.5), Some((0, 1)));
        assert_eq!(effective_window(&[0.0, 0.0], 0.9), None);
    }
}
