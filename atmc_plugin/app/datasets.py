"""Small real data sets that work offline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import ATMCError


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


CIFAR10_RECORD = 1 + 3 * 32 * 32
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch.bin"


def read_cifar10_bin(path: str | Path) -> tuple[Tensor, Tensor]:
    """One file of the CIFAR-10 binary distribution: records of 1 label byte + 3072 pixel bytes.

    :returns: images as float32 ``N x 3 x 32 x 32`` in [0, 1] and int64 labels.
    :raises ATMCError: a missing file, a size that is not a whole number of records, or labels
        outside 0..9 (for example the CIFAR-100 binary format).
    """
    p = Path(path)
    if not p.is_file():
        raise ATMCError(f"CIFAR-10 file {str(p)!r} does not exist.")
    raw = np.fromfile(p, dtype=np.uint8)
    if raw.size == 0 or raw.size % CIFAR10_RECORD:
        raise ATMCError(
            f"{str(p)!r} has {raw.size} bytes, not a whole number of {CIFAR10_RECORD}-byte "
            "CIFAR-10 records; is it the binary version (cifar-10-binary.tar.gz)?"
        )
    records = raw.reshape(-1, CIFAR10_RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise ATMCError(f"{str(p)!r} has label {int(labels.max())} > 9: not CIFAR-10 data.")
    images = records[:, 1:].reshape(-1, 3, 32, 32).astype(np.float32) / 255.0
    return torch.from_numpy(images), torch.from_numpy(labels)


def load_cifar10(folder: str | Path) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """CIFAR-10 from a folder of the binary distribution (``data_batch_1..5.bin``,
    ``test_batch.bin``), read with numpy: no pickle, no torchvision, no download.

    :raises ATMCError: the folder or one of its files is missing or malformed.
    """
    root = Path(folder)
    if not root.is_dir():
        raise ATMCError(
            f"CIFAR-10 folder {str(root)!r} does not exist; download cifar-10-binary.tar.gz "
            "from https://www.cs.toronto.edu/~kriz/cifar.html, unpack it and point [data] path "
            "at its cifar-10-batches-bin folder."
        )
    missing = [n for n in (*CIFAR10_TRAIN_FILES, CIFAR10_TEST_FILE) if not (root / n).is_file()]
    if missing:
        raise ATMCError(f"CIFAR-10 folder {str(root)!r} lacks {', '.join(missing)}.")
    parts = [read_cifar10_bin(root / n) for n in CIFAR10_TRAIN_FILES]
    x_test, y_test = read_cifar10_bin(root / CIFAR10_TEST_FILE)
    x_train = torch.cat([x for x, _ in parts])
    y_train = torch.cat([y for _, y in parts])
    return x_train, y_train, x_test, y_test
