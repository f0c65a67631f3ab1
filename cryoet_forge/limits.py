"""Size guards: a value that would make forge allocate more memory than the machine has, or
pass an integer beyond what a library takes, is one clear line naming the option or key and what
was expected, checked before anything is allocated."""

from __future__ import annotations

import os

from cryoet_forge.errors import ConfigError, ForgeError, InputError

#: the largest integer torch and numpy take as a size (int64)
INT64_MAX = 2**63 - 1


def format_bytes(nbytes: float) -> str:
    """``1536`` -> ``"1.5 KiB"``; binary units up to EiB, then powers of ten of EiB."""
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(value) < 1024.0:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024.0
    return f"{value:.3g} EiB"


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (psutil's estimate when installed, else the
    free physical pages); None where neither can tell."""
    try:
        import psutil  # optional: installed with some environments, never required
    except ImportError:
        psutil = None
    if psutil is not None:
        return int(psutil.virtual_memory().available)
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return None


def check_allocation(nbytes: int, what: str, expected: str = "", error: type[ForgeError] = InputError) -> None:
    """``error`` when ``nbytes`` is more than the available memory: "``what`` needs N GiB of
    memory, more than the M GiB available; ``expected``". Nothing is allocated."""
    available = available_memory()
    if available is None or nbytes <= available:
        return
    tail = f"; expected {expected}" if expected else ""
    raise error(f"{what} needs {format_bytes(nbytes)} of memory, more than the {format_bytes(available)} "
                f"available{tail}")


def check_int_range(value: object, name: str, lo: int, hi: int, error: type[ForgeError] = ConfigError) -> int:
    """``value`` when it is an integer in [lo, hi] (not a bool); else ``error`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise error(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
    if not lo <= value <= hi:
        raise error(f"{name} must be an integer in [{lo}, {hi}], got {value}")
    return value
