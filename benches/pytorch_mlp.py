"""PyTorch reference for the MLP workloads W1/W1b (README.md, Performance) (not a dependency of resprop).

Same step as `resprop bench`: forward through a full pre-activation residual MLP (identity
shortcuts, He fan-out init, BN in training mode, f64) keeping every unit input x_l, softmax
cross-entropy, backward to every dE/dx_l; in train mode also every parameter gradient.

    python benches/pytorch_mlp.py --units 100 --mode profile --repeat 7
"""
import argparse
import resource
import statistics
import time

import torch
import torch.nn as nn


class Unit(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.bn1, self.w1 = nn.BatchNorm1d(width), nn.Linear(width, width, bias=False)
        self.bn2, self.w2 = nn.BatchNorm1d(width), nn.Linear(width, width, bias=False)
        for w in (self.w1, self.w2):
            nn.init.normal_(w.weight, 0.0, (2.0 / width) ** 0.5)

    def forward(self, x):
        return x + self.w2(torch.relu(self.bn2(self.w1(torch.relu(self.bn1(x))))))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--units", type=int, default=100)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--mode", choices=["profile", "train"], default="profile")
    p.add_argument("--precision", choices=["f32", "f64"], default="f64")
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    torch.set_default_dtype(torch.float64 if a.precision == "f64" else torch.float32)
    stem = nn.Linear(64, a.width, bias=False)
    units = nn.ModuleList([Unit(a.width) for _ in range(a.units)])
    head_bn, classifier = nn.BatchNorm1d(a.width), nn.Linear(a.width, 10)
    model = nn.ModuleList([stem, units, head_bn, classifier]).train()
    for q in model.parameters():
        q.requires_grad_(a.mode == "train")
    x_in = torch.randn(a.batch, 64)
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
        loss = nn.functional.cross_entropy(classifier(torch.relu(head_bn(x))), labels)
        loss.backward()
        grads = [v.grad for v in xs]
        assert all(g is not None for g in grads)
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - t

    step()
    times = [step() for _ in range(a.repeat)]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"pytorch {a.units} units, mode {a.mode}, {a.threads} threads, {a.repeat} steps: "
          f"median {statistics.median(times):.4f} s, min {min(times):.4f} s, max {max(times):.4f} s, peak RSS {rss:.0f} MB")


if __name__ == "__main__":
    main()
