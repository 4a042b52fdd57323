"""Writes the small ONNX models the test suite imports (tests/onnx/*.onnx), and beside each
(tests/onnx/*.npz) a batch and what PyTorch's autograd computes on it in f64, in training and
in evaluation mode: the logits, the loss, dE/dx_l at every unit input (and at the last unit's
output, "top"), and every parameter's gradient.

Each is exported from PyTorch the way docs/import.md tells a user to: in f64, with
torch.onnx.export's TorchScript exporter (dynamo=False), training mode and no constant folding,
so every BatchNorm stays a separate op and every node is named by its module
(/layer1/layer1.0/Add). The residual units come from torchvision's own BasicBlock and
Bottleneck classes at small widths, a full pre-activation ResNet as He et al. 2016 write it, a
Pre-LN residual MLP, a block whose forward adds in place (out += identity) with an in-place
ReLU, the case that breaks backward hooks, and a net of the other ops resprop maps (average
pooling, a sigmoid, ReZero's learned scalar, a LayerScale, constant scalings, a flattened map
into x @ w + b).

One more, dynamo.onnx, is a small torchvision BasicBlock net exported by PyTorch's default
exporter (dynamo=True), as a user who does not follow docs/import.md gets it: that exporter
folds each BatchNorm into the conv before it, so the file holds the network in evaluation
mode, and its reference is taken on the same folding done in PyTorch (see fold_batchnorm).

Needs torch, torchvision and onnx (onnxscript for the dynamo exporter; pip install torch
torchvision onnx onnxscript); run from anywhere, for all fixtures or the ones named:
    python tests/onnx/make_fixtures.py
    python tests/onnx/make_fixtures.py ops.onnx dynamo.onnx
"""
import copy
import os
import sys

import numpy as np

import torch
import torch.nn as nn
from torchvision.models.resnet import BasicBlock, Bottleneck, conv1x1

HERE = os.path.dirname(os.path.abspath(__file__))


def downsample(cin, cout, stride):
    return nn.Sequential(conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))


class SmallResNet(nn.Module):
    """torchvision's ResNet layout (conv1, bn1, relu, maxpool, layer1, layer2, avgpool, fc) at
    width 8 on 12x12 images, with torchvision's blocks, so the node names are theirs."""

    def __init__(self, block, width=8, classes=10):
        super().__init__()
        e = block.expansion
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = nn.Sequential(
            block(width, width, downsample=downsample(width, width * e, 1) if e != 1 else None),
            block(width * e, width),
        )
        self.layer2 = nn.Sequential(
            block(width * e, 2 * width, stride=2, downsample=downsample(width * e, 2 * width * e, 2)),
            block(2 * width * e, 2 * width),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width * e, classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class PreActBlock(nn.Module):
    """He et al. 2016's full pre-activation unit (BN-ReLU-conv, twice); a unit that changes
    shape shares its first BN-ReLU between the branch and the 1x1 projection, as the paper's
    code does."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        out = torch.relu(self.bn1(x))
        sc = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(torch.relu(self.bn2(out)))
        return out + sc


class PreActNet(nn.Module):
    def __init__(self, width=8, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.layer1 = nn.Sequential(PreActBlock(width, width), PreActBlock(width, width))
        self.layer2 = nn.Sequential(
            PreActBlock(width, 2 * width, 2), PreActBlock(2 * width, 2 * width)
        )
        self.bn = nn.BatchNorm2d(2 * width)
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x):
        x = self.layer2(self.layer1(self.conv1(x)))
        x = torch.relu(self.bn(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class PreLNBlock(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, d)
        self.fc2 = nn.Linear(d, d)

    def forward(self, x):
        return x + self.fc2(torch.relu(self.fc1(self.ln(x))))


class PreLNMLP(nn.Module):
    """A Pre-LN residual MLP: x + W2 relu(W1 LN(x)), a final LayerNorm before the head."""

    def __init__(self, din=64, d=16, units=3, classes=10):
        super().__init__()
        self.inp = nn.Linear(din, d)
        self.blocks = nn.Sequential(*[PreLNBlock(d) for _ in range(units)])
        self.ln = nn.LayerNorm(d)
        self.out = nn.Linear(d, classes)

    def forward(self, x):
        return self.out(self.ln(self.blocks(self.inp(x))))


class InPlaceBlock(nn.Module):
    """torchvision's BasicBlock forward as it is written: out += identity, in-place ReLU."""

    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class InPlaceNet(nn.Module):
    def __init__(self, c=8, classes=10):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)
        )
        self.blocks = nn.Sequential(InPlaceBlock(c), InPlaceBlock(c))
        self.fc = nn.Linear(c, classes)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class ReZeroBlock(nn.Module):
    """ReZero's unit, x + alpha F(x), with a sigmoid in F; alpha starts at 0.3, not ReZero's 0,
    so that the branch and alpha's gradient are both compared at a non-trivial point."""

    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.alpha = nn.Parameter(torch.tensor(0.3))

    def forward(self, x):
        return x + self.alpha * self.conv2(torch.sigmoid(self.bn1(self.conv1(x))))


class LayerScaleBlock(nn.Module):
    """CaiT's LayerScale on a conv unit: x + diag(gamma) F(x), gamma of shape (C, 1, 1)."""

    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=True)
        self.gamma = nn.Parameter(0.1 + 0.05 * torch.arange(c, dtype=torch.float64).reshape(c, 1, 1))

    def forward(self, x):
        return x + self.gamma * self.conv2(torch.relu(self.bn1(self.conv1(x))))


class ScaledBlock(nn.Module):
    """relu(0.7 x + 0.5 F(x)): constant factors, on the shortcut and on the branch."""

    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(0.7 * x + 0.5 * self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class OpsNet(nn.Module):
    """A stem with average pooling that leaves the padding out of its counts, the three units
    above, and a head that averages with the padding counted and flattens the C x H x W map
    (not pooled to 1 x 1) into x @ w + b, which exports as MatMul and Add."""

    def __init__(self, c=4, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, c, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.pool = nn.AvgPool2d(3, 2, 1, count_include_pad=False)
        self.blocks = nn.Sequential(ReZeroBlock(c), LayerScaleBlock(c), ScaledBlock(c))
        self.head_pool = nn.AvgPool2d(2, 1, 1, count_include_pad=True)
        # 10x10 input: 5x5 after the stem, 6x6 after the head's pooling.
        self.w = nn.Parameter(0.1 * torch.randn(c * 6 * 6, classes, dtype=torch.float64))
        self.b = nn.Parameter(0.1 * torch.randn(classes, dtype=torch.float64))

    def forward(self, x):
        x = self.blocks(self.pool(torch.relu(self.bn1(self.conv1(x)))))
        return torch.flatten(self.head_pool(x), 1) @ self.w + self.b


def randomise(model, seed):
    """BatchNorm and LayerNorm with random affine parameters and running statistics, so that
    neither mode of either normalisation is compared at its trivial start."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(1 + 0.5 * torch.rand(m.running_var.shape, generator=g))


def unit_modules(model):
    """The modules whose forward is one residual unit, in order, by name."""
    kinds = (BasicBlock, Bottleneck, PreActBlock, PreLNBlock, InPlaceBlock, ReZeroBlock,
             LayerScaleBlock, ScaledBlock)
    return [(n, m) for n, m in model.named_modules() if isinstance(m, kinds)]


def reference(model, x, y, training):
    """What PyTorch's autograd gives on batch (x, y): the logits, the mean cross-entropy, the
    gradient at every unit's input x_l and at the last unit's output x_L, every parameter's
    gradient, and the direct part D_l of every dE/dx_l (see direct_parts)."""
    model = copy.deepcopy(model).train(training)
    inputs, out = {}, {}
    units = unit_modules(model)

    def keep_input(name):
        def hook(_m, args):
            args[0].retain_grad()
            inputs[name] = args[0]
        return hook

    for name, m in units:
        m.register_forward_pre_hook(keep_input(name))
    def keep_output(_m, _args, o):
        o.retain_grad()
        out["top"] = o

    units[-1][1].register_forward_hook(keep_output)
    x = x.clone().requires_grad_(False)
    logits = model(x)
    loss = nn.functional.cross_entropy(logits, y)
    loss.backward()
    mode = "train" if training else "eval"
    ref = {f"{mode}/logits": logits.detach().numpy(), f"{mode}/loss": loss.detach().numpy()}
    for name, _ in units:
        ref[f"{mode}/grad_x/{name}"] = inputs[name].grad.numpy()
    ref[f"{mode}/grad_x/top"] = out["top"].grad.numpy()
    for name, p in model.named_parameters():
        ref[f"{mode}/param/{name}"] = p.grad.numpy()
    shapes = [inputs[name].shape for name, _ in units] + [out["top"].shape]
    grad_x = [ref[f"{mode}/grad_x/{name}"] for name, _ in units] + [ref[f"{mode}/grad_x/top"]]
    for name, d in zip([n for n, _ in units] + ["top"], direct_parts(model, x, y, shapes, grad_x)):
        ref[f"{mode}/direct/{name}"] = d
    return ref


def direct_parts(model, x, y, shapes, grad_x):
    """The direct part D_l of dE/dx_l at every unit input and at the top (src/analysis/
    record.rs): what reaches x_l through the shortcuts alone, h and the after-addition f of each
    unit from l up to the top t of its run, where D_t = dE/dx_t. A run ends below a unit whose
    input and output differ in shape (its shortcut is a projection: the path breaks there and
    starts again, D_t being the whole dE/dx_t); the last run ends at x_L.

    For each run, one forward of `model` (already in its mode) with the branch input of every
    unit l below t detached, then dE/dx_l for those l. Detaching changes no forward value, so
    the BatchNorm statistics are the same as in the full pass. `shapes` are the shapes of the
    unit inputs and of x_L, `grad_x` the full gradients there (D_t of a run with no unit below
    t)."""
    units = unit_modules(model)
    n = len(units)
    carries = [shapes[l] == shapes[l + 1] for l in range(n)]
    top = list(range(n + 1))
    for l in reversed(range(n)):
        top[l] = top[l + 1] if carries[l] else l
    parts = list(grad_x)
    for t in sorted(set(top)):
        detached = [l for l in range(t) if top[l] == t]
        if not detached:
            continue
        run = copy.deepcopy(model)
        run_units = unit_modules(run)
        inputs, fired, out = {}, [], {}

        def keep_input(l):
            def hook(_m, args):
                args[0].retain_grad()
                inputs[l] = args[0]
            return hook

        def detach(l):
            def hook(_m, args):
                # The branch's first module must read x_l itself, so that detaching its input
                # cuts the branch and nothing else.
                assert args[0] is inputs[l], f"{run_units[l][0]}: its branch does not start at x_l"
                fired.append(l)
                return (args[0].detach(),) + tuple(args[1:])
            return hook

        for l, (_, m) in enumerate(run_units):
            m.register_forward_pre_hook(keep_input(l))
            if l in detached:
                branch_entry(m).register_forward_pre_hook(detach(l))

        def keep_output(_m, _args, o):
            o.retain_grad()
            out["top"] = o

        run_units[-1][1].register_forward_hook(keep_output)
        loss = nn.functional.cross_entropy(run(x), y)
        loss.backward()
        assert sorted(fired) == detached, f"branches detached {fired}, meant {detached}"
        xs = [inputs[l] for l in range(n)] + [out["top"]]
        for l in detached + [t]:
            parts[l] = xs[l].grad.numpy()
    return parts


def branch_entry(unit):
    """The first module of a unit's branch: its first child that is not the shortcut's
    (torchvision's `downsample`, `shortcut` here). direct_parts checks that it reads x_l."""
    return next(m for name, m in unit.named_children() if name not in ("downsample", "shortcut"))


def export(model, x, name):
    """The export docs/import.md gives: f64, BatchNorm kept (training mode, no folding)."""
    model.double().train()
    torch.onnx.export(
        model,
        (x,),
        os.path.join(HERE, name),
        dynamo=False,
        training=torch.onnx.TrainingMode.TRAINING,
        do_constant_folding=False,
        input_names=["x"],
        output_names=["logits"],
    )


def export_dynamo(model, x, name):
    """PyTorch's default exporter, with the weights inside the file: it folds each BatchNorm
    into the conv before it (with the running statistics), so the model is exported in
    evaluation mode."""
    model.double().eval()
    torch.onnx.export(
        model,
        (x,),
        os.path.join(HERE, name),
        dynamo=True,
        external_data=False,
        input_names=["x"],
        output_names=["logits"],
    )


def fold_batchnorm(model):
    """A copy of `model` with each BatchNorm that follows a conv folded into it as the dynamo
    exporter folds it: per output channel s = gamma / sqrt(running_var + eps), W' = s W,
    b' = s (b - running_mean) + beta. The copy has no BatchNorm, so it is the same network in
    training and in evaluation mode: the evaluation-mode network the file holds."""
    model = copy.deepcopy(model).eval()
    leaves = [(n, m) for n, m in model.named_modules() if not list(m.children())]
    pairs = [
        (conv, bn_name, bn)
        for (_, conv), (bn_name, bn) in zip(leaves, leaves[1:])
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
    ]
    with torch.no_grad():
        for conv, bn_name, bn in pairs:
            s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            b = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            conv.weight.mul_(s.reshape(-1, 1, 1, 1))
            conv.bias = nn.Parameter(s * (b - bn.running_mean) + bn.bias)
            parent, _, leaf = bn_name.rpartition(".")
            setattr(model.get_submodule(parent), leaf, nn.Identity())
    return model


def onnx_names(ref, name):
    """The reference's conv biases under the names of the file's initializers: the exporter
    names the bias it made for a folded conv `<weight>_bias` (conv1.weight_bias), PyTorch's
    folded copy `conv1.bias`. Refuses a file that kept a BatchNorm (then the folding above
    would not be the file's network)."""
    import onnx

    graph = onnx.load(os.path.join(HERE, name)).graph
    ops = {n.op_type for n in graph.node}
    assert "BatchNormalization" not in ops, f"{name} kept a BatchNorm: {ops}"
    for n in graph.node:
        if n.op_type == "Conv" and len(n.input) == 3 and n.input[1].endswith(".weight"):
            torch_bias = n.input[1][: -len("weight")] + "bias"
            for mode in ("train", "eval"):
                ref[f"{mode}/param/{n.input[2]}"] = ref.pop(f"{mode}/param/{torch_bias}")
    return ref


FIXTURES = {
    "basic.onnx": (lambda: SmallResNet(BasicBlock), (2, 3, 12, 12)),
    "bottleneck.onnx": (lambda: SmallResNet(Bottleneck, width=4), (2, 3, 12, 12)),
    "preact.onnx": (PreActNet, (2, 3, 8, 8)),
    "preln.onnx": (PreLNMLP, (2, 64)),
    "inplace.onnx": (InPlaceNet, (2, 3, 8, 8)),
    "ops.onnx": (OpsNet, (2, 3, 10, 10)),
    "dynamo.onnx": (lambda: SmallResNet(BasicBlock, width=4), (2, 3, 12, 12)),
}

# Exported by the dynamo exporter (export_dynamo), its BatchNorms folded.
FOLDED = {"dynamo.onnx"}

if __name__ == "__main__":
    names = sys.argv[1:] or list(FIXTURES)
    unknown = [n for n in names if n not in FIXTURES]
    if unknown:
        sys.exit(f"unknown fixture(s) {unknown}; the fixtures are {list(FIXTURES)}")
    for name in names:
        make, shape = FIXTURES[name]
        torch.manual_seed(0)
        model = make().double()
        randomise(model, 1)
        x = torch.randn(*shape, dtype=torch.float64)
        y = torch.randint(0, 10, (shape[0],))
        if name in FOLDED:
            export_dynamo(model, x, name)
            model = fold_batchnorm(model)
        else:
            # Exporting in training mode runs the model once, which moves its BatchNorm
            # running statistics; the file holds the moved ones, so the references are taken
            # after.
            export(model, x, name)
        ref = {"x": x.numpy(), "y": y.numpy()}
        for training in (True, False):
            ref.update(reference(model, x, y, training))
        if name in FOLDED:
            ref = onnx_names(ref, name)
        npz = os.path.join(HERE, name.replace(".onnx", ".npz"))
        np.savez(npz, **ref)
        print(f"wrote {name} ({os.path.getsize(os.path.join(HERE, name))} bytes) and its reference")
