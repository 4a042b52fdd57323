//! `.npz` interchange: everything needed to rebuild a profiled computation in NumPy or
//! PyTorch (network description, parameters, BN state, dropout masks, input batch, labels,
//! and every `x_l` and `dE/dx_l`), every parameter gradient, and the state after a few SGD
//! steps on the same batch, so another implementation can check a training step too. The
//! layout is documented in `docs/formats.md`.

use std::path::Path;

use anyhow::{anyhow, Result};
use ndarray::{Array0, Array1};
use ndarray_npy::NpzWriter;
use serde_json::{json, Value};

use crate::grads::Grads;
use crate::layers::Norm;
use crate::net::{NetCache, NetGrads, Network};
use crate::tensor::Tensor;
use crate::train::Sgd;
use crate::unit::{ForwardCtx, Op, ResidualUnit, ShortcutKind};

pub const FORMAT_VERSION: u32 = 2;

/// The SGD steps the state file records: on the stored batch, with the stored masks, BN in the
/// stored mode (running statistics updated after each training-mode pass), the recipe of
/// `resprop train` at its base rate. Two steps, so that the momentum term enters.
pub const SGD_STEPS: usize = 2;
pub const SGD_LR: f64 = 0.1;
pub const SGD_MOMENTUM: f64 = 0.9;
pub const SGD_WEIGHT_DECAY: f64 = 1e-4;

/// What the recorded SGD steps produced.
pub struct SgdRecord {
    /// The loss before each step.
    pub losses: Vec<f64>,
    /// The network after the last step (parameters and BN buffers).
    pub net: Network,
    pub sgd: Sgd,
}

/// Runs [`SGD_STEPS`] steps of SGD on a copy of `net`.
pub fn sgd_steps(
    net: &Network,
    input: &Tensor,
    labels: &[usize],
    ctx: &ForwardCtx,
) -> Result<SgdRecord> {
    let mut net = net.clone();
    let mut sgd = Sgd::new(SGD_MOMENTUM, SGD_WEIGHT_DECAY);
    let ctx = ctx.with_weight_grads(true);
    let mut losses = Vec::new();
    for _ in 0..SGD_STEPS {
        let cache = net.forward(input, labels, &ctx)?;
        let mut grads = Grads::new();
        net.backward(&cache, labels, Some(&mut grads));
        losses.push(cache.loss);
        net.update_running_stats(&cache);
        sgd.step(
            &mut net,
            &grads,
            SGD_LR,
            &crate::train::RateFactors::uniform(),
        );
    }
    Ok(SgdRecord { losses, net, sgd })
}

fn op_json(op: &Op) -> Value {
    match op {
        Op::Dense(d) => json!({
            "op": "dense",
            "w": format!("{}.w", d.name),
            "b": d.b.as_ref().map(|_| format!("{}.b", d.name)),
        }),
        Op::Norm(Norm::Batch(bn)) => json!({
            "op": "batchnorm",
            "gamma": format!("{}.gamma", bn.name),
            "beta": format!("{}.beta", bn.name),
            "running_mean": format!("{}.running_mean", bn.name),
            "running_var": format!("{}.running_var", bn.name),
            "eps": bn.eps,
            "momentum": bn.momentum,
        }),
        Op::Norm(Norm::Layer(ln)) => json!({
            "op": "layernorm",
            "gamma": format!("{}.gamma", ln.name),
            "beta": format!("{}.beta", ln.name),
            "eps": ln.eps,
        }),
        Op::Conv(c) => json!({
            "op": "conv2d",
            "w": format!("{}.w", c.name),
            "b": c.b.as_ref().map(|_| format!("{}.b", c.name)),
            "stride": c.stride,
            "pad": c.pad,
        }),
        Op::BranchScale(b) => json!({ "op": "branch_scale", "a": format!("{}.a", b.name) }),
        Op::ScalarBias(b) => json!({ "op": "scalar_bias", "b": format!("{}.b", b.name) }),
        Op::Pool => json!({ "op": "global_avg_pool" }),
        Op::MaxPool(m) => json!({ "op": "max_pool", "k": m.k, "stride": m.stride, "pad": m.pad }),
        Op::AvgPool(a) => json!({
            "op": "avg_pool",
            "k": a.k,
            "stride": a.stride,
            "pad": a.pad,
            "count_include_pad": a.count_include_pad,
        }),
        Op::Flatten => json!({ "op": "flatten" }),
        Op::PadShortcut(p) => json!({ "op": "pad_shortcut", "stride": p.stride, "c_out": p.c_out }),
        Op::Relu => json!({ "op": "relu" }),
        Op::Sigmoid => json!({ "op": "sigmoid" }),
        Op::Mask(_) => json!({ "op": "frozen-relu" }),
    }
}

fn ops_json(ops: &[Op]) -> Value {
    Value::Array(ops.iter().map(op_json).collect())
}

/// The shortcut: its kind, its constants and `ops`, the layers it runs on its input (the
/// gate's pre-activation, the projection with its BN if any, the option-A pad).
fn shortcut_json(unit: &ResidualUnit) -> Value {
    let ops = ops_json(&unit.shortcut_ops);
    match unit.shortcut {
        // The learned scale is the branch's last op ("branch_scale"): h is the identity.
        ShortcutKind::Identity | ShortcutKind::Alpha { .. } | ShortcutKind::LayerScale { .. } => {
            json!({ "kind": "identity" })
        }
        ShortcutKind::Scale { lambda, branch } => {
            json!({ "kind": "scale", "lambda": lambda, "branch_scale": branch })
        }
        // The branch's weights were started scaled; the forward map is `a x + F`.
        ShortcutKind::DeepNorm { alpha } => {
            json!({ "kind": "scale", "lambda": alpha, "branch_scale": 1.0 })
        }
        ShortcutKind::Gate { bias } => json!({ "kind": "gate", "bias_init": bias, "ops": ops }),
        ShortcutKind::ShortcutGate { bias } => {
            json!({ "kind": "shortcut-gate", "bias_init": bias, "ops": ops })
        }
        ShortcutKind::Conv1x1 => json!({ "kind": "conv1x1", "ops": ops }),
        ShortcutKind::Pad => json!({ "kind": "pad", "ops": ops }),
        ShortcutKind::Dropout { p, rescale } => {
            json!({ "kind": "dropout", "p": p, "rescale": rescale, "mask": format!("mask/{}", unit.index) })
        }
        ShortcutKind::None => json!({ "kind": "none" }),
    }
}

/// The resolved description stored as `meta_json`.
pub fn describe(net: &Network, ctx: &ForwardCtx, loss: f64) -> Value {
    json!({
        "format": "resprop-state",
        "version": FORMAT_VERSION,
        "spec": net.spec,
        "bn_mode": ctx.mode,
        "dropout_seed": ctx.dropout_seed,
        "loss": loss,
        "stem": ops_json(&net.stem),
        "units": net.units.iter().map(|u| json!({
            "index": u.index,
            "placement": u.placement.name(),
            "pre": ops_json(&u.pre),
            "changes_shape": u.changes_shape,
            "branch": ops_json(&u.branch),
            "shortcut": shortcut_json(u),
            "after_add": ops_json(&u.after_add),
        })).collect::<Vec<_>>(),
        "head": ops_json(&net.head),
        "loss_fn": "softmax cross-entropy, mean over the batch",
        "sgd": {
            "steps": SGD_STEPS,
            "lr": SGD_LR,
            "momentum": SGD_MOMENTUM,
            "weight_decay": SGD_WEIGHT_DECAY,
            "rule": "v = momentum v + (g + weight_decay w); w -= lr v (every parameter, v = 0 at first); BN running statistics updated after each training-mode forward pass, before the update",
        },
    })
}

/// Writes the `.npz` atomically: the profiled pass (`cache`, `grads`), every parameter
/// gradient at the same point, and the state after [`SGD_STEPS`] SGD steps.
pub fn write_npz(
    path: &Path,
    net: &Network,
    ctx: &ForwardCtx,
    input: &Tensor,
    labels: &[usize],
    cache: &NetCache,
    grads: &NetGrads,
) -> Result<()> {
    let meta = serde_json::to_vec_pretty(&describe(net, ctx, cache.loss))?;
    let mut param_grads = Grads::new();
    let weight_ctx = ctx.with_weight_grads(true);
    let again = net.forward(input, labels, &weight_ctx)?;
    net.backward(&again, labels, Some(&mut param_grads));
    let steps = sgd_steps(net, input, labels, ctx)?;
    crate::output::write_atomic_with(path, |w| {
        let mut npz = NpzWriter::new_compressed(w);
        let err = |e: ndarray_npy::WriteNpzError| anyhow!("writing '{}': {e}", path.display());
        npz.add_array("meta_json", &Array1::from(meta))
            .map_err(err)?;
        npz.add_array("input", input).map_err(err)?;
        npz.add_array(
            "labels",
            &Array1::from_iter(labels.iter().map(|&t| t as i64)),
        )
        .map_err(err)?;
        npz.add_array("loss", &Array0::from_elem((), cache.loss))
            .map_err(err)?;
        let mut result = Ok(());
        net.visit_params(&mut |name, t| {
            if result.is_ok() {
                result = npz.add_array(format!("param/{name}"), t).map_err(err);
            }
        });
        net.visit_buffers(&mut |name, t| {
            if result.is_ok() {
                result = npz.add_array(format!("buffer/{name}"), t).map_err(err);
            }
        });
        result?;
        for l in 0..net.num_units() {
            if let Some(mask) = &cache.unit(net, l).shortcut.mask {
                npz.add_array(format!("mask/{l}"), mask).map_err(err)?;
            }
        }
        for l in 0..=net.num_units() {
            npz.add_array(format!("x/{l}"), cache.x(l)).map_err(err)?;
            npz.add_array(format!("grad_x/{l}"), &grads.grad_x[l])
                .map_err(err)?;
        }
        for (name, g) in param_grads.iter() {
            npz.add_array(format!("grad_param/{name}"), g)
                .map_err(err)?;
        }
        npz.add_array("sgd/loss", &Array1::from(steps.losses.clone()))
            .map_err(err)?;
        let mut result = Ok(());
        steps.net.visit_params(&mut |name, t| {
            if result.is_ok() {
                result = npz.add_array(format!("sgd/param/{name}"), t).map_err(err);
            }
        });
        steps.net.visit_buffers(&mut |name, t| {
            if result.is_ok() {
                result = npz.add_array(format!("sgd/buffer/{name}"), t).map_err(err);
            }
        });
        result?;
        for (name, v) in &steps.sgd.velocity {
            npz.add_array(format!("sgd/velocity/{name}"), v)
                .map_err(err)?;
        }
        npz.finish().map_err(err)?;
        Ok(())
    })
}
