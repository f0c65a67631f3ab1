"""The package's import structure: every module in a declared layer, and no import cycles.

``lint-imports`` checks the layer order (pyproject.toml, ``[tool.importlinter]``); these tests add
what its contracts do not say: that the layer list names every module of the package, and that no
module reaches itself through its imports, whichever layer the modules are in.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

grimp = pytest.importorskip("grimp")  # installed with import-linter (the test extra)

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "cryoet_forge"
IMPORTLINTER = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]


def _layers_contract() -> dict:
    (contract,) = [c for c in IMPORTLINTER["contracts"] if c["type"] == "layers"]
    return contract


def test_the_layers_name_every_module_and_type_only_imports_count():
    contract = _layers_contract()
    assert contract["containers"] == ["cryoet_forge"] and contract["exhaustive"] is True
    assert IMPORTLINTER["exclude_type_checking_imports"] is False
    declared = [name.strip() for layer in contract["layers"] for name in layer.replace("|", ":").split(":")]
    assert len(declared) == len(set(declared)), "a module is in two layers"
    modules = {p.stem for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
    packages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert set(declared) == modules | packages


def test_no_module_imports_itself_through_other_modules():
    """Imports inside functions and under ``if TYPE_CHECKING:`` count: an import moved into a
    function to dodge a cycle is still a cycle."""
    graph = grimp.build_graph("cryoet_forge", exclude_type_checking_imports=False)
    # the package's own imports are left out: every submodule is imported through the package first,
    # and its public `create`/`list_components` call into the registry
    for imported in graph.find_modules_directly_imported_by("cryoet_forge"):
        graph.remove_import(importer="cryoet_forge", imported=imported)
    assert len(graph.modules) > 100
    cycles = set()
    for importer in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(importer):
            back = graph.find_shortest_chain(importer=imported, imported=importer)
            if back:
                cycles.add(" -> ".join((importer, *back)))
    assert not cycles, "\n".join(sorted(cycles))
