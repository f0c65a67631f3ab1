"""Critics (discriminators) scoring patches of a volume.

``sn-wgan`` (paper): C64, C128, C256, then a conv to a one-channel patch score. Ck is a
4^3 stride-1 convolution + InstanceNorm + LeakyReLU(0.2), no norm on the first layer, and
spectral normalisation (Miyato et al. 2018) on every convolution, the final one included.
Every 4^3 convolution uses padding 1, so S -> S-1 per layer: 40^3 in -> 36^3 scores.

``patchgan``: the same widths with stride-2 convolutions (CycleGAN's PatchGAN in 3D) and
no spectral normalisation, for the "without SN" ablation.

The critic's last layer is linear (no sigmoid): WGAN critics output unbounded scores, and
LSGAN regresses them to 0/1 directly.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from cryoet_forge.errors import InputError
from cryoet_forge.models.fastconv import FewOutputConv3d


def _norm(channels: int) -> nn.Module:
    return nn.InstanceNorm3d(channels, affine=False, track_running_stats=False)


class _PatchCritic(nn.Module):
    def __init__(self, in_channels: int, base: int, n_layers: int, stride: int,
                 use_spectral_norm: bool, n_power_iterations: int):
        super().__init__()

        def wrap(conv: nn.Conv3d) -> nn.Module:
            if use_spectral_norm:
                return spectral_norm(conv, n_power_iterations=n_power_iterations)
            return conv

        layers: list[nn.Module] = []
        channels = in_channels
        for i in range(n_layers):
            width = base * 2**i
            layers.append(wrap(nn.Conv3d(channels, width, 4, stride=stride, padding=1)))
            if i > 0:
                layers.append(_norm(width))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            channels = width
        # the one-channel score layer: same parameters as nn.Conv3d, an exact faster form on CPU
        layers.append(wrap(FewOutputConv3d(channels, 1, 4, stride=1, padding=1)))
        self.net = nn.Sequential(*layers)
        self.stride = stride
        self.n_layers = n_layers

    def min_input_size(self) -> int:
        # a 4^3 conv with padding 1 maps S -> S - 1 (stride 1) or floor(S / 2) (stride 2)
        size = 2  # the final conv must see >= 2 voxels to give one score
        for _ in range(self.n_layers):
            size = size + 1 if self.stride == 1 else 2 * size
        return size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or x.shape[-1] < self.min_input_size():
            raise InputError(
                f"{type(self).__name__} expects (B, C, S, S, S) with S >= {self.min_input_size()}, "
                f"got {tuple(x.shape)}"
            )
        return self.net(x)


class SNWGANCritic(_PatchCritic):
    """Paper critic: C64, C128, C256 (4^3, stride 1), spectral norm on every conv, patch score.

    Options: ``base`` (64 in the paper; widths base, 2*base, 4*base), ``n_layers`` (3),
    ``n_power_iterations`` (power-iteration steps per forward for the spectral norm, 1).
    """

    def __init__(self, in_channels: int = 1, base: int = 64, n_layers: int = 3,
                 n_power_iterations: int = 1):
        super().__init__(in_channels, base, n_layers, stride=1, use_spectral_norm=True,
                         n_power_iterations=n_power_iterations)


class PatchGANCritic(_PatchCritic):
    """3D PatchGAN: C64, C128, C256 with 4^3 stride-2 convs, no spectral norm (ablation)."""

    def __init__(self, in_channels: int = 1, base: int = 64, n_layers: int = 3):
        super().__init__(in_channels, base, n_layers, stride=2, use_spectral_norm=False,
                         n_power_iterations=1)


def critic_parameter_count(in_channels: int = 1, base: int = 64, n_layers: int = 3) -> int:
    """Trainable parameters of the sn-wgan / patchgan spec (4^3 convs with biases)."""
    total, channels = 0, in_channels
    for i in range(n_layers):
        width = base * 2**i
        total += 64 * channels * width + width
        channels = width
    return total + 64 * channels + 1
