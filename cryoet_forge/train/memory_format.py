"""Which memory format each network trains faster in: ``train.channels_last = "auto"``.

channels_last_3d lets oneDNN (CPU) and cuDNN run blocked kernels without reorders. It is not
faster everywhere: measured on a 2-core CPU, the quickstart's narrow networks train 1.3x faster
with it, while the paper's 64-256-channel critic at 40^3 is 13% slower (and its instance norms
copy large tensors between layouts). So ``auto`` (the default) times one forward + backward of
each kind of network (the generators on the D -> S one, the critics on the subtomogram one)
in both formats on a one-sample batch of the training box, on deep copies (the networks'
weights, spectral-norm vectors and the RNG streams are left untouched), and keeps the faster.
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
                          autocast: Callable[[], AbstractContextManager], repeats: int = 1) -> float:
    """Seconds of one forward + backward of a copy of ``net`` on a (1, 1, box, box, box) batch."""
    trial = copy.deepcopy(net).to(device, memory_format=memory_format).train()
    x = torch.zeros(1, 1, box, box, box, device=device).contiguous(memory_format=memory_format)
    x.requires_grad_(True)  # the critics back-propagate into their input in the generator update
    best = float("inf")
    for attempt in range(repeats + 1):  # the first run creates the kernels' primitives
        _sync(device)
        tic = time.perf_counter()
        with autocast():
            out = trial(x)
        out.float().mean().backward()
        _sync(device)
        if attempt:
            best = min(best, time.perf_counter() - tic)
    return best


def format_name(net: nn.Module) -> str:
    """``channels_last`` when the network's 5-D weights are channels_last_3d, else ``contiguous``."""
    # weights with one input or output channel are both formats at once: they do not tell
    weights = [p for p in net.parameters() if p.dim() == 5 and min(p.shape[:2]) > 1]
    cl = bool(weights) and all(p.is_contiguous(memory_format=torch.channels_last_3d) and not p.is_contiguous()
                               for p in weights)
    return "channels_last" if cl else "contiguous"


def choose_memory_formats(nets: dict[str, nn.Module], box: int, device: torch.device, setting,
                          autocast: Callable[[], AbstractContextManager],
                          saved: dict[str, str] | None = None) -> tuple[dict[str, torch.memory_format],
                                                                        dict[str, dict]]:
    """Per network the memory format to train in, and a record of the measurement (for the log).

    ``saved``: the formats of a run being resumed (by network name), used as they are.
    """
    if saved and set(nets) <= set(saved) and set(saved.values()) <= set(FORMATS):
        return {name: FORMATS[saved[name]] for name in nets}, {}
    if setting is True or setting is False:
        chosen = FORMATS["channels_last" if setting else "contiguous"]
        return {name: chosen for name in nets}, {}
    formats: dict[str, torch.memory_format] = {}
    record: dict[str, dict] = {}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for group, names in GROUPS.items():
            present = [n for n in names if n in nets]
            if not present:
                continue
            seconds = {label: time_forward_backward(nets[present[0]], box, device, fmt, autocast)
                       for label, fmt in FORMATS.items()}
            best = min(seconds, key=seconds.get)
            record[group] = {"chosen": best, "seconds": seconds}
            for name in present:
                formats[name] = FORMATS[best]
    return formats, record
