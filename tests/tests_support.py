"""Helpers shared by test modules (import as `from tests_support import ...`)."""

from __future__ import annotations

import sys
from pathlib import Path


def forge_executable() -> str:
    """The `forge` console script of the environment running the tests."""
    candidate = Path(sys.executable).with_name("forge")
    return str(candidate) if candidate.exists() else "forge"


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    """A failed `forge` run printed exactly one `forge: error: ...` line holding every fragment."""
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("forge: error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
