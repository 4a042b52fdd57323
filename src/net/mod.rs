//! A residual network: stem -> L residual units -> head (-> softmax cross-entropy).
//!
//! The network records every unit input `x_0 .. x_L` (`x_L` is the head's input) in its
//! cache and returns every `dE/dx_l` from backward, so the analysis never needs hooks.

pub mod description;
pub mod fixup;
pub mod init;
pub mod memory;
pub mod mlp;
pub mod resnet;
pub mod workloads;

use crate::layers::NormKind;
pub use init::{Init, Role};
use std::borrow::Cow;
use std::sync::Arc;

use anyhow::{bail, Result};
use ndarray::Array2;
use serde::Serialize;

use crate::grads::Grads;
use crate::interrupt::{Interrupt, Interrupted};
use crate::layers::{loss, Mode};
use crate::tensor::Tensor;
use crate::unit::ops::{
    backward_seq, forward_seq, forward_seq_with, freeze_relus_seq, update_running_stats_seq,
    Fusion, Op, OpCache, SeqExtras,
};
use crate::unit::{ForwardCtx, Projection, ResidualUnit, UnitCache};

use crate::float::Float;
pub use description::{InputSizes, NetDescription};
pub use mlp::{build_mlp, MlpConfig};
pub use resnet::{build_resnet, ResnetConfig};

/// Which network a run names: `mlp` or a CIFAR ResNet (`resnet110`, `resnet:3:basic`, ...).
#[derive(Debug, Clone, PartialEq)]
pub enum NetChoice {
    Mlp,
    Resnet {
        name: String,
        units_per_stage: usize,
        block: resnet::Block,
    },
}

impl std::fmt::Display for NetChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NetChoice::Mlp => f.write_str("mlp"),
            NetChoice::Resnet { name, .. } => f.write_str(name),
        }
    }
}

impl std::str::FromStr for NetChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "mlp" {
            return Ok(NetChoice::Mlp);
        }
        let (units_per_stage, block) = resnet::parse_resnet_name(s)?;
        Ok(NetChoice::Resnet {
            name: s.to_string(),
            units_per_stage,
            block,
        })
    }
}

/// The sizes a network needs besides its kind (MLP: units, width, input_dim; ResNets:
/// image_size; both: classes).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct NetSizes {
    pub units: usize,
    pub width: usize,
    pub input_dim: usize,
    pub image_size: usize,
    /// Image channels (3 for CIFAR, 1 for the digits).
    pub input_channels: usize,
    pub classes: usize,
}

/// The shape-changing units' shortcut when none is asked for: each placement's convention
/// ([`Projection::default_for`]), and a bare projection in a network without normalisation.
pub fn default_projection(placement: crate::unit::Placement, norm: NormKind) -> Projection {
    match norm {
        NormKind::None => Projection::Plain,
        _ => Projection::default_for(placement),
    }
}

/// The network with every weight layer drawn by `init`'s rule (Fixup's rewrite comes after),
/// `projection` resolved. Networks are built through
/// [`NetDescription::build`](crate::jobs::NetDescription::build), which resolves the projection
/// and applies Fixup.
#[allow(clippy::too_many_arguments)]
pub(crate) fn build_drawn(
    choice: &NetChoice,
    sizes: &NetSizes,
    placement: crate::unit::Placement,
    shortcut: crate::unit::ShortcutKind,
    projection: Option<Projection>,
    norm: NormKind,
    init: Init,
    seed: u64,
) -> Result<Network> {
    if let (NetChoice::Mlp, Some(p)) = (choice, projection) {
        bail!("projection '{p}' applies to the ResNets' shape-changing units; an MLP's units all keep their width");
    }
    match choice {
        NetChoice::Mlp => build_mlp(&MlpConfig {
            units: sizes.units,
            width: sizes.width,
            input_dim: sizes.input_dim,
            classes: sizes.classes,
            placement,
            shortcut,
            norm,
            init,
            seed,
        }),
        NetChoice::Resnet {
            name,
            units_per_stage,
            block,
        } => build_resnet(&ResnetConfig {
            name: name.clone(),
            units_per_stage: *units_per_stage,
            block: *block,
            image_size: sizes.image_size,
            input_channels: sizes.input_channels,
            classes: sizes.classes,
            placement,
            shortcut,
            projection: projection.unwrap_or_else(|| Projection::default_for(placement)),
            norm,
            init,
            seed,
        }),
    }
}

/// What network was built, serialisable so results can say what produced them.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "net", rename_all = "lowercase")]
pub enum NetSpec {
    Mlp(MlpConfig),
    Resnet(resnet::ResnetConfig),
    /// A network read from a model file (`crate::import`).
    Imported(ImportedSpec),
}

/// What a network built from a model says of itself (its `NetSpec`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImportedSpec {
    /// The model file's name as given.
    pub model: String,
    /// SHA-256 of the file's bytes: a result names the exact model it came from.
    pub sha256: String,
    /// The units' names, in order.
    pub units: Vec<String>,
    /// Each unit's shortcut as the importer found it, as `inspect` names it (`identity`,
    /// `projection`, `projection + BN`, `scale:<c>`).
    pub shortcuts: Vec<String>,
    /// Convolutions the exporter folded a BatchNorm into (the file holds the network in
    /// evaluation mode only).
    pub folded_bn: usize,
}

#[derive(Debug, Clone)]
pub struct Network<T: Float = f64> {
    pub spec: NetSpec,
    pub stem: Vec<Op<T>>,
    pub units: Vec<ResidualUnit<T>>,
    /// Extra BN-ReLU for pre-activation nets, then the classifier (last op).
    pub head: Vec<Op<T>>,
    /// Number of classes.
    pub classes: usize,
    /// Shape of one input sample (e.g. `[64]`).
    pub input_shape: Vec<usize>,
    /// The fused engine (default) or the plain layer-by-layer interpreter (`--unfused`).
    pub fusion: Fusion,
}

/// A part of the network that owns parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Stem,
    Unit(usize),
    /// The head's normalisation (pre-activation nets), before the classifier.
    Head,
    /// The dense classifier, the head's last op.
    Classifier,
}

/// What a forward pass keeps of each unit for the backward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Keep {
    /// Every cache (fastest backward).
    #[default]
    All,
    /// Only the unit inputs `x_l`; the backward re-runs each unit's forward just before its
    /// backward. Bit-identical results (BN statistics and seeded dropout masks recompute
    /// exactly) for about one more forward pass and a fraction of the memory.
    Inputs,
}

#[derive(Debug, Clone)]
enum UnitStore<T: Float = f64> {
    Full(Box<UnitCache<T>>),
    Input(Arc<Tensor<T>>),
}

/// What [`Network::forward_pass`] returns besides the units' caches.
struct ForwardPass<T: Float = f64> {
    stem: Vec<OpCache<T>>,
    x_last: Arc<Tensor<T>>,
    head: Vec<OpCache<T>>,
    probs: Array2<T>,
    loss: f64,
}

#[derive(Debug, Clone)]
pub struct NetCache<T: Float = f64> {
    stem: Vec<OpCache<T>>,
    units: Vec<UnitStore<T>>,
    /// `x_L`, the head's input (shared with the head's leading BatchNorm, if any).
    pub x_last: Arc<Tensor<T>>,
    head: Vec<OpCache<T>>,
    /// (N, K)
    pub probs: Array2<T>,
    pub loss: f64,
    /// The context of the pass, so a kept input can be re-run identically.
    pub ctx: ForwardCtx,
}

impl<T: Float> NetCache<T> {
    /// `x_l` for `l` in `0..=L`.
    pub fn x(&self, l: usize) -> &Tensor<T> {
        match self.units.get(l) {
            Some(UnitStore::Full(c)) => &c.x,
            Some(UnitStore::Input(x)) => x,
            None => &self.x_last,
        }
    }

    /// Unit `l`'s cache, re-running its forward pass if only its input was kept.
    pub fn unit<'a>(&'a self, net: &Network<T>, l: usize) -> Cow<'a, UnitCache<T>> {
        match &self.units[l] {
            UnitStore::Full(c) => Cow::Borrowed(&**c),
            UnitStore::Input(x) => {
                Cow::Owned(net.units[l].forward_shared(Arc::clone(x), &self.ctx).1)
            }
        }
    }
}

impl<T: Float> NetCache<T> {
    /// The smallest batch variance of any BatchNorm channel in a training-mode pass:
    /// `(variance, layer name, channel)`. A channel whose values nearly coincide makes the
    /// loss strongly curved there (`1 / sqrt(var + eps)` changes fast), which limits what
    /// finite differences can resolve.
    pub fn smallest_bn_variance(&self, net: &Network<T>) -> Option<(f64, String, usize)> {
        let mut best: Option<(f64, String, usize)> = None;
        let mut visit = |bn: &crate::layers::BatchNorm<T>, c: &crate::layers::BatchNormCache<T>| {
            if c.mode != Mode::Train {
                return;
            }
            for (ch, v) in c.batch_var.iter().map(|v| v.as_f64()).enumerate() {
                if best.as_ref().is_none_or(|b| v < b.0) {
                    best = Some((v, bn.name.clone(), ch));
                }
            }
        };
        crate::unit::ops::visit_bn_caches(&net.stem, &self.stem, &mut visit);
        for l in 0..net.num_units() {
            let uc = self.unit(net, l);
            net.units[l].visit_bn_caches(&uc, &mut visit);
        }
        crate::unit::ops::visit_bn_caches(&net.head, &self.head, &mut visit);
        best
    }
}

/// The result of a backward pass.
#[derive(Debug, Clone)]
pub struct NetGrads<T: Float = f64> {
    /// `dE/dx_l` for `l` in `0..=L`.
    pub grad_x: Vec<Tensor<T>>,
}

impl<T: Float> Network<T> {
    /// The network in another element type, its parameters and running statistics rounded to
    /// nearest (an f32 network is its f64 twin, rounded).
    pub fn cast<U: Float>(&self) -> Network<U> {
        let ops = |ops: &[Op<T>]| ops.iter().map(Op::cast).collect();
        Network {
            spec: self.spec.clone(),
            stem: ops(&self.stem),
            units: self.units.iter().map(ResidualUnit::cast).collect(),
            head: ops(&self.head),
            classes: self.classes,
            input_shape: self.input_shape.clone(),
            fusion: self.fusion,
        }
    }

    /// How a unit is named to a reader: an imported model's module name (`layer1.0`), else
    /// its index.
    pub fn unit_label(&self, l: usize) -> String {
        match &self.spec {
            NetSpec::Imported(spec) => spec.units[l].clone(),
            NetSpec::Mlp(_) | NetSpec::Resnet(_) => l.to_string(),
        }
    }

    /// The shape of one sample at each unit input `x_0 ..= x_L` (`[C, H, W]` or `[D]`), from
    /// the ops' shape rules alone.
    pub fn unit_input_shapes(&self) -> Vec<Vec<usize>> {
        let apply =
            |ops: &[Op<T>], shape: Vec<usize>| ops.iter().fold(shape, |s, op| op.out_shape(&s));
        let mut shape: Vec<usize> = std::iter::once(1)
            .chain(self.input_shape.iter().copied())
            .collect();
        shape = apply(&self.stem, shape);
        let mut shapes = vec![shape[1..].to_vec()];
        for u in &self.units {
            shape = apply(&u.after_add, apply(&u.branch, apply(&u.pre, shape)));
            shapes.push(shape[1..].to_vec());
        }
        shapes
    }

    /// The feature maps' sizes along an image network, `16x28x28 (x_0..x_17), ...`, each
    /// size with the unit inputs that have it; `None` for a network of vectors.
    pub fn map_sizes(&self) -> Option<String> {
        let shapes = self.unit_input_shapes();
        if shapes.first().is_none_or(|s| s.len() != 3) {
            return None;
        }
        let mut runs: Vec<(Vec<usize>, usize, usize)> = Vec::new();
        for (l, s) in shapes.iter().enumerate() {
            match runs.last_mut() {
                Some((shape, _, last)) if shape == s => *last = l,
                _ => runs.push((s.clone(), l, l)),
            }
        }
        let text: Vec<String> = runs
            .iter()
            .map(|(s, a, b)| {
                let dims: Vec<String> = s.iter().map(|d| d.to_string()).collect();
                let at = if a == b {
                    format!("x_{a}")
                } else {
                    format!("x_{a}..x_{b}")
                };
                format!("{} ({at})", dims.join("x"))
            })
            .collect();
        Some(text.join(", "))
    }

    /// An imported network's name for each unit input `x_0 ..= x_L` (a profile's rows): its
    /// units' module names, then `top` for the head's input. `None` for a built-in network,
    /// whose rows are named by their index.
    pub fn row_names(&self) -> Option<Vec<String>> {
        match &self.spec {
            NetSpec::Imported(spec) => {
                let mut names = spec.units.clone();
                names.push("top".into());
                Some(names)
            }
            NetSpec::Mlp(_) | NetSpec::Resnet(_) => None,
        }
    }

    pub fn num_units(&self) -> usize {
        self.units.len()
    }

    /// Runs every sequence of the network with the fused engine or the plain interpreter.
    pub fn set_fusion(&mut self, fusion: Fusion) {
        self.fusion = fusion;
        self.units.iter_mut().for_each(|u| u.fusion = fusion);
    }

    /// Rejects inputs the engine cannot give a meaningful answer for, naming the bad value.
    pub fn validate_batch(&self, input: &Tensor<T>, labels: &[usize], mode: Mode) -> Result<()> {
        let shape = input.shape();
        if shape.is_empty() || shape[1..] != self.input_shape[..] {
            bail!(
                "input has shape {:?}, expected (N, {:?})",
                shape,
                self.input_shape
            );
        }
        let n = shape[0];
        if n == 0 {
            bail!("batch is empty");
        }
        // BN normalises over (N) in an MLP and over (N, H, W) in a conv net: in training mode
        // every channel needs two values, at the smallest feature map too (the last stage's,
        // after two stride-2 units).
        let smallest_map = match self.input_shape[..] {
            [_, h, w] => {
                let half = |s: usize| (s.max(1) - 1) / 2 + 1;
                half(half(h)) * half(half(w))
            }
            _ => 1,
        };
        if mode == Mode::Train && n * smallest_map < 2 {
            bail!("a batch of {n}: BatchNorm<T> in training mode needs at least 2 values per channel, and the smallest feature map has {smallest_map} pixel(s) (use a larger batch or BN mode 'eval')");
        }
        if labels.len() != n {
            bail!("{} labels for a batch of {n}", labels.len());
        }
        if let Some((i, &t)) = labels.iter().enumerate().find(|(_, &t)| t >= self.classes) {
            bail!(
                "label {t} of sample {i} is out of range for {} classes",
                self.classes
            );
        }
        if let Some(i) = input.iter().position(|v| !v.is_finite()) {
            bail!(
                "input contains a non-finite value ({}) at flat index {i}",
                input.as_slice().map_or(f64::NAN, |s| s[i].as_f64())
            );
        }
        Ok(())
    }

    pub fn forward(
        &self,
        input: &Tensor<T>,
        labels: &[usize],
        ctx: &ForwardCtx,
    ) -> Result<NetCache<T>> {
        self.forward_with(input, labels, ctx, Keep::All)
    }

    /// The forward pass, keeping every cache or only the unit inputs.
    pub fn forward_with(
        &self,
        input: &Tensor<T>,
        labels: &[usize],
        ctx: &ForwardCtx,
        keep: Keep,
    ) -> Result<NetCache<T>> {
        self.forward_until_stopped(input, labels, ctx, keep, &Interrupt::new())
    }

    /// [`Network::forward_with`], checking `stop` before each unit: a request ends the pass
    /// with [`Interrupted`] within one unit's work (a ResNet-110 pass takes seconds).
    pub fn forward_until_stopped(
        &self,
        input: &Tensor<T>,
        labels: &[usize],
        ctx: &ForwardCtx,
        keep: Keep,
        stop: &Interrupt,
    ) -> Result<NetCache<T>> {
        let mut units = Vec::with_capacity(self.units.len());
        let pass = self.forward_pass(input, labels, ctx, stop, &mut |cache| {
            units.push(match keep {
                Keep::All => UnitStore::Full(Box::new(cache)),
                Keep::Inputs => UnitStore::Input(cache.x),
            })
        })?;
        Ok(NetCache {
            stem: pass.stem,
            units,
            x_last: pass.x_last,
            head: pass.head,
            probs: pass.probs,
            loss: pass.loss,
            ctx: *ctx,
        })
    }

    /// The loss and the class probabilities alone, keeping nothing for a backward pass: each
    /// unit's input and cache are freed as soon as the next unit has its input (evaluation on
    /// thousands of images would otherwise hold every `x_l` of the chunk: 2.7 GB for
    /// ResNet-110 on 500 28x28 images).
    pub fn predict(
        &self,
        input: &Tensor<T>,
        labels: &[usize],
        ctx: &ForwardCtx,
    ) -> Result<(f64, Array2<T>)> {
        let pass = self.forward_pass(input, labels, ctx, &Interrupt::new(), &mut drop)?;
        Ok((pass.loss, pass.probs))
    }

    /// The one forward pass of [`Network::forward_with`] and [`Network::predict`]: each
    /// unit's cache goes to `keep` as soon as the next unit's input exists.
    fn forward_pass(
        &self,
        input: &Tensor<T>,
        labels: &[usize],
        ctx: &ForwardCtx,
        stop: &Interrupt,
        keep: &mut dyn FnMut(UnitCache<T>),
    ) -> Result<ForwardPass<T>> {
        self.validate_batch(input, labels, ctx.mode)?;
        let (x0, stem) = forward_seq(&self.stem, input.clone(), ctx.mode, self.fusion);
        // Each x_l is one buffer, shared by the record, the shortcut and the branch's first
        // BatchNorm.
        let mut x = Arc::new(x0);
        // Plane moments of x_l, when unit l-1 could measure them (see `ResidualUnit::forward_with_moments`).
        let mut moments = None;
        for (l, unit) in self.units.iter().enumerate() {
            stop.check(|| self.stopped_at("forward", l))?;
            let (next, cache, next_moments) = unit.forward_with_moments(x, ctx, moments);
            keep(cache);
            x = Arc::new(next);
            moments = next_moments;
        }
        let extras = SeqExtras {
            moments_in: moments,
            drop_weight_inputs: !ctx.weight_grads,
            fusion: self.fusion,
            ..SeqExtras::default()
        };
        let (logits, head, _) = forward_seq_with(&self.head, Arc::clone(&x), ctx.mode, extras);
        let (loss, probs) = loss::forward(&logits, labels);
        Ok(ForwardPass {
            stem,
            x_last: x,
            head,
            probs,
            loss: loss.as_f64(),
        })
    }

    /// The loss as a function of `x_l` alone (units `l..L` and the head), for finite differences.
    pub fn loss_from(&self, l: usize, x_l: &Tensor<T>, labels: &[usize], ctx: &ForwardCtx) -> T {
        let mut x = x_l.clone();
        for unit in &self.units[l..] {
            x = unit.forward(&x, ctx).0;
        }
        let (logits, _) = forward_seq(&self.head, x, ctx.mode, self.fusion);
        loss::forward(&logits, labels).0
    }

    /// A copy whose every ReLU is replaced by the fixed 0/1 pattern it had in `cache`.
    ///
    /// The loss is piecewise smooth, with kinks wherever a ReLU input crosses zero; in a deep
    /// net a perturbation of 1e-8 along a shallow `x_l` already crosses some. The frozen copy
    /// coincides with the network on the linear piece that contains the cached point and is
    /// smooth everywhere, so its derivative there *is* the network's, and finite differences
    /// can use steps large enough to be far above rounding. The ReLU's own backward is tested
    /// against unfrozen differences in its layer file.
    pub fn with_frozen_relus(&self, cache: &NetCache<T>) -> Network<T> {
        let mut net = self.clone();
        freeze_relus_seq(&mut net.stem, &cache.stem);
        for l in 0..self.units.len() {
            let uc = cache.unit(self, l);
            net.units[l].freeze_relus(&uc);
        }
        freeze_relus_seq(&mut net.head, &cache.head);
        net
    }

    /// Every `dE/dx_l`; parameter gradients too when `grads` is given (training), skipped
    /// otherwise (a gradient profile needs input gradients only).
    pub fn backward(
        &self,
        cache: &NetCache<T>,
        labels: &[usize],
        grads: Option<&mut Grads<T>>,
    ) -> NetGrads<T> {
        self.backward_until_stopped(cache, labels, grads, &Interrupt::new())
            .unwrap_or_else(|_| unreachable!("a stop no one can request"))
    }

    /// [`Network::backward`], checking `stop` before each unit.
    pub fn backward_until_stopped(
        &self,
        cache: &NetCache<T>,
        labels: &[usize],
        grads: Option<&mut Grads<T>>,
        stop: &Interrupt,
    ) -> Result<NetGrads<T>, Interrupted> {
        let grad_logits = loss::backward(&cache.probs, labels);
        Ok(self
            .backward_from_logits(cache, grad_logits, grads, false, stop)?
            .0)
    }

    /// Where a pass stopped, for [`Interrupted`]'s message.
    fn stopped_at(&self, pass: &str, l: usize) -> String {
        format!("in the {pass} pass at unit {l} of {}", self.units.len())
    }

    /// The gradient of `sum(grad_logits * logits)` with respect to the network's input (the
    /// batch itself, through the stem): for a one-hot `grad_logits` column, the derivative of
    /// that output, summed over the batch, with respect to each input (shattered gradients).
    pub fn input_gradient(&self, cache: &NetCache<T>, grad_logits: Tensor<T>) -> Tensor<T> {
        self.backward_from_logits(cache, grad_logits, None, true, &Interrupt::new())
            .unwrap_or_else(|_| unreachable!("a stop no one can request"))
            .1
            .expect("asked for the input gradient")
    }

    /// The backward pass from a gradient at the logits: every `dE/dx_l`, parameter gradients
    /// into `grads` when given, and the input's gradient when `to_input`.
    fn backward_from_logits(
        &self,
        cache: &NetCache<T>,
        grad_logits: Tensor<T>,
        mut grads: Option<&mut Grads<T>>,
        to_input: bool,
        stop: &Interrupt,
    ) -> Result<(NetGrads<T>, Option<Tensor<T>>), Interrupted> {
        let fusion = self.fusion;
        let mut g = backward_seq(
            &self.head,
            &cache.head,
            grad_logits,
            grads.as_deref_mut(),
            fusion,
        );
        let mut grad_x = vec![Tensor::<T>::zeros(ndarray::IxDyn(&[0])); self.units.len() + 1];
        for (l, unit) in self.units.iter().enumerate().rev() {
            stop.check(|| self.stopped_at("backward", l))?;
            let uc = cache.unit(self, l);
            let below = unit.backward(&uc, &g, grads.as_deref_mut());
            grad_x[l + 1] = std::mem::replace(&mut g, below);
        }
        grad_x[0] = g;
        let input = if grads.is_some() || to_input {
            Some(backward_seq(
                &self.stem,
                &cache.stem,
                grad_x[0].clone(),
                grads,
                fusion,
            ))
        } else {
            None
        };
        Ok((NetGrads { grad_x }, input.filter(|_| to_input)))
    }

    /// After a training-mode forward: move every BN's running statistics toward the batch's.
    pub fn update_running_stats(&mut self, cache: &NetCache<T>) {
        update_running_stats_seq(&mut self.stem, &cache.stem);
        for l in 0..self.units.len() {
            let uc = cache.unit(self, l);
            self.units[l].update_running_stats(&uc);
        }
        update_running_stats_seq(&mut self.head, &cache.head);
    }

    /// Multiply-adds of one sample's forward pass through the weight layers (stem, every
    /// unit's branch and shortcut, head): what [`crate::budget`] counts.
    pub fn forward_macs(&self) -> f64 {
        fn seq<T: Float>(ops: &[Op<T>], shape: &mut Vec<usize>) -> f64 {
            ops.iter()
                .map(|op| {
                    let m = op.macs(shape);
                    *shape = op.out_shape(shape);
                    m
                })
                .sum()
        }
        let mut shape = std::iter::once(1)
            .chain(self.input_shape.iter().copied())
            .collect();
        let mut total = seq(&self.stem, &mut shape);
        for u in &self.units {
            let mut inner = shape.clone();
            total += seq(&u.pre, &mut inner);
            let mut short = inner.clone();
            total += seq(&u.shortcut_ops, &mut short);
            total += seq(&u.branch, &mut inner);
            total += seq(&u.after_add, &mut inner);
            shape = inner;
        }
        total + seq(&self.head, &mut shape)
    }

    /// The work of `passes` forward and backward passes over `batch` samples (see
    /// [`memory::pass_work`]).
    pub fn pass_work(&self, batch: usize, passes: f64) -> crate::budget::Work {
        memory::work_of(self.forward_macs(), self.num_units() as f64, batch, passes)
    }

    pub fn visit_params(&self, f: &mut dyn FnMut(String, &Tensor<T>)) {
        self.stem.iter().for_each(|op| op.visit_params(f));
        self.units.iter().for_each(|u| u.visit_params(f));
        self.head.iter().for_each(|op| op.visit_params(f));
    }

    pub fn visit_params_mut(&mut self, f: &mut dyn FnMut(String, &mut Tensor<T>)) {
        self.stem.iter_mut().for_each(|op| op.visit_params_mut(f));
        self.units.iter_mut().for_each(|u| u.visit_params_mut(f));
        self.head.iter_mut().for_each(|op| op.visit_params_mut(f));
    }

    pub fn visit_buffers(&self, f: &mut dyn FnMut(String, &Tensor<T>)) {
        self.stem.iter().for_each(|op| op.visit_buffers(f));
        self.units.iter().for_each(|u| u.visit_buffers(f));
        self.head.iter().for_each(|op| op.visit_buffers(f));
    }

    pub fn visit_buffers_mut(&mut self, f: &mut dyn FnMut(String, &mut Tensor<T>)) {
        self.stem.iter_mut().for_each(|op| op.visit_buffers_mut(f));
        self.units.iter_mut().for_each(|u| u.visit_buffers_mut(f));
        self.head.iter_mut().for_each(|op| op.visit_buffers_mut(f));
    }

    /// Names of every parameter, in visiting order.
    /// The names of one part's parameters, in visiting order.
    pub fn param_names_of(&self, part: Part) -> Vec<String> {
        let mut names = Vec::new();
        let mut push = |n: String, _: &Tensor<T>| names.push(n);
        let (body, classifier) = self.head.split_at(self.head.len().saturating_sub(1));
        match part {
            Part::Stem => self.stem.iter().for_each(|op| op.visit_params(&mut push)),
            Part::Unit(l) => self.units[l].visit_params(&mut push),
            Part::Head => body.iter().for_each(|op| op.visit_params(&mut push)),
            Part::Classifier => classifier.iter().for_each(|op| op.visit_params(&mut push)),
        }
        names
    }

    pub fn param_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        self.visit_params(&mut |n, _| names.push(n));
        names
    }

    /// A copy of the parameter `name`.
    pub fn param(&self, name: &str) -> Option<Tensor<T>> {
        let mut found = None;
        self.visit_params(&mut |n, t| {
            if n == name {
                found = Some(t.clone())
            }
        });
        found
    }

    /// A copy of the network with `value` in place of parameter `name`.
    pub fn with_param(&self, name: &str, value: &Tensor<T>) -> Network<T> {
        let mut net = self.clone();
        net.visit_params_mut(&mut |n, t| {
            if n == name {
                t.assign(value)
            }
        });
        net
    }

    /// Total number of scalar parameters.
    pub fn param_count(&self) -> usize {
        let mut count = 0;
        self.visit_params(&mut |_, t| count += t.len());
        count
    }
}
