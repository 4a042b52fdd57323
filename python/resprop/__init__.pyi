# Generated from the command line's definitions (src/cli/python.rs): do not edit.
# `UPDATE_STUB=1 cargo test --release --lib python_stub` writes it again.
from os import PathLike
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple, TypeVar, Union, overload

import numpy as np
import pandas as pd

Arrays = Dict[str, List[np.ndarray]]
_P = TypeVar("_P", bound=Union[str, PathLike[str]])

@overload
def profile(
    net: str = "mlp",
    units: int = 54,
    width: int = 64,
    input_dim: int = 64,
    image_size: int = 32,
    classes: int = 10,
    batch: int = 32,
    placement: str = "original",
    shortcut: str = "identity",
    projection: Optional[str] = None,
    norm: str = "batch",
    init: str = "he",
    bn_mode: str = "train",
    seed: int = 0,
    weights: Optional[Union[str, PathLike[str]]] = None,
    data: Optional[str] = None,
    model: Optional[Union[str, PathLike[str]]] = None,
    arrays: Literal[False] = False,
) -> pd.DataFrame: ...
@overload
def profile(
    net: str = "mlp",
    units: int = 54,
    width: int = 64,
    input_dim: int = 64,
    image_size: int = 32,
    classes: int = 10,
    batch: int = 32,
    placement: str = "original",
    shortcut: str = "identity",
    projection: Optional[str] = None,
    norm: str = "batch",
    init: str = "he",
    bn_mode: str = "train",
    seed: int = 0,
    weights: Optional[Union[str, PathLike[str]]] = None,
    data: Optional[str] = None,
    model: Optional[Union[str, PathLike[str]]] = None,
    *,
    arrays: Literal[True],
) -> Tuple[pd.DataFrame, Arrays]: ...
def check(
    net: str = "mlp",
    units: int = 54,
    width: int = 64,
    input_dim: int = 64,
    image_size: int = 32,
    classes: int = 10,
    batch: int = 32,
    placement: str = "original",
    shortcut: str = "identity",
    projection: Optional[str] = None,
    norm: str = "batch",
    init: str = "he",
    bn_mode: str = "train",
    seed: int = 0,
    weights: Optional[Union[str, PathLike[str]]] = None,
    data: Optional[str] = None,
    model: Optional[Union[str, PathLike[str]]] = None,
    directions: int = 3,
) -> pd.DataFrame: ...
def train(
    net: str = "resnet:2:basic",
    data: str = "digits",
    placement: str = "full-preact",
    shortcut: str = "identity",
    projection: Optional[str] = None,
    norm: str = "batch",
    init: str = "he",
    units: int = 8,
    width: int = 64,
    epochs: int = 10,
    batch: int = 64,
    lr: float = 0.1,
    momentum: float = 0.9,
    optimizer: str = "sgd",
    warmup_steps: Optional[int] = None,
    weight_decay: float = 0.0001,
    weight_decay_mode: str = "decoupled",
    record_every: int = 10,
    checkpoint: Optional[Union[str, PathLike[str]]] = None,
    resume: bool = False,
    stop_after_epochs: Optional[int] = None,
    seed: int = 0,
    unfused: bool = False,
) -> Tuple[pd.DataFrame, pd.DataFrame]: ...
def paths(
    net: str = "mlp",
    units: int = 54,
    width: int = 64,
    input_dim: int = 64,
    image_size: int = 32,
    classes: int = 10,
    batch: int = 32,
    placement: str = "original",
    shortcut: str = "identity",
    projection: Optional[str] = None,
    norm: str = "batch",
    init: str = "he",
    bn_mode: str = "train",
    seed: int = 0,
    weights: Optional[Union[str, PathLike[str]]] = None,
    data: Optional[str] = None,
    model: Optional[Union[str, PathLike[str]]] = None,
    sample: Optional[int] = None,
    window: float = 0.9,
) -> pd.DataFrame: ...
def lesion(
    weights: Union[str, PathLike[str]],
    net: str = "mlp",
    units: int = 54,
    width: int = 64,
    input_dim: int = 64,
    image_size: int = 32,
    classes: int = 10,
    batch: int = 32,
    placement: str = "original",
    shortcut: str = "identity",
    projection: Optional[str] = None,
    norm: str = "batch",
    init: str = "he",
    bn_mode: str = "train",
    seed: int = 0,
    data: Optional[str] = None,
    draws: int = 5,
) -> pd.DataFrame: ...
def shatter(
    depths: Sequence[int] = (1, 10, 24, 50),
    width: int = 200,
    replicates: int = 8,
    seed: int = 0,
    placement: str = "original",
) -> Tuple[pd.DataFrame, pd.DataFrame]: ...
def run(
    spec: Union[str, PathLike[str]],
    out: Union[str, PathLike[str]] = "results",
    plots: Optional[Union[str, PathLike[str]]] = None,
) -> pd.DataFrame: ...
def export_onnx(module: Any, example_input: Any, path: _P) -> _P: ...
