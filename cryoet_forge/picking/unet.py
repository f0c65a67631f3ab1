"""A small 3-D U-Net for per-voxel classes (DeepFinder's shape: two convolutions per level,
max-pool down, transposed convolution up, skip connections by concatenation)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cryoet_forge.errors import ConfigError, InputError


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm3d(cout), nn.ReLU(inplace=True),
                         nn.Conv3d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm3d(cout), nn.ReLU(inplace=True))


class SegmentationUNet(nn.Module):
    """(B, 1, S, S, S) -> (B, n_outputs, S, S, S) logits; S a multiple of 2^(levels - 1)."""

    def __init__(self, n_outputs: int, channels: Sequence[int] = (16, 32, 64)):
        super().__init__()
        channels = [int(c) for c in channels]
        if n_outputs < 2 or len(channels) < 2 or min(channels) < 1:
            raise ConfigError(f"segmentation U-Net needs >= 2 outputs and >= 2 levels of >= 1 channel; "
                              f"got {n_outputs} outputs, channels {channels}")
        self.multiple = 2 ** (len(channels) - 1)
        self.down = nn.ModuleList()
        previous = 1
        for width in channels:
            self.down.append(_block(previous, width))
            previous = width
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for width in reversed(channels[:-1]):
            self.up.append(nn.ConvTranspose3d(previous, width, 2, stride=2))
            self.merge.append(_block(2 * width, width))
            previous = width
        self.head = nn.Conv3d(previous, n_outputs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or any(s % self.multiple for s in x.shape[2:]):
            raise InputError(f"segmentation U-Net expects (B, 1, S, S, S) with S a multiple of {self.multiple}, "
                             f"got {tuple(x.shape)}")
        skips = []
        for i, block in enumerate(self.down):
            if i:
                x = nn.functional.max_pool3d(x, 2)
            x = block(x)
            skips.append(x)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips[:-1])):
            x = merge(torch.cat([up(x), skip], dim=1))
        return self.head(x)
