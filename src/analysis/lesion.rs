//! Lesions (Veit, Wilber and Belongie, NIPS 2016): delete residual units from a trained
//! network and measure the test error. Deleting unit l's branch leaves `x_{l+1} = f(h(x_l))`
//! (the shortcut and the after-addition function kept); in a plain network (no shortcut),
//! deleting a unit replaces it by the identity, `x_{l+1} = x_l`, which only units that keep
//! the shape allow. Veit et al.: single deletions barely matter in a ResNet except at the
//! downsampling units; a plain network falls to chance.

use anyhow::{bail, Result};
use rand::seq::index::sample;

use crate::data::Split;
use crate::float::Float;
use crate::layers::branch_scale::BranchScale;
use crate::net::Network;
use crate::rng::{derive_seed, rng};
use crate::unit::{Op, ResidualUnit, ShortcutKind};

/// Unit `u` with its branch deleted: the branch's output multiplied by 0 (it still runs, so
/// shape-changing units keep their output shape); for a plain unit, the identity.
pub fn delete_branch<T: Float>(u: &ResidualUnit<T>) -> Result<ResidualUnit<T>> {
    let mut out = u.clone();
    if u.shortcut == ShortcutKind::None {
        if u.changes_shape {
            bail!("unit {} of a plain network changes the shape: it cannot be replaced by the identity", u.index);
        }
        out.shortcut = ShortcutKind::Identity;
        out.shortcut_ops.clear();
        out.pre.clear();
        out.after_add.clear();
        out.branch = Vec::new();
    }
    out.branch.push(Op::BranchScale(
        BranchScale::scalar(&format!("unit{}.lesion", u.index), 0.0).cast(),
    ));
    Ok(out)
}

/// The units a lesion may delete: every unit of a residual network; the shape-keeping units
/// of a plain one.
pub fn deletable(net: &Network) -> Vec<usize> {
    net.units
        .iter()
        .filter(|u| u.shortcut != ShortcutKind::None || !u.changes_shape)
        .map(|u| u.index)
        .collect()
}

/// `net` with the units in `deleted` removed.
pub fn lesioned<T: Float>(net: &Network<T>, deleted: &[usize]) -> Result<Network<T>> {
    let mut out = net.clone();
    for &l in deleted {
        out.units[l] = delete_branch(&net.units[l])?;
    }
    Ok(out)
}

/// Test error of `net` with `deleted` removed (BN in evaluation mode, the whole test split).
pub fn test_error<T: Float>(net: &Network<T>, data: &Split, deleted: &[usize]) -> Result<f64> {
    let flat = net.input_shape.len() == 1;
    Ok(super::evaluate::evaluate(&lesioned(net, deleted)?, data, flat)?.1)
}

/// The k-unit draws of a lesion: `draws` sets of k deletable units, seeded by `(seed, k, d)`.
pub fn draws(net: &Network, k: usize, draws: usize, seed: u64) -> Vec<Vec<usize>> {
    let pool = deletable(net);
    (0..draws)
        .map(|d| {
            let mut r = rng(derive_seed(
                seed,
                &[crate::rng::purpose::LESION, k as u64, d as u64],
            ));
            let mut set: Vec<usize> = sample(&mut r, pool.len(), k.min(pool.len()))
                .into_iter()
                .map(|i| pool[i])
                .collect();
            set.sort_unstable();
            set
        })
        .collect()
}

/// One lesion: what it deletes.
#[derive(Debug, Clone, PartialEq)]
pub struct Lesion {
    /// `none` (the intact net), `single` (one unit) or `random` (k drawn units).
    pub kind: &'static str,
    pub k: usize,
    pub draw: usize,
    pub units: Vec<usize>,
}

impl Lesion {
    /// The row of the lesion table (schema `LESIONS`) with its measured test error; the
    /// units as `net` names them (an imported model's module names, else their indices).
    pub fn fields(&self, test_error: f64, net: &Network) -> Vec<String> {
        let units: Vec<String> = self.units.iter().map(|&u| net.unit_label(u)).collect();
        vec![
            self.kind.to_string(),
            self.k.to_string(),
            self.draw.to_string(),
            units.join(" "),
            crate::analysis::record::fmt_f64(test_error),
        ]
    }
}

/// Every lesion of a study: the intact net, each deletable unit alone, and `draws` sets of k
/// random units for k = 1..n/2.
pub fn plan(net: &Network, n_draws: usize, seed: u64) -> Vec<Lesion> {
    let pool = deletable(net);
    let mut out = vec![Lesion {
        kind: "none",
        k: 0,
        draw: 0,
        units: vec![],
    }];
    out.extend(pool.iter().map(|&l| Lesion {
        kind: "single",
        k: 1,
        draw: 0,
        units: vec![l],
    }));
    for k in 1..=pool.len() / 2 {
        for (d, units) in draws(net, k, n_draws, seed).into_iter().enumerate() {
            out.push(Lesion {
                kind: "random",
                k,
                draw: d,
                units,
            });
        }
    }
    out
}

/// The test error of every lesion, in parallel (each its own network: no order dependence).
pub fn run<T: Float>(
    net: &Network<T>,
    data: &Split,
    lesions: &[Lesion],
    progress: &(dyn Fn() + Sync),
    stop: &crate::interrupt::Interrupt,
) -> Result<Vec<f64>> {
    use rayon::prelude::*;
    lesions
        .par_iter()
        .map(|l| {
            stop.check(|| format!("before all {} lesions were measured", lesions.len()))?;
            let e = crate::spin_join::without_helper(|| test_error(net, data, &l.units));
            progress();
            e
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::gaussian_batch;
    use crate::layers::Mode;
    use crate::net::{build_mlp, MlpConfig};
    use crate::unit::{ForwardCtx, Placement};

    fn mlp(shortcut: &str) -> Network {
        build_mlp(&MlpConfig {
            units: 4,
            width: 8,
            input_dim: 5,
            classes: 3,
            placement: Placement::Original,
            shortcut: shortcut.parse().unwrap(),
            norm: crate::layers::NormKind::Batch,
            init: crate::net::Init::He,
            seed: 1,
        })
        .unwrap()
    }

    /// A deleted residual unit outputs f(h(x)); a deleted plain unit outputs x.
    #[test]
    fn deleted_units_compute_what_they_should() {
        let ctx = ForwardCtx::forward_only(Mode::Eval);
        let (x, _) = gaussian_batch(&[8], 6, 3, 2);
        let x = x.mapv(f64::abs);
        let res = mlp("identity");
        let u = delete_branch(&res.units[1]).unwrap();
        // original unit: f = ReLU, h = identity: ReLU(x) = x for x >= 0.
        assert_eq!(u.forward(&x, &ctx).0, x);
        let plain = mlp("none");
        let u = delete_branch(&plain.units[2]).unwrap();
        let neg = x.mapv(|v| -v);
        assert_eq!(u.forward(&neg, &ctx).0, neg, "the identity, not ReLU");
        // An undeleted plain unit does not pass x through.
        assert_ne!(plain.units[2].forward(&neg, &ctx).0, neg);
        assert_eq!(draws(&res, 2, 3, 7).len(), 3);
        assert!(draws(&res, 2, 3, 7)
            .iter()
            .all(|d| d.len() == 2 && d[0] < d[1]));
    }
}
