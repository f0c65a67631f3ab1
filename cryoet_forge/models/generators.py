"""The CryoETGAN generator (ResNet-style, CycleGAN notation, all 3D).

Layout (paper, CycleGAN notation with ``base`` = 32):
``c7s1-32, d64, d128, R128 x 6, [+1 noise channel], u64, u32, c7s1-1 (tanh, no norm)``.

Noise placement. The paper says the output "after downsampling" is concatenated with a
one-channel Gaussian noise volume "so the input to the u32 layer has 129 channels"; but the
layer that receives 128 feature channels is u64 (u32 receives 64). We read it as: the noise
volume is concatenated after the six residual blocks, i.e. right before the first
upsampling layer, which then sees 128 + 1 = 129 channels. Noise after the residual blocks
cannot be washed out by them and still reaches every output voxel through two upsamplings
and the 7^3 head. The S -> D generator has the same layout without the noise channel.

Padding. ``padding_mode="reflect"`` (default, as CycleGAN) pads the c7s1 and residual
convolutions by reflection, which avoids dark borders in generated subtomograms;
``"zeros"`` is the plain alternative (cheaper, and what torch.compile handles best).
The stride-2 convolutions always zero-pad (reflection makes no difference there).

Odd sizes. A 3^3 stride-2 convolution with padding 1 maps S to ceil(S/2) (28 -> 14 -> 7,
25 -> 13 -> 7); the fractionally strided counterparts get ``output_size`` of the matching
encoder stage, so every S >= 8 comes back at exactly S.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from cryoet_forge.errors import ConfigError, InputError


def _norm(channels: int) -> nn.Module:
    # CycleGAN's instance norm: no affine parameters, no running statistics
    return nn.InstanceNorm3d(channels, affine=False, track_running_stats=False)


class ConvNormReLU(nn.Sequential):
    """Conv3d + InstanceNorm + ReLU (``c7s1-k`` with kernel 7, ``dk`` with kernel 3 stride 2)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, padding_mode: PaddingMode):
        super().__init__(
            nn.Conv3d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2,
                      padding_mode=padding_mode if stride == 1 else "zeros"),
            _norm(out_ch),
            nn.ReLU(inplace=True),
        )


class ResidualBlock(nn.Module):
    """``Rk``: x + [conv3 + IN + ReLU + (dropout) + conv3 + IN](x)."""

    def __init__(self, channels: int, padding_mode: PaddingMode, dropout: float):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv3d(channels, channels, 3, padding=1, padding_mode=padding_mode),
            _norm(channels),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout) if dropout > 0 else nn.Identity(),
            nn.Conv3d(channels, channels, 3, padding=1, padding_mode=padding_mode),
            _norm(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class UpConv(nn.Module):
    """``uk``: 3^3 fractionally strided (stride 1/2) convolution + InstanceNorm + ReLU."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv = nn.ConvTranspose3d(in_ch, out_ch, 3, stride=2, padding=1)
        self.norm = _norm(out_ch)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor, size: int) -> torch.Tensor:
        # (n - 1) * 2 - 2 + 3 + output_padding = size  ->  output_padding = size - 2n + 1
        output_padding = size - 2 * x.shape[-1] + 1
        y = nn.functional.conv_transpose3d(
            x, self.conv.weight, self.conv.bias, stride=2, padding=1,
            output_padding=output_padding,
        )
        return self.act(self.norm(y))


PaddingMode = Literal["reflect", "zeros"]
PADDING_MODES: tuple[PaddingMode, ...] = ("reflect", "zeros")


class CryoETGANGenerator(nn.Module):
    """CryoETGAN ResNet generator: c7s1-32, d64, d128, 6xR128, +noise, u64, u32, c7s1-1 tanh.

    Options: ``base`` (32 in the paper; the widths are base, 2*base, 4*base),
    ``n_residual`` (6), ``noise`` (True: one Gaussian channel before the first upsampling,
    the D -> S direction; False for S -> D), ``dropout`` (probability inside each residual
    block, 0 = off; Monte-Carlo dropout needs it > 0), ``padding_mode`` ("reflect"|"zeros"),
    ``skips`` (False, the paper: True concatenates the encoder features of the same size to
    the input of u32 and of the c7s1-1 head, U-Net style). Any cubic size S >= 8 works (odd
    sizes included).

    Why ``skips``: with narrow CPU-sized widths at small boxes the plain ResNet hides its input
    map in low-amplitude patterns that the S -> D generator decodes (cycle loss satisfied) while
    the generated subtomograms show no particle (CycleGAN "steganography"). Full-resolution
    skip paths let the generator apply the imaging model (CTF, missing wedge) to the map
    directly, and its output keeps the class: see docs/results.md, "How the default was reached".
    """

    min_size = 8

    def __init__(self, in_channels: int = 1, out_channels: int = 1, base: int = 32,
                 n_residual: int = 6, noise: bool = True, dropout: float = 0.0,
                 padding_mode: str = "reflect", skips: bool = False):
        super().__init__()
        if padding_mode not in PADDING_MODES:
            raise ConfigError(f"cryoetgan padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"cryoetgan dropout must be in [0, 1), got {dropout}")
        for key, value, low in (("base", base, 1), ("n_residual", n_residual, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"cryoetgan {key} must be an integer >= {low}, got {value!r}")
        self.noise = bool(noise)
        self.dropout = float(dropout)
        self.skips = bool(skips)
        extra = 1 if self.skips else 0  # skip inputs double the channels of u32 and the head
        self.stem = ConvNormReLU(in_channels, base, 7, 1, padding_mode)
        self.down1 = ConvNormReLU(base, 2 * base, 3, 2, padding_mode)
        self.down2 = ConvNormReLU(2 * base, 4 * base, 3, 2, padding_mode)
        self.residual = nn.Sequential(
            *(ResidualBlock(4 * base, padding_mode, dropout) for _ in range(n_residual))
        )
        self.up1 = UpConv(4 * base + int(self.noise), 2 * base)
        self.up2 = UpConv(2 * base * (1 + extra), base)
        self.head = nn.Conv3d(base * (1 + extra), out_channels, 7, padding=3, padding_mode=padding_mode)

    @staticmethod
    def noise_shape(input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of the noise volume for an input of ``input_shape`` (B, C, S, S, S)."""
        b, s = input_shape[0], input_shape[-1]
        inner = (s + 1) // 2
        inner = (inner + 1) // 2
        return (b, 1, inner, inner, inner)

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() != 5 or len(set(x.shape[-3:])) != 1 or x.shape[-1] < self.min_size:
            raise InputError(
                f"cryoetgan expects a cubic batch (B, C, S, S, S) with S >= {self.min_size}, "
                f"got {tuple(x.shape)}"
            )
        size = x.shape[-1]
        h0 = self.stem(x)
        h1 = self.down1(h0)
        h = self.residual(self.down2(h1))
        if self.noise:
            if noise is None:
                noise = torch.randn(self.noise_shape(tuple(x.shape)), device=x.device, dtype=h.dtype)
            h = torch.cat([h, noise.to(h.dtype)], dim=1)
        h = self.up1(h, h1.shape[-1])
        if self.skips:
            h = torch.cat([h, h1], dim=1)
        h = self.up2(h, size)
        if self.skips:
            h = torch.cat([h, h0], dim=1)
        return torch.tanh(self.head(h))


def cryoetgan_parameter_count(in_channels: int = 1, out_channels: int = 1, base: int = 32,
                              n_residual: int = 6, noise: bool = True, skips: bool = False) -> int:
    """Trainable parameters of the spec, from the layer list (weights k^3*cin*cout + biases)."""
    def conv(k: int, cin: int, cout: int) -> int:
        return k**3 * cin * cout + cout

    return (conv(7, in_channels, base) + conv(3, base, 2 * base) + conv(3, 2 * base, 4 * base)
            + n_residual * 2 * conv(3, 4 * base, 4 * base)
            + conv(3, 4 * base + int(noise), 2 * base) + conv(3, 2 * base * (1 + int(skips)), base)
            + conv(7, base * (1 + int(skips)), out_channels))
