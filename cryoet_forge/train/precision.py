"""Which precision a device runs fast: ``train.precision = "auto"`` and the benchmarks' report.

bf16 autocast pays on a CPU only where the instructions exist (AVX512-BF16 or AMX): oneDNN
emulates bf16 elsewhere, which is slower than fp32. On CUDA it pays where the GPU supports
bf16 (compute capability 8.0 and newer). ``Precision`` is what the training steps get: the
autocast context and the gradient scalers of the chosen precision.
"""

from __future__ import annotations

import contextlib

import torch
import torch.cpu as cpu


def native_bf16(device: torch.device | str) -> bool:
    """True when ``device`` computes bf16 natively (CPU: AVX512-BF16 or AMX; CUDA: sm80+)."""
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private, hence the guard
    return any(bool(getattr(cpu, name)()) for name in checks if hasattr(cpu, name))


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``auto`` -> ``bf16`` where the device has native bf16, else ``fp32``; others unchanged."""
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(device) else "fp32"


class Precision:
    """The mixed precision of a run: the autocast context of its forward passes and the gradient
    scalers of its optimisers (enabled for fp16 only, where small gradients underflow)."""

    DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

    def __init__(self, precision: str, device: torch.device):
        self.name = resolve_precision(precision, device)
        self.device_type = torch.device(device).type
        self.dtype: torch.dtype | None = self.DTYPES[self.name]

    def autocast(self) -> contextlib.AbstractContextManager:
        """``torch.autocast`` to the run's dtype, or a no-op context in fp32."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A fresh ``GradScaler`` for one optimiser (a pass-through unless fp16)."""
        return torch.amp.GradScaler(self.device_type, enabled=self.name == "fp16")
