"""Small real data sets that work offline."""

from __future__ import annotations

import torch
from torch import Tensor

from .errors import ATMCError


def load_digits(
    *, seed: int = 0, test_fraction: float = 0.2
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """scikit-learn's handwritten digits (1797 images, 10 classes) as 1x8x8 float32 in [0, 1].

    Pixels are divided by 16; the split is stratified with ``seed``. Needs scikit-learn (the
    ``examples`` extra), which ships the data: nothing is downloaded.

    :returns: ``x_train, y_train, x_test, y_test`` (labels int64).
    """
    try:
        from sklearn.datasets import load_digits as sk_load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ATMCError(
            "the digits data set needs scikit-learn: pip install 'atmc-plugin[examples]'"
        ) from exc
    data = sk_load_digits()
    x = torch.tensor(data.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(data.target, dtype=torch.int64)
    idx = torch.arange(len(y)).numpy()
    train_idx, test_idx = train_test_split(
        idx, test_size=test_fraction, random_state=seed, stratify=y.numpy()
    )
    tr, te = torch.as_tensor(train_idx), torch.as_tensor(test_idx)
    return x[tr], y[tr], x[te], y[te]
