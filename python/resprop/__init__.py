"""resprop for notebooks: the Rust engine's analyses as pandas DataFrames.

>>> import resprop
>>> df = resprop.profile(net="mlp", units=50, shortcut="scale:0.5")

The columns and values are those of `resprop profile --csv` (the same floats); bad
arguments raise ValueError with the command line's one-line message. `train` and `run` stop
at the next step or cell on Ctrl-C and raise KeyboardInterrupt saying where they stopped.
"""

import warnings

import pandas as pd

from . import _resprop

__all__ = ["profile", "check", "train", "run"]


def profile(net="mlp", units=54, width=64, input_dim=64, image_size=32, classes=10, batch=32,
            placement="original", shortcut="identity", projection=None, norm="batch",
            init="he", bn_mode="train", seed=0, arrays=False):
    """The per-unit gradient record (one row per unit input x_l, l = 0..L), as
    `resprop profile --csv` writes it: ||dE/dx_l||, its direct (shortcut-only) part and the
    rest, the ratios to the top, per-sample ratios and the forward-signal statistics.

    Keyword arguments are the command line's flags, with its defaults.

    With arrays=True, returns (DataFrame, arrays): arrays["x"][l] is x_l,
    arrays["grad"][l] is dE/dx_l and arrays["direct"][l] its direct part (the top gradient
    carried by the shortcuts alone), NumPy float64 arrays shaped like the batch at unit l
    (batch x width for an MLP, batch x channels x height x width for a ResNet). They hold
    3 x (L + 1) activations: about 1.3 GB for resnet110 at batch 32."""
    cols, tensors = _resprop.profile(net=net, units=units, width=width, input_dim=input_dim,
                                     image_size=image_size, classes=classes, batch=batch,
                                     placement=placement, shortcut=shortcut,
                                     projection=projection, norm=norm, init=init,
                                     bn_mode=bn_mode, seed=seed, arrays=arrays)
    df = pd.DataFrame(cols)
    return (df, tensors) if arrays else df


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

    Keyword arguments are the command line's flags, with its defaults. data is "digits" (the
    bundled handwritten digits) or "cifar10:<dir>". checkpoint (a folder) saves the training
    state after every epoch; resume=True continues from it, bit-identical to an uninterrupted
    run.

    Ctrl-C stops after the current step with KeyboardInterrupt. A run that diverges returns
    what it recorded, warns (RuntimeWarning) and says where in steps.attrs["diverged"]."""
    steps, grads, diverged = _resprop.train(
        net=net, data=data, placement=placement, shortcut=shortcut, projection=projection,
        norm=norm, init=init, units=units, width=width, epochs=epochs, batch=batch, lr=lr,
        momentum=momentum, optimizer=optimizer, warmup_steps=warmup_steps,
        weight_decay=weight_decay, weight_decay_mode=weight_decay_mode,
        record_every=record_every, checkpoint=None if checkpoint is None else str(checkpoint),
        resume=resume, stop_after_epochs=stop_after_epochs, seed=seed, unfused=unfused)
    steps, grads = pd.DataFrame(steps), pd.DataFrame(grads)
    steps.attrs["diverged"] = diverged
    if diverged is not None:
        warnings.warn(diverged, RuntimeWarning, stacklevel=2)
    return steps, grads


def run(spec, out="results"):
    """Runs an experiment file (as `resprop run SPEC --out OUT`) and returns its main table
    (profile.csv, train.csv, ...) as a DataFrame. Cells already under OUT/cells/ are reused.

    Ctrl-C stops before the next cell (or a training cell's next step) with
    KeyboardInterrupt; the cells finished by then stay stored, so running again resumes."""
    return pd.read_csv(_resprop.run(str(spec), str(out)))


def check(net="mlp", units=54, width=64, input_dim=64, image_size=32, classes=10, batch=32,
          placement="original", shortcut="identity", projection=None, norm="batch",
          init="he", bn_mode="train", seed=0, directions=3):
    """The paper's formulas verified numerically, as `resprop check` prints them: one row
    per check (finite differences, Eq. 4/7, Eq. 5/8, prod lambda) with its result (PASS,
    FAIL, INCONCLUSIVE, n/a), worst error, uncertainty, tolerance, what was compared, the
    reason where it did not apply, and whether it is a verification or a consistency check."""
    return pd.DataFrame(_resprop.check(net=net, units=units, width=width, input_dim=input_dim,
                                       image_size=image_size, classes=classes, batch=batch,
                                       placement=placement, shortcut=shortcut,
                                       projection=projection, norm=norm, init=init,
                                       bn_mode=bn_mode, seed=seed, directions=directions))
