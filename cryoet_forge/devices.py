"""Device names, seeds and paths given by users, and the launcher's process layout, checked before
any work (one clear line when wrong)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import click

from cryoet_forge.errors import ConfigError, InputError

# `forge --help` imports this module: torch is imported inside the function that needs it (start-up time)

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
#: seeds numpy and torch both accept
SEED_MAX = 2**32 - 1
#: the click type of every ``--seed`` option
SEED = click.IntRange(0, SEED_MAX)


class NonEmptyPath(click.Path):
    """``click.Path`` that refuses an empty (or blank) value: ``pathlib`` would read ``--out ''``
    as the current folder (and write there) and ``--real ''`` as ``.``; the type of every path
    option of forge's commands."""

    def convert(self, value, param, ctx):
        if isinstance(value, str) and not value.strip():
            self.fail(f"{value!r} is empty; expected a file or folder name", param, ctx)
        return super().convert(value, param, ctx)


def check_device(value: str, what: str = "--device", local_rank: int = 0):
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` -> a torch.device that exists on this machine."""
    import torch  # start-up: the command modules import this one for `forge --help`

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


@dataclass(frozen=True)
class LauncherWorld:
    """Where this process sits in a job started by a launcher such as torchrun."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1


def launcher_world() -> LauncherWorld:
    """This process's place from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``LOCAL_WORLD_SIZE``); one process when they are unset."""
    try:
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    except ValueError as exc:
        raise InputError(f"RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE must be integers ({exc})") from None
    if world < 1 or not 0 <= rank < world:
        raise InputError(f"RANK={rank} is outside 0..{world - 1} for WORLD_SIZE={world}")
    return LauncherWorld(rank, world, local_rank, max(1, local_world))
