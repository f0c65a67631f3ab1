"""Device names and seeds given by users, checked before any work (one clear line when wrong)."""

from __future__ import annotations

import re

import click

from cryoet_forge.errors import ConfigError

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
#: seeds numpy and torch both accept
SEED_MAX = 2**32 - 1
#: the click type of every ``--seed`` option
SEED = click.IntRange(0, SEED_MAX)


def check_device(value: str, what: str = "--device", local_rank: int = 0):
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` -> a torch.device that exists on this machine."""
    import torch

    name = str(value).strip().lower()
    if not DEVICE_PATTERN.match(name):
        raise ConfigError(f"{what} {value!r}: expected cpu, cuda, cuda:N or auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"{what} {value!r} asked for, but no CUDA device is visible")
        if name == "cuda":
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        index = int(name.split(":")[1])
        if index >= torch.cuda.device_count():
            raise ConfigError(f"{what} {value!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return torch.device(name)


def check_seed(value, what: str = "seed") -> int:
    """An integer in 0..2^32-1 (what numpy's and torch's generators accept)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= SEED_MAX:
        raise ConfigError(f"{what} {value!r}: expected an integer in 0..{SEED_MAX}")
    return int(value)


def device_callback(ctx, param, value):
    """click callback of a ``--device`` option: refuse a device that does not exist before any work."""
    if value is not None:
        check_device(value, "--device")
    return value
