"""PyTorch reference for `resprop profile --model resnet50.onnx --batch 8` (not a dependency of resprop).

Same step as that command: torchvision's resnet50 in f64, BN in training mode, on a Gaussian
batch; forward keeping every unit input x_l (and x_L, the last unit's output), softmax
cross-entropy, backward to every dE/dx_l with no parameter gradient (`--mode train` adds
them). resprop's profile also takes the direct parts (one shortcut VJP per unit) and the
per-unit statistics, which this step leaves out.

    python benches/pytorch_onnx_profile.py --export resnet50.onnx      # once: the model resprop reads
    python benches/pytorch_onnx_profile.py --batch 8 --repeat 5
    python benches/pytorch_onnx_profile.py --batch 8 --repeat 5 --resprop target/release/resprop --model resnet50.onnx
    farm-bench -n 5 --vs "python benches/pytorch_onnx_profile.py --repeat 1 --warmup 0" -- \
        target/release/resprop profile --model resnet50.onnx --batch 8 --threads 2   # alternating

`--export PATH` writes the model (random initialisation, seed 0, at --size) as docs/import.md
exports it and exits, so that the export's memory stays out of a timed run's peak RSS.
`--resprop BIN --model PATH` also times `BIN profile --model PATH --batch B --threads T` end to
end after the PyTorch steps (wall clock, --repeat runs; reading the 200 MB file and building
the network included, which the PyTorch step does not pay) and prints its memory line.
"""
import argparse
import resource
import statistics
import subprocess
import time
import warnings

import torch
import torch.nn as nn
import torchvision

# The TorchScript exporter warns once per BatchNorm that it drops num_batches_tracked's update.
warnings.filterwarnings("ignore", message="ONNX Preprocess - Removing mutation")


def export(model, size, path):
    """docs/import.md's export: f64, training mode, no constant folding, TorchScript exporter."""
    x = torch.randn(1, 3, size, size)
    torch.onnx.export(
        model.train(),
        (x,),
        path,
        dynamo=False,
        training=torch.onnx.TrainingMode.TRAINING,
        do_constant_folding=False,
        input_names=["x"],
        output_names=["logits"],
    )


def time_resprop(binary, model, batch, repeat, threads):
    cmd = [binary, "profile", "--model", model, "--batch", str(batch), "--threads", str(threads)]
    times, memory = [], ""
    for _ in range(repeat):
        t = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        times.append(time.perf_counter() - t)
        memory = next((line for line in out.splitlines() if line.startswith("memory:")), "")
    print(f"resprop profile --model {model} batch {batch}, {threads} threads, {repeat} runs (whole command): "
          f"median {statistics.median(times):.4f} s, min {min(times):.4f} s, max {max(times):.4f} s; {memory}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--net", default="resnet50", choices=["resnet18", "resnet34", "resnet50", "resnet101"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=224, help="input height and width")
    p.add_argument("--mode", choices=["profile", "train"], default="profile")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed steps first (0 with --repeat 1: one step, as a whole command under farm-bench)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--export", metavar="PATH", help="write the model as ONNX (docs/import.md) first")
    p.add_argument("--resprop", metavar="BIN", help="also time BIN profile --model (needs --model)")
    p.add_argument("--model", metavar="PATH", help="the .onnx --resprop profiles")
    a = p.parse_args()
    if a.resprop and not a.model:
        p.error("--resprop needs --model (the file --export wrote)")
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    torch.set_default_dtype(torch.float64)
    model = getattr(torchvision.models, a.net)(weights=None)
    if a.export:
        export(model, a.size, a.export)
        print(f"wrote {a.export} ({a.net}, {a.size}x{a.size})")
        return
    model.train()
    for q in model.parameters():
        q.requires_grad_(a.mode == "train")
    units = [block for layer in (model.layer1, model.layer2, model.layer3, model.layer4) for block in layer]
    x_in = torch.randn(a.batch, 3, a.size, a.size)
    labels = torch.randint(0, model.fc.out_features, (a.batch,))

    def step():
        t = time.perf_counter()
        x = model.maxpool(model.relu(model.bn1(model.conv1(x_in))))
        if a.mode == "profile":
            x = x.detach().requires_grad_(True)
        else:
            x.retain_grad()
        xs = [x]
        for u in units:
            x = u(x)
            x.retain_grad()
            xs.append(x)
        logits = model.fc(torch.flatten(model.avgpool(x), 1))
        nn.functional.cross_entropy(logits, labels).backward()
        assert all(v.grad is not None for v in xs)
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - t

    for _ in range(a.warmup):
        step()
    times = [step() for _ in range(a.repeat)]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"pytorch {a.net} (onnx profile) {a.size}x{a.size} batch {a.batch}, mode {a.mode}, {a.threads} threads, "
          f"{a.repeat} steps: median {statistics.median(times):.4f} s, min {min(times):.4f} s, "
          f"max {max(times):.4f} s, peak RSS {rss:.0f} MB", flush=True)
    if a.resprop:
        time_resprop(a.resprop, a.model, a.batch, a.repeat, a.threads)


if __name__ == "__main__":
    main()
