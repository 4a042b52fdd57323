"""The Python package against the command line: the same columns and the same floats."""

import os
import pathlib
import subprocess

import pandas as pd
import pytest

import resprop

RESPROP = os.environ.get("RESPROP_BIN", "resprop")


def cli_csv(tmp_path, args):
    out = tmp_path / "p.csv"
    subprocess.run([RESPROP, "profile", *args, "--csv", str(out)], check=True,
                   capture_output=True)
    return pd.read_csv(out)


@pytest.mark.parametrize("kwargs,args", [
    (dict(net="mlp", units=12, shortcut="scale:0.5"), ["--net", "mlp", "--units", "12", "--shortcut", "scale:0.5"]),
    (dict(net="mlp", units=8, placement="pre-norm", norm="layer", seed=3),
     ["--net", "mlp", "--units", "8", "--placement", "pre-norm", "--norm", "layer", "--seed", "3"]),
    (dict(net="resnet:1:basic", placement="full-preact", batch=4, image_size=8),
     ["--net", "resnet:1:basic", "--placement", "full-preact", "--batch", "4", "--image-size", "8"]),
])
def test_profile_equals_the_cli_csv(tmp_path, kwargs, args):
    df = resprop.profile(**kwargs)
    cli = cli_csv(tmp_path, args)
    assert list(df.columns) == list(cli.columns)
    assert len(df) == len(cli)
    for c in df.columns:
        a, b = df[c].tolist(), cli[c].tolist()
        for x, y in zip(a, b):
            if isinstance(y, float) and y != y:  # NaN (an empty CSV field)
                assert x is None or x != x, (c, x)
            else:
                assert x == y, (c, x, y)


def test_errors_are_value_errors_with_the_cli_message():
    with pytest.raises(ValueError, match="unknown placement 'sideways'"):
        resprop.profile(placement="sideways")
    with pytest.raises(ValueError, match="batch must be at least 1"):
        resprop.profile(batch=0)


@pytest.mark.parametrize("fn, kwargs, error, message", [
    (resprop.profile, dict(units=-1), ValueError, "units: expected a whole number of 0 or more"),
    (resprop.profile, dict(units="abc"), TypeError, "units: expected a whole number"),
    (resprop.profile, dict(placement=None), TypeError, "placement: expected a string"),
    (resprop.profile, dict(seed=1.5), TypeError, "seed: expected a whole number"),
    (resprop.profile, dict(net="resnet110", units=3), ValueError, "^units: sizes the MLP"),
    (resprop.check, dict(directions=-3), ValueError, "directions: expected a whole number"),
    (resprop.train, dict(lr="fast"), TypeError, "lr: expected a number"),
    (resprop.train, dict(momentum=2.0), ValueError, "^momentum: a number in"),
    (resprop.paths, dict(sample=True), TypeError, "sample"),
    (resprop.shatter, dict(depths=(1, -2)), ValueError, "depths: expected a whole number"),
])
def test_a_bad_argument_is_named_with_what_it_expects(fn, kwargs, error, message):
    with pytest.raises(error, match=message):
        fn(**kwargs)


def test_run_returns_the_experiment_table(tmp_path):
    spec = tmp_path / "t.toml"
    spec.write_text('name = "t"\nclaim = "c"\nbatch = 4\ncharts = ["grad_ratio"]\n[net]\nunits = 3\nwidth = 8\n'
                    '[grid]\nplacements = ["original"]\nshortcuts = ["identity", "none"]\n')
    df = resprop.run(str(spec), out=str(tmp_path / "results"))
    assert len(df) == 2 * 4 and set(df["shortcut"]) == {"identity", "none"}
    assert df.attrs["charts"] == []
    # The same table as the command line's, and with plots= its charts.
    subprocess.run([RESPROP, "run", str(spec), "--out", str(tmp_path / "cli")], check=True,
                   capture_output=True)
    assert (tmp_path / "results/t/profile.csv").read_bytes() == \
        (tmp_path / "cli/t/profile.csv").read_bytes()
    df = resprop.run(spec, out=tmp_path / "results", plots=tmp_path / "plots")
    assert df.attrs["charts"] and all(pathlib.Path(p).is_file() for p in df.attrs["charts"])
    with pytest.raises(ValueError, match="cannot read"):
        resprop.run(str(tmp_path / "missing.toml"))


def test_check_passes_and_agrees_with_the_cli():
    df = resprop.check(net="mlp", units=20, placement="full-preact", shortcut="gate:-6")
    assert set(df["result"]) <= {"PASS", "n/a"} and (df["result"] == "PASS").sum() >= 5
    out = subprocess.run([RESPROP, "check", "--net", "mlp", "--units", "20", "--placement",
                          "full-preact", "--shortcut", "gate:-6"], check=True,
                         capture_output=True, text=True).stdout
    passed = int(out.strip().splitlines()[-1].split()[0])
    assert passed == (df["result"] == "PASS").sum()


@pytest.mark.parametrize("kwargs", [
    dict(net="mlp", units=6, width=8, batch=4, placement="full-preact", shortcut="scale:0.5"),
    dict(net="resnet:1:basic", placement="full-preact", batch=2, image_size=8),
])
def test_arrays_are_the_tensors_the_record_measured(kwargs):
    import numpy as np

    df, arrays = resprop.profile(**kwargs, arrays=True)
    assert df.equals(resprop.profile(**kwargs)), "asking for arrays changes no number"
    n = len(df)
    assert {k: len(v) for k, v in arrays.items()} == {"x": n, "grad": n, "direct": n}
    norm = lambda a: float(np.sqrt((a * a).sum()))
    for l in range(n):
        x, g, d = arrays["x"][l], arrays["grad"][l], arrays["direct"][l]
        assert x.dtype == np.float64 and x.shape[0] == kwargs["batch"]
        # The engine sums in its own fixed order, NumPy in another: equal to 1e-12.
        assert norm(x) == pytest.approx(df.act_norm[l], rel=1e-12)
        assert norm(g) == pytest.approx(df.grad_norm[l], rel=1e-12)
        assert norm(d) == pytest.approx(df.direct_norm[l], rel=1e-12)
        assert norm(g - d) == pytest.approx(df.rest_norm[l], rel=1e-12)
    if kwargs["net"] == "mlp":
        # Scaled shortcuts and no function after the addition: the direct part is the top
        # gradient times 0.5 per unit above (Eq. 7's prod lambda), here to the last bit.
        top = arrays["grad"][-1]
        for l in range(n):
            assert np.array_equal(arrays["direct"][l], top * 0.5 ** (n - 1 - l))


def test_precision_f32_gives_float32_arrays_and_the_cli_csv(tmp_path):
    import numpy as np

    kwargs = dict(net="resnet:1:basic", placement="full-preact", batch=4, image_size=8, seed=2)
    args = ["--net", "resnet:1:basic", "--placement", "full-preact", "--batch", "4",
            "--image-size", "8", "--seed", "2"]
    df, arrays = resprop.profile(**kwargs, precision="f32", arrays=True)
    # The command line's f32 CSV, float for float.
    cli = cli_csv(tmp_path, args + ["--precision", "f32"])
    for c in ("grad_norm", "direct_norm", "act_norm", "act_var"):
        assert df[c].tolist() == cli[c].tolist(), c
    assert all(a.dtype == np.float32 for v in arrays.values() for a in v)
    # The records are f64 sums of the f32 values.
    norm = lambda a: float(np.sqrt((a.astype(np.float64) ** 2).sum()))
    for l in range(len(df)):
        assert norm(arrays["grad"][l]) == pytest.approx(df.grad_norm[l], rel=1e-12)
    # Against the f64 twin: a well-conditioned net, so close (measured: below 1e-6).
    f64 = resprop.profile(**kwargs)
    assert np.allclose(df.grad_norm, f64.grad_norm, rtol=1e-5, atol=0)
