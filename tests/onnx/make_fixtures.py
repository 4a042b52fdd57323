"""Writes the small ONNX models the test suite imports (tests/onnx/*.onnx).

Each is exported from PyTorch the way docs/import.md tells a user to: in f64, with
torch.onnx.export's TorchScript exporter (dynamo=False), training mode and no constant folding,
so every BatchNorm stays a separate op and every node is named by its module
(/layer1/layer1.0/Add). The residual units come from torchvision's own BasicBlock and
Bottleneck classes at small widths, a full pre-activation ResNet as He et al. 2016 write it, a
Pre-LN residual MLP, and a block whose forward adds in place (out += identity) with an in-place
ReLU, the case that breaks backward hooks.

Needs torch, torchvision and onnx (pip install torch torchvision onnx); run from anywhere:
    python tests/onnx/make_fixtures.py
"""
import os

import torch
import torch.nn as nn
from torchvision.models.resnet import BasicBlock, Bottleneck, conv1x1

HERE = os.path.dirname(os.path.abspath(__file__))


def downsample(cin, cout, stride):
    return nn.Sequential(conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))


class SmallResNet(nn.Module):
    """torchvision's ResNet layout (conv1, bn1, relu, layer1, layer2, avgpool, fc) at width 8
    on 8x8 images, with torchvision's blocks, so the node names are theirs."""

    def __init__(self, block, width=8, classes=10):
        super().__init__()
        e = block.expansion
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
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
        x = self.relu(self.bn1(self.conv1(x)))
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


def export(model, x, name):
    """The export docs/import.md gives: f64, BatchNorm kept (training mode, no folding)."""
    model = model.double().train()
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


FIXTURES = {
    "basic.onnx": (lambda: SmallResNet(BasicBlock), (2, 3, 8, 8)),
    "bottleneck.onnx": (lambda: SmallResNet(Bottleneck, width=4), (2, 3, 8, 8)),
    "preact.onnx": (PreActNet, (2, 3, 8, 8)),
    "preln.onnx": (PreLNMLP, (2, 64)),
    "inplace.onnx": (InPlaceNet, (2, 3, 8, 8)),
}

if __name__ == "__main__":
    for name, (make, shape) in FIXTURES.items():
        torch.manual_seed(0)
        export(make(), torch.randn(*shape, dtype=torch.float64), name)
        print(f"wrote {name} ({os.path.getsize(os.path.join(HERE, name))} bytes)")
