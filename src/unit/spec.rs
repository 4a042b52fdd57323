//! The paper's vocabulary: activation placements (Fig. 4) and shortcut variants (Fig. 2),
//! parsed from the strings the CLI and experiment files use, validated once.

use std::fmt;
use std::str::FromStr;

/// Where BN and ReLU sit relative to the addition (Fig. 4 of the paper).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Placement {
    /// (a) W BN ReLU W BN, add, ReLU.
    Original,
    /// (b) W BN ReLU W, add, BN ReLU.
    BnAfterAdd,
    /// (c) W BN ReLU W BN ReLU, add.
    ReluBeforeAdd,
    /// (d) ReLU W BN ReLU W BN, add.
    ReluPreact,
    /// (e) BN ReLU W BN ReLU W, add.
    FullPreact,
    /// The Transformer's Post-LN shape with one normalisation: W ReLU W, add, N
    /// (`x_{l+1} = N(x_l + F(x_l))`; Fig. 4(b) without the ReLU after the addition).
    PostNorm,
    /// The Transformer's Pre-LN shape: N W ReLU W, add (`x_{l+1} = x_l + F(N(x_l))`), and a
    /// final N before the head; f is the identity, as in Fig. 4(e).
    PreNorm,
}

/// One step of a branch or after-addition recipe; `Weight(i)` / `Norm(i)` count from 1.
/// A recipe names where a normalisation sits, not which one: the network's
/// [`NormKind`](crate::layers::NormKind) fills every `Norm` slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Weight(usize),
    Norm(usize),
    Relu,
}

impl Placement {
    /// The paper's five (Fig. 4).
    pub const PAPER: [Placement; 5] = [
        Placement::Original,
        Placement::BnAfterAdd,
        Placement::ReluBeforeAdd,
        Placement::ReluPreact,
        Placement::FullPreact,
    ];

    /// The paper's five and the two one-normalisation units of its descendants.
    pub const ALL: [Placement; 7] = [
        Placement::Original,
        Placement::BnAfterAdd,
        Placement::ReluBeforeAdd,
        Placement::ReluPreact,
        Placement::FullPreact,
        Placement::PostNorm,
        Placement::PreNorm,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Placement::Original => "original",
            Placement::BnAfterAdd => "bn-after-add",
            Placement::ReluBeforeAdd => "relu-before-add",
            Placement::ReluPreact => "relu-preact",
            Placement::FullPreact => "full-preact",
            Placement::PostNorm => "post-norm",
            Placement::PreNorm => "pre-norm",
        }
    }

    /// Pre-activation placements put the activation (or, for pre-norm, the normalisation)
    /// inside the branch, before the weights: a unit that changes shape applies it once,
    /// before the split, so its projection reads the same normalised input.
    pub fn is_preact(self) -> bool {
        matches!(
            self,
            Placement::ReluPreact | Placement::FullPreact | Placement::PreNorm
        )
    }

    /// What the stem applies after its weight layer: N ReLU for the post-activation
    /// placements, nothing where the units start with their own (pre-activation) or where the
    /// Transformer's embedding feeds the first unit directly (post-norm, pre-norm).
    pub fn stem_recipe(self) -> Vec<Step> {
        match self {
            Placement::Original | Placement::BnAfterAdd | Placement::ReluBeforeAdd => {
                vec![Step::Norm(0), Step::Relu]
            }
            Placement::ReluPreact
            | Placement::FullPreact
            | Placement::PostNorm
            | Placement::PreNorm => vec![],
        }
    }

    /// What the head applies before pooling and the classifier: N ReLU after the last
    /// addition of the pre-activation placements, the final N of pre-norm, nothing otherwise.
    pub fn head_recipe(self) -> Vec<Step> {
        match self {
            Placement::ReluPreact | Placement::FullPreact => vec![Step::Norm(0), Step::Relu],
            Placement::PreNorm => vec![Step::Norm(0)],
            Placement::Original
            | Placement::BnAfterAdd
            | Placement::ReluBeforeAdd
            | Placement::PostNorm => vec![],
        }
    }

    /// True when the after-addition function `f` is the identity (Eq. 3 holds).
    pub fn after_add_is_identity(self) -> bool {
        self.after_add_recipe().is_empty()
    }

    /// The branch `F` for a unit with `weights` weight layers (2 basic, 3 bottleneck).
    pub fn branch_recipe(self, weights: usize) -> Vec<Step> {
        let mut steps = Vec::new();
        for i in 1..=weights {
            let last = i == weights;
            match self {
                Placement::Original => {
                    steps.extend([Step::Weight(i), Step::Norm(i)]);
                    if !last {
                        steps.push(Step::Relu);
                    }
                }
                Placement::BnAfterAdd => {
                    steps.push(Step::Weight(i));
                    if !last {
                        steps.extend([Step::Norm(i), Step::Relu]);
                    }
                }
                Placement::ReluBeforeAdd => {
                    steps.extend([Step::Weight(i), Step::Norm(i), Step::Relu])
                }
                Placement::ReluPreact => {
                    if i == 1 {
                        steps.push(Step::Relu);
                    }
                    steps.extend([Step::Weight(i), Step::Norm(i)]);
                    if !last {
                        steps.push(Step::Relu);
                    }
                }
                Placement::FullPreact => steps.extend([Step::Norm(i), Step::Relu, Step::Weight(i)]),
                Placement::PostNorm | Placement::PreNorm => {
                    if i == 1 && self == Placement::PreNorm {
                        steps.push(Step::Norm(1));
                    }
                    steps.push(Step::Weight(i));
                    if !last {
                        steps.push(Step::Relu);
                    }
                }
            }
        }
        steps
    }

    /// The after-addition function `f`; BN indices continue after the branch's.
    pub fn after_add_recipe(self) -> Vec<Step> {
        match self {
            Placement::Original => vec![Step::Relu],
            Placement::BnAfterAdd => vec![Step::Norm(0), Step::Relu],
            Placement::PostNorm => vec![Step::Norm(0)],
            Placement::ReluBeforeAdd
            | Placement::ReluPreact
            | Placement::FullPreact
            | Placement::PreNorm => vec![],
        }
    }
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Placement {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Placement::ALL
            .iter()
            .copied()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown placement '{s}' (expected one of: {})",
                    Placement::ALL
                        .iter()
                        .map(|p| p.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
    }
}

/// The shortcut `h` of Eq. 1 and how the branch is weighted (Fig. 2 of the paper).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ShortcutKind {
    /// `h(x) = x`.
    Identity,
    /// `h(x) = lambda x`, branch scaled by `branch` (1 unless given, 0.5/0.5 in the paper).
    Scale { lambda: f64, branch: f64 },
    /// Exclusive gating: `(1 - g) x + g F`, `g = sigmoid(W_g x + b_g)`, `b_g` initialised to `bias`.
    Gate { bias: f64 },
    /// Shortcut-only gating: `(1 - g) x + F`.
    ShortcutGate { bias: f64 },
    /// A learned projection `h(x) = W_s x` (a 1x1 convolution in conv nets), no BN.
    Conv1x1,
    /// `h(x) = m * x` with a Bernoulli mask, `P(m = 0) = p`; not rescaled unless asked.
    Dropout { p: f64, rescale: bool },
    /// A plain network: `h = 0`.
    None,
    /// `h(x) = x` and `x + a F` with a learned scalar `a` per unit, initialised at `init`
    /// (SkipInit; `rezero` is `alpha:0`). The scale is the branch's last op.
    Alpha { init: f64 },
    /// `h(x) = x` and `x + diag(lambda) F`, a learned value per channel initialised at `init`
    /// (CaiT's LayerScale). The scale is the branch's last op.
    LayerScale { init: f64 },
    /// DeepNorm (Wang et al. 2022): `x_{l+1} = N(a x_l + F(x_l))` with `a = (2L)^(1/4)` and the
    /// branch's weight layers initialised scaled by `b = (8L)^(-1/4)`, for L units; post-norm
    /// only. `alpha` is `a`, set by the builders once the depth is known
    /// ([`resolve_for_depth`](crate::unit::shortcut::resolve_for_depth)); parsed as 0.
    DeepNorm { alpha: f64 },
    /// He et al. 2015's option A where a unit changes shape: keep every `stride`-th pixel,
    /// zero-pad the new channels (a linear map with no parameters). Chosen by
    /// [`Projection::Pad`], never by `--shortcut`.
    Pad,
}

/// How a unit that changes width or resolution carries `x` to the sum: the paper's nets need
/// a non-identity `h` there (He et al. 2015, Sec. 3.3, options A and B).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Projection {
    /// A 1x1 projection followed by BatchNorm: option B as fb.resnet.torch and torchvision
    /// build it for post-activation nets.
    Bn,
    /// A bare 1x1 projection, as the paper's pre-activation code has it (its input is already
    /// normalised by the BN-ReLU the unit shares between its two paths).
    Plain,
    /// Option A: subsample with the stride and zero-pad the new channels; no parameters, and
    /// an identity on the old channels, so the direct part carries on across the stage change.
    Pad,
}

impl Projection {
    pub const ALL: [Projection; 3] = [Projection::Bn, Projection::Plain, Projection::Pad];

    pub fn name(self) -> &'static str {
        match self {
            Projection::Bn => "bn",
            Projection::Plain => "plain",
            Projection::Pad => "pad",
        }
    }

    /// The convention each placement's reference code uses: BN after the projection for the
    /// post-activation placements, a bare projection for the pre-activation ones.
    /// The one-normalisation units (post-norm, pre-norm) take a bare projection too: their
    /// normalisation is the one the `--norm` choice fills, not a BatchNorm of the shortcut's.
    pub fn default_for(placement: Placement) -> Projection {
        if placement.is_preact() || placement == Placement::PostNorm {
            Projection::Plain
        } else {
            Projection::Bn
        }
    }
}

impl fmt::Display for Projection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Projection {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Projection::ALL
            .iter()
            .copied()
            .find(|p| p.name() == s)
            .ok_or_else(|| format!("unknown projection '{s}' (expected bn, plain or pad)"))
    }
}

/// One kind `--shortcut` takes, as its user writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShortcutSyntax {
    /// The form it takes, a number as a capital letter (`scale:L:B`).
    pub syntax: &'static str,
    /// The form with numbers filled in: it parses, and displays back as itself (`rezero`
    /// displays as `alpha:0`, what it is). The tests build every kind from these.
    pub example: &'static str,
    /// What it is, in one line.
    pub meaning: &'static str,
}

/// Every kind `--shortcut` takes (Fig. 2, then the learned branch scalings and DeepNorm), in
/// the order they are listed to the user: the one list the parser's error, `--help` (through
/// [`shortcut_help`] and [`shortcut_long_help`]) and the tests read. A new [`ShortcutKind`]
/// has its line here (the test `every_shortcut_kind_has_an_example` does not compile until
/// the kind is named there).
pub const SHORTCUTS: &[ShortcutSyntax] = &[
    ShortcutSyntax {
        syntax: "identity",
        example: "identity",
        meaning: "h = x",
    },
    ShortcutSyntax {
        syntax: "scale:L",
        example: "scale:0.5",
        meaning: "h = L x",
    },
    ShortcutSyntax {
        syntax: "scale:L:B",
        example: "scale:0.5:0.5",
        meaning: "h = L x, the branch scaled by B (the paper's 0.5/0.5)",
    },
    ShortcutSyntax {
        syntax: "gate:B",
        example: "gate:-2",
        meaning: "exclusive gating (1-g) x + g F, g = sigmoid(W_g x + b), b initialised to B",
    },
    ShortcutSyntax {
        syntax: "shortcut-gate:B",
        example: "shortcut-gate:-2",
        meaning: "shortcut-only gating (1-g) x + F, g as for gate:B",
    },
    ShortcutSyntax {
        syntax: "conv1x1",
        example: "conv1x1",
        meaning: "a learned projection h = W_s x (a 1x1 convolution in a ResNet)",
    },
    ShortcutSyntax {
        syntax: "dropout:P",
        example: "dropout:0.5",
        meaning: "h = m x, m a Bernoulli mask dropping with probability P, not rescaled",
    },
    ShortcutSyntax {
        syntax: "dropout:P:rescale",
        example: "dropout:0.25:rescale",
        meaning: "dropout:P divided by 1-P",
    },
    ShortcutSyntax {
        syntax: "alpha:A",
        example: "alpha:0.3",
        meaning: "x + a F (h = x), a learned scalar a per unit initialised at A (SkipInit)",
    },
    ShortcutSyntax {
        syntax: "rezero",
        example: "rezero",
        meaning: "alpha:0 (ReZero with --norm none)",
    },
    ShortcutSyntax {
        syntax: "layerscale:E",
        example: "layerscale:0.1",
        meaning: "x + diag(lambda) F (h = x), one learned value per channel initialised at E (LayerScale)",
    },
    ShortcutSyntax {
        syntax: "deepnorm",
        example: "deepnorm",
        meaning: "post-norm with a --norm only: N(a x + F), a = (2L)^(1/4), the branch's weights started at b = (8L)^(-1/4) times He's",
    },
    ShortcutSyntax {
        syntax: "none",
        example: "none",
        meaning: "a plain net, h = 0",
    },
];

/// The examples of [`SHORTCUTS`] that `placement` and `norm` take, with their kinds (all but
/// `deepnorm` outside post-norm with a normalisation): what a test runs to cover every kind.
pub fn shortcut_examples(
    placement: Placement,
    norm: crate::layers::NormKind,
) -> impl Iterator<Item = (&'static str, ShortcutKind)> {
    SHORTCUTS
        .iter()
        .map(|s| {
            let kind: ShortcutKind = s.example.parse().expect("the examples parse (a test says)");
            (s.example, kind)
        })
        .filter(move |(_, kind)| kind.check_combination(placement, norm).is_ok())
}

/// [`SHORTCUTS`]' forms in one line, `identity, scale:L, ... or none`, as the parser's errors
/// and `-h` name them.
pub fn shortcut_syntax() -> &'static str {
    static TEXT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        let forms: Vec<&str> = SHORTCUTS.iter().map(|s| s.syntax).collect();
        match forms.split_last() {
            Some((last, [])) => last.to_string(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => String::new(),
        }
    });
    &TEXT
}

/// `--shortcut`'s help for `-h`: the forms in one line.
pub fn shortcut_help() -> String {
    format!(
        "Shortcut h (Fig. 2): {} (--help says what each is)",
        shortcut_syntax()
    )
}

/// `--shortcut`'s help for `--help`: one line per form of [`SHORTCUTS`] with its meaning.
pub fn shortcut_long_help() -> String {
    let width = SHORTCUTS.iter().map(|s| s.syntax.len()).max().unwrap_or(0);
    let mut text = String::from("Shortcut h (Fig. 2), one of:");
    for s in SHORTCUTS {
        text.push_str(&format!("\n  {:width$}  {}", s.syntax, s.meaning));
    }
    text
}

impl ShortcutKind {
    /// The constant `lambda` when `h` is a constant scaling (identity 1, plain net 0).
    pub fn constant_lambda(self) -> Option<f64> {
        match self {
            ShortcutKind::Identity
            | ShortcutKind::Alpha { .. }
            | ShortcutKind::LayerScale { .. } => Some(1.0),
            ShortcutKind::Scale { lambda, .. } => Some(lambda),
            ShortcutKind::DeepNorm { alpha } => Some(alpha),
            ShortcutKind::None => Some(0.0),
            // Gates and dropout depend on x or on a draw; conv1x1 and pad change shape.
            ShortcutKind::Gate { .. }
            | ShortcutKind::ShortcutGate { .. }
            | ShortcutKind::Conv1x1
            | ShortcutKind::Dropout { .. }
            | ShortcutKind::Pad => None,
        }
    }

    /// `h(x) = x`: the identity, and the learned branch scalings, whose scale sits in the
    /// branch.
    pub fn is_identity_h(self) -> bool {
        matches!(
            self,
            ShortcutKind::Identity | ShortcutKind::Alpha { .. } | ShortcutKind::LayerScale { .. }
        )
    }

    /// A shortcut that only makes sense with one placement or with a normalisation: one line
    /// saying so, or `Ok`. The one place such combinations are refused (the network builders
    /// and experiment files call it).
    pub fn check_combination(
        self,
        placement: Placement,
        norm: crate::layers::NormKind,
    ) -> Result<(), String> {
        match self {
            ShortcutKind::DeepNorm { .. } if placement != Placement::PostNorm => Err(format!(
                "--shortcut deepnorm needs --placement post-norm (it is x_{{l+1}} = N(a x_l + F(x_l))), got '{placement}'"
            )),
            ShortcutKind::DeepNorm { .. } if norm == crate::layers::NormKind::None => Err(
                "--shortcut deepnorm needs a normalisation, got --norm none: DeepNorm's a and b are derived for Post-LN, x_{l+1} = N(a x_l + F(x_l)), and without N the signal grows by a = (2L)^(1/4) per unit; use --norm layer (or batch)"
                    .into(),
            ),
            ShortcutKind::DeepNorm { .. }
            | ShortcutKind::Identity
            | ShortcutKind::Scale { .. }
            | ShortcutKind::Gate { .. }
            | ShortcutKind::ShortcutGate { .. }
            | ShortcutKind::Conv1x1
            | ShortcutKind::Dropout { .. }
            | ShortcutKind::None
            | ShortcutKind::Alpha { .. }
            | ShortcutKind::LayerScale { .. }
            | ShortcutKind::Pad => Ok(()),
        }
    }

    pub fn has_gate(self) -> bool {
        matches!(
            self,
            ShortcutKind::Gate { .. } | ShortcutKind::ShortcutGate { .. }
        )
    }
}

fn parse_number(full: &str, field: &str, what: &str) -> Result<f64, String> {
    let v: f64 = field
        .trim()
        .parse()
        .map_err(|_| format!("shortcut '{full}': {what} '{field}' is not a number"))?;
    if !v.is_finite() {
        return Err(format!(
            "shortcut '{full}': {what} must be finite, got '{field}'"
        ));
    }
    // A value that reads as 0 but was written otherwise underflowed: refuse it rather than run
    // a different shortcut. Magnitudes past 1e6 only overflow the forward signal.
    let mantissa = field.trim().split(['e', 'E']).next().unwrap_or("");
    if v == 0.0 && mantissa.chars().any(|c| ('1'..='9').contains(&c)) {
        return Err(format!(
            "shortcut '{full}': {what} '{field}' is too small for f64 (it would read as 0)"
        ));
    }
    if v.abs() > MAX_SHORTCUT_PARAMETER {
        return Err(format!(
            "shortcut '{full}': {what} must be at most {MAX_SHORTCUT_PARAMETER:e} in magnitude, got '{field}'"
        ));
    }
    Ok(v)
}

/// The largest magnitude of a shortcut's number: a scale, a gate bias or a branch scale beyond it
/// only drives the forward signal past f64's range.
pub const MAX_SHORTCUT_PARAMETER: f64 = 1e6;

impl FromStr for ShortcutKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let bad_arity = || {
            format!(
                "shortcut '{s}': wrong number of ':' fields (expected {})",
                shortcut_syntax()
            )
        };
        match parts[0] {
            "identity" if parts.len() == 1 => Ok(ShortcutKind::Identity),
            "rezero" if parts.len() == 1 => Ok(ShortcutKind::Alpha { init: 0.0 }),
            "deepnorm" if parts.len() == 1 => Ok(ShortcutKind::DeepNorm { alpha: 0.0 }),
            "alpha" if parts.len() == 2 => Ok(ShortcutKind::Alpha {
                init: parse_number(s, parts[1], "initial alpha")?,
            }),
            "layerscale" if parts.len() == 2 => Ok(ShortcutKind::LayerScale {
                init: parse_number(s, parts[1], "initial scale")?,
            }),
            "none" | "plain" if parts.len() == 1 => Ok(ShortcutKind::None),
            "conv1x1" | "projection" if parts.len() == 1 => Ok(ShortcutKind::Conv1x1),
            "scale" if parts.len() == 2 || parts.len() == 3 => {
                let lambda = parse_number(s, parts[1], "lambda")?;
                let branch = match parts.get(2) {
                    Some(b) => parse_number(s, b, "branch scale")?,
                    None => 1.0,
                };
                Ok(ShortcutKind::Scale { lambda, branch })
            }
            "gate" if parts.len() == 2 => Ok(ShortcutKind::Gate {
                bias: parse_number(s, parts[1], "gate bias")?,
            }),
            "shortcut-gate" if parts.len() == 2 => Ok(ShortcutKind::ShortcutGate {
                bias: parse_number(s, parts[1], "gate bias")?,
            }),
            "dropout" if parts.len() == 2 || parts.len() == 3 => {
                let p = parse_number(s, parts[1], "drop probability")?;
                if !(0.0..1.0).contains(&p) {
                    return Err(format!(
                        "shortcut '{s}': drop probability must be in [0, 1), got {p}"
                    ));
                }
                let rescale = match parts.get(2) {
                    None => false,
                    Some(&"rescale") => true,
                    Some(other) => {
                        return Err(format!(
                            "shortcut '{s}': unknown dropout option '{other}' (expected 'rescale')"
                        ))
                    }
                };
                Ok(ShortcutKind::Dropout { p, rescale })
            }
            "identity" | "none" | "plain" | "conv1x1" | "projection" | "scale" | "gate"
            | "shortcut-gate" | "dropout" | "rezero" | "alpha" | "layerscale" | "deepnorm" => {
                Err(bad_arity())
            }
            other => Err(format!(
                "unknown shortcut '{other}' (expected {})",
                shortcut_syntax()
            )),
        }
    }
}

impl fmt::Display for ShortcutKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ShortcutKind::Identity => write!(f, "identity"),
            ShortcutKind::Scale {
                lambda,
                branch: 1.0,
            } => write!(f, "scale:{lambda}"),
            ShortcutKind::Scale { lambda, branch } => write!(f, "scale:{lambda}:{branch}"),
            ShortcutKind::Gate { bias } => write!(f, "gate:{bias}"),
            ShortcutKind::ShortcutGate { bias } => write!(f, "shortcut-gate:{bias}"),
            ShortcutKind::Conv1x1 => write!(f, "conv1x1"),
            ShortcutKind::Dropout { p, rescale: false } => write!(f, "dropout:{p}"),
            ShortcutKind::Dropout { p, rescale: true } => write!(f, "dropout:{p}:rescale"),
            ShortcutKind::None => write!(f, "none"),
            ShortcutKind::Alpha { init } => write!(f, "alpha:{init}"),
            ShortcutKind::LayerScale { init } => write!(f, "layerscale:{init}"),
            ShortcutKind::DeepNorm { .. } => write!(f, "deepnorm"),
            ShortcutKind::Pad => write!(f, "pad"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every example of [`SHORTCUTS`] parses, and reads back the same from its display; it
    /// displays as itself but for `rezero`, which is `alpha:0`.
    #[test]
    fn every_shortcut_example_parses_and_round_trips() {
        for s in SHORTCUTS {
            let k: ShortcutKind = s
                .example
                .parse()
                .unwrap_or_else(|e| panic!("{}: {e}", s.syntax));
            assert_eq!(k.to_string().parse::<ShortcutKind>(), Ok(k), "{}", s.syntax);
            let shown = if s.example == "rezero" {
                "alpha:0"
            } else {
                s.example
            };
            assert_eq!(k.to_string(), shown, "{}", s.syntax);
        }
    }

    /// The forms of [`SHORTCUTS`] that write a kind. No wildcard: a new variant does not compile
    /// here until it is named, with its forms, which must then be in the list.
    fn forms_of(kind: ShortcutKind) -> &'static [&'static str] {
        match kind {
            ShortcutKind::Identity => &["identity"],
            ShortcutKind::Scale { .. } => &["scale:L", "scale:L:B"],
            ShortcutKind::Gate { .. } => &["gate:B"],
            ShortcutKind::ShortcutGate { .. } => &["shortcut-gate:B"],
            ShortcutKind::Conv1x1 => &["conv1x1"],
            ShortcutKind::Dropout { .. } => &["dropout:P", "dropout:P:rescale"],
            ShortcutKind::None => &["none"],
            ShortcutKind::Alpha { .. } => &["alpha:A", "rezero"],
            ShortcutKind::LayerScale { .. } => &["layerscale:E"],
            ShortcutKind::DeepNorm { .. } => &["deepnorm"],
            // `--projection pad`'s, never `--shortcut`'s.
            ShortcutKind::Pad => &[],
        }
    }

    #[test]
    fn every_shortcut_kind_has_an_example() {
        // Each form named in `forms_of` is in the list, and its example is of that kind.
        let all_forms: Vec<&str> = [
            ShortcutKind::Identity,
            ShortcutKind::Scale {
                lambda: 1.0,
                branch: 1.0,
            },
            ShortcutKind::Gate { bias: 0.0 },
            ShortcutKind::ShortcutGate { bias: 0.0 },
            ShortcutKind::Conv1x1,
            ShortcutKind::Dropout {
                p: 0.0,
                rescale: false,
            },
            ShortcutKind::None,
            ShortcutKind::Alpha { init: 0.0 },
            ShortcutKind::LayerScale { init: 0.0 },
            ShortcutKind::DeepNorm { alpha: 0.0 },
            ShortcutKind::Pad,
        ]
        .into_iter()
        .flat_map(forms_of)
        .copied()
        .collect();
        for form in &all_forms {
            let entry = SHORTCUTS
                .iter()
                .find(|s| s.syntax == *form)
                .unwrap_or_else(|| panic!("{form} is not in SHORTCUTS"));
            let k: ShortcutKind = entry.example.parse().unwrap();
            assert!(forms_of(k).contains(form), "{form}: its example is {k:?}");
        }
        // ... and the list has nothing else, each form once.
        let mut listed: Vec<&str> = SHORTCUTS.iter().map(|s| s.syntax).collect();
        let mut named = all_forms.clone();
        listed.sort_unstable();
        named.sort_unstable();
        assert_eq!(listed, named);
    }

    #[test]
    fn the_parser_error_and_help_name_every_form() {
        let e = "wormhole".parse::<ShortcutKind>().unwrap_err();
        assert_eq!(
            e,
            "unknown shortcut 'wormhole' (expected identity, scale:L, scale:L:B, gate:B, shortcut-gate:B, conv1x1, dropout:P, dropout:P:rescale, alpha:A, rezero, layerscale:E, deepnorm or none)"
        );
        let (short, long) = (shortcut_help(), shortcut_long_help());
        for s in SHORTCUTS {
            assert!(short.contains(s.syntax), "-h lacks {}", s.syntax);
            assert!(
                long.lines()
                    .any(|l| l.trim_start().starts_with(s.syntax) && l.ends_with(s.meaning)),
                "--help lacks {}: {}",
                s.syntax,
                s.meaning
            );
        }
    }

    #[test]
    fn bad_shortcuts_name_the_bad_value() {
        let e = "scale:abc".parse::<ShortcutKind>().unwrap_err();
        assert!(e.contains("'abc' is not a number"), "{e}");
        let e = "dropout:1.5".parse::<ShortcutKind>().unwrap_err();
        assert!(e.contains("[0, 1)") && e.contains("1.5"), "{e}");
        let e = "wormhole".parse::<ShortcutKind>().unwrap_err();
        assert!(e.contains("unknown shortcut 'wormhole'"), "{e}");
        let e = "gate".parse::<ShortcutKind>().unwrap_err();
        assert!(e.contains("wrong number"), "{e}");
        assert!("scale:inf".parse::<ShortcutKind>().is_err());
        assert_eq!(
            "rezero".parse::<ShortcutKind>().unwrap(),
            ShortcutKind::Alpha { init: 0.0 }
        );
        assert!("alpha"
            .parse::<ShortcutKind>()
            .unwrap_err()
            .contains("wrong number"));
    }

    #[test]
    fn placements_parse_and_recipes_match_the_paper() {
        use Step::*;
        assert_eq!(
            "full-preact".parse::<Placement>().unwrap(),
            Placement::FullPreact
        );
        assert!("preact"
            .parse::<Placement>()
            .unwrap_err()
            .contains("unknown placement 'preact'"));
        assert_eq!(
            Placement::Original.branch_recipe(2),
            vec![Weight(1), Norm(1), Relu, Weight(2), Norm(2)]
        );
        assert_eq!(
            Placement::BnAfterAdd.branch_recipe(2),
            vec![Weight(1), Norm(1), Relu, Weight(2)]
        );
        assert_eq!(
            Placement::BnAfterAdd.after_add_recipe(),
            vec![Norm(0), Relu]
        );
        assert_eq!(
            Placement::ReluBeforeAdd.branch_recipe(2),
            vec![Weight(1), Norm(1), Relu, Weight(2), Norm(2), Relu]
        );
        assert_eq!(
            Placement::ReluPreact.branch_recipe(2),
            vec![Relu, Weight(1), Norm(1), Relu, Weight(2), Norm(2)]
        );
        assert_eq!(
            Placement::FullPreact.branch_recipe(3),
            vec![
                Norm(1),
                Relu,
                Weight(1),
                Norm(2),
                Relu,
                Weight(2),
                Norm(3),
                Relu,
                Weight(3)
            ]
        );
        assert!(Placement::FullPreact.after_add_is_identity());
        assert!(!Placement::Original.after_add_is_identity());
    }
}
