"""Rules of the package's shape that a reader of the code relies on.

- A function longer than about 80 lines, or a class longer than about 250, says why in a comment
  ``# long: ...`` directly above it (above its decorators).
- An import inside a function is there for an optional dependency or for start-up time (the command
  modules keep torch and numpy out of ``forge --help``), and says which: a comment naming
  ``optional`` or ``start-up`` on the import itself or directly above a run of imports.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cryoet_forge"
FUNCTION_LINES = 80
CLASS_LINES = 250
_REASON = re.compile(r"#.*\b(optional|start-up)\b")


def _sources():
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        yield path.relative_to(PACKAGE.parent), ast.parse(text), text.splitlines()


def _comment_above(lines: list[str], first: int) -> str:
    """The comment lines directly above line ``first`` (1-based), joined."""
    block = []
    i = first - 2
    while i >= 0 and lines[i].strip().startswith("#"):
        block.append(lines[i].strip())
        i -= 1
    return "\n".join(reversed(block))


def long_definitions(sources) -> list[str]:
    found = []
    for path, tree, lines in sources:
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            limit = CLASS_LINES if isinstance(node, ast.ClassDef) else FUNCTION_LINES
            length = node.end_lineno - node.lineno + 1
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            if length > limit and "# long:" not in _comment_above(lines, first):
                found.append(f"{path}:{node.lineno} {node.name} ({length} lines)")
    return found


def unexplained_function_imports(sources) -> list[str]:
    found = []
    for path, tree, lines in sources:
        for function in ast.walk(tree):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            body = [n for n in ast.walk(function) if isinstance(n, (ast.Import, ast.ImportFrom))]
            for node in body:
                own = "\n".join(lines[node.lineno - 1:node.end_lineno])
                # the comment above a run of imports covers the whole run
                i = node.lineno - 2
                while i >= 0 and re.match(r"\s*(from\s+\S+\s+)?import\s", lines[i]):
                    i -= 1
                above = _comment_above(lines, i + 2)
                if not (_REASON.search(own) or _REASON.search(above)):
                    found.append(f"{path}:{node.lineno} {lines[node.lineno - 1].strip()}")
    return found


def test_long_functions_and_classes_say_why():
    assert long_definitions(_sources()) == []


def test_imports_inside_functions_say_why():
    assert unexplained_function_imports(_sources()) == []


def _source(text: str):
    return [("example.py", ast.parse(text), text.splitlines())]


def test_the_checks_see_what_they_look_for():
    """The two scans find an unexplained import and a long function, and accept explained ones."""
    imports = _source("def f():\n    import json\n    # start-up: torch only when the command runs\n"
                      "    import torch\n    from numpy import ones\n    return 1\n")
    assert unexplained_function_imports(imports) == ["example.py:2 import json"]
    body = "".join(f"    x{i} = {i}\n" for i in range(FUNCTION_LINES))
    assert long_definitions(_source("def g():\n" + body)) == [f"example.py:1 g ({FUNCTION_LINES + 1} lines)"]
    assert long_definitions(_source("# long: one table of options\n@decorated\ndef g():\n" + body)) == []
    assert long_definitions(_source("def g():\n" + body[:-len("    x79 = 79\n")])) == []
