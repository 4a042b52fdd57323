from os import PathLike
from typing import Dict, List, Literal, Optional, Tuple, Union, overload

import numpy as np
import pandas as pd

Arrays = Dict[str, List[np.ndarray]]

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
    weight_decay: float = 1e-4,
    weight_decay_mode: str = "decoupled",
    record_every: int = 10,
    checkpoint: Optional[Union[str, PathLike[str]]] = None,
    resume: bool = False,
    stop_after_epochs: Optional[int] = None,
    seed: int = 0,
    unfused: bool = False,
) -> Tuple[pd.DataFrame, pd.DataFrame]: ...
def run(spec: Union[str, PathLike[str]], out: Union[str, PathLike[str]] = "results") -> pd.DataFrame: ...
