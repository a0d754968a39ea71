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


class TinyViT(nn.Module):
    """A ViT on 1x8x8 images with every parameter kind vision transformers hold directly.

    Patch embedding (2x2 patches), a class token and position embeddings on the model itself,
    a pre-norm MLP block with a layer scale (``block_gamma``), a head on the class token.
    Torch-Pruning slices the direct parameters through ``unwrapped_parameters``
    (:meth:`unwrapped`).
    """

    def __init__(self, dim: int = 16, hidden: int = 32, classes: int = 10) -> None:
        super().__init__()
        self.patch = nn.Conv2d(1, dim, 2, stride=2)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, 17, dim) * 0.02)
        self.norm1 = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, hidden)
        self.down = nn.Linear(hidden, dim)
        self.block_gamma = nn.Parameter(torch.full((dim,), 0.5))
        self.norm2 = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def unwrapped(self) -> list[tuple[nn.Parameter, int]]:
        """``unwrapped_parameters`` for Torch-Pruning: each direct parameter's channel dim."""
        return [(self.cls_token, 2), (self.pos_embed, 2), (self.block_gamma, 0)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], dim=1)
        h = tokens + self.pos_embed
        h = h + self.block_gamma * self.down(nn.functional.gelu(self.up(self.norm1(h))))
        return self.head(self.norm2(h)[:, 0])


class TinyConvNeXt(nn.Module):
    """A ConvNeXt stage on 1x8x8 images: patchify stem, a block (7x7 depthwise conv,
    channels-last LayerNorm, Linear-GELU-Linear, layer scale held directly by the block),
    pooled LayerNorm head."""

    class Block(nn.Module):
        def __init__(self, dim: int) -> None:
            super().__init__()
            self.dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
            self.norm = nn.LayerNorm(dim)
            self.up = nn.Linear(dim, 4 * dim)
            self.down = nn.Linear(4 * dim, dim)
            self.gamma = nn.Parameter(torch.full((dim,), 0.5))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.dw(x).permute(0, 2, 3, 1)
            h = self.gamma * self.down(nn.functional.gelu(self.up(self.norm(h))))
            return x + h.permute(0, 3, 1, 2)

    def __init__(self, dim: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, dim, 2, stride=2)
        self.block = TinyConvNeXt.Block(dim)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def unwrapped(self) -> list[tuple[nn.Parameter, int]]:
        return [(self.block.gamma, 0)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.block(self.stem(x)).mean(dim=(2, 3))))


class TinyEncoder(nn.Module):
    """A BERT-like text classifier: token embeddings, position embeddings held by the model,
    LayerNorm, a feed-forward block, a head on the mean token. Input: token ids (N, 12)."""

    def __init__(self, vocab: int = 50, dim: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, dim)
        self.positions = nn.Parameter(torch.randn(1, 12, dim) * 0.02)
        self.norm = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, 2 * dim)
        self.down = nn.Linear(2 * dim, dim)
        self.head = nn.Linear(dim, classes)

    def unwrapped(self) -> list[tuple[nn.Parameter, int]]:
        return [(self.positions, 2)]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.tokens(ids) + self.positions)
        h = h + self.down(nn.functional.gelu(self.up(h)))
        return self.head(h.mean(dim=1))


class TinyEfficientNet(nn.Module):
    """An EfficientNet-style MBConv block on 3x8x8 images: expand 1x1, depthwise 3x3, squeeze-
    and-excitation (pool, reduce, SiLU, expand, sigmoid, multiply), project 1x1, residual."""

    def __init__(self, width: int = 16, expand: int = 4, classes: int = 10) -> None:
        super().__init__()
        hidden = width * expand
        self.stem = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(width)
        self.expand = nn.Conv2d(width, hidden, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.dw = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.se_reduce = nn.Conv2d(hidden, hidden // 8, 1)
        self.se_expand = nn.Conv2d(hidden // 8, hidden, 1)
        self.project = nn.Conv2d(hidden, width, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = nn.functional.silu
        x = act(self.bn0(self.stem(x)))
        h = act(self.bn1(self.expand(x)))
        h = act(self.bn2(self.dw(h)))
        scale = torch.sigmoid(self.se_expand(act(self.se_reduce(h.mean((2, 3), keepdim=True)))))
        h = self.bn3(self.project(h * scale))
        return self.head((x + h).mean(dim=(2, 3)))
