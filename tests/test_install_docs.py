"""The README's install lines work from a checkout: cryoet-forge is not on the package index."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def readme_pip_installs() -> list[list[str]]:
    """The arguments of every ``pip install`` in the README (up to ``&&`` or the end of the code span)."""
    text = (ROOT / "README.md").read_text()
    found = []
    for match in re.finditer(r"pip install ([^`\n]*)", text):
        command = match.group(1).split("&&")[0]
        found.append(shlex.split(command))
    return found


def test_every_readme_install_names_a_folder_of_the_checkout():
    installs = readme_pip_installs()
    assert installs
    for args in installs:
        targets = [a for a in args if not a.startswith("-")]
        assert targets, args
        for target in targets:
            assert target.startswith("."), f"pip install {' '.join(args)}: {target!r} is not a local folder"


def test_the_extras_the_readme_installs_exist_and_copick_brings_its_readers():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    named = {e.strip() for args in readme_pip_installs() for a in args
             for group in re.findall(r"\[([^\]]+)\]", a) for e in group.split(",")}
    assert "copick" in named
    assert named <= set(extras), named - set(extras)
    copick = {re.split(r"[<>=!~ ;\[]", requirement)[0] for requirement in extras["copick"]}
    assert {"copick", "zarr"} <= copick  # data/copick.py and io/tomograms.py (OME-Zarr) import these
