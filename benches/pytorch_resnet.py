"""PyTorch reference for the conv workloads W2-W4 (README.md, Performance) (not a dependency of resprop).

Same step as `resprop bench`: full pre-activation CIFAR ResNet (identity shortcuts, 1x1
projections where the shape changes with BN-ReLU applied once before the split, He fan-out
init, BN in training mode, f64), forward keeping every unit input x_l, softmax cross-entropy,
backward to every dE/dx_l; in train mode every parameter gradient too.

    python benches/pytorch_resnet.py --net resnet110 --batch 32 --mode profile --repeat 5
"""
import argparse
import resource
import statistics
import time

import torch
import torch.nn as nn


def conv(c_in, c_out, k, stride):
    m = nn.Conv2d(c_in, c_out, k, stride, k // 2, bias=False)
    nn.init.normal_(m.weight, 0.0, (2.0 / (k * k * c_out)) ** 0.5)
    return m


class Unit(nn.Module):
    def __init__(self, c_in, width, stride, bottleneck):
        super().__init__()
        c_out = 4 * width if bottleneck else width
        specs = ([(c_in, width, 1, stride), (width, width, 3, 1), (width, c_out, 1, 1)] if bottleneck
                 else [(c_in, width, 3, stride), (width, width, 3, 1)])
        self.bns = nn.ModuleList([nn.BatchNorm2d(s[0]) for s in specs])
        self.convs = nn.ModuleList([conv(*s) for s in specs])
        self.proj = conv(c_in, c_out, 1, stride) if (c_in != c_out or stride != 1) else None

    def forward(self, x):
        if self.proj is not None:
            a = torch.relu(self.bns[0](x))  # pre-activation shared by both paths
            h, f = self.proj(a), self.convs[0](a)
        else:
            h, f = x, self.convs[0](torch.relu(self.bns[0](x)))
        for bn, cv in zip(self.bns[1:], self.convs[1:]):
            f = cv(torch.relu(bn(f)))
        return h + f


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--net", default="resnet110", choices=["resnet110", "resnet164", "resnet1001"])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--mode", choices=["profile", "train"], default="profile")
    p.add_argument("--precision", choices=["f32", "f64"], default="f64")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    n, bottleneck = {"resnet110": (18, False), "resnet164": (18, True), "resnet1001": (111, True)}[a.net]
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    torch.set_default_dtype(torch.float64 if a.precision == "f64" else torch.float32)
    stem = conv(3, 16, 3, 1)
    units, c = [], 16
    for stage, width in enumerate([16, 32, 64]):
        for j in range(n):
            units.append(Unit(c, width, 2 if stage > 0 and j == 0 else 1, bottleneck))
            c = 4 * width if bottleneck else width
    units = nn.ModuleList(units)
    head_bn, fc = nn.BatchNorm2d(c), nn.Linear(c, 10)
    model = nn.ModuleList([stem, units, head_bn, fc]).train()
    for q in model.parameters():
        q.requires_grad_(a.mode == "train")
    x_in = torch.randn(a.batch, 3, 32, 32)
    labels = torch.randint(0, 10, (a.batch,))

    def step():
        t = time.perf_counter()
        x = stem(x_in)
        if a.mode == "profile":
            x = x.detach().requires_grad_(True)
        else:
            x.retain_grad()
        xs = [x]
        for u in units:
            x = u(x)
            x.retain_grad()
            xs.append(x)
        logits = fc(torch.relu(head_bn(x)).mean(dim=(2, 3)))
        nn.functional.cross_entropy(logits, labels).backward()
        assert all(v.grad is not None for v in xs)
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - t

    step()
    times = [step() for _ in range(a.repeat)]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"pytorch {a.net} batch {a.batch}, mode {a.mode}, {a.threads} threads, {a.repeat} steps: "
          f"median {statistics.median(times):.4f} s, min {min(times):.4f} s, max {max(times):.4f} s, peak RSS {rss:.0f} MB")


if __name__ == "__main__":
    main()
