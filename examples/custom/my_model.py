"""A user's own model, built by ``[model] factory = "my_model:build"`` in recipe.toml."""

from __future__ import annotations

from torch import Tensor, nn


class SmallNet(nn.Module):
    """Two conv blocks and a linear head for 1x8x8 inputs."""

    def __init__(self, width: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


def build(width: int = 16) -> nn.Module:
    """The factory: the recipe's other [model] keys arrive as keyword arguments."""
    return SmallNet(width=width)
