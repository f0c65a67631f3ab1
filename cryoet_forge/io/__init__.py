"""File formats cryo-ET people already use: MRC volumes, STAR tables, PDB/mmCIF models.

The readers are imported on first use, so that ``forge --version`` does not load pandas.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {"read_mrc": "mrc", "write_mrc": "mrc", "read_particles": "star", "write_particles": "star"}

__all__ = ["read_mrc", "write_mrc", "read_particles", "write_particles"]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"cryoet_forge.io.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'cryoet_forge.io' has no attribute {name!r}")
