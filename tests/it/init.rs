//! Every weight layer of every network starts as `--help` and the README say it does.
//!
//! The rules are written out here from the documentation, not taken from the code:
//!
//! - `he`: `N(0, 2 / fan_out)` (a convolution's fan counts its `k x k` field), the classifier
//!   `N(0, 1 / fan_in)`;
//! - `xavier`: `N(0, 2 / (fan_in + fan_out))` on every weight layer, the classifier included;
//! - `fixup`: each branch's last weight layer and the classifier 0, the branch's other
//!   weight layers He's times `L^(-1/(2m-2))`, everything else He's;
//! - `deepnorm` shortcuts start the branch weights at `(8L)^(-1/4)` times the rule.
//!
//! Each layer's draws are pooled over `SEEDS` networks (independent draws of the same layer)
//! and compared with the rule by the chi-square statistic of their sum of squares (through
//! the Wilson-Hilferty normal approximation) and by their mean. A layer whose pool is too small
//! for a 10% error in its std to fail the bound is an error of the test itself.

use std::collections::BTreeMap;

use resprop::layers::NormKind;
use resprop::net::{Init, InputSizes, NetDescription, Network};
use resprop::unit::spec::shortcut_examples;
use resprop::unit::{Placement, Projection};

const SEEDS: u64 = 12;
/// |z| above this fails (a false alarm per layer has probability 6e-7).
const Z_BOUND: f64 = 5.0;

struct Pool {
    fan_in: usize,
    fan_out: usize,
    values: Vec<f64>,
}

/// Every weight tensor of `net` by name, with its fans read off its shape: a dense layer's
/// `w` is `(D_in, D_out)`, a convolution's `(C_out, C_in, k, k)`.
fn weights(net: &Network, into: &mut BTreeMap<String, Pool>) {
    net.visit_params(&mut |name, t| {
        if !name.ends_with(".w") {
            return;
        }
        let s = t.shape();
        let (fan_in, fan_out) = match s.len() {
            2 => (s[0], s[1]),
            4 => (s[1] * s[2] * s[3], s[0] * s[2] * s[3]),
            _ => panic!("{name}: a weight of shape {s:?}"),
        };
        let pool = into.entry(name).or_insert(Pool {
            fan_in,
            fan_out,
            values: Vec::new(),
        });
        pool.values.extend(t.iter().copied());
    });
}

/// The documented std of the layer `name` (0 for a layer that starts at zero).
fn documented_std(
    name: &str,
    fans: (usize, usize),
    init: Init,
    units: usize,
    branch_weights: usize,
    deepnorm: bool,
) -> f64 {
    let (fan_in, fan_out) = (fans.0 as f64, fans.1 as f64);
    let classifier = name == "classifier.w";
    let branch = name.contains(".branch.w");
    let he = if classifier {
        (1.0 / fan_in).sqrt()
    } else {
        (2.0 / fan_out).sqrt()
    };
    let mut std = match init {
        Init::He => he,
        Init::Xavier => (2.0 / (fan_in + fan_out)).sqrt(),
        Init::Fixup => {
            let last = format!(".branch.w{branch_weights}.w");
            if classifier || name.ends_with(&last) {
                0.0
            } else if branch {
                he * (units as f64).powf(-1.0 / (2.0 * branch_weights as f64 - 2.0))
            } else {
                he
            }
        }
    };
    if deepnorm && branch {
        std *= (8.0 * units as f64).powf(-0.25);
    }
    std
}

/// `z` of the sum of squares of `x` under `N(0, std^2)`: `S / std^2 ~ chi^2_n`, through
/// Wilson and Hilferty's cube root.
fn chi_square_z(x: &[f64], std: f64) -> f64 {
    let n = x.len() as f64;
    z_of_variance_ratio(x.iter().map(|v| v * v).sum::<f64>() / (n * std * std), n)
}

/// `z` of a sample variance `ratio` times the rule's from `n` draws.
fn z_of_variance_ratio(ratio: f64, n: f64) -> f64 {
    let v = 2.0 / (9.0 * n);
    (ratio.cbrt() - (1.0 - v)) / v.sqrt()
}

struct Case {
    net: &'static str,
    placement: Placement,
    shortcut: &'static str,
    projection: Option<Projection>,
    norm: NormKind,
    init: Init,
}

fn check(case: &Case) -> Vec<String> {
    let input = InputSizes {
        input_dim: 64,
        image_size: 8,
        input_channels: 3,
        classes: 10,
    };
    let arch = NetDescription {
        net: case.net.parse().unwrap(),
        units: 3,
        width: 64,
        placement: case.placement,
        shortcut: case.shortcut.parse().unwrap(),
        projection: case.projection,
        norm: case.norm,
        init: case.init,
    };
    let mut pools = BTreeMap::new();
    let mut units = 0;
    for seed in 0..SEEDS {
        let net = arch.build(&input, seed).unwrap();
        units = net.num_units();
        weights(&net, &mut pools);
    }
    let branch_weights = match case.net {
        n if n.ends_with("bottleneck") => 3,
        _ => 2,
    };
    let deepnorm = case.shortcut == "deepnorm";
    let label = format!(
        "{} {} {} {:?} {} {}",
        case.net, case.placement, case.shortcut, case.projection, case.norm, case.init
    );
    let mut failures = Vec::new();
    assert!(pools.contains_key("classifier.w"), "{label}: no classifier");
    for (name, pool) in &pools {
        let std = documented_std(
            name,
            (pool.fan_in, pool.fan_out),
            case.init,
            units,
            branch_weights,
            deepnorm,
        );
        let x = &pool.values;
        if std == 0.0 {
            if x.iter().any(|&v| v != 0.0) {
                failures.push(format!("{label}: {name} should start at 0"));
            }
            continue;
        }
        let n = x.len() as f64;
        // The test's power: a std 10% off, too high or too low, must fail the bound by a margin.
        assert!(
            z_of_variance_ratio(1.1f64.powi(2), n) > 1.5 * Z_BOUND
                && z_of_variance_ratio(0.9f64.powi(2), n) < -1.5 * Z_BOUND,
            "{label}: {name}'s pool of {n} draws is too small to see a 10% error"
        );
        let z = chi_square_z(x, std);
        let mean_z = x.iter().sum::<f64>() / n / (std / n.sqrt());
        if z.abs() > Z_BOUND || mean_z.abs() > Z_BOUND {
            let sample_std = (x.iter().map(|v| v * v).sum::<f64>() / n).sqrt();
            failures.push(format!(
                "{label}: {name} has sample std {sample_std:.4} where the rule gives {std:.4} (z {z:.1}, mean z {mean_z:.1})"
            ));
        }
    }
    failures
}

#[test]
fn every_weight_layer_starts_by_its_documented_rule() {
    let mut cases = Vec::new();
    let inits = [Init::He, Init::Xavier];
    for net in ["mlp", "resnet:1:basic", "resnet:1:bottleneck"] {
        for placement in Placement::ALL {
            for norm in [NormKind::Batch, NormKind::Layer, NormKind::None] {
                for init in inits {
                    cases.push(Case {
                        net,
                        placement,
                        shortcut: "identity",
                        projection: None,
                        norm,
                        init,
                    });
                }
            }
        }
        // Every other kind of the one list (identity: above; deepnorm: below).
        for (shortcut, _) in shortcut_examples(Placement::FullPreact, NormKind::Batch)
            .filter(|(s, _)| *s != "identity")
        {
            for init in inits {
                cases.push(Case {
                    net,
                    placement: Placement::FullPreact,
                    shortcut,
                    projection: None,
                    norm: NormKind::Batch,
                    init,
                });
            }
        }
        for init in inits {
            cases.push(Case {
                net,
                placement: Placement::PostNorm,
                shortcut: "deepnorm",
                projection: None,
                norm: NormKind::Layer,
                init,
            });
        }
        cases.push(Case {
            net,
            placement: Placement::Original,
            shortcut: "identity",
            projection: None,
            norm: NormKind::None,
            init: Init::Fixup,
        });
    }
    for projection in [Projection::Bn, Projection::Plain, Projection::Pad] {
        for net in ["resnet:1:basic", "resnet:1:bottleneck"] {
            for init in inits {
                cases.push(Case {
                    net,
                    placement: Placement::Original,
                    shortcut: "identity",
                    projection: Some(projection),
                    norm: NormKind::Batch,
                    init,
                });
            }
        }
    }
    let failures: Vec<String> = cases.iter().flat_map(check).collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
