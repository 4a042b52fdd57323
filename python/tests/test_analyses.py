"""paths, lesion, shatter and trained weights in Python against the command line."""

import os
import subprocess

import pandas as pd
import pytest

import resprop
from test_train import assert_frames_equal

RESPROP = os.environ.get("RESPROP_BIN", "resprop")


def cli(*args):
    subprocess.run([RESPROP, *map(str, args)], check=True, capture_output=True)


def flags(kwargs):
    return [f"--{k.replace('_', '-')}={v}" for k, v in kwargs.items()]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A ResNet-8 trained for 2 epochs on the digits, by the command line."""
    d = tmp_path_factory.mktemp("trained")
    cli("train", "--net", "resnet:1:basic", "--epochs", "2", "--checkpoint", d)
    return d / "checkpoint.npz"


@pytest.mark.parametrize("kwargs", [
    dict(net="mlp", units=6, width=8, batch=4, placement="full-preact", shortcut="scale:0.7"),
    dict(net="resnet:1:basic", batch=2, image_size=8, sample=3),
])
def test_paths_equals_the_cli_csv(tmp_path, kwargs):
    df = resprop.paths(**kwargs)
    cli("paths", *flags(kwargs), "--csv", tmp_path / "p.csv")
    assert_frames_equal(df, pd.read_csv(tmp_path / "p.csv"))
    assert df.attrs["sum_error"] < 1e-10


def test_trained_weights_and_real_data_give_the_cli_numbers(tmp_path, checkpoint):
    df = resprop.profile(weights=checkpoint, data="digits", batch=16)
    cli("profile", "--weights", checkpoint, "--data", "digits", "--batch", "16",
        "--csv", tmp_path / "p.csv")
    assert_frames_equal(df, pd.read_csv(tmp_path / "p.csv"))
    # The network is the checkpoint's (a ResNet with 3 units), not the default MLP.
    assert len(df) == 4 and set(df.placement) == {"full-preact"}
    with pytest.raises(ValueError, match="holds another network"):
        resprop.profile(weights=checkpoint, placement="relu-preact")


def test_lesion_equals_the_cli_csv(tmp_path, checkpoint):
    df = resprop.lesion(checkpoint, draws=2)
    cli("lesion", "--weights", checkpoint, "--draws", "2", "--csv", tmp_path / "l.csv")
    assert_frames_equal(df, pd.read_csv(tmp_path / "l.csv", dtype={"deleted": str},
                                        keep_default_na=False))
    assert df.kind.iloc[0] == "none" and df.k.dtype == "int64"
    with pytest.raises(ValueError, match="cannot read|No such file|does not exist"):
        resprop.lesion(tmp_path / "missing.npz")


def test_shatter_equals_the_cli_csvs(tmp_path):
    auto, grads = resprop.shatter(depths=[1, 3], width=16, replicates=2, seed=5)
    cli("shatter", "--depths", "1,3", "--width", "16", "--replicates", "2", "--seed", "5",
        "--csv", tmp_path / "a.csv", "--gradients-csv", tmp_path / "g.csv")
    assert_frames_equal(auto, pd.read_csv(tmp_path / "a.csv"))
    assert_frames_equal(grads, pd.read_csv(tmp_path / "g.csv"))
    assert set(auto.net) == {"plain", "plain+bn", "resnet", "resnet+bn", "white", "brown"}
    with pytest.raises(ValueError, match="depths: every depth must be at least 1"):
        resprop.shatter(depths=[0])
