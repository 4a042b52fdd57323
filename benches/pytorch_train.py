"""Train resprop's CIFAR-style ResNets in PyTorch with resprop's recipe, on resprop's split.

A reference for `resprop train` (torch in a virtualenv, not a dependency of resprop): the same
architecture (3x3 stem to 16 channels, three stages of basic or bottleneck units at widths
16/32/64, the activation placements of the paper's Fig. 4, the three conventions for the
shape-changing shortcuts, global average pooling, a dense classifier), the same initialisation
(He normal on fan-out for every conv, classifier N(0, 1/fan_in), BN gamma 1 beta 0, eps 1e-5,
momentum 0.1), the same recipe (SGD momentum 0.9, weight decay 1e-4 on every parameter, batch
64, a tenth of the rate until a batch's training error is below 80% and at least 400/64k of the
run, then the base rate divided by 10 at 50% and by 100 at 75% of the steps), float64, and the
same data (exported by `resprop data`). Only the random draws differ (weights, batch order).

    cargo build --release
    target/release/resprop data --data digits --npz digits.npz
    python benches/pytorch_train.py --data digits.npz --net resnet110 --placement original --seeds 0-7

Prints one line per seed (final test error and last-epoch training loss) and a summary line.

The descendants, as resprop builds them: `--norm none` leaves the BN slots out; `--shortcut
alpha:A` (or rezero, alpha:0) ends each branch with a learned scalar starting at A; `--init
fixup` is Fixup's start (each branch's last weight layer and the classifier at 0, the others
scaled by L^-1/2, a scalar multiplier ending each branch, scalar biases before every weight
layer and ReLU of the branches, before the stem's ReLU, after the multiplier and before the
classifier); `--net mlp --units N --width W` the residual MLP (a dense stem, two dense layers
per unit, the classifier). `--recipe fixup` is Fixup's authors' (no warm-up; every bias and
multiplier at a tenth of the rate), `--recipe rezero` ReZero's (no warm-up):

    python benches/pytorch_train.py --data digits.npz --net mlp --units 100 --width 32 \
        --placement original --norm none --init fixup --recipe fixup --epochs 5 --seeds 0-6

    python benches/pytorch_train.py --init-ratio --net resnet110 --placement original --seeds 0-2

prints instead, per seed, ||dE/dx_0|| / ||dE/dx_L|| at initialisation (x_0 the stem's output,
x_L the last unit's output; training-mode BN, a batch of 32 standard-normal 3x32x32 images with
uniform random labels), the figure `resprop profile --net resnet110 --batch 32` reports as the
first unit's grad_ratio.
"""
import argparse
import math
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

NETS = {"resnet110": (18, False), "resnet164": (18, True), "resnet1001": (111, True)}

# Branch recipe per placement: "W" weight, "B" BN, "R" ReLU; after-addition recipe.
PLACEMENTS = {
    "original": (lambda i, last: ["W", "B"] + ([] if last else ["R"]), ["R"]),
    "bn-after-add": (lambda i, last: ["W"] + ([] if last else ["B", "R"]), ["B", "R"]),
    "relu-before-add": (lambda i, last: ["W", "B", "R"], []),
    "relu-preact": (lambda i, last: (["R"] if i == 0 else []) + ["W", "B"] + ([] if last else ["R"]), []),
    "full-preact": (lambda i, last: ["B", "R", "W"], []),
}
PREACT = {"relu-preact", "full-preact"}


def conv(c_in, c_out, k, stride):
    m = nn.Conv2d(c_in, c_out, k, stride, k // 2, bias=False)
    nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / (k * k * c_out)))
    return m


def dense(d_in, d_out):
    m = nn.Linear(d_in, d_out, bias=False)
    nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / d_out))
    return m


class ScalarBias(nn.Module):
    """Fixup's scalar bias: one learned number added to every element (0 at the start)."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return x + self.bias


class ScalarScale(nn.Module):
    """One learned number multiplying the branch: Fixup's multiplier (1), ReZero's alpha (0)."""

    def __init__(self, init, name):
        super().__init__()
        setattr(self, name, nn.Parameter(torch.full((1,), float(init))))
        self.name = name

    def forward(self, x):
        return x * getattr(self, self.name)


def with_norm(steps, norm):
    return [s for s in steps if norm != "none" or s != "B"]


def with_fixup_biases(steps):
    """A scalar bias before every weight layer and ReLU, as resprop's and Fixup's code."""
    out = []
    for s in steps:
        if s in ("W", "R"):
            out.append("b")
        out.append(s)
    return out


class Seq(nn.Module):
    """A recipe of ops on a tensor with a channel count that the weights change: W weight
    (conv, or dense when `dense`), B BN, R ReLU, b scalar bias."""

    def __init__(self, steps, specs, c, is_dense=False):
        super().__init__()
        self.ops = nn.ModuleList()
        self.kinds = []
        for s in steps:
            if s == "W":
                c_in, c_out, k, stride = specs.pop(0)
                self.ops.append(dense(c_in, c_out) if is_dense else conv(c_in, c_out, k, stride))
                c = c_out
            elif s == "B":
                self.ops.append(nn.BatchNorm1d(c) if is_dense else nn.BatchNorm2d(c))
            elif s == "b":
                self.ops.append(ScalarBias())
            else:
                self.ops.append(nn.ReLU())
            self.kinds.append(s)

    def weights(self):
        return [op for op, k in zip(self.ops, self.kinds) if k == "W"]

    def forward(self, x):
        for op in self.ops:
            x = op(x)
        return x


class Unit(nn.Module):
    def __init__(self, placement, projection, c_in, width, stride, bottleneck, a, is_dense=False):
        super().__init__()
        c_out = 4 * width if bottleneck else width
        specs = ([(c_in, width, 1, stride), (width, width, 3, 1), (width, c_out, 1, 1)] if bottleneck
                 else [(c_in, width, 3, stride), (width, width, 3, 1)])
        branch_of, after = PLACEMENTS[placement]
        recipe = with_norm([s for i in range(len(specs)) for s in branch_of(i, i == len(specs) - 1)], a.norm)
        after = with_norm(after, a.norm)
        if a.init == "fixup":
            recipe = with_fixup_biases(recipe)
        changes = c_in != c_out or stride != 1
        self.pad = changes and projection == "pad"
        pre = []
        if changes and not self.pad and placement in PREACT:
            first_w = recipe.index("W")
            pre, recipe = recipe[:first_w], recipe[first_w:]
        self.pre = Seq(pre, [], c_in, is_dense)
        self.branch = Seq(recipe, list(specs), c_in, is_dense)
        self.after = Seq(after, [], c_out, is_dense)
        # The branch's end: Fixup's multiplier and bias, or the alpha of alpha:A / rezero.
        end = []
        if a.init == "fixup":
            end = [ScalarScale(1.0, "scale"), ScalarBias()]
        elif a.shortcut.startswith("alpha:") or a.shortcut == "rezero":
            end = [ScalarScale(0.0 if a.shortcut == "rezero" else float(a.shortcut[6:]), "alpha")]
        self.end = nn.Sequential(*end)
        self.proj = None
        if changes and not self.pad:
            ops = [conv(c_in, c_out, 1, stride)]
            if projection == "bn":
                ops.append(nn.BatchNorm2d(c_out))
            self.proj = nn.Sequential(*ops)
        self.stride, self.c_in, self.c_out = stride, c_in, c_out

    def forward(self, x):
        a = self.pre(x)
        f = self.end(self.branch(a))
        if self.proj is not None:
            h = self.proj(a)
        elif self.pad:
            h = x[:, :, ::self.stride, ::self.stride]
            h = F.pad(h, (0, 0, 0, 0, 0, self.c_out - self.c_in))
        else:
            h = a
        return self.after(f + h)


class Net(nn.Module):
    def __init__(self, a, c_in, classes):
        super().__init__()
        placement, projection, self.mlp = a.placement, a.projection, a.net == "mlp"
        edge = lambda steps: with_fixup_biases(steps) if a.init == "fixup" else steps
        stem_steps = with_norm([] if placement in PREACT else ["B", "R"], a.norm)
        head_steps = with_norm(["B", "R"] if placement in PREACT else [], a.norm)
        units = []
        if self.mlp:
            c = a.width
            self.stem = nn.Sequential(dense(c_in, c), Seq(edge(stem_steps), [], c, True))
            for _ in range(a.units):
                units.append(Unit(placement, projection, c, c, 1, False, a, True))
            # Dense layers' "specs" are (d_in, d_out, _, _); the unit reads them as convs'.
        else:
            n, bottleneck = NETS[a.net] if a.net in NETS else (int(a.net.split(":")[1]), a.net.split(":")[2] == "bottleneck")
            self.stem = nn.Sequential(conv(c_in, 16, 3, 1), Seq(edge(stem_steps), [], 16))
            c = 16
            for stage, width in enumerate([16, 32, 64]):
                for j in range(n):
                    units.append(Unit(placement, projection, c, width, 2 if stage > 0 and j == 0 else 1, bottleneck, a))
                    c = 4 * width if bottleneck else width
        self.units = nn.Sequential(*units)
        self.head = Seq(head_steps, [], c, self.mlp)
        self.head_bias = ScalarBias() if a.init == "fixup" else nn.Identity()
        self.fc = nn.Linear(c, classes)
        nn.init.normal_(self.fc.weight, 0.0, math.sqrt(1.0 / c))
        nn.init.zeros_(self.fc.bias)
        if a.init == "fixup":
            fixup_start(self)

    def forward(self, x):
        x = self.head(self.units(self.stem(x)))
        return self.fc(self.head_bias(x if self.mlp else x.mean(dim=(2, 3))))


def fixup_start(net):
    """Fixup's rescaled start: the branches' last weight layers and the classifier at 0, the
    branches' other weight layers times L^(-1/(2m-2)) (L units, m weight layers per branch)."""
    with torch.no_grad():
        L = len(net.units)
        for u in net.units:
            ws = u.branch.weights()
            for w in ws[:-1]:
                w.weight.mul_(L ** (-1.0 / (2 * len(ws) - 2)))
            ws[-1].weight.zero_()
        net.fc.weight.zero_()
        net.fc.bias.zero_()


def lr_at(step, total, base, warming):
    frac = step / max(total, 1)
    lr = base if frac < 0.5 else base / 10 if frac < 0.75 else base / 100
    return min(lr, base / 10) if warming else lr


def evaluate(model, x, y):
    model.eval()
    with torch.no_grad():
        loss, wrong = 0.0, 0
        for i in range(0, len(y), 500):
            logits = model(x[i:i + 500])
            loss += F.cross_entropy(logits, y[i:i + 500], reduction="sum").item()
            wrong += (logits.argmax(1) != y[i:i + 500]).sum().item()
    model.train()
    return loss / len(y), wrong / len(y)


def train_one(args, data, seed):
    torch.manual_seed(seed)
    gen = np.random.default_rng(seed)
    tx, ty, vx, vy = data
    if args.net == "mlp":
        tx, vx = tx.reshape(len(tx), -1), vx.reshape(len(vx), -1)
    model = Net(args, tx.shape[1], 10).train()
    # Fixup's authors' groups: every parameter named bias or scale at a tenth of the rate.
    slow = [p for n, p in model.named_parameters() if args.recipe == "fixup" and ("bias" in n or "scale" in n)]
    fast = [p for n, p in model.named_parameters() if not (args.recipe == "fixup" and ("bias" in n or "scale" in n))]
    groups = [{"params": fast, "factor": 1.0}] + ([{"params": slow, "factor": 0.1}] if slow else [])
    opt = torch.optim.SGD(groups, lr=args.lr, momentum=0.9, weight_decay=1e-4)
    per_epoch = len(ty) // args.batch
    total = per_epoch * args.epochs
    min_warmup = math.ceil(total * 400 / 64000)
    # The descendants' own recipes have no warm-up.
    warming, step = args.recipe == "common", 0
    last_losses = []
    for epoch in range(args.epochs):
        order = gen.permutation(len(ty))
        last_losses = []
        for b in range(per_epoch):
            idx = torch.from_numpy(order[b * args.batch:(b + 1) * args.batch])
            logits = model(tx[idx])
            loss = F.cross_entropy(logits, ty[idx])
            train_error = (logits.argmax(1) != ty[idx]).double().mean().item()
            for g in opt.param_groups:
                g["lr"] = g["factor"] * lr_at(step, total, args.lr, warming)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if not math.isfinite(loss.item()):
                return float("nan"), float("nan"), f"diverged at step {step}"
            last_losses.append(loss.item())
            if warming and step + 1 >= min_warmup and train_error < 0.8:
                warming = False
            step += 1
    test_loss, test_error = evaluate(model, vx, vy)
    return test_error, statistics.mean(last_losses), None


def init_ratio(args, seed, batch=32):
    """||dE/dx_0|| / ||dE/dx_L|| of a freshly initialised net on Gaussian inputs."""
    torch.manual_seed(seed)
    model = Net(args, 3, 10).train()
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))
    x0 = model.stem(x)
    x0.retain_grad()
    xl = model.units(x0)
    xl.retain_grad()
    logits = model.fc(model.head(xl).mean(dim=(2, 3)))
    F.cross_entropy(logits, y).backward()
    return (x0.grad.norm() / xl.grad.norm()).item()


def label(a):
    net = f"mlp L={a.units} width {a.width}" if a.net == "mlp" else a.net
    return (f"{net} {a.placement} {a.shortcut} norm {a.norm} init {a.init} recipe {a.recipe}"
            f"{'' if a.net == 'mlp' else ' projection ' + a.projection}")


def parse_seeds(s):
    if "-" in s:
        a, b = s.split("-")
        return list(range(int(a), int(b) + 1))
    return [int(v) for v in s.split(",")]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", help="the .npz that `resprop data` writes (needed unless --init-ratio)")
    p.add_argument("--init-ratio", action="store_true",
                   help="print ||dE/dx_0|| / ||dE/dx_L|| at initialisation per seed instead of training")
    p.add_argument("--net", default="resnet110", help="resnet110, resnet164, resnet:N:basic|bottleneck or mlp")
    p.add_argument("--units", type=int, default=100, help="the MLP's residual units")
    p.add_argument("--width", type=int, default=32, help="the MLP's width")
    p.add_argument("--norm", default="batch", choices=["batch", "none"])
    p.add_argument("--init", default="he", choices=["he", "fixup"])
    p.add_argument("--shortcut", default="identity", help="identity, alpha:A or rezero (alpha:0)")
    p.add_argument("--recipe", default="common", choices=["common", "fixup", "rezero"],
                   help="common: the paper's (a tenth of the rate until a batch's error is below 80%%); "
                        "fixup: no warm-up, biases and multipliers at a tenth of the rate; rezero: no warm-up")
    p.add_argument("--placement", default="original", choices=list(PLACEMENTS))
    p.add_argument("--projection", default=None, choices=["bn", "plain", "pad"],
                   help="shape-changing shortcuts (default: bn for post-activation, plain for pre-activation)")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--seeds", default="0-6")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    if args.projection is None:
        args.projection = "plain" if args.placement in PREACT or args.norm == "none" else "bn"
    torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float64)
    if args.init_ratio:
        ratios = []
        for seed in parse_seeds(args.seeds):
            ratios.append(init_ratio(args, seed))
            print(f"{label(args)} seed {seed}: "
                  f"||dE/dx_0|| / ||dE/dx_L|| = {ratios[-1]:.1f}", flush=True)
        print(f"SUMMARY init ratio {label(args)}: median "
              f"{statistics.median(ratios):.1f}, range {min(ratios):.1f}-{max(ratios):.1f}")
        return 0
    if args.data is None:
        p.error("--data is required (export it with `resprop data --data digits --npz digits.npz`)")
    z = np.load(args.data)
    data = (torch.from_numpy(z["train_x"]), torch.from_numpy(z["train_y"]),
            torch.from_numpy(z["test_x"]), torch.from_numpy(z["test_y"]))
    errors, losses = [], []
    for seed in parse_seeds(args.seeds):
        t = time.perf_counter()
        err, loss, note = train_one(args, data, seed)
        errors.append(err if note is None else float("inf"))
        losses.append(loss)
        print(f"{label(args)} seed {seed}: test error {100 * err:.2f}%, "
              f"last-epoch training loss {loss:.4f}{'' if note is None else ' (' + note + ')'} "
              f"[{time.perf_counter() - t:.0f} s]", flush=True)
    failed = sum(1 for e, l in zip(errors, losses) if not (e <= 0.5 and l <= 1.0))
    print(f"SUMMARY {label(args)}: {len(errors)} seeds, median test error "
          f"{100 * statistics.median(errors):.2f}%, IQR {100 * np.percentile(errors, 25):.2f}-{100 * np.percentile(errors, 75):.2f}%, "
          f"median last-epoch training loss {statistics.median(losses):.4f}, failed to train {failed} of {len(errors)}")


if __name__ == "__main__":
    sys.exit(main())
