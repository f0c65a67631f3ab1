"""CryoETGAN training: the loop, checkpoints and torchrun support.

``train`` and ``resume_config`` are imported on first use, so that ``forge train --help`` does not load torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cryoet_forge.train.loop import resume_config, train

__all__ = ["train", "resume_config"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("cryoet_forge.train.loop"), name)
    raise AttributeError(f"module 'cryoet_forge.train' has no attribute {name!r}")
