//! Every placement x shortcut x norm combination (the shortcuts: every example of the one list
//! of kinds, `resprop::unit::spec::SHORTCUTS`, that the placement and norm take): the unit's hand-written
//! backward, its two vector-Jacobian products (shortcut only, branch only) and every parameter
//! gradient, each against 2-point central differences in f64 with a non-linear loss.

use resprop::finite_diff::{assert_close, numerical_gradient, quadratic_loss, rel_error};
use resprop::grads::Grads;
use resprop::layers::{Mode, NormKind};
use resprop::net::mlp::dense_unit;
use resprop::net::resnet::{conv_unit, Block};
use resprop::net::Init;
use resprop::rng::{gaussian, rng};
use resprop::tensor::{norm, Tensor};
use resprop::unit::shortcut::resolve_for_depth;
use resprop::unit::spec::shortcut_examples;
use resprop::unit::{ForwardCtx, Placement, Projection, ResidualUnit, ShortcutKind};

/// Relative error bound `||fd - analytic|| / max(||fd||, ||analytic||)`, central differences
/// with h = 1e-6 (truncation ~1e-12, rounding ~1e-10).
const TOL: f64 = 1e-6;
const H: f64 = 1e-6;

fn ctx(mode: Mode) -> ForwardCtx {
    ForwardCtx {
        mode,
        dropout_seed: 77,
        keep_branch: true,
        weight_grads: true,
    }
}

/// A unit whose BN affine parameters are random, so no gradient hides behind gamma = 1, beta = 0.
fn unit(placement: Placement, shortcut: &str, norm: NormKind, seed: u64) -> ResidualUnit {
    let kind = resolved(shortcut.parse().unwrap());
    randomise_affine(
        dense_unit(3, placement, kind, 5, norm, Init::He, &mut rng(seed)),
        seed,
    )
}

/// A unit alone has no depth: DeepNorm's `a` as for 4 units.
fn resolved(kind: ShortcutKind) -> ShortcutKind {
    resolve_for_depth(kind, 4).0
}

fn randomise_affine(mut u: ResidualUnit, seed: u64) -> ResidualUnit {
    let mut noise = rng(seed + 1000);
    u.visit_params_mut(&mut |name, t| {
        if name.ends_with("gamma") || name.ends_with("beta") || name.ends_with(".b") {
            *t = &*t + &gaussian(t.shape(), 0.3, &mut noise);
        }
    });
    u
}

fn check_combo(placement: Placement, shortcut: &str, norm: NormKind, mode: Mode) {
    let tag = format!("{placement} / {shortcut} / {norm} / {mode}");
    check_unit(&unit(placement, shortcut, norm, 42), &[6, 5], &tag, mode);
}

fn check_unit(u: &ResidualUnit, in_shape: &[usize], tag: &str, mode: Mode) {
    let u = u.clone();
    let c = ctx(mode);
    let mut r = rng(7);
    let x = gaussian(in_shape, 1.0, &mut r);
    let out_shape = u.forward(&x, &c).0.shape().to_vec();
    let (a, b) = (
        gaussian(&out_shape, 1.0, &mut r),
        gaussian(&out_shape, 1.0, &mut r),
    );
    let loss = |y: &Tensor| quadratic_loss(y, &a, &b).0;
    let (y, cache) = u.forward(&x, &c);
    let grad_next = quadratic_loss(&y, &a, &b).1;

    // Forward is f(h(x) + F'(x)) with the parts as forward_parts reports them.
    let parts = u.forward_parts(&x, &c);
    let recomposed = u.apply_after_add(&(&parts.shortcut + &parts.branch_term), mode);
    assert!(
        rel_error(&recomposed, &y) < 1e-14,
        "{tag}: parts do not recompose"
    );

    // Full backward.
    let mut grads = Grads::new();
    let grad_x = u.backward(&cache, &grad_next, Some(&mut grads));
    let num = numerical_gradient(|x| loss(&u.forward(x, &c).0), &x, H);
    let e = rel_error(&grad_x, &num);
    assert!(e < TOL, "{tag}: full backward rel error {e:e}");

    // Shortcut VJP: derivative of x -> f(h(x) + F'(x0)).
    let term0 = parts.branch_term.clone();
    let num_s = numerical_gradient(
        |x| loss(&u.apply_after_add(&(&u.forward_parts(x, &c).shortcut + &term0), mode)),
        &x,
        H,
    );
    let vjp_s = u.vjp_shortcut(&cache, &grad_next);
    let e = rel_error(&vjp_s, &num_s);
    assert!(e < TOL, "{tag}: shortcut VJP rel error {e:e}");

    // Branch VJP: derivative of x -> f(h(x0) + F'(x)).
    let h0 = parts.shortcut.clone();
    let num_b = numerical_gradient(
        |x| loss(&u.apply_after_add(&(&h0 + &u.forward_parts(x, &c).branch_term), mode)),
        &x,
        H,
    );
    let vjp_b = u.vjp_branch(&cache, &grad_next);
    let e = rel_error(&vjp_b, &num_b);
    assert!(e < TOL, "{tag}: branch VJP rel error {e:e}");

    // The split adds up to the full backward (rounding only).
    let (s, bpart) = u.backward_split(&cache, &grad_next);
    assert!(
        rel_error(&(&s + &bpart), &grad_x) < 1e-14,
        "{tag}: split does not sum to backward"
    );

    // The production path: without keep_branch the identity unit (identity h and f) runs
    // fused, adding x inside the branch's last layer and reading dE/dx_{l+1} in place. It
    // must meet the same differences.
    let fused_ctx = ForwardCtx {
        keep_branch: false,
        ..c
    };
    let (y_fused, cache_fused) = u.forward(&x, &fused_ctx);
    let mut grads_fused = Grads::new();
    let grad_x_fused = u.backward(
        &cache_fused,
        &quadratic_loss(&y_fused, &a, &b).1,
        Some(&mut grads_fused),
    );
    assert_close(&format!("{tag}: fused backward"), &grad_x_fused, &num, TOL);

    // Every parameter gradient, from both paths.
    let mut names = Vec::new();
    u.visit_params(&mut |n, _| names.push(n));
    assert_eq!(
        grads.len(),
        names.len(),
        "{tag}: one gradient per parameter"
    );
    for name in names {
        let mut value = None;
        u.visit_params(&mut |n, t| {
            if n == name {
                value = Some(t.clone())
            }
        });
        let value = value.unwrap();
        let num = numerical_gradient(
            |v| {
                let mut w = u.clone();
                w.visit_params_mut(&mut |n, t| {
                    if n == name {
                        t.assign(v)
                    }
                });
                loss(&w.forward(&x, &c).0)
            },
            &value,
            H,
        );
        let analytic = grads.get(&name).unwrap();
        let fused = grads_fused.get(&name).unwrap();
        if norm(analytic) < 1e-12 {
            assert!(
                norm(fused) < 1e-12,
                "{tag}: parameter {name}: fused path {:e} where the readable one gives 0",
                norm(fused)
            );
            // A parameter whose effect a following training-mode BN removes (the projection
            // BN's beta under bn-after-add: a per-channel constant the after-addition BN
            // subtracts) has a gradient of exactly 0; its differences are then rounding noise,
            // about |E| 1e-16 / H ~ 1e-9: bound 1e-7.
            assert!(
                norm(&num) < 1e-7,
                "{tag}: parameter {name}: analytic 0, differences {:e}",
                norm(&num)
            );
            continue;
        }
        let e = rel_error(analytic, &num);
        assert!(e < TOL, "{tag}: parameter {name} rel error {e:e}");
        assert_close(
            &format!("{tag}: fused path, parameter {name}"),
            fused,
            &num,
            TOL,
        );
    }
}

#[test]
fn every_placement_shortcut_and_norm_in_training_mode() {
    for norm in NormKind::ALL {
        for p in Placement::ALL {
            for (s, _) in shortcut_examples(p, norm) {
                check_combo(p, s, norm, Mode::Train);
            }
        }
    }
}

#[test]
fn every_placement_and_shortcut_in_eval_mode() {
    for p in Placement::ALL {
        for (s, _) in shortcut_examples(p, NormKind::Batch) {
            check_combo(p, s, NormKind::Batch, Mode::Eval);
        }
    }
}

/// Conv units (3x3 basic and 1x1-3x3-1x1 bottleneck) for every placement and shortcut, and the
/// shape-changing units (stride 2, projection shortcut, shared pre-activation in pre-act nets).
#[test]
fn conv_units_for_every_placement_and_shortcut() {
    for p in Placement::ALL {
        for norm in NormKind::ALL {
            for (s, kind) in shortcut_examples(p, norm) {
                let kind = resolved(kind);
                let basic = conv_unit(
                    1,
                    p,
                    kind,
                    Projection::default_for(p),
                    Block::Basic,
                    3,
                    3,
                    1,
                    norm,
                    Init::He,
                    &mut rng(5),
                );
                check_unit(
                    &randomise_affine(basic, 5),
                    &[2, 3, 4, 4],
                    &format!("basic {p} / {s} / {norm}"),
                    Mode::Train,
                );
            }
        }
        // Every convention for the shape-changing shortcut: 1x1 projection + BN, bare 1x1
        // projection, option-A subsample-and-pad.
        for projection in Projection::ALL {
            for (block, c_in, width, stride) in [
                (Block::Basic, 2, 3, 2),
                (Block::Bottleneck, 3, 2, 1),
                (Block::Bottleneck, 4, 2, 2),
            ] {
                let u = conv_unit(
                    1,
                    p,
                    ShortcutKind::Identity,
                    projection,
                    block,
                    c_in,
                    width,
                    stride,
                    NormKind::Batch,
                    Init::He,
                    &mut rng(6),
                );
                let (kind, ops, pre) = match projection {
                    Projection::Bn => (ShortcutKind::Conv1x1, 2, p.is_preact()),
                    Projection::Plain => (ShortcutKind::Conv1x1, 1, p.is_preact()),
                    Projection::Pad => (ShortcutKind::Pad, 1, false),
                };
                assert!(u.changes_shape && u.shortcut == kind);
                assert_eq!(u.shortcut_ops.len(), ops, "{p} {projection}");
                assert_eq!(
                    !u.pre.is_empty(),
                    pre,
                    "{p} {projection}: pre-activation before the split"
                );
                let tag = format!("{block:?} {c_in}->{width} stride {stride} {p} {projection}");
                // Three samples: the projection's BN then normalises over 3 x 2 x 2 values
                // (with two, 2-point differences lose accuracy to its curvature: 1.7e-6).
                for mode in [Mode::Train, Mode::Eval] {
                    check_unit(
                        &randomise_affine(u.clone(), 6),
                        &[3, c_in, 4, 4],
                        &tag,
                        mode,
                    );
                }
            }
        }
    }
}

#[test]
fn gate_bias_sets_the_shortcut_factor() {
    // With W_g = 0 the shortcut-only gate is h(x) = (1 - sigmoid(b)) x exactly.
    let mut u = unit(
        Placement::FullPreact,
        "shortcut-gate:-6",
        NormKind::Batch,
        1,
    );
    u.visit_params_mut(&mut |n, t| {
        if n.ends_with("gate.w") {
            t.fill(0.0)
        }
        if n.ends_with("gate.b") {
            t.fill(-6.0)
        }
    });
    let x = gaussian(&[4, 5], 1.0, &mut rng(2));
    let h = u.forward_parts(&x, &ctx(Mode::Train)).shortcut;
    let factor = 1.0 - 1.0 / (1.0 + 6f64.exp());
    assert!(rel_error(&h, &(&x * factor)) < 1e-15);
}

/// DeepNorm's unit (post-norm, `N(a x + F)`) with a resolved `a`, every norm.
#[test]
fn deepnorm_unit_matches_finite_differences() {
    for norm in NormKind::ALL {
        let kind = ShortcutKind::DeepNorm { alpha: 1.7 };
        let u = dense_unit(3, Placement::PostNorm, kind, 5, norm, Init::He, &mut rng(8));
        check_unit(
            &randomise_affine(u, 8),
            &[6, 5],
            &format!("deepnorm / {norm}"),
            Mode::Train,
        );
    }
}
