from typing import Optional

import pandas as pd

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
) -> pd.DataFrame: ...
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
def run(spec: str, out: str = "results") -> pd.DataFrame: ...
