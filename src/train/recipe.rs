//! The training recipes of the paper's descendants, beside the common one.
//!
//! The common recipe is the experiment's `[train]` table (the paper's SGD, its warm-up at a
//! tenth of the rate and its step schedule). A descendant's own recipe changes what its
//! authors' code changes, and nothing else, so that a difference between the two is the
//! recipe's:
//!
//! - **fixup** (Zhang, Dauphin and Ma 2019; hongyi-zhang/Fixup, `cifar/cifar_train.py`): no
//!   warm-up at batch 128 on one GPU (the script warms up only when the scaled rate exceeds
//!   0.1), and every parameter named `bias` or `scale` (the scalar biases, the classifier's
//!   bias, the branch multipliers) in its own group at a tenth of the base rate, with the same
//!   weight decay. Mixup, on by default in that script, is off, as in its README's run without
//!   it.
//! - **rezero** (Bachlechner et al. 2020; the authors' CIFAR code, tbachlechner/Fixup,
//!   `cifar/run*.sh`): the same script without warm-up; the residual weight `alpha` sits in the
//!   main group (full rate, weight decay).
//!
//! SkipInit (De and Smith 2020) has no recipe here: no code was released, and its text only
//! says that it tunes the rate per batch size (a grid's `lrs` does that). ReZero's fully
//! connected nets are trained in its authors' notebook with Adagrad at a constant rate, which
//! resprop does not offer; its `rezero` recipe is the ResNet one.

use crate::net::{Init, NetDescription};
use crate::unit::ShortcutKind;

use super::OptimizerKind;

/// A training recipe: the common one, or a descendant's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Recipe {
    Common,
    Fixup,
    ReZero,
}

impl Recipe {
    pub const ALL: [Recipe; 3] = [Recipe::Common, Recipe::Fixup, Recipe::ReZero];

    /// The warm-up the recipe sets, in steps (`None`: the common recipe's, from `[train]`).
    pub fn warmup(self) -> Option<usize> {
        match self {
            Recipe::Common => None,
            Recipe::Fixup | Recipe::ReZero => Some(0),
        }
    }

    /// The rate of Fixup's scalars relative to the base rate.
    pub fn scalar_lr_factor(self) -> f64 {
        match self {
            Recipe::Fixup => 0.1,
            Recipe::Common | Recipe::ReZero => 1.0,
        }
    }

    /// Refuses a recipe for a network it was not written for, or with an optimizer other than
    /// its authors' SGD.
    pub fn check(self, arch: &NetDescription, optimizer: OptimizerKind) -> Result<(), String> {
        if self == Recipe::Common {
            return Ok(());
        }
        if optimizer != OptimizerKind::Sgd {
            return Err(format!(
                "the {self} recipe is SGD with momentum, as its authors train (train.optimizer is {optimizer})"
            ));
        }
        let alpha = matches!(arch.shortcut, ShortcutKind::Alpha { .. });
        let fits = match self {
            Recipe::Common => true,
            Recipe::Fixup => arch.init == Init::Fixup,
            Recipe::ReZero => alpha,
        };
        if fits {
            Ok(())
        } else {
            Err(format!(
                "the {self} recipe trains {} and this network is {} {} init {}",
                match self {
                    Recipe::Fixup => "nets with init fixup",
                    Recipe::Common | Recipe::ReZero => "nets with an alpha:A (or rezero) shortcut",
                },
                arch.placement,
                arch.shortcut,
                arch.init
            ))
        }
    }
}

impl std::str::FromStr for Recipe {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Recipe::ALL
            .into_iter()
            .find(|r| r.to_string() == s)
            .ok_or_else(|| format!("unknown recipe '{s}' (expected common, fixup or rezero)"))
    }
}

impl std::fmt::Display for Recipe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Recipe::Common => "common",
            Recipe::Fixup => "fixup",
            Recipe::ReZero => "rezero",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_ones_are_refused() {
        for r in Recipe::ALL {
            assert_eq!(r.to_string().parse::<Recipe>(), Ok(r));
        }
        let e = "fix-up".parse::<Recipe>().unwrap_err();
        assert!(e.contains("'fix-up'") && e.contains("rezero"), "{e}");
    }

    #[test]
    fn a_recipe_fits_only_its_own_networks() {
        let fixup = NetDescription {
            init: Init::Fixup,
            norm: crate::layers::NormKind::None,
            ..Default::default()
        };
        let rezero = NetDescription {
            shortcut: ShortcutKind::Alpha { init: 0.0 },
            ..Default::default()
        };
        let sgd = OptimizerKind::Sgd;
        assert!(Recipe::Fixup.check(&fixup, sgd).is_ok());
        assert!(Recipe::ReZero.check(&rezero, sgd).is_ok());
        assert!(Recipe::Common.check(&fixup, OptimizerKind::Adam).is_ok());
        let e = Recipe::Fixup.check(&rezero, sgd).unwrap_err();
        assert!(e.contains("init fixup"), "{e}");
        let e = Recipe::ReZero.check(&fixup, sgd).unwrap_err();
        assert!(e.contains("alpha:A"), "{e}");
        let e = Recipe::Fixup
            .check(&fixup, OptimizerKind::Adam)
            .unwrap_err();
        assert!(e.contains("SGD"), "{e}");
        // Only Fixup's scalars change rate; every own recipe drops the warm-up.
        assert_eq!(Recipe::Fixup.scalar_lr_factor(), 0.1);
        assert_eq!(Recipe::ReZero.scalar_lr_factor(), 1.0);
        assert_eq!(Recipe::Common.warmup(), None);
        assert_eq!(Recipe::Fixup.warmup(), Some(0));
    }
}
