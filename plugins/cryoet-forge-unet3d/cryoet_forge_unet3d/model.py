"""A 3D U-Net for volume-to-volume translation."""

from __future__ import annotations

import torch
from torch import nn


def _conv_block(in_ch: int, out_ch: int, stride: int, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv3d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.InstanceNorm3d(out_ch, affine=True),
        nn.LeakyReLU(0.2, inplace=True),
    ]
    if dropout > 0:
        layers.append(nn.Dropout3d(dropout))
    return nn.Sequential(*layers)


class UNet3D(nn.Module):
    """3D U-Net: three stride-2 downsamplings, skip connections, InstanceNorm, tanh output.

    Input and output are (B, in_channels, S, S, S) and (B, out_channels, S, S, S) with S
    divisible by 8. ``noise_channels`` extra Gaussian channels are appended at the
    bottleneck so one input map can give many different outputs (as CryoETGAN does).

    ``noise_injection`` (with ``noise_channels`` >= 1) also adds the noise at full resolution to
    the last decoder features, each channel scaled by a learnt strength that starts at zero
    (StyleGAN's noise inputs): stochastic detail at the voxel scale (shot noise, ice texture) that a
    bottleneck noise of an eighth of the resolution cannot give. The trainer then draws the noise at
    full resolution; the bottleneck takes every eighth voxel of it, so at initialisation the network
    is the one without injection.
    """

    depth = 3

    def __init__(self, in_channels: int = 1, out_channels: int = 1, base: int = 16,
                 dropout: float = 0.0, noise_channels: int = 0, noise_injection: bool = False):
        super().__init__()
        widths = [base * 2**i for i in range(self.depth + 1)]
        self.noise_channels = int(noise_channels)
        if noise_injection and self.noise_channels < 1:
            raise ValueError("unet3d noise_injection needs noise_channels >= 1")
        self.noise_injection = bool(noise_injection)
        #: per-channel strength of the full-resolution noise (zero: no injection yet)
        self.noise_strength = nn.Parameter(torch.zeros(widths[0])) if self.noise_injection else None
        # the trainer's noise contract: with ``noise`` true it draws the volumes of
        # ``noise_shape`` itself (seeded, the same on every rank) and passes them in
        self.noise = self.noise_channels > 0
        self.stem = _conv_block(in_channels, widths[0], stride=1, dropout=0.0)
        self.down = nn.ModuleList(
            _conv_block(widths[i], widths[i + 1], stride=2, dropout=dropout) for i in range(self.depth)
        )
        self.bottleneck = _conv_block(widths[-1] + noise_channels, widths[-1], stride=1, dropout=dropout)
        self.up = nn.ModuleList(
            nn.ConvTranspose3d(widths[i + 1], widths[i], kernel_size=2, stride=2)
            for i in reversed(range(self.depth))
        )
        self.merge = nn.ModuleList(
            _conv_block(2 * widths[i], widths[i], stride=1, dropout=0.0) for i in reversed(range(self.depth))
        )
        self.head = nn.Conv3d(widths[0], out_channels, kernel_size=1)

    def noise_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of the noise for an input of ``input_shape`` (B, C, S, S, S): at the bottleneck's
        resolution, or at the input's with ``noise_injection``."""
        scale = 1 if self.noise_injection else 2**self.depth
        return (input_shape[0], self.noise_channels, *(n // scale for n in input_shape[-3:]))

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        size = x.shape[-3:]
        if x.dim() != 5 or len(set(size)) != 1 or size[0] % 2**self.depth:
            raise ValueError(
                f"unet3d expects (B, C, S, S, S) with S divisible by {2**self.depth}, got {tuple(x.shape)}"
            )
        skips = [self.stem(x)]
        for block in self.down:
            skips.append(block(skips[-1]))
        h = skips.pop()
        if self.noise_channels:
            if noise is None:
                noise = torch.randn(self.noise_shape(tuple(x.shape)), device=h.device, dtype=h.dtype)
            step = 2**self.depth if self.noise_injection else 1
            h = torch.cat([h, noise[..., ::step, ::step, ::step]], dim=1)
        h = self.bottleneck(h)
        for up, merge in zip(self.up, self.merge):
            h = merge(torch.cat([up(h), skips.pop()], dim=1))
        if self.noise_strength is not None and noise is not None:
            h = h + self.noise_strength.view(1, -1, 1, 1, 1) * noise[:, :1]
        return torch.tanh(self.head(h))
