"""Packaging: what the core needs, what the extras add, and what happens when an extra is missing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests_support import assert_one_line_error, forge_executable

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]


def _names(requirements):
    return {r.split(";")[0].split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip() for r in requirements}


def test_faiss_and_tensorboard_are_extras_not_core_dependencies():
    core = _names(PROJECT["dependencies"])
    assert not {"faiss-cpu", "faiss-gpu-cu12", "tensorboard"} & core
    extras = PROJECT["optional-dependencies"]
    assert _names(extras["faiss"]) == {"faiss-cpu"} and _names(extras["gpu"]) == {"faiss-gpu-cu12"}
    assert _names(extras["tensorboard"]) == {"tensorboard"}
    conflicts = PYPROJECT["tool"]["uv"]["conflicts"]
    assert [{"extra": "faiss"}, {"extra": "gpu"}] in conflicts


def test_python_310_gets_tomli():
    assert PROJECT["requires-python"] == ">=3.10"
    tomli = [r for r in PROJECT["dependencies"] if r.startswith("tomli>")]
    assert tomli and "python_version < '3.11'" in tomli[0]


@pytest.fixture
def without_extras(tmp_path):
    """A PYTHONPATH folder where ``import faiss`` and ``import tensorboard`` fail as if not installed."""
    blocked = tmp_path / "blocked"
    for name in ("faiss", "tensorboard"):
        (blocked / name).mkdir(parents=True)
        (blocked / name / "__init__.py").write_text(f'raise ImportError("No module named {name}")\n')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(blocked), os.environ.get("PYTHONPATH")])))
    return env


def test_the_core_runs_without_faiss_and_says_what_to_install(without_extras, tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "r.npy", rng.normal(size=(40, 6)).astype(np.float32))
    np.save(tmp_path / "f.npy", rng.normal(size=(40, 6)).astype(np.float32))
    base = [forge_executable(), "metrics", "--real", str(tmp_path / "r.npy"), "--fake", str(tmp_path / "f.npy"),
            "--k", "3", "--no-progress"]
    for backend in ("exact", "torch"):
        ok = subprocess.run([*base, "--backend", backend], capture_output=True, text=True, env=without_extras,
                            timeout=300)
        assert ok.returncode == 0, ok.stderr
        assert "precision" in ok.stdout
    refused = subprocess.run([*base, "--backend", "faiss"], capture_output=True, text=True, env=without_extras,
                             timeout=300)
    assert refused.returncode == 2
    assert_one_line_error(refused.returncode, refused.stderr,
                          "knn backend 'faiss' needs FAISS: pip install 'cryoet-forge[faiss]'")


def test_two_faiss_distributions_are_refused(monkeypatch):
    from importlib import metadata

    from cryoet_forge.errors import InputError
    from cryoet_forge.metrics import knn_faiss

    versions = {"faiss-cpu": "1.9.0", "faiss-gpu-cu12": "1.9.0"}

    def version(dist):
        if dist in versions:
            return versions[dist]
        raise metadata.PackageNotFoundError(dist)

    monkeypatch.setattr(metadata, "version", version)
    knn_faiss.import_faiss.cache_clear()
    try:
        with pytest.raises(InputError, match=r"^knn backend 'faiss': faiss-cpu 1\.9\.0 and faiss-gpu-cu12 1\.9\.0 "
                                             r"are both installed and ship the same faiss module; pip uninstall "
                                             r"one of them$"):
            knn_faiss.import_faiss()
    finally:
        knn_faiss.import_faiss.cache_clear()


def test_training_without_tensorboard_writes_no_events_and_says_so(monkeypatch, tmp_path, capsys):
    from cryoet_forge import progress
    from cryoet_forge.train import loop

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails: not installed
    monkeypatch.setitem(progress._settings, "quiet", False)
    assert loop._tensorboard_writer(tmp_path, 0) is None
    assert "tensorboard is not installed: no event files are written" in capsys.readouterr().err
    assert not (tmp_path / "tensorboard").exists()


def test_the_installed_package_is_marked_typed():
    # PEP 561: type checkers read the annotations of an installed cryoet_forge only with py.typed
    from importlib.resources import files

    assert (files("cryoet_forge") / "py.typed").is_file()


def test_the_shipped_plugin_accepts_this_version_of_cryoet_forge():
    """The install commands install the example plugin beside the package from this folder; its
    requirement on cryoet-forge must admit this version, or pip refuses the pair."""
    import tomllib
    from packaging.requirements import Requirement

    root = Path(__file__).resolve().parents[1]
    version = tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]
    plugin = tomllib.loads((root / "plugins/cryoet-forge-unet3d/pyproject.toml").read_text())["project"]
    requirement = next(Requirement(r) for r in plugin["dependencies"] if Requirement(r).name == "cryoet-forge")
    assert requirement.specifier.contains(version), f"{requirement} excludes cryoet-forge {version}"
