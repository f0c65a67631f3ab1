"""Which memory format each network trains faster in: ``train.channels_last = "auto"``.

channels_last_3d lets oneDNN (CPU) and cuDNN run blocked kernels without reorders. It is not
faster everywhere: measured on a 2-core CPU, the quickstart's narrow networks train 1.3x faster
with it, while the paper's 64-256-channel critic at 40^3 is 13% slower (and its instance norms
copy large tensors between layouts). So ``auto`` (the default) times one forward + backward of
each kind of network (the generators on the D -> S one, the critics on the subtomogram one)
in both formats at the training box and batch (the critics at twice the batch: real and fake
go through them together), on deep copies (the networks' weights, spectral-norm vectors and
the RNG streams are left untouched), after a warm-up run, best of two when a run takes under
a second, and keeps the faster. A one-sample measurement misled: it ranked the quickstart's
generator the other way round from its batch-4 training step.
``true``/``false`` force channels_last/contiguous for every network. The choice changes only
the order of float additions, never what is computed.
"""

from __future__ import annotations

import copy
import time
from contextlib import AbstractContextManager
from typing import Callable

import torch
from torch import nn

GROUPS = {"generator": ("g_ds", "g_sd"), "critic": ("c_s", "c_d")}
FORMATS = {"channels_last": torch.channels_last_3d, "contiguous": torch.contiguous_format}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_forward_backward(net: nn.Module, box: int, device: torch.device, memory_format: torch.memory_format,
                          autocast: Callable[[], AbstractContextManager], batch: int = 1) -> float:
    """Seconds of one forward + backward of a copy of ``net`` on a (batch, 1, box, box, box) input:
    the best of two timed runs (one when a run takes over a second) after a warm-up run."""
    trial = copy.deepcopy(net).to(device).to(memory_format=memory_format).train()
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(batch, 1, box, box, box, device=device, generator=g).contiguous(memory_format=memory_format)
    x.requires_grad_(True)  # the critics back-propagate into their input in the generator update
    best, runs = float("inf"), 0
    while runs < 3 and not (runs >= 2 and best > 1.0):  # the first run creates the kernels' primitives
        _sync(device)
        tic = time.perf_counter()
        with autocast():
            out = trial(x)
        out.float().mean().backward()
        _sync(device)
        if runs:
            best = min(best, time.perf_counter() - tic)
        runs += 1
    return best


def choose_memory_formats(nets: dict[str, nn.Module], box: int, device: torch.device, setting,
                          autocast: Callable[[], AbstractContextManager],
                          saved: dict[str, str] | None = None, batch: int = 1) -> tuple[dict[str, str],
                                                                                         dict[str, dict]]:
    """Per network the memory format to train in (a key of ``FORMATS``), and a record of the
    measurement (for the log).

    ``saved``: the formats of a run being resumed (by network name), used as they are;
    ``batch``: this process's training batch.
    """
    if saved and set(nets) <= set(saved) and set(saved.values()) <= set(FORMATS):
        return {name: saved[name] for name in nets}, {}
    if setting is True or setting is False:
        chosen = "channels_last" if setting else "contiguous"
        return {name: chosen for name in nets}, {}
    formats: dict[str, str] = {}
    record: dict[str, dict] = {}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for group, names in GROUPS.items():
            present = [n for n in names if n in nets]
            if not present:
                continue
            size = batch * (2 if group == "critic" else 1)
            seconds = {label: time_forward_backward(nets[present[0]], box, device, fmt, autocast, size)
                       for label, fmt in FORMATS.items()}
            best = min(seconds, key=seconds.__getitem__)
            record[group] = {"chosen": best, "seconds": seconds}
            for name in present:
                formats[name] = best
    return formats, record
