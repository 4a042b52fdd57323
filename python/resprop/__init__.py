"""resprop for notebooks: the Rust engine's analyses as pandas DataFrames.

>>> import resprop
>>> df = resprop.profile(net="mlp", units=50, shortcut="scale:0.5")

Every function takes the command line's flags as keyword arguments (`--bn-mode` is
`bn_mode`), with its defaults, and returns the table of the matching CSV: the same columns and
the same floats. Bad arguments raise ValueError with the command line's one-line message, and
an argument of the wrong kind TypeError naming it.
Ctrl-C stops train, run, check, paths and lesion at their next step, cell, job, path or
lesion and raises KeyboardInterrupt saying where they stopped.

The network arguments of profile, check, paths and lesion:
    net         mlp (sized by units and width) or a ResNet: resnet110, resnet:N:basic, ...
    units, width, input_dim     the MLP's residual units, width and input size
    image_size, classes, batch  a ResNet's input size; the classes; the batch
    placement   original, bn-after-add, relu-before-add, relu-preact, full-preact,
                post-norm, pre-norm
    shortcut    identity, scale:L, gate:B, shortcut-gate:B, conv1x1, dropout:P, none,
                alpha:A, rezero, layerscale:E, deepnorm
    projection  a ResNet's shape-changing shortcut: bn, plain or pad (default by placement)
    norm        batch, layer or none;  init: he, xavier or fixup
    bn_mode     train (batch statistics) or eval (running statistics)
    seed        the weights', the batch's and the dropout masks' seed
    weights     a checkpoint from train(checkpoint=DIR): DIR/checkpoint.npz
    data        digits or cifar10:<dir>: a batch of its training images instead of Gaussian
                inputs (with weights, the checkpoint's data by default)
"""

import os
import warnings

import pandas as pd

from . import _resprop

__all__ = ["profile", "check", "train", "paths", "lesion", "shatter", "run"]


def _check(name, value, default):
    """Refuses an argument of the wrong kind, naming it and what it expects (the extension's
    own conversion errors do not say which argument they are about)."""
    if value is None and default is None:
        return value
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise TypeError(f"{name}: expected True or False, got {value!r}")
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name}: expected a whole number, got {value!r}")
        if value < 0:
            raise ValueError(f"{name}: expected a whole number of 0 or more, got {value}")
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name}: expected a number, got {value!r}")
    elif isinstance(default, str):
        if not isinstance(value, str):
            raise TypeError(f"{name}: expected a string, got {value!r}")
    elif default is None:
        # An optional path, name or count (weights, projection, sample, warmup_steps, ...).
        if not isinstance(value, (str, int)) or isinstance(value, bool):
            raise TypeError(f"{name}: expected a string, a path or a whole number, got {value!r}")
    return value


def _kwargs(local_vars):
    """The arguments of the calling function, checked against the kinds of their defaults
    (`_check`), paths as strings, for the extension."""
    import inspect
    caller = inspect.currentframe().f_back
    fn = globals()[caller.f_code.co_name]
    defaults = {k: p.default for k, p in inspect.signature(fn).parameters.items()}
    return {k: _check(k, v, defaults.get(k)) for k, v in local_vars.items()}


def profile(net="mlp", units=54, width=64, input_dim=64, image_size=32, classes=10, batch=32,
            placement="original", shortcut="identity", projection=None, norm="batch",
            init="he", bn_mode="train", seed=0, weights=None, data=None, arrays=False):
    """The per-unit gradient record (one row per unit input x_l, l = 0..L; row L is the
    head's input), as `resprop profile --csv` writes it: ||dE/dx_l||, its direct
    (shortcut-only) part and the rest, the ratios to the top, per-sample ratios and the
    forward-signal statistics. The network arguments are described in help(resprop).

    With arrays=True, returns (DataFrame, arrays): arrays["x"][l] is x_l,
    arrays["grad"][l] is dE/dx_l and arrays["direct"][l] its direct part (the top gradient
    carried by the shortcuts alone), NumPy float64 arrays shaped like the batch at unit l
    (batch x width for an MLP, batch x channels x height x width for a ResNet). They hold
    3 x (L + 1) activations: about 1.3 GB for resnet110 at batch 32."""
    cols, tensors = _resprop.profile(**_kwargs(locals()))
    df = pd.DataFrame(cols)
    return (df, tensors) if arrays else df


def check(net="mlp", units=54, width=64, input_dim=64, image_size=32, classes=10, batch=32,
          placement="original", shortcut="identity", projection=None, norm="batch",
          init="he", bn_mode="train", seed=0, weights=None, data=None, directions=3):
    """The paper's formulas verified numerically, as `resprop check` prints them: one row
    per check (finite differences, Eq. 4/7, Eq. 5/8, prod lambda) with its result (PASS,
    FAIL, INCONCLUSIVE, n/a), worst error, uncertainty, tolerance, what was compared, the
    reason where it did not apply, and whether it is a verification or a consistency check.
    directions: random directions per finite-difference target. Ctrl-C stops before the
    next finite-difference job with KeyboardInterrupt (ResNet-110's run for minutes)."""
    return pd.DataFrame(_resprop.check(**_kwargs(locals())))


def train(net="resnet:2:basic", data="digits", placement="full-preact", shortcut="identity",
          projection=None, norm="batch", init="he", units=8, width=64, epochs=10, batch=64,
          lr=0.1, momentum=0.9, optimizer="sgd", warmup_steps=None, weight_decay=1e-4,
          weight_decay_mode="decoupled", record_every=10, checkpoint=None, resume=False,
          stop_after_epochs=None, seed=0, unfused=False):
    """Trains a network as `resprop train` does and returns (steps, grads): the per-step
    table of its --csv (step, epoch, lr, train loss and error; test loss and error at each
    epoch's end, NaN elsewhere; the training-side numbers of the generalisation gap) and the
    per-unit gradients every `record_every` steps of its --grad-csv (step, unit,
    ||dE/dx_l||, its ratio to the top, the direct part's ratio).

    data is "digits" (the bundled handwritten digits) or "cifar10:<dir>". SGD runs the
    paper's schedule (a tenth of lr until a batch's error is below 80%, or warmup_steps;
    divided by 10 at 50% and 75% of the steps); optimizer="adam" runs Adam (weight decay
    decoupled or l2). checkpoint (a folder) saves the training state after every epoch (a
    folder that already holds a checkpoint is refused without resume, and one in use by
    another run is refused); resume=True continues from it, bit-identical to an
    uninterrupted run; stop_after_epochs stops early as if interrupted.

    Ctrl-C stops after the current step with KeyboardInterrupt. A run that diverges returns
    what it recorded, warns (RuntimeWarning) and says where in steps.attrs["diverged"]."""
    steps, grads, diverged = _resprop.train(**_kwargs(locals()))
    steps, grads = pd.DataFrame(steps), pd.DataFrame(grads)
    steps.attrs["diverged"] = diverged
    if diverged is not None:
        warnings.warn(diverged, RuntimeWarning, stacklevel=2)
    return steps, grads


def paths(net="mlp", units=54, width=64, input_dim=64, image_size=32, classes=10, batch=32,
          placement="original", shortcut="identity", projection=None, norm="batch",
          init="he", bn_mode="train", seed=0, weights=None, data=None, sample=None,
          window=0.9):
    """The gradient by path length, exactly, as `resprop paths --csv` writes it: one row per
    (unit input l, path length k) with paths (C(n, k), n the units above l), exact_norm
    (||G_k(l)||, the part of dE/dx_l that went through exactly k branches), exact_share, and
    with sample=S Veit et al.'s estimate at the input (the mean norm of S sampled single
    paths of each length, and C(n, k) times it).

    df.attrs["sum_error"] is the worst relative error of sum_k G_k(l) against dE/dx_l; above
    1e-10 (where the command line fails) it also warns. window is the command line's --window
    (the effective window is printed there, not returned). Ctrl-C stops the sampling with
    KeyboardInterrupt."""
    cols, sum_error = _resprop.paths(**_kwargs(locals()))
    df = pd.DataFrame(cols)
    df.attrs["sum_error"] = sum_error
    if not sum_error <= 1e-10:
        warnings.warn(f"the path decomposition does not sum to the gradient: {sum_error:.3e}",
                      RuntimeWarning, stacklevel=2)
    return df


def lesion(weights, net="mlp", units=54, width=64, input_dim=64, image_size=32, classes=10,
           batch=32, placement="original", shortcut="identity", projection=None,
           norm="batch", init="he", bn_mode="train", seed=0, data=None, draws=5):
    """The test error of a trained network (weights: a checkpoint from
    train(checkpoint=DIR)) with residual units deleted, as `resprop lesion --csv` writes it:
    one row per lesion, kind (none: the intact net, single: one unit, random: k drawn
    units), k, draw, deleted (the units, space-separated) and test_error. The network is
    the checkpoint's; draws random sets are drawn for each k = 1..n/2."""
    return pd.DataFrame(_resprop.lesion(**_kwargs(locals())))


def shatter(depths=(1, 10, 24, 50), width=200, replicates=8, seed=0, placement="original"):
    """Shattered gradients (Balduzzi et al. 2017), as `resprop shatter` computes them:
    d(output)/d(input) of plain and residual MLPs, with and without BatchNorm, over 256
    inputs in [-2, 2). Returns (autocorrelations, gradients): the mean autocorrelation per
    (net, depth, lag), white and brown noise included (depth NaN), as its --csv; and every
    network's gradient per (net, depth, replicate, x), as its --gradients-csv."""
    for d in depths:
        _check("depths", d, 1)
    args = _kwargs(locals())
    auto, grads = _resprop.shatter(depths=list(depths), width=args["width"],
                                   replicates=args["replicates"], seed=args["seed"],
                                   placement=args["placement"])
    return pd.DataFrame(auto), pd.DataFrame(grads)


def run(spec, out="results", plots=None):
    """Runs an experiment file (as `resprop run SPEC --out OUT`) and returns its main table
    (profile.csv, train.csv, ...) as a DataFrame. Cells already under OUT/cells/ are reused.
    With plots (a folder), also draws the experiment's charts there (PNG and SVG), as
    --plots; their paths are in df.attrs["charts"].

    Ctrl-C stops before the next cell (or a training cell's next step) with
    KeyboardInterrupt; the cells finished by then stay stored, so running again resumes."""
    csv, charts = _resprop.run(os.fspath(spec), os.fspath(out),
                               None if plots is None else os.fspath(plots))
    df = pd.read_csv(csv)
    df.attrs["charts"] = charts
    return df
