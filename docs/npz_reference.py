"""Recompute a resprop profile from its .npz alone (NumPy), and compare.

    resprop profile --units 20 --shortcut gate:-6 --npz state.npz
    python docs/npz_reference.py state.npz

Rebuilds the forward pass from `meta_json` and the stored arrays, recomputes the loss and
every x_l, writes its own backward pass (no autodiff) for every dE/dx_l, and prints the worst
relative error against what resprop stored. If PyTorch is installed it also runs autograd on the
same computation as a third opinion. Exit status 1 if anything differs by more than 1e-10.
The layout is described in docs/formats.md.
"""
import json
import sys

import numpy as np


def load(path):
    z = np.load(path)
    meta = json.loads(bytes(z["meta_json"]).decode())
    return z, meta


class Net:
    def __init__(self, z, meta):
        self.z, self.meta = z, meta
        self.train = meta["bn_mode"] == "train"

    def p(self, name):
        return self.z["param/" + name]

    def buf(self, name):
        return self.z["buffer/" + name]

    # ---- ops: forward returns (y, cache); backward(cache, g) -> g_in
    def op_forward(self, op, x):
        kind = op["op"]
        if kind == "dense":
            y = x @ self.p(op["w"])
            if op["b"] is not None:
                y = y + self.p(op["b"])
            return y, ("dense", op)
        if kind == "batchnorm":
            if self.train:
                mean, var = x.mean(axis=0), x.var(axis=0)  # biased variance
            else:
                mean, var = self.buf(op["running_mean"]), self.buf(op["running_var"])
            inv_std = 1.0 / np.sqrt(var + op["eps"])
            xhat = (x - mean) * inv_std
            return self.p(op["gamma"]) * xhat + self.p(op["beta"]), ("bn", op, xhat, inv_std)
        if kind == "relu":
            y = np.maximum(x, 0.0)
            return y, ("relu", y > 0)
        raise ValueError(f"unknown op {kind}")

    def op_backward(self, cache, g):
        if cache[0] == "dense":
            return g @ self.p(cache[1]["w"]).T
        if cache[0] == "bn":
            _, op, xhat, inv_std = cache
            scale = self.p(op["gamma"]) * inv_std
            if not self.train:
                return g * scale
            return scale * (g - g.mean(axis=0) - xhat * (g * xhat).mean(axis=0))
        if cache[0] == "relu":
            return g * cache[1]
        raise ValueError(cache[0])

    def seq_forward(self, ops, x):
        caches = []
        for op in ops:
            x, c = self.op_forward(op, x)
            caches.append(c)
        return x, caches

    def seq_backward(self, caches, g):
        for c in reversed(caches):
            g = self.op_backward(c, g)
        return g

    # ---- residual unit: y = h(x) + F'(x), x_next = f(y)
    def unit_forward(self, u, x):
        sc = u["shortcut"]
        kind = sc["kind"]
        F, bcache = self.seq_forward(u["branch"], x)
        st = {"x": x, "F": F, "branch": bcache}
        if kind == "identity":
            y = x + F
        elif kind == "scale":
            y = sc["lambda"] * x + sc["branch_scale"] * F
        elif kind in ("gate", "shortcut-gate"):
            z, _ = self.op_forward(sc["gate"], x)
            gate = 1.0 / (1.0 + np.exp(-z))
            st["gate"] = gate
            y = (1.0 - gate) * x + (gate * F if kind == "gate" else F)
        elif kind == "conv1x1":
            y = x @ self.p(sc["projection"]["w"]) + F
        elif kind == "dropout":
            st["mask"] = self.z[sc["mask"]]
            y = st["mask"] * x + F
        elif kind == "none":
            y = F
        else:
            raise ValueError(kind)
        out, st["after"] = self.seq_forward(u["after_add"], y)
        return out, st

    def unit_backward(self, u, st, g):
        sc = u["shortcut"]
        kind = sc["kind"]
        gy = self.seq_backward(st["after"], g)
        x, F = st["x"], st["F"]
        gate_back = None
        if kind in ("gate", "shortcut-gate"):
            gate = st["gate"]
            wg = self.p(sc["gate"]["w"])
            gate_back = lambda u_: (u_ * gate * (1.0 - gate)) @ wg.T  # noqa: E731
        # shortcut part
        if kind == "identity":
            gs = gy
        elif kind == "scale":
            gs = sc["lambda"] * gy
        elif kind in ("gate", "shortcut-gate"):
            gs = (1.0 - gate) * gy + gate_back(-x * gy)
        elif kind == "conv1x1":
            gs = gy @ self.p(sc["projection"]["w"]).T
        elif kind == "dropout":
            gs = st["mask"] * gy
        else:
            gs = np.zeros_like(gy)
        # branch part
        gF = sc["branch_scale"] * gy if kind == "scale" else (gate * gy if kind == "gate" else gy)
        gb = self.seq_backward(st["branch"], gF)
        if kind == "gate":
            gb = gb + gate_back(F * gy)
        return gs + gb

    def run(self, x_in, labels):
        x, stem = self.seq_forward(self.meta["stem"], x_in)
        xs, states = [x], []
        for u in self.meta["units"]:
            x, st = self.unit_forward(u, x)
            states.append(st)
            xs.append(x)
        logits, head = self.seq_forward(self.meta["head"], x)
        logits = logits - logits.max(axis=1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        n = len(labels)
        loss = -logp[np.arange(n), labels].mean()
        g = np.exp(logp)
        g[np.arange(n), labels] -= 1.0
        g = self.seq_backward(head, g / n)
        grads = [None] * len(xs)
        grads[-1] = g
        for l in range(len(states) - 1, -1, -1):
            g = self.unit_backward(self.meta["units"][l], states[l], g)
            grads[l] = g
        return loss, xs, grads


def rel(a, b):
    scale = max(np.abs(a).max(), np.abs(b).max(), 1e-300)
    return float(np.abs(a - b).max() / scale)


def torch_grads(net, xs_len, x_in, labels):
    """dE/dx_l by PyTorch autograd on the same computation (NumPy ops mirrored in torch)."""
    import torch

    T = lambda a: torch.tensor(np.asarray(a), dtype=torch.float64)  # noqa: E731
    meta, train = net.meta, net.train

    def op(o, x):
        if o["op"] == "dense":
            y = x @ T(net.p(o["w"]))
            return y + T(net.p(o["b"])) if o["b"] is not None else y
        if o["op"] == "batchnorm":
            if train:
                mean, var = x.mean(0), x.var(0, unbiased=False)
            else:
                mean, var = T(net.buf(o["running_mean"])), T(net.buf(o["running_var"]))
            return T(net.p(o["gamma"])) * (x - mean) / torch.sqrt(var + o["eps"]) + T(net.p(o["beta"]))
        return torch.relu(x)

    def seq(ops, x):
        for o in ops:
            x = op(o, x)
        return x

    x = seq(meta["stem"], T(x_in)).detach().requires_grad_(True)
    xs = [x]
    for u in meta["units"]:
        sc, F = u["shortcut"], seq(u["branch"], x)
        k = sc["kind"]
        if k == "identity":
            y = x + F
        elif k == "scale":
            y = sc["lambda"] * x + sc["branch_scale"] * F
        elif k in ("gate", "shortcut-gate"):
            g = torch.sigmoid(op(sc["gate"], x))
            y = (1 - g) * x + (g * F if k == "gate" else F)
        elif k == "conv1x1":
            y = x @ T(net.p(sc["projection"]["w"])) + F
        elif k == "dropout":
            y = T(net.z[sc["mask"]]) * x + F
        else:
            y = F
        x = seq(u["after_add"], y)
        x.retain_grad()
        xs.append(x)
    loss = torch.nn.functional.cross_entropy(seq(meta["head"], x), torch.tensor(labels))
    loss.backward()
    return [v.grad.numpy() for v in xs]


def main():
    z, meta = load(sys.argv[1])
    net = Net(z, meta)
    x_in, labels = z["input"], z["labels"]
    loss, xs, grads = net.run(x_in, labels)
    L = len(meta["units"])
    worst_x = max(rel(xs[l], z[f"x/{l}"]) for l in range(L + 1))
    worst_g = max(rel(grads[l], z[f"grad_x/{l}"]) for l in range(L + 1))
    loss_err = abs(loss - float(z["loss"])) / abs(loss)
    print(f"{meta['spec']['placement']} / {meta['spec']['shortcut']}: loss {loss:.12g} (resprop {float(z['loss']):.12g}, "
          f"rel {loss_err:.1e}); worst rel error x_l {worst_x:.1e}, dE/dx_l {worst_g:.1e}")
    ok = max(loss_err, worst_x, worst_g) < 1e-10
    try:
        tg = torch_grads(net, L + 1, x_in, labels)
        worst_t = max(rel(tg[l], z[f"grad_x/{l}"]) for l in range(L + 1))
        print(f"  PyTorch autograd vs resprop dE/dx_l: worst rel error {worst_t:.1e}")
        ok = ok and worst_t < 1e-10
    except ImportError:
        print("  (PyTorch not installed: autograd comparison skipped)")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
