"""``write_json_atomic``: the one JSON writer of forge's outputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from cryoet_forge.io.atomic import write_json_atomic


def test_writes_indented_json_with_a_trailing_newline(tmp_path):
    path = write_json_atomic(tmp_path / "sub" / "a.json", {"b": [1, 2], "a": "x"})
    assert path == tmp_path / "sub" / "a.json"
    text = path.read_text()
    assert text == json.dumps({"b": [1, 2], "a": "x"}, indent=2) + "\n"  # key order kept, not sorted
    write_json_atomic(path, {"a": 1}, indent=4)
    assert path.read_text() == '{\n    "a": 1\n}\n'


def test_default_converts_what_json_cannot(tmp_path):
    path = write_json_atomic(tmp_path / "a.json", {"where": Path("x") / "y"}, default=str)
    assert json.loads(path.read_text()) == {"where": str(Path("x") / "y")}
    with pytest.raises(TypeError):
        write_json_atomic(tmp_path / "b.json", {"where": Path("x")})
    assert not (tmp_path / "b.json").exists()


def test_strict_mode_refuses_nan_and_keeps_the_old_file(tmp_path):
    path = write_json_atomic(tmp_path / "a.json", {"v": 1.0})
    with pytest.raises(ValueError):
        write_json_atomic(path, {"v": math.nan}, allow_nan=False)
    assert json.loads(path.read_text()) == {"v": 1.0}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]  # no temporary file left beside it
    write_json_atomic(path, {"v": math.nan})  # json's own default writes the NaN token
    assert math.isnan(json.loads(path.read_text())["v"])
