"""Shared test fixtures and the markers' skip rules."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"



@pytest.fixture
def plugin_path(tmp_path, monkeypatch):
    """A folder on sys.path where tests lay out throwaway distributions (the registry reset around)."""
    from cryoet_forge import registry

    monkeypatch.syspath_prepend(str(tmp_path))
    registry.reset_registry()
    yield tmp_path
    registry.reset_registry()


@pytest.fixture
def plugin(plugin_path):
    """Register a plugin object with the (fresh) process registry; forgotten afterwards."""
    from cryoet_forge import registry

    def add(obj):
        registry.get_registry().pm.register(obj)
        return obj
    return add


@pytest.fixture
def shared_data() -> Path:
    """../shared/data beside the repository, or skip when it is not there."""
    if not (SHARED_DATA / "MANIFEST.md").exists():
        pytest.skip(f"reference data folder {SHARED_DATA} is absent")
    return SHARED_DATA


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # torch missing or broken: GPU tests cannot run either
        has_cuda = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device; none is visible")
    run_slow = os.environ.get("FORGE_RUN_SLOW") == "1" or "slow" in (config.getoption("-m") or "")
    skip_slow = pytest.mark.skip(reason="slow test; run with FORGE_RUN_SLOW=1 or -m slow")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)
        if "slow" in item.keywords and not run_slow:
            item.add_marker(skip_slow)
