"""model= (an imported ONNX network) in Python against the command line's --model, and
export_onnx's round trip from PyTorch (run only where torch and torchvision are installed)."""

import copy
import os
import pathlib
import subprocess
import warnings

import pandas as pd
import pytest

import resprop
from test_train import assert_frames_equal

RESPROP = os.environ.get("RESPROP_BIN", "resprop")
ROOT = pathlib.Path(__file__).resolve().parents[2]
BASIC = ROOT / "tests" / "onnx" / "basic.onnx"
# basic.onnx: torchvision's BasicBlock, two per stage, behind torchvision's stem.
BASIC_ROWS = ["layer1.0", "layer1.1", "layer2.0", "layer2.1", "top"]


def cli(*args):
    return subprocess.run([RESPROP, *map(str, args)], check=True, capture_output=True,
                          text=True).stdout


@pytest.mark.parametrize("model", [BASIC, str(BASIC)])
def test_profile_of_a_model_equals_the_cli_csv(tmp_path, model):
    df = resprop.profile(model=model, batch=4, seed=3)
    cli("profile", "--model", BASIC, "--batch", "4", "--seed", "3", "--csv", tmp_path / "p.csv")
    assert_frames_equal(df, pd.read_csv(tmp_path / "p.csv"))
    # Each row named by its unit's module, as the command line prints it.
    assert df.columns[-1] == "name" and df.name.tolist() == BASIC_ROWS
    assert df.unit.tolist() == list(range(len(BASIC_ROWS)))


def test_a_built_in_network_has_no_name_column():
    assert "name" not in resprop.profile(net="mlp", units=3, width=8, batch=4).columns


def rust_e(v, digits):
    """A float as Rust's `{:.De}` writes it (1.23e-5, not Python's 1.23e-05)."""
    mantissa, exponent = f"{v:.{digits}e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def test_check_of_a_model_prints_the_cli_rows():
    df = resprop.check(model=BASIC, batch=2)
    out = cli("check", "--model", BASIC, "--batch", "2")
    assert set(df.result) <= {"PASS", "n/a"} and (df.result == "PASS").sum() >= 10
    short = lambda v: "-" if v is None or v != v else rust_e(v, 2)
    for r in df.itertuples():
        what = r.what if r.result != "n/a" else f"{r.what} [n/a: {r.reason}]"
        line = (f"  {r.check:<17} {r.result:<12} {short(r.worst):>11} "
                f"{short(r.uncertainty):>11} {rust_e(r.tolerance, 0):>9}  {what}")
        assert line in out.splitlines(), (line, out)
    passed = int(out.strip().splitlines()[-1].split()[0])
    assert passed == (df.result == "PASS").sum()


def test_paths_of_a_model_equals_the_cli_csv(tmp_path):
    df = resprop.paths(model=BASIC, batch=2, sample=3)
    cli("paths", "--model", BASIC, "--batch", "2", "--sample", "3", "--csv", tmp_path / "p.csv")
    assert_frames_equal(df, pd.read_csv(tmp_path / "p.csv"))
    assert df.attrs["sum_error"] < 1e-10
    n = len(BASIC_ROWS)
    assert len(df) == n * (n + 1) // 2


def test_lesion_of_a_model_equals_the_cli_csv(tmp_path):
    # preln.onnx: a Pre-LN MLP of three units on the digits' 64 pixels.
    preln = BASIC.with_name("preln.onnx")
    df = resprop.lesion(model=preln, data="digits", draws=2)
    cli("lesion", "--model", preln, "--data", "digits", "--draws", "2",
        "--csv", tmp_path / "l.csv")
    assert_frames_equal(df, pd.read_csv(tmp_path / "l.csv", dtype={"deleted": str},
                                        keep_default_na=False))
    # The deleted units by their module names.
    singles = df[df.kind == "single"].deleted.tolist()
    assert singles == ["blocks.0", "blocks.1", "blocks.2"], singles
    with pytest.raises(ValueError, match="weights CHECKPOINT .* or --model|needs a trained"):
        resprop.lesion(data="digits")


@pytest.mark.parametrize("shape", ["3,40,40", (3, 40, 40), [3, 40, 40]])
def test_input_shape_as_text_or_sequence(tmp_path, shape):
    df = resprop.profile(model=BASIC, input_shape=shape, batch=2)
    cli("profile", "--model", BASIC, "--input-shape", "3,40,40", "--batch", "2",
        "--csv", tmp_path / "p.csv")
    assert_frames_equal(df, pd.read_csv(tmp_path / "p.csv"))
    with pytest.raises(TypeError, match="input_shape: expected whole numbers"):
        resprop.profile(model=BASIC, input_shape=(3, 40.0, 40))
    with pytest.raises(ValueError, match="input.shape"):
        resprop.profile(model=BASIC, input_shape="3,40")


def test_a_bad_model_is_a_value_error_naming_model_in_one_line(tmp_path):
    text = tmp_path / "text.onnx"
    text.write_text("not a model at all\n")
    cut = tmp_path / "cut.onnx"
    good = BASIC.read_bytes()
    cut.write_bytes(good[:len(good) // 3])
    # The command line's message, its flag named by the keyword: "model FILE: not an ONNX
    # model (...)", "cannot read model 'FILE': No such file ..." (as weights').
    for bad, reason in [(text, "not an ONNX model"), (cut, "not an ONNX model"),
                        (tmp_path / "missing.onnx", "No such file")]:
        with pytest.raises(ValueError, match=r"\bmodel\b") as e:
            resprop.profile(model=bad, batch=2)
        message = str(e.value)
        assert reason in message and str(bad) in message, message
        assert "\n" not in message and "--" not in message, message
    with pytest.raises(ValueError, match="not an ONNX model"):
        resprop.check(model=text)
    with pytest.raises(ValueError, match="not an ONNX model"):
        resprop.paths(model=str(text))
    # The file gives the network: a keyword describing another is refused, named.
    with pytest.raises(ValueError, match="^units: the network is --model's|^units: "):
        resprop.profile(model=BASIC, units=3)
    with pytest.raises(TypeError, match="model: expected a string, a path"):
        resprop.profile(model=1.5)


def test_export_onnx_without_torch_says_what_to_install(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("No module named 'torch'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    with pytest.raises(ImportError, match="needs PyTorch.*pip install torch"):
        resprop.export_onnx(object(), object(), "x.onnx")


def test_export_onnx_round_trip(tmp_path):
    torch = pytest.importorskip("torch")
    resnet = pytest.importorskip("torchvision.models.resnet")
    nn = torch.nn

    class Net(nn.Module):
        """torchvision's BasicBlock twice, at width 8: units named layer1.0, layer1.1."""

        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(8)
            self.relu = nn.ReLU(inplace=True)
            self.layer1 = nn.Sequential(resnet.BasicBlock(8, 8), resnet.BasicBlock(8, 8))
            self.fc = nn.Linear(8, 10)

        def forward(self, x):
            x = self.layer1(self.relu(self.bn1(self.conv1(x))))
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    torch.manual_seed(0)
    net = Net().eval()
    before = copy.deepcopy(net.state_dict())
    x = torch.randn(2, 3, 8, 8)  # float32, as a user's batch usually is
    path = tmp_path / "net.onnx"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert resprop.export_onnx(net, x, path) is path
    # torch's notes on the settings chosen on purpose are not shown.
    assert [str(w.message) for w in caught] == []
    # The user's module is left as it was: f32, eval mode, the same weights and BN statistics.
    assert not net.training and net.fc.weight.dtype == torch.float32
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert x.dtype == torch.float32

    df = resprop.profile(model=path, batch=4)
    assert df.name.tolist() == ["layer1.0", "layer1.1", "top"]
    assert resprop.check(model=str(path), batch=2).result.isin(["PASS", "n/a"]).all()
    info = cli("inspect", "--model", path)
    assert "layer1.0" in info and "Conv BN Relu Conv BN" in info, info
