"""Small models covering Torch-Pruning's hard cases."""

from __future__ import annotations

import torch
from torch import nn


class MobileBlockNet(nn.Module):
    """Pointwise -> depthwise -> pointwise, plus a grouped conv (MobileNet-style)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(16)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.pw = nn.Conv2d(16, 32, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.grouped = nn.Conv2d(32, 32, 3, padding=1, groups=4, bias=False)
        self.bn3 = nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn0(self.stem(x)))
        x = torch.relu(self.bn1(self.dw(x)))
        x = torch.relu(self.bn2(self.pw(x)))
        x = torch.relu(self.bn3(self.grouped(x)))
        return self.fc(x.mean(dim=(2, 3)))


class TokenMLPBlock(nn.Module):
    """A transformer-style MLP block: LayerNorm, Linear-GELU-Linear, residual, head."""

    def __init__(self, dim: int = 32, hidden: int = 64, classes: int = 10) -> None:
        super().__init__()
        self.embed = nn.Linear(16, dim)
        self.norm = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, hidden)
        self.down = nn.Linear(hidden, dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x.flatten(2).transpose(1, 2).reshape(x.shape[0], -1, 16))
        h = h + self.down(nn.functional.gelu(self.up(self.norm(h))))
        return self.head(h.mean(dim=1))
