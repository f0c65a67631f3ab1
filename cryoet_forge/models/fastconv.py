"""Exact, faster CPU formulations of convolutions whose shapes oneDNN handles poorly.

oneDNN's CPU kernels block output channels in vectors of 16 floats, so a 3D convolution
with one output channel costs about as much as one with 16. The critics' last layer
(C -> 1, 4^3) is such a convolution: in the quickstart critic it took a quarter of the
training step for a tenth of its FLOPs.

``conv3d_split`` computes the same convolution as ``F.conv3d`` for one-channel (or few-channel)
outputs by splitting the kernel: a ``1 x 1 x k`` convolution with ``out * k * k`` output
channels (one per (z, y) kernel offset, an efficient shape), then a sum of the ``k * k``
shifted slices (``ShiftSum``, a small custom autograd function). Every product of the
original convolution is computed once; only the order of the additions differs, so the
results agree with ``F.conv3d`` to float rounding (tested: values and all gradients).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ShiftSum(torch.autograd.Function):
    """``out[:, c] = sum_{a, b} y[:, c*k*k + a*k + b, a:a+D, b:b+H, :]`` and its exact adjoint.

    The backward is made of differentiable operations, so double backward (WGAN-GP's
    gradient penalty) works through it.
    """

    @staticmethod
    def forward(ctx, y: torch.Tensor, k: int) -> torch.Tensor:  # type: ignore[override]
        b, channels, dp, hp, w = y.shape
        out_channels = channels // (k * k)
        d, h = dp - k + 1, hp - k + 1
        ctx.k, ctx.y_shape, ctx.y_stride, ctx.y_dtype = k, y.shape, y.stride(), y.dtype
        yv = y.reshape(b, out_channels, k * k, dp, hp, w)
        # bf16/fp16 products are summed in float32, as the convolution kernels accumulate
        accumulate = torch.float32 if y.dtype in (torch.bfloat16, torch.float16) else y.dtype
        out = yv[:, :, 0, 0:d, 0:h].to(accumulate, copy=True)
        for a in range(k):
            for c in range(k):
                if a or c:
                    out.add_(yv[:, :, a * k + c, a:a + d, c:c + h])
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        k = ctx.k
        b, channels, dp, hp, w = ctx.y_shape
        out_channels = channels // (k * k)
        d, h = dp - k + 1, hp - k + 1
        # the gradient gets y's strides (channels_last stays channels_last): no layout copy
        # before the convolution's backward
        gy = grad.new_empty_strided(ctx.y_shape, ctx.y_stride, dtype=ctx.y_dtype).zero_()
        try:
            gv = gy.view(b, out_channels, k * k, dp, hp, w)
        except RuntimeError:  # strides that do not split: a contiguous gradient
            gy = grad.new_zeros(ctx.y_shape, dtype=ctx.y_dtype)
            gv = gy.view(b, out_channels, k * k, dp, hp, w)
        for a in range(k):
            for c in range(k):
                gv[:, :, a * k + c, a:a + d, c:c + h] = grad
        return gy, None


def conv3d_split(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 padding: int) -> torch.Tensor:
    """``F.conv3d(x, weight, bias, padding=padding)`` (stride 1, cubic kernel) by kernel splitting."""
    if torch.is_autocast_enabled(x.device.type):
        # under autocast the split runs in float32: oneDNN's bf16 backward of the 1 x 1 x k
        # kernel is slower than the whole float32 split (measured on an AVX512-BF16 CPU)
        with torch.autocast(x.device.type, enabled=False):
            return conv3d_split(x.float(), weight.float(), None if bias is None else bias.float(), padding)
    out_channels, in_channels, k = weight.shape[0], weight.shape[1], weight.shape[2]
    # (O, I, kz, ky, kx) -> (O * kz * ky, I, 1, 1, kx)
    split = weight.permute(0, 2, 3, 1, 4).reshape(out_channels * k * k, in_channels, 1, 1, k)
    # the convolution pads z and y itself (no padded copy of x): with a 1 x 1 x k kernel
    # the border rows of y are exactly the zero contributions of the padding
    y = F.conv3d(x, split, None, padding=(padding, padding, padding))
    out = ShiftSum.apply(y, k)
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1, 1).to(out.dtype)
    return out


class FewOutputConv3d(nn.Conv3d):
    """``nn.Conv3d`` (same parameters, state dict and parametrizations such as spectral norm)
    that uses ``conv3d_split`` on the CPU when it is exact and pays: stride 1, a cubic kernel,
    no groups or dilation, an integer zero padding, and at most 16 output channels after the
    split (one output channel for a 4^3 kernel). Elsewhere (CUDA, other shapes) it is ``nn.Conv3d``.

    ``FewOutputConv3d.use_split = False`` turns the split off everywhere (the benchmarks'
    plain baseline and the equivalence tests).
    """

    use_split = True

    def _split_applies(self, x: torch.Tensor) -> bool:
        k = self.kernel_size
        return (self.use_split and x.device.type == "cpu" and self.stride == (1, 1, 1) and self.dilation == (1, 1, 1)
                and self.groups == 1 and self.padding_mode == "zeros" and isinstance(self.padding, tuple)
                and len(set(self.padding)) == 1 and len(set(k)) == 1 and self.out_channels * k[0] ** 2 <= 16)

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self._split_applies(x):
            return conv3d_split(x, weight, bias, int(self.padding[0]))
        return super()._conv_forward(x, weight, bias)
