"""Which precision a device runs fast: ``train.precision = "auto"`` and the benchmarks' report.

bf16 autocast pays on a CPU only where the instructions exist (AVX512-BF16 or AMX): oneDNN
emulates bf16 elsewhere, which is slower than fp32. On CUDA it pays where the GPU supports
bf16 (compute capability 8.0 and newer).
"""

from __future__ import annotations

import torch


def native_bf16(device: torch.device | str) -> bool:
    """True when ``device`` computes bf16 natively (CPU: AVX512-BF16 or AMX; CUDA: sm80+)."""
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    import torch.cpu as cpu

    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private, hence the guard
    return any(bool(getattr(cpu, name)()) for name in checks if hasattr(cpu, name))


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``auto`` -> ``bf16`` where the device has native bf16, else ``fp32``; others unchanged."""
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(device) else "fp32"
