"""Reference models used by the examples, recipes and benchmarks."""

from __future__ import annotations

from torch import Tensor, nn


class DigitsCNN(nn.Module):
    """conv(1->32)-BN-ReLU, conv(32->64)-BN-ReLU, maxpool 2, conv(64->128)-BN-ReLU, GAP, fc.

    For 1x8x8 inputs (scikit-learn digits); 10 classes by default.
    """

    def __init__(self, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1, bias=False),
            nn.BatchNorm2d(w),
            nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * w),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1, bias=False),
            nn.BatchNorm2d(4 * w),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.fc(self.features(x))
        return out
