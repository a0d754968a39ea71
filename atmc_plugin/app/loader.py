"""The training split as a stream: a seeded ``DataLoader`` and optional augmentation.

The shuffling order comes from the run's data generator (saved in every checkpoint), so a
resumed run draws the same batches as an uninterrupted one; workers are seeded from it too.
Augmentation runs on each training batch with torch's global RNG (also checkpointed).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, RandomSampler


def train_loader(
    dataset: Any,
    batch_size: int,
    generator: torch.Generator,
    workers: int,
    pin_memory: bool = False,
) -> DataLoader[Any]:
    """Shuffled batches of ``dataset`` in the order ``generator`` gives (``pin_memory`` for
    faster copies to a CUDA device)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=RandomSampler(dataset, generator=generator),
        num_workers=workers,
        generator=generator,
        pin_memory=pin_memory,
    )


def augment(x: Tensor, kind: str) -> Tensor:
    """``shift``: translate each image by up to 1/8 of its size (zero fill); ``flip_shift``:
    also mirror half of them left-right. Images are ``(N, C, H, W)`` (the recipe check refuses
    augmentation of other inputs)."""
    if kind == "none":
        return x
    n, _, h, w = x.shape
    if kind == "flip_shift":
        flip = torch.rand(n, device=x.device) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    pad = max(1, min(h, w) // 8)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), device=x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device)[None, :])[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device)[None, :])[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channels = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, channels, rows, cols]
