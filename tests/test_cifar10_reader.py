"""The CIFAR-10 binary reader, on small files in that format written by the test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from atmc_plugin.app.build import load_data
from atmc_plugin.app.datasets import load_cifar10, read_cifar10_bin
from atmc_plugin.app.plan import check_recipe
from atmc_plugin.app.recipe import RecipeError, load_recipe
from atmc_plugin.errors import ATMCError


def write_batch(path: Path, labels: list[int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
    records = np.concatenate([np.array(labels, dtype=np.uint8)[:, None], pixels], axis=1)
    path.write_bytes(records.tobytes())
    return pixels


@pytest.fixture
def cifar_dir(tmp_path: Path) -> Path:
    root = tmp_path / "cifar-10-batches-bin"
    root.mkdir()
    for i in range(1, 6):
        write_batch(root / f"data_batch_{i}.bin", [i, (i + 1) % 10, 9], seed=i)
    write_batch(root / "test_batch.bin", [0, 1], seed=9)
    return root


def test_reads_labels_and_pixels_in_channel_major_order(tmp_path: Path) -> None:
    pixels = write_batch(tmp_path / "b.bin", [3, 7], seed=0)
    x, y = read_cifar10_bin(tmp_path / "b.bin")
    assert x.shape == (2, 3, 32, 32) and x.dtype == torch.float32
    assert y.tolist() == [3, 7] and y.dtype == torch.int64
    # CIFAR-10 stores 1024 red, then 1024 green, then 1024 blue bytes, rows of 32.
    assert x[1, 1, 2, 5] == pytest.approx(pixels[1, 1024 + 2 * 32 + 5] / 255.0)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0


def test_folder_concatenates_the_five_training_batches(cifar_dir: Path) -> None:
    x_tr, y_tr, x_te, _ = load_cifar10(cifar_dir)
    assert len(x_tr) == 15 and len(x_te) == 2
    assert y_tr[:3].tolist() == [1, 2, 9] and y_tr[-3:].tolist() == [5, 6, 9]


def test_malformed_files_are_clear_errors(tmp_path: Path, cifar_dir: Path) -> None:
    bad = tmp_path / "short.bin"
    bad.write_bytes(b"\x00" * 3000)
    with pytest.raises(ATMCError, match="not a whole number of 3073-byte"):
        read_cifar10_bin(bad)
    write_batch(tmp_path / "c100.bin", [42], seed=0)
    with pytest.raises(ATMCError, match="label 42"):
        read_cifar10_bin(tmp_path / "c100.bin")
    (cifar_dir / "data_batch_3.bin").unlink()
    with pytest.raises(ATMCError, match=r"lacks data_batch_3\.bin"):
        load_cifar10(cifar_dir)


def test_cifar_recipe_loads_the_folder_relative_to_the_recipe(cifar_dir: Path) -> None:
    recipe_path = cifar_dir.parent / "cifar.toml"
    recipe_path.write_text(
        "[data]\ndataset = 'cifar10'\npath = 'cifar-10-batches-bin'\n"
        "[model]\nname = 'resnet'\ndepth = 8\n"
    )
    recipe = load_recipe(recipe_path)
    data = check_recipe(recipe, torch.device("cpu"))
    assert data.x_train.shape == (15, 3, 32, 32)
    (cifar_dir / "test_batch.bin").unlink()
    with pytest.raises(RecipeError, match=r"\[data\].*test_batch.bin"):
        load_data(recipe)
