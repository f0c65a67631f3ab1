"""Helpers shared by test modules (import as `from tests_support import ...`)."""

from __future__ import annotations

import sys
from pathlib import Path


def forge_executable() -> str:
    """The `forge` console script of the environment running the tests."""
    candidate = Path(sys.executable).with_name("forge")
    return str(candidate) if candidate.exists() else "forge"
