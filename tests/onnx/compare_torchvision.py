"""torchvision's full resnet18 and resnet50 imported by resprop, against PyTorch's autograd.

Not part of the test suite (it needs torch and takes minutes). For each model: random
initialisation in f64, BatchNorm parameters and running statistics randomised as
make_fixtures.py does, exported the way docs/import.md says into a temporary directory, and
the references make_fixtures.py writes for the fixtures (the loss, the logits, dE/dx_l at every
unit input and at the top, the direct parts D_l there, every parameter gradient; training and
evaluation mode) saved beside it. Then `examples/compare_onnx.rs` loads both and prints, per
mode and kind, the largest relative error max |a - b| / max |b| over the arrays, and pass or
fail at 1e-10.

Needs torch, torchvision and onnx (pip install torch torchvision onnx) and cargo; from the
repository:

    python tests/onnx/compare_torchvision.py                      # resnet18 and resnet50
    python tests/onnx/compare_torchvision.py --models resnet50 --size 64 --batch 2 --keep DIR

Exits 1 if any model fails.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np
import torch
import torchvision

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
from make_fixtures import randomise, reference  # noqa: E402


# The TorchScript exporter warns once per BatchNorm that it drops num_batches_tracked's update.
warnings.filterwarnings("ignore", message="ONNX Preprocess - Removing mutation")


def export(model, x, path):
    """docs/import.md's export: f64, training mode, no constant folding, TorchScript exporter."""
    model.double().train()
    torch.onnx.export(
        model,
        (x,),
        path,
        dynamo=False,
        training=torch.onnx.TrainingMode.TRAINING,
        do_constant_folding=False,
        input_names=["x"],
        output_names=["logits"],
    )


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["resnet18", "resnet50"])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--size", type=int, default=64, help="input height and width")
    p.add_argument("--keep", metavar="DIR", help="write the .onnx and .npz here (default: a temporary directory)")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}", flush=True)
    build = ["cargo", "build", "--release", "--example", "compare_onnx"]
    subprocess.run(build, cwd=ROOT, check=True)
    target = os.path.join(ROOT, os.environ.get("CARGO_TARGET_DIR", "target"))
    compare = os.path.join(target, "release", "examples", "compare_onnx")
    failed = []
    with tempfile.TemporaryDirectory() as tmp:
        out = a.keep or tmp
        os.makedirs(out, exist_ok=True)
        for name in a.models:
            t0 = time.perf_counter()
            torch.manual_seed(0)
            model = getattr(torchvision.models, name)(weights=None).double()
            randomise(model, 1)
            x = torch.randn(a.batch, 3, a.size, a.size, dtype=torch.float64)
            y = torch.randint(0, 1000, (a.batch,))
            onnx_path = os.path.join(out, f"{name}.onnx")
            # Exporting in training mode runs the model once and moves its running statistics;
            # the file holds the moved ones, so the references are taken after (as for the
            # fixtures).
            export(model, x, onnx_path)
            ref = {"x": x.numpy(), "y": y.numpy()}
            for training in (True, False):
                ref.update(reference(model, x, y, training))
            npz_path = os.path.join(out, f"{name}.npz")
            np.savez(npz_path, **ref)
            t1 = time.perf_counter()
            r = subprocess.run([compare, onnx_path, npz_path])
            t2 = time.perf_counter()
            print(f"{name} at {a.size}x{a.size}, batch {a.batch}: PyTorch export and references "
                  f"{t1 - t0:.1f} s, resprop import and comparison {t2 - t1:.1f} s, "
                  f"{'pass' if r.returncode == 0 else 'FAIL'}\n", flush=True)
            if r.returncode != 0:
                failed.append(name)
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
