//! Statistics for comparing replicates: quantiles and the Mann-Whitney U test.
//!
//! Training runs of one variant differ by seed, and their final errors are neither normal nor
//! free of outliers (a run that fails to train sits far from the rest), so comparisons use
//! medians, interquartile ranges and a rank test.

/// The `q`-quantile (0..=1) of `values` by linear interpolation between order statistics
/// (Hyndman and Fan's type 7, the default of NumPy and R); `None` when empty. `inf` sorts last.
pub fn quantile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() || values.iter().any(|v| v.is_nan()) {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    if lo == hi || v[lo] == v[hi] {
        return Some(v[lo]);
    }
    Some(v[lo] + (pos - lo as f64) * (v[hi] - v[lo]))
}

/// The least-squares slope of `ln y` against `ln x` (the exponent of a power law fitted to
/// the points), or `None` with fewer than two distinct positive x or a non-positive y.
pub fn log_log_slope(points: &[(f64, f64)]) -> Option<f64> {
    if points
        .iter()
        .any(|&(x, y)| !(x > 0.0 && y > 0.0 && x.is_finite() && y.is_finite()))
    {
        return None;
    }
    let n = points.len() as f64;
    let (lx, ly): (Vec<f64>, Vec<f64>) = points.iter().map(|&(x, y)| (x.ln(), y.ln())).unzip();
    let (mx, my) = (lx.iter().sum::<f64>() / n, ly.iter().sum::<f64>() / n);
    let sxx: f64 = lx.iter().map(|x| (x - mx).powi(2)).sum();
    let sxy: f64 = lx.iter().zip(&ly).map(|(x, y)| (x - mx) * (y - my)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

pub fn median(values: &[f64]) -> Option<f64> {
    quantile(values, 0.5)
}

/// The first and third quartiles.
pub fn quartiles(values: &[f64]) -> Option<(f64, f64)> {
    Some((quantile(values, 0.25)?, quantile(values, 0.75)?))
}

/// How the p-value was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PMethod {
    /// From the exact distribution of U (no ties).
    Exact,
    /// Normal approximation with tie and continuity corrections.
    Normal,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MannWhitney {
    /// `U` of the first sample: the number of pairs `(a, b)` with `a > b`, ties counting 1/2.
    pub u: f64,
    /// Two-sided p-value of "the two samples come from one distribution".
    pub p: f64,
    pub method: PMethod,
}

/// Number of ways to reach each `U = 0 ..= m n` when ranking `m` against `n` values without
/// ties (the recursion `c(m, n, u) = c(m-1, n, u-n) + c(m, n-1, u)`).
fn u_counts(m: usize, n: usize) -> Vec<f64> {
    // table[j][u] for the current i: counts with i values of the first sample, j of the second.
    let mut prev: Vec<Vec<f64>> = (0..=n).map(|_| vec![1.0]).collect();
    for i in 1..=m {
        let mut cur: Vec<Vec<f64>> = Vec::with_capacity(n + 1);
        cur.push(vec![1.0]);
        for j in 1..=n {
            let mut row = vec![0.0; i * j + 1];
            // The largest value belongs to the first sample (it beats all j) or the second.
            for (u, c) in prev[j].iter().enumerate() {
                row[u + j] += c;
            }
            for (u, c) in cur[j - 1].iter().enumerate() {
                row[u] += c;
            }
            cur.push(row);
        }
        prev = cur;
    }
    prev.swap_remove(n)
}

/// The two-sided Mann-Whitney U test of `a` against `b` (`inf` allowed: it ranks last; NaN is
/// not). Exact for samples without ties up to 20 values each, else the normal approximation.
pub fn mann_whitney(a: &[f64], b: &[f64]) -> Option<MannWhitney> {
    let (m, n) = (a.len(), b.len());
    if m == 0 || n == 0 || a.iter().chain(b).any(|v| v.is_nan()) {
        return None;
    }
    let mut u = 0.0f64;
    for &x in a {
        for &y in b {
            u += match x.total_cmp(&y) {
                std::cmp::Ordering::Greater => 1.0,
                std::cmp::Ordering::Equal => 0.5,
                std::cmp::Ordering::Less => 0.0,
            };
        }
    }
    let mut all: Vec<f64> = a.iter().chain(b).copied().collect();
    all.sort_by(f64::total_cmp);
    // Sizes of groups of tied values.
    let mut ties = Vec::new();
    let mut i = 0;
    while i < all.len() {
        let j = all[i..].iter().take_while(|&&v| v == all[i]).count();
        ties.push(j as f64);
        i += j;
    }
    let mn = (m * n) as f64;
    if ties.iter().all(|&t| t == 1.0) && m <= 20 && n <= 20 {
        let counts = u_counts(m, n);
        let total: f64 = counts.iter().sum();
        // U is symmetric about mn/2: the two-sided p is twice the smaller tail.
        let k = u.min(mn - u) as usize;
        let tail = counts[..=k].iter().sum::<f64>() / total;
        return Some(MannWhitney {
            u,
            p: (2.0 * tail).min(1.0),
            method: PMethod::Exact,
        });
    }
    let big_n = (m + n) as f64;
    let tie_term: f64 = ties.iter().map(|t| t * t * t - t).sum::<f64>() / (big_n * (big_n - 1.0));
    let var = mn / 12.0 * ((big_n + 1.0) - tie_term);
    if var <= 0.0 {
        // Every value equal: no evidence of a difference.
        return Some(MannWhitney {
            u,
            p: 1.0,
            method: PMethod::Normal,
        });
    }
    let z = ((u - mn / 2.0).abs() - 0.5).max(0.0) / var.sqrt();
    Some(MannWhitney {
        u,
        p: (2.0 * normal_sf(z)).min(1.0),
        method: PMethod::Normal,
    })
}

/// `P(Z > z)` for a standard normal `Z`, from the complementary error function (Numerical
/// Recipes' Chebyshev fit, relative error below 1.2e-7).
fn normal_sf(z: f64) -> f64 {
    let x = z / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * x.abs());
    let poly = -x * x - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let erfc = t * poly.exp();
    0.5 * if x >= 0.0 { erfc } else { 2.0 - erfc }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_log_slope_recovers_a_power_law() {
        let pts: Vec<(f64, f64)> = [6.0, 12.0, 24.0, 96.0]
            .iter()
            .map(|&l: &f64| (l, 3.0 * l.powf(-0.5)))
            .collect();
        assert!((log_log_slope(&pts).unwrap() + 0.5).abs() < 1e-12);
        assert_eq!(log_log_slope(&[(2.0, 1.0), (2.0, 3.0)]), None);
        assert_eq!(log_log_slope(&[(2.0, 1.0), (4.0, 0.0)]), None);
    }

    #[test]
    fn quantiles_interpolate_like_numpy() {
        let v = [7.0, 1.0, 3.0, 5.0];
        assert_eq!(median(&v), Some(4.0));
        // numpy.percentile([1, 3, 5, 7], [25, 75]) = [2.5, 5.5]
        assert_eq!(quartiles(&v), Some((2.5, 5.5)));
        assert_eq!(median(&[2.0]), Some(2.0));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[1.0, f64::INFINITY, 2.0]), Some(2.0));
    }

    #[test]
    fn exact_p_values_match_the_distribution_of_u() {
        // Complete separation: U = 0, p = 2 / C(m + n, m).
        let a = [1.0, 2.0, 3.0];
        let b = [4.0, 5.0, 6.0];
        let t = mann_whitney(&a, &b).unwrap();
        assert_eq!((t.u, t.method), (0.0, PMethod::Exact));
        assert!((t.p - 2.0 / 20.0).abs() < 1e-15, "{}", t.p);
        let a: Vec<f64> = (0..7).map(f64::from).collect();
        let b: Vec<f64> = (7..14).map(f64::from).collect();
        let t = mann_whitney(&b, &a).unwrap();
        assert_eq!(t.u, 49.0);
        assert!((t.p - 2.0 / 3432.0).abs() < 1e-15, "{}", t.p);
        // scipy.stats.mannwhitneyu([1.5, 2, 3, 4.5, 8], [5, 6, 7, 2.5, 9, 10],
        // method="exact"): U = 6, p = 0.12554112554112554.
        let t = mann_whitney(&[1.5, 2.0, 3.0, 4.5, 8.0], &[5.0, 6.0, 7.0, 2.5, 9.0, 10.0]).unwrap();
        assert_eq!(t.u, 6.0);
        assert!((t.p - 0.125_541_125_541_125_54).abs() < 1e-12, "{}", t.p);
        // scipy, [1, 4, 6, 9] against [2, 3, 5, 7, 8]: U = 10, p = 1.
        let t = mann_whitney(&[1.0, 4.0, 6.0, 9.0], &[2.0, 3.0, 5.0, 7.0, 8.0]).unwrap();
        assert_eq!((t.u, t.p), (10.0, 1.0));
    }

    #[test]
    fn ties_use_the_corrected_normal_approximation() {
        // scipy.stats.mannwhitneyu([1, 2, 2, 3], [2, 3, 3, 4, inf], method="asymptotic",
        // use_continuity=True): U = 3, p = 0.09934224785346528 (erfc here is good to 1e-7).
        let t = mann_whitney(&[1.0, 2.0, 2.0, 3.0], &[2.0, 3.0, 3.0, 4.0, f64::INFINITY]).unwrap();
        assert_eq!((t.u, t.method), (3.0, PMethod::Normal));
        assert!((t.p - 0.099_342_247_853_465_28).abs() < 1e-6, "{}", t.p);
        let same = mann_whitney(&[1.0, 1.0], &[1.0, 1.0]).unwrap();
        assert_eq!(same.p, 1.0);
        assert!(mann_whitney(&[], &[1.0]).is_none());
        assert!(mann_whitney(&[f64::NAN], &[1.0]).is_none());
    }
}
