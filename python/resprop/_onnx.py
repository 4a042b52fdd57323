"""Exporting a PyTorch model to ONNX the way resprop reads it (docs/import.md). PyTorch is
imported when the function is called: resprop does not depend on it."""

import copy
import os
import warnings


def export_onnx(module, example_input, path):
    """Writes `module` to `path` as an ONNX model that `profile`, `check` and `paths` read
    with model=path, and returns `path`.

    The export follows docs/import.md. It works on a copy of `module` converted to float64 (resprop
    computes in f64) and runs `example_input` (one tensor shaped like a batch of your data)
    through it in float64. It calls torch.onnx.export with the TorchScript exporter
    (dynamo=False, so nodes are named by their modules and units are named `layer1.0`), in
    training mode and without constant folding, so every BatchNorm stays a separate op.

    `module` itself is not changed: the export runs the copy once in training mode, which
    moves the copy's BatchNorm running statistics, not yours. The file holds the copy's
    statistics after that pass (one update towards example_input's batch statistics).
    These matter only with bn_mode="eval".

    Needs PyTorch (pip install torch); raises ImportError without it.

    >>> import torch, torchvision
    >>> net = torchvision.models.resnet18(num_classes=10)
    >>> x = torch.randn(2, 3, 32, 32)
    >>> resprop.export_onnx(net, x, "resnet18.onnx")
    'resnet18.onnx'
    >>> df = resprop.profile(model="resnet18.onnx", batch=8)
    >>> df[["name", "grad_ratio"]].head(2)
    """
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            "resprop.export_onnx needs PyTorch, which resprop does not install: "
            "pip install torch") from e
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"module: expected a torch.nn.Module, got {type(module).__name__}")
    if not isinstance(example_input, torch.Tensor):
        raise TypeError(
            f"example_input: expected a torch.Tensor, got {type(example_input).__name__}")
    model = copy.deepcopy(module).double()
    x = example_input.detach().to(torch.float64)
    with warnings.catch_warnings():
        # What torch says of the settings docs/import.md chooses on purpose, none of it about
        # the file resprop reads: the TorchScript exporter and `training=` are deprecated,
        # BatchNorm's batch-size check is traced as a constant, and the BatchNorm batch
        # counters' updates are left out of the graph. (The copy in training mode with
        # training=TrainingMode.PRESERVE writes the same bytes, should `training=TRAINING` go.)
        for message in (".*legacy TorchScript-based ONNX export",
                        "Setting `training` to something other than default"):
            warnings.filterwarnings("ignore", message=message, category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning,
                                module=r"torch\.nn\.functional")
        warnings.filterwarnings("ignore", message=".*num_batches_tracked", category=UserWarning)
        torch.onnx.export(
            model,
            (x,),
            os.fspath(path),
            dynamo=False,
            training=torch.onnx.TrainingMode.TRAINING,
            do_constant_folding=False,
        )
    return path
