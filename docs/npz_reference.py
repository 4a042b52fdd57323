"""Recompute a resprop state file from its .npz alone (NumPy, no autodiff), and compare.

    resprop profile --units 20 --shortcut gate:-6 --npz state.npz
    resprop profile --net resnet:2:basic --image-size 8 --placement original --npz state.npz
    python docs/npz_reference.py state.npz

Rebuilds the forward pass from `meta_json` and the stored arrays (dense and conv layers,
BatchNorm, LayerNorm, ReLU, sigmoid, learned scales, global, max and average pooling,
flattening, every shortcut kind, the shared pre-activation of projection units; an imported
model's too: `resprop profile --model FILE.onnx --npz state.npz`),
recomputes the loss and every x_l, writes its own backward pass for every dE/dx_l and every
parameter gradient, then runs the recorded SGD steps (momentum, weight decay, BN running
statistics) and compares the parameters, momentum buffers and running statistics after them.
If PyTorch is installed, autograd and torch's own SGD recompute the gradients and the steps as
a third opinion. Prints the worst relative error of each comparison; exit status 1 if any
exceeds 1e-10. The layout is described in docs/formats.md.
"""
import json
import sys

import numpy as np

TOL = 1e-10


def load(path):
    z = np.load(path)
    meta = json.loads(bytes(z["meta_json"]).decode())
    return z, meta


def windows(x, k, stride, pad, fill=0.0):
    """(N, C, H, W) -> (N, C, Ho, Wo, k, k) views of the input padded with `fill`."""
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=fill)
    w = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))
    return w[:, :, ::stride, ::stride]


def spread(g, k, stride, pad, shape):
    """The adjoint of `windows`: (N, C, Ho, Wo, k, k) window gradients summed back onto an
    (N, C, H, W) input, the padding cut off."""
    n, c, h, w = shape
    ho, wo = g.shape[2], g.shape[3]
    gxp = np.zeros((n, c, h + 2 * pad, w + 2 * pad))
    for i in range(k):
        for j in range(k):
            gxp[:, :, i:i + stride * ho:stride, j:j + stride * wo:stride] += g[..., i, j]
    return gxp[:, :, pad:pad + h, pad:pad + w]


class Net:
    """The computation of a state file, with its parameters in a dict (so SGD can move them)."""

    def __init__(self, z, meta):
        self.z, self.meta = z, meta
        self.train = meta["bn_mode"] == "train"
        self.params = {k[len("param/"):]: np.array(z[k]) for k in z.files if k.startswith("param/")}
        self.buffers = {k[len("buffer/"):]: np.array(z[k]) for k in z.files if k.startswith("buffer/")}

    def p(self, name):
        return self.params[name]

    # ---- ops: forward returns (y, cache); backward(cache, g, grads) -> g_in, adding into grads
    def op_forward(self, op, x):
        kind = op["op"]
        if kind == "dense":
            y = x @ self.p(op["w"])
            if op["b"] is not None:
                y = y + self.p(op["b"])
            return y, ("dense", op, x)
        if kind == "conv2d":
            w = self.p(op["w"])
            k = w.shape[2]
            win = windows(x, k, op["stride"], op["pad"])
            y = np.einsum("nchwij,ocij->nohw", win, w, optimize=True)
            if op["b"] is not None:
                y = y + self.p(op["b"])[None, :, None, None]
            return y, ("conv2d", op, x, win)
        if kind == "batchnorm":
            axes = (0,) if x.ndim == 2 else (0, 2, 3)
            shape = (1, -1) if x.ndim == 2 else (1, -1, 1, 1)
            if self.train:
                mean, var = x.mean(axis=axes), x.var(axis=axes)  # biased variance
            else:
                mean, var = self.buffers[op["running_mean"]], self.buffers[op["running_var"]]
            inv_std = 1.0 / np.sqrt(var + op["eps"])
            xhat = (x - mean.reshape(shape)) * inv_std.reshape(shape)
            y = self.p(op["gamma"]).reshape(shape) * xhat + self.p(op["beta"]).reshape(shape)
            count = x.size // x.shape[1]
            return y, ("bn", op, xhat, inv_std, axes, shape, mean, var, count)
        if kind == "layernorm":
            axes = tuple(range(1, x.ndim))  # per sample, over every feature
            shape = (1, -1) if x.ndim == 2 else (1, -1, 1, 1)
            mean, var = x.mean(axis=axes, keepdims=True), x.var(axis=axes, keepdims=True)
            inv_std = 1.0 / np.sqrt(var + op["eps"])
            xhat = (x - mean) * inv_std
            y = self.p(op["gamma"]).reshape(shape) * xhat + self.p(op["beta"]).reshape(shape)
            return y, ("ln", op, xhat, inv_std, axes, shape)
        if kind == "branch_scale":
            a = self.p(op["a"])
            shape = (1,) if a.size == 1 else ((1, -1) if x.ndim == 2 else (1, -1, 1, 1))
            return a.reshape(shape) * x, ("scale", op, x, shape)
        if kind == "relu":
            return np.maximum(x, 0.0), ("relu", x > 0)
        if kind == "sigmoid":
            y = 1.0 / (1.0 + np.exp(-x))
            return y, ("sigmoid", y)
        if kind == "global_avg_pool":
            return x.mean(axis=(2, 3)), ("pool", x.shape)
        if kind == "max_pool":
            # Padding never wins; of equal values the first in row-major order does.
            win = windows(x, op["k"], op["stride"], op["pad"], fill=-np.inf)
            flat = win.reshape(win.shape[:4] + (-1,))
            first = flat.argmax(axis=-1)
            return np.take_along_axis(flat, first[..., None], -1)[..., 0], ("max_pool", op, x.shape, first)
        if kind == "avg_pool":
            k, s, p = op["k"], op["stride"], op["pad"]
            total = windows(x, k, s, p).sum(axis=(-2, -1))
            if op["count_include_pad"]:
                count = float(k * k)
            else:
                count = windows(np.ones((1, 1) + x.shape[2:]), k, s, p).sum(axis=(-2, -1))
            return total / count, ("avg_pool", op, x.shape, count)
        if kind == "flatten":
            return x.reshape(x.shape[0], -1), ("flatten", x.shape)
        if kind == "pad_shortcut":
            s, c_out = op["stride"], op["c_out"]
            sub = x[:, :, ::s, ::s]
            y = np.zeros((x.shape[0], c_out) + sub.shape[2:])
            y[:, : x.shape[1]] = sub
            return y, ("pad", op, x.shape)
        raise ValueError(f"unknown op {kind}")

    def add_grad(self, grads, name, g):
        grads[name] = grads.get(name, 0.0) + g

    def op_backward(self, cache, g, grads):
        kind = cache[0]
        if kind == "dense":
            _, op, x = cache
            self.add_grad(grads, op["w"], x.T @ g)
            if op["b"] is not None:
                self.add_grad(grads, op["b"], g.sum(axis=0))
            return g @ self.p(op["w"]).T
        if kind == "conv2d":
            _, op, x, win = cache
            w = self.p(op["w"])
            k, s, pad = w.shape[2], op["stride"], op["pad"]
            self.add_grad(grads, op["w"], np.einsum("nohw,nchwij->ocij", g, win, optimize=True))
            if op["b"] is not None:
                self.add_grad(grads, op["b"], g.sum(axis=(0, 2, 3)))
            n, c, h, wd = x.shape
            ho, wo = g.shape[2], g.shape[3]
            gxp = np.zeros((n, c, h + 2 * pad, wd + 2 * pad))
            for i in range(k):
                for j in range(k):
                    gxp[:, :, i:i + s * ho:s, j:j + s * wo:s] += np.einsum("nohw,oc->nchw", g, w[:, :, i, j])
            return gxp[:, :, pad:pad + h, pad:pad + wd]
        if kind == "bn":
            _, op, xhat, inv_std, axes, shape, _, _, _ = cache
            self.add_grad(grads, op["gamma"], (g * xhat).sum(axis=axes))
            self.add_grad(grads, op["beta"], g.sum(axis=axes))
            scale = (self.p(op["gamma"]) * inv_std).reshape(shape)
            if not self.train:
                return g * scale
            gm = g.mean(axis=axes).reshape(shape)
            gxm = (g * xhat).mean(axis=axes).reshape(shape)
            return scale * (g - gm - xhat * gxm)
        if kind == "ln":
            _, op, xhat, inv_std, axes, shape = cache
            channel_axes = (0,) if g.ndim == 2 else (0, 2, 3)
            self.add_grad(grads, op["gamma"], (g * xhat).sum(axis=channel_axes))
            self.add_grad(grads, op["beta"], g.sum(axis=channel_axes))
            h = g * self.p(op["gamma"]).reshape(shape)
            return inv_std * (h - h.mean(axis=axes, keepdims=True) - xhat * (h * xhat).mean(axis=axes, keepdims=True))
        if kind == "scale":
            _, op, x, shape = cache
            a = self.p(op["a"])
            gx = g * x
            ga = np.array([gx.sum()]) if a.size == 1 else gx.sum(axis=(0,) if x.ndim == 2 else (0, 2, 3))
            # In the parameter's own shape (an imported model's: (), (C, 1, 1)).
            self.add_grad(grads, op["a"], ga.reshape(a.shape))
            return g * a.reshape(shape)
        if kind == "relu":
            return g * cache[1]
        if kind == "sigmoid":
            y = cache[1]
            return g * y * (1.0 - y)
        if kind == "pool":
            shp = cache[1]
            return np.broadcast_to(g[:, :, None, None] / (shp[2] * shp[3]), shp).copy()
        if kind == "max_pool":
            _, op, shp, first = cache
            k = op["k"]
            onehot = (np.arange(k * k) == first[..., None]) * g[..., None]
            return spread(onehot.reshape(g.shape + (k, k)), k, op["stride"], op["pad"], shp)
        if kind == "avg_pool":
            _, op, shp, count = cache
            k = op["k"]
            share = np.broadcast_to((g / count)[..., None, None], g.shape + (k, k))
            return spread(share, k, op["stride"], op["pad"], shp)
        if kind == "flatten":
            return g.reshape(cache[1])
        if kind == "pad":
            _, op, shp = cache
            gx = np.zeros(shp)
            gx[:, :, ::op["stride"], ::op["stride"]] = g[:, : shp[1]]
            return gx
        raise ValueError(kind)

    def seq_forward(self, ops, x):
        caches = []
        for op in ops:
            x, c = self.op_forward(op, x)
            caches.append(c)
        return x, caches

    def seq_backward(self, caches, g, grads):
        for c in reversed(caches):
            g = self.op_backward(c, g, grads)
        return g

    # ---- residual unit: a = pre(x), y = h(a) + F'(a), x_next = f(y)
    def unit_forward(self, u, x):
        sc = u["shortcut"]
        kind = sc["kind"]
        a, pre = self.seq_forward(u["pre"], x)
        F, bcache = self.seq_forward(u["branch"], a)
        st = {"a": a, "F": F, "branch": bcache, "pre": pre}
        if kind == "identity":
            y = a + F
        elif kind == "scale":
            y = sc["lambda"] * a + sc["branch_scale"] * F
        elif kind in ("gate", "shortcut-gate"):
            zg, st["gate_ops"] = self.seq_forward(sc["ops"], a)
            gate = 1.0 / (1.0 + np.exp(-zg))
            st["gate"] = gate
            y = (1.0 - gate) * a + (gate * F if kind == "gate" else F)
        elif kind in ("conv1x1", "pad"):
            h, st["h_ops"] = self.seq_forward(sc["ops"], a)
            y = h + F
        elif kind == "dropout":
            st["mask"] = self.z[sc["mask"]]
            y = st["mask"] * a + F
        elif kind == "none":
            y = F
        else:
            raise ValueError(kind)
        out, st["after"] = self.seq_forward(u["after_add"], y)
        return out, st

    def unit_backward(self, u, st, g, grads):
        sc = u["shortcut"]
        kind = sc["kind"]
        gy = self.seq_backward(st["after"], g, grads)
        a, F = st["a"], st["F"]
        if kind == "identity":
            ga, gF = gy, gy
        elif kind == "scale":
            ga, gF = sc["lambda"] * gy, sc["branch_scale"] * gy
        elif kind in ("gate", "shortcut-gate"):
            gate = st["gate"]
            gF = gate * gy if kind == "gate" else gy
            g_gate = -a * gy + (F * gy if kind == "gate" else 0.0)
            ga = (1.0 - gate) * gy + self.seq_backward(st["gate_ops"], g_gate * gate * (1.0 - gate), grads)
        elif kind in ("conv1x1", "pad"):
            ga, gF = self.seq_backward(st["h_ops"], gy, grads), gy
        elif kind == "dropout":
            ga, gF = st["mask"] * gy, gy
        else:
            ga, gF = np.zeros_like(a), gy
        ga = ga + self.seq_backward(st["branch"], gF, grads)
        return self.seq_backward(st["pre"], ga, grads)

    def run(self, x_in, labels):
        """Loss, every x_l, every dE/dx_l, every parameter gradient, and the BN caches."""
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
        grads = {}
        g = self.seq_backward(head, g / n, grads)
        grad_x = [None] * len(xs)
        grad_x[-1] = g
        for l in range(len(states) - 1, -1, -1):
            g = self.unit_backward(self.meta["units"][l], states[l], g, grads)
            grad_x[l] = g
        self.seq_backward(stem, g, grads)
        bn = [c for c in all_caches(stem, states, head) if c[0] == "bn"]
        return loss, xs, grad_x, grads, bn

    def sgd(self, x_in, labels):
        """The recorded SGD steps: losses, then parameters, velocities and buffers after them."""
        cfg = self.meta["sgd"]
        velocity, losses = {}, []
        for _ in range(cfg["steps"]):
            loss, _, _, grads, bns = self.run(x_in, labels)
            losses.append(loss)
            if self.train:
                for (_, op, _, _, _, _, mean, var, count) in bns:
                    m = op["momentum"]
                    self.buffers[op["running_mean"]] = (1 - m) * self.buffers[op["running_mean"]] + m * mean
                    self.buffers[op["running_var"]] = (1 - m) * self.buffers[op["running_var"]] + m * var * count / (count - 1)
            for name, w in self.params.items():
                v = cfg["momentum"] * velocity.get(name, 0.0) + grads[name] + cfg["weight_decay"] * w
                velocity[name] = v
                self.params[name] = w - cfg["lr"] * v
        return losses, velocity


def all_caches(stem, states, head):
    out = list(stem)
    for st in states:
        for key in ("pre", "branch", "gate_ops", "h_ops", "after"):
            out.extend(st.get(key, []))
    return out + list(head)


def rel(a, b, floor=1e-300):
    """max |a - b| over max(|a|, |b|, floor)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    scale = max(np.abs(a).max(initial=0.0), np.abs(b).max(initial=0.0), floor)
    return float(np.abs(a - b).max(initial=0.0) / scale)


def worst(pairs):
    """The worst relative error over tensors of one kind. A tensor more than 1e6 times smaller
    than the largest of its kind is compared against 1e-6 of that largest: a gradient that is
    exactly 0 by structure (a BN beta whose shift the next training-mode BN removes) comes out
    as rounding noise of about 1e-18 in both implementations, and their ratio means nothing."""
    pairs = [(np.asarray(a, dtype=float), np.asarray(b, dtype=float)) for a, b in pairs]
    top = max((max(np.abs(a).max(initial=0.0), np.abs(b).max(initial=0.0)) for a, b in pairs), default=0.0)
    return max((rel(a, b, 1e-6 * top) for a, b in pairs), default=0.0)


def torch_check(z, meta):
    """Autograd's dE/dx_l and parameter gradients, and torch.optim.SGD's steps, on the same
    computation (the NumPy ops mirrored in torch)."""
    import torch

    T = lambda a: torch.tensor(np.asarray(a), dtype=torch.float64)  # noqa: E731
    train = meta["bn_mode"] == "train"
    params = {k[len("param/"):]: T(z[k]).requires_grad_(True) for k in z.files if k.startswith("param/")}
    buffers = {k[len("buffer/"):]: T(z[k]) for k in z.files if k.startswith("buffer/")}
    bn_log = []

    def op(o, x):
        kind = o["op"]
        if kind == "dense":
            y = x @ params[o["w"]]
            return y + params[o["b"]] if o["b"] is not None else y
        if kind == "conv2d":
            b = params[o["b"]] if o["b"] is not None else None
            return torch.nn.functional.conv2d(x, params[o["w"]], b, o["stride"], o["pad"])
        if kind == "batchnorm":
            axes = (0,) if x.dim() == 2 else (0, 2, 3)
            shape = (1, -1) if x.dim() == 2 else (1, -1, 1, 1)
            if train:
                mean, var = x.mean(axes), x.var(axes, unbiased=False)
                bn_log.append((o, mean.detach(), var.detach(), x.numel() // x.shape[1]))
            else:
                mean, var = buffers[o["running_mean"]], buffers[o["running_var"]]
            xhat = (x - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + o["eps"])
            return params[o["gamma"]].reshape(shape) * xhat + params[o["beta"]].reshape(shape)
        if kind == "layernorm":
            axes = tuple(range(1, x.dim()))
            shape = (1, -1) if x.dim() == 2 else (1, -1, 1, 1)
            mean = x.mean(axes, keepdim=True)
            var = x.var(axes, unbiased=False, keepdim=True)
            xhat = (x - mean) / torch.sqrt(var + o["eps"])
            return params[o["gamma"]].reshape(shape) * xhat + params[o["beta"]].reshape(shape)
        if kind == "branch_scale":
            a = params[o["a"]]
            shape = (1,) if a.numel() == 1 else ((1, -1) if x.dim() == 2 else (1, -1, 1, 1))
            return a.reshape(shape) * x
        if kind == "relu":
            return torch.relu(x)
        if kind == "sigmoid":
            return torch.sigmoid(x)
        if kind == "global_avg_pool":
            return x.mean(dim=(2, 3))
        if kind == "max_pool":
            return torch.nn.functional.max_pool2d(x, o["k"], o["stride"], o["pad"])
        if kind == "avg_pool":
            return torch.nn.functional.avg_pool2d(
                x, o["k"], o["stride"], o["pad"], count_include_pad=o["count_include_pad"])
        if kind == "flatten":
            return x.flatten(1)
        if kind == "pad_shortcut":
            sub = x[:, :, ::o["stride"], ::o["stride"]]
            return torch.nn.functional.pad(sub, (0, 0, 0, 0, 0, o["c_out"] - x.shape[1]))
        raise ValueError(kind)

    def seq(ops, x):
        for o in ops:
            x = op(o, x)
        return x

    def forward(keep):
        x = seq(meta["stem"], T(z["input"]))
        x.retain_grad()
        xs = [x]
        for u in meta["units"]:
            sc, k = u["shortcut"], u["shortcut"]["kind"]
            a = seq(u["pre"], x)
            F = seq(u["branch"], a)
            if k == "identity":
                y = a + F
            elif k == "scale":
                y = sc["lambda"] * a + sc["branch_scale"] * F
            elif k in ("gate", "shortcut-gate"):
                g = torch.sigmoid(seq(sc["ops"], a))
                y = (1 - g) * a + (g * F if k == "gate" else F)
            elif k in ("conv1x1", "pad"):
                y = seq(sc["ops"], a) + F
            elif k == "dropout":
                y = T(z[sc["mask"]]) * a + F
            else:
                y = F
            x = seq(u["after_add"], y)
            if keep:
                x.retain_grad()
            xs.append(x)
        logits = seq(meta["head"], x)
        return torch.nn.functional.cross_entropy(logits, torch.tensor(z["labels"])), xs

    loss, xs = forward(True)
    loss.backward()
    out = {"grad_x": [v.grad.numpy() for v in xs], "grad_param": {n: p.grad.numpy().copy() for n, p in params.items()}}
    # The recorded SGD steps with torch's optimiser (same rule: PyTorch's SGD with momentum
    # and weight decay, no dampening).
    cfg = meta["sgd"]
    for p in params.values():
        p.grad = None
    opt = torch.optim.SGD(list(params.values()), lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"])
    names = list(params)
    for _ in range(cfg["steps"]):
        bn_log.clear()
        opt.zero_grad(set_to_none=True)
        loss, _ = forward(False)
        loss.backward()
        for o, mean, var, count in bn_log:
            m = o["momentum"]
            buffers[o["running_mean"]] = (1 - m) * buffers[o["running_mean"]] + m * mean
            buffers[o["running_var"]] = (1 - m) * buffers[o["running_var"]] + m * var * count / (count - 1)
        opt.step()
    out["sgd_param"] = {n: params[n].detach().numpy() for n in names}
    out["sgd_velocity"] = {n: opt.state[params[n]]["momentum_buffer"].numpy() for n in names}
    out["sgd_buffer"] = {n: b.numpy() for n, b in buffers.items()}
    return out


def main():
    z, meta = load(sys.argv[1])
    net = Net(z, meta)
    x_in, labels = z["input"], z["labels"]
    loss, xs, grad_x, grads, _ = net.run(x_in, labels)
    L = len(meta["units"])
    names = sorted(net.params)
    errors = {
        "loss": rel(loss, z["loss"]),
        "x_l": worst((xs[l], z[f"x/{l}"]) for l in range(L + 1)),
        "dE/dx_l": worst((grad_x[l], z[f"grad_x/{l}"]) for l in range(L + 1)),
        "dE/dtheta": worst((grads[n], z[f"grad_param/{n}"]) for n in names),
    }
    sgd_losses, velocity = net.sgd(x_in, labels)
    errors["SGD losses"] = rel(sgd_losses, z["sgd/loss"])
    errors["SGD parameters"] = worst((net.params[n], z[f"sgd/param/{n}"]) for n in names)
    errors["SGD momentum"] = worst((velocity[n], z[f"sgd/velocity/{n}"]) for n in names)
    errors["SGD BN statistics"] = worst((net.buffers[n], z[f"sgd/buffer/{n}"]) for n in net.buffers)
    spec = meta["spec"]
    if spec["net"] == "imported":
        label = f"imported {spec['model']}"
    else:
        label = f"{spec['net'] if spec['net'] == 'mlp' else spec['name']} {spec['placement']} / {spec['shortcut']}"
        if "projection" in spec:
            label += f" / projection {spec['projection']}"
    print(f"{label}: NumPy against resprop, worst relative error: "
          + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))
    ok = max(errors.values()) < TOL
    try:
        t = torch_check(z, meta)
        terr = {
            "dE/dx_l": worst((t["grad_x"][l], z[f"grad_x/{l}"]) for l in range(L + 1)),
            "dE/dtheta": worst((t["grad_param"][n], z[f"grad_param/{n}"]) for n in names),
            "SGD parameters": worst((t["sgd_param"][n], z[f"sgd/param/{n}"]) for n in names),
            "SGD momentum": worst((t["sgd_velocity"][n], z[f"sgd/velocity/{n}"]) for n in names),
            "SGD BN statistics": worst((t["sgd_buffer"][n], z[f"sgd/buffer/{n}"]) for n in t["sgd_buffer"]),
        }
        print("  PyTorch (autograd, torch.optim.SGD) against resprop: "
              + ", ".join(f"{k} {v:.1e}" for k, v in terr.items()))
        ok = ok and max(terr.values()) < TOL
    except ImportError:
        print("  (PyTorch not installed: autograd comparison skipped)")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
