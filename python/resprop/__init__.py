"""resprop for notebooks: the Rust engine's analyses as pandas DataFrames.

>>> import resprop
>>> df = resprop.profile(net="mlp", units=50, shortcut="scale:0.5")

The columns and values are those of `resprop profile --csv` (the same floats); bad
arguments raise ValueError with the command line's one-line message.
"""

import pandas as pd

from . import _resprop

__all__ = ["profile", "check", "run"]


def profile(net="mlp", units=54, width=64, input_dim=64, image_size=32, classes=10, batch=32,
            placement="original", shortcut="identity", projection=None, norm="batch",
            init="he", bn_mode="train", seed=0):
    """The per-unit gradient record (one row per unit input x_l, l = 0..L), as
    `resprop profile --csv` writes it: ||dE/dx_l||, its direct (shortcut-only) part and the
    rest, the ratios to the top, per-sample ratios and the forward-signal statistics.

    Keyword arguments are the command line's flags, with its defaults."""
    cols = _resprop.profile(net=net, units=units, width=width, input_dim=input_dim,
                            image_size=image_size, classes=classes, batch=batch,
                            placement=placement, shortcut=shortcut, projection=projection,
                            norm=norm, init=init, bn_mode=bn_mode, seed=seed)
    return pd.DataFrame(cols)


def run(spec, out="results"):
    """Runs an experiment file (as `resprop run SPEC --out OUT`) and returns its main table
    (profile.csv, train.csv, ...) as a DataFrame. Cells already under OUT/cells/ are reused."""
    return pd.read_csv(_resprop.run(spec, out))


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
