"""resprop for notebooks: the Rust engine's analyses as pandas DataFrames.

>>> import resprop
>>> df = resprop.profile(net="mlp", units=50, shortcut="scale:0.5")

Every function takes the command line's flags as keyword arguments (`--bn-mode` is
`bn_mode`), with its defaults, and returns the table of the matching CSV: the same columns and
the same floats. Bad arguments raise ValueError with the command line's one-line message, and
an argument of the wrong kind TypeError naming it.
Ctrl-C stops profile, train, run, check, paths and lesion at their next unit, step, cell,
job, path or lesion and raises KeyboardInterrupt saying where they stopped.

Each function's arguments, their defaults and what they mean are those of the command's
flags (help(resprop.profile) lists them, from the same definitions as `resprop profile
--help`); python/resprop/__init__.pyi is generated from them too.

Your own network: export it with export_onnx (needs PyTorch), then pass the file as model=
to profile, check or paths:

>>> resprop.export_onnx(model, x, "mynet.onnx")
>>> df = resprop.profile(model="mynet.onnx", batch=8)
"""

import functools
import inspect
import os
import warnings

import pandas as pd

from . import _resprop
from ._onnx import export_onnx

__all__ = ["profile", "check", "train", "paths", "lesion", "shatter", "run", "export_onnx"]


def _check(name, value, default):
    """Refuses an argument of the wrong kind, naming it and what it expects (the extension's
    own conversion errors do not say which argument they are about)."""
    if value is None and default is None:
        return value
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if name == "input_shape" and isinstance(value, (tuple, list)):
        # (3, 64, 64) as the command line's 3,64,64.
        if not all(isinstance(d, int) and not isinstance(d, bool) for d in value):
            raise TypeError(f"{name}: expected whole numbers (C, H, W) or (D,), got {value!r}")
        value = ",".join(str(d) for d in value)
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


def _signature(name):
    """The function's signature from the command line's definitions: its flags, in the
    package's order, with their defaults (a required one without)."""
    params = [
        inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                          default=inspect.Parameter.empty if required else default)
        for n, default, required, _type, _help in _resprop.parameters(name)
    ]
    return inspect.Signature(params)


def _arguments_doc(name):
    """The keyword documentation: each argument's flag help."""
    lines = ["", "Arguments (the flags of `resprop %s`, same defaults):" % name]
    for n, default, required, _type, help_text in _resprop.parameters(name):
        if not help_text:
            continue
        shown = "required" if required else "default %r" % (default,)
        lines.append("    %s (%s): %s" % (n, shown, help_text))
    return "\n".join(lines)


def _command(fn):
    """Gives `fn(**arguments)` the command's signature and keyword documentation; it is called
    with every argument bound (defaults applied) and `given`, the ones whose value differs from
    the default, checked (`_check`) for the command line's parser."""
    name = fn.__name__
    sig = _signature(name)

    @functools.wraps(fn)
    def call(*args, **kwargs):
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        given = {}
        for k, v in bound.arguments.items():
            default = sig.parameters[k].default
            required = default is inspect.Parameter.empty
            v = _check(k, v, None if required else default)
            if required or not _same(v, default):
                given[k] = v
        return fn(given, **bound.arguments)

    call.__signature__ = sig
    call.__doc__ = (fn.__doc__ or "") + "\n" + _arguments_doc(name)
    return call


def _same(value, default):
    """Whether a value is its default (of the same kind: True is not 1)."""
    if isinstance(default, tuple) and isinstance(value, (list, tuple)):
        return tuple(value) == default
    return type(value) is type(default) and value == default


@_command
def profile(given, arrays=False, **arguments):
    """The per-unit gradient record (one row per unit input x_l, l = 0..L; row L is the
    head's input), as `resprop profile --csv` writes it: ||dE/dx_l||, its direct
    (shortcut-only) part and the rest, the ratios to the top, per-sample ratios and the
    forward-signal statistics. Its arguments are listed below.

    With arrays=True, returns (DataFrame, arrays): arrays["x"][l] is x_l,
    arrays["grad"][l] is dE/dx_l and arrays["direct"][l] its direct part (the top gradient
    carried by the shortcuts alone), NumPy arrays shaped like the batch at unit l (batch x
    width for an MLP, batch x channels x height x width for a ResNet), float64 (float32
    with precision="f32"). They hold 3 x (L + 1) activations: about 1.3 GB for resnet110
    at batch 32 in f64.

    With model (an ONNX file, see export_onnx), the table ends with a name column: each
    row's unit by its module's name (layer1.0, ...; top for the head's input)."""
    given.pop("arrays", None)
    cols, tensors = _resprop.profile(given, arrays)
    df = pd.DataFrame(cols)
    return (df, tensors) if arrays else df


@_command
def check(given, **arguments):
    """The paper's formulas verified numerically, as `resprop check` prints them: one row
    per check (finite differences, Eq. 4/7, Eq. 5/8, prod lambda) with its result (PASS,
    FAIL, INCONCLUSIVE, n/a), worst error, uncertainty, tolerance, what was compared, the
    reason where it did not apply, and whether it is a verification or a consistency check.
    directions: random directions per finite-difference target. Ctrl-C stops before the
    next finite-difference job with KeyboardInterrupt (ResNet-110's run for minutes)."""
    return pd.DataFrame(_resprop.check(given))


@_command
def train(given, **arguments):
    """Trains a network as `resprop train` does and returns (steps, grads): the per-step
    table of its --csv (step, epoch, lr, train loss and error; test loss and error at each
    epoch's end, NaN elsewhere; the training-side numbers of the generalisation gap) and the
    per-unit gradients every `record_every` steps of its --grad-csv (step, unit,
    ||dE/dx_l||, its ratio to the top, the direct part's ratio).

    data is "digits" (the bundled handwritten digits), "fashion-mnist", "mnist:<dir>",
    "cifar10:<dir>" or "npz:<file>" (see resprop data in the docs). SGD runs the
    paper's schedule (a tenth of lr until a batch's error is below 80%, or warmup_steps;
    divided by 10 at 50% and 75% of the steps); optimizer="adam" runs Adam (weight decay
    decoupled or l2). checkpoint (a folder) saves the training state after every epoch (a
    folder that already holds a checkpoint is refused without resume, and one in use by
    another run is refused); resume=True continues from it, bit-identical to an
    uninterrupted run; stop_after_epochs stops early as if interrupted.

    Ctrl-C stops after the current step with KeyboardInterrupt. A run that diverges returns
    what it recorded, warns (RuntimeWarning) and says where in steps.attrs["diverged"]."""
    steps, grads, diverged = _resprop.train(given)
    steps, grads = pd.DataFrame(steps), pd.DataFrame(grads)
    steps.attrs["diverged"] = diverged
    if diverged is not None:
        warnings.warn(diverged, RuntimeWarning, stacklevel=2)
    return steps, grads


@_command
def paths(given, **arguments):
    """The gradient by path length, exactly, as `resprop paths --csv` writes it: one row per
    (unit input l, path length k) with paths (C(n, k), n the units above l), exact_norm
    (||G_k(l)||, the part of dE/dx_l that went through exactly k branches), exact_share, and
    with sample=S Veit et al.'s estimate at the input (the mean norm of S sampled single
    paths of each length, and C(n, k) times it).

    df.attrs["sum_error"] is the worst relative error of sum_k G_k(l) against dE/dx_l; above
    1e-10 (where the command line fails) it also warns. window is the command line's --window
    (the effective window is printed there, not returned). Ctrl-C stops the sampling with
    KeyboardInterrupt."""
    cols, sum_error = _resprop.paths(given)
    df = pd.DataFrame(cols)
    df.attrs["sum_error"] = sum_error
    if not sum_error <= 1e-10:
        warnings.warn(f"the path decomposition does not sum to the gradient: {sum_error:.3e}",
                      RuntimeWarning, stacklevel=2)
    return df


@_command
def lesion(given, **arguments):
    """The test error of a trained network with residual units deleted, as `resprop lesion
    --csv` writes it: one row per lesion, kind (none: the intact net, single: one unit,
    random: k drawn units), k, draw, deleted (the units, space-separated) and test_error.
    The network is weights' (a checkpoint from train(checkpoint=DIR)) or model's (an ONNX
    file, with data: the units are then named by its modules); draws random sets are drawn
    for each k = 1..n/2."""
    return pd.DataFrame(_resprop.lesion(given))


@_command
def shatter(given, **arguments):
    """Shattered gradients (Balduzzi et al. 2017), as `resprop shatter` computes them:
    d(output)/d(input) of plain and residual MLPs, with and without BatchNorm, over 256
    inputs in [-2, 2). Returns (autocorrelations, gradients): the mean autocorrelation per
    (net, depth, lag), white and brown noise included (depth NaN), as its --csv; and every
    network's gradient per (net, depth, replicate, x), as its --gradients-csv."""
    for d in arguments["depths"]:
        _check("depths", d, 1)
    auto, grads = _resprop.shatter(given)
    return pd.DataFrame(auto), pd.DataFrame(grads)


@_command
def run(given, **arguments):
    """Runs an experiment file (as `resprop run SPEC --out OUT`) and returns its main table
    (profile.csv, train.csv, ...) as a DataFrame. Cells already under OUT/cells/ are reused.
    With plots (a folder), also draws the experiment's charts there (PNG and SVG), as
    --plots; their paths are in df.attrs["charts"].

    Ctrl-C stops before the next cell (or a training cell's next step) with
    KeyboardInterrupt; the cells finished by then stay stored, so running again resumes."""
    csv, charts = _resprop.run(given)
    df = pd.read_csv(csv)
    df.attrs["charts"] = charts
    return df
