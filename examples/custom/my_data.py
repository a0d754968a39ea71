"""A user's own data, built by ``[data] factory = "my_data:splits"`` in recipe.toml.

Returns map-style datasets of (image, label) pairs with pixels in [0, 1]: a training split, a
validation split carved from it, and the test split (scikit-learn's digits, offline).
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, TensorDataset


def splits(validation: float = 0.1, seed: int = 0) -> tuple[Dataset, Dataset, Dataset]:
    """(train, validation, test) of the digits, shuffled with ``seed``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    n_test = len(y) // 5
    n_val = int((len(y) - n_test) * validation)
    test = TensorDataset(x[:n_test], y[:n_test])
    val = TensorDataset(x[n_test : n_test + n_val], y[n_test : n_test + n_val])
    train = TensorDataset(x[n_test + n_val :], y[n_test + n_val :])
    return train, val, test
