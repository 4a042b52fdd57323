//! How the weights start: He's rule (the paper's), Glorot and Bengio's "Xavier" (Xiong et
//! al.'s analysis of Pre-/Post-LN assumes it), or Fixup's rescaled start (`fixup.rs`).
//!
//! Every weight layer is drawn once, as `N(0, std^2)` with the std [`Init::std`] gives for its
//! role and fans; the builders call nothing else, so the rule a layer was drawn with is the
//! one documented here (a test draws every layer of every network and checks it).

use serde::Serialize;

/// How the weights start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Init {
    /// He et al.'s, on fan-out (`N(0, 2 / fan_out)`), as in the paper's code; the classifier
    /// `N(0, 1 / fan_in)`, as in PyTorch's reference nets.
    #[default]
    He,
    /// Glorot and Bengio's, `N(0, 2 / (fan_in + fan_out))`, on every weight layer, the
    /// classifier included: half He's variance on a square layer.
    Xavier,
    /// Fixup's rescaled start (needs a network without normalisation): drawn as He's, then
    /// rewritten by `fixup::apply`.
    Fixup,
}

/// What a weight layer is for, which decides its rule under He's initialisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The stem, a branch's layers, a gate, a projection.
    Hidden,
    /// The last dense layer, producing the logits.
    Classifier,
}

impl Init {
    pub fn is_he(&self) -> bool {
        *self == Init::He
    }

    /// The std of a weight layer's draw. `fan_in` and `fan_out` count the receptive field of a
    /// convolution (`k k C_in`, `k k C_out`).
    pub fn std(self, role: Role, fan_in: usize, fan_out: usize) -> f64 {
        match (self, role) {
            (Init::He | Init::Fixup, Role::Hidden) => (2.0 / fan_out as f64).sqrt(),
            (Init::He | Init::Fixup, Role::Classifier) => (1.0 / fan_in as f64).sqrt(),
            (Init::Xavier, _) => (2.0 / (fan_in + fan_out) as f64).sqrt(),
        }
    }
}

impl std::str::FromStr for Init {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "he" => Ok(Init::He),
            "xavier" => Ok(Init::Xavier),
            "fixup" => Ok(Init::Fixup),
            _ => Err(format!("unknown init '{s}' (expected he, xavier or fixup)")),
        }
    }
}

impl std::fmt::Display for Init {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Init::He => "he",
            Init::Xavier => "xavier",
            Init::Fixup => "fixup",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_print() {
        for init in [Init::He, Init::Xavier, Init::Fixup] {
            assert_eq!(init.to_string().parse::<Init>(), Ok(init));
        }
        assert!("glorot"
            .parse::<Init>()
            .unwrap_err()
            .contains("unknown init 'glorot'"));
    }
}
