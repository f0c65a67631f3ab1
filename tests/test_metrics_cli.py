"""`forge metrics` end to end, and its one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from cryoet_forge.cli import main
from cryoet_forge.io.embeddings import save_features
from tests_support import forge_executable


def features(n, d, seed, shift=0.0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, d)) + shift).astype(np.float32)


@pytest.fixture
def pair(tmp_path):
    real, fake = features(300, 12, 1), features(260, 12, 2, shift=0.1)
    save_features(tmp_path / "real.npy", real)
    save_features(tmp_path / "fake.safetensors", fake)
    return tmp_path / "real.npy", tmp_path / "fake.safetensors", real, fake


def run_main(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_table_and_json_equal_the_api(pair, tmp_path, capsys):
    real_path, fake_path, real, fake = pair
    out_json = tmp_path / "out" / "metrics.json"
    code, out, err = run_main(
        ["metrics", "--real", str(real_path), "--fake", str(fake_path), "--k", "4", "--json", str(out_json)], capsys
    )
    assert code == 0, err
    from cryoet_forge.metrics import compute_fid, compute_prdc

    want = compute_prdc(real, fake, 4)
    doc = json.loads(out_json.read_text())
    for key in ("precision", "recall", "density", "coverage"):
        assert doc[key] == want[key]
        assert key in out and f"{want[key]:.6f}" in out
    assert doc["fid"] == pytest.approx(compute_fid(real, fake), rel=1e-12)
    assert doc["k"] == 4 and doc["backend"] == "exact" and doc["strict"] is True
    assert "distance < radius" in out


def test_inclusive_and_other_backend(pair, tmp_path, capsys):
    real_path, fake_path, real, fake = pair
    out_json = tmp_path / "m.json"
    code, out, err = run_main(
        ["metrics", "--real", str(real_path), "--fake", str(fake_path), "--inclusive", "--backend", "torch",
         "--device", "cpu", "--no-fid", "--json", str(out_json)], capsys
    )
    assert code == 0, err
    from cryoet_forge.metrics import compute_prdc

    doc = json.loads(out_json.read_text())
    assert doc["strict"] is False and doc["backend"] == "torch" and "fid" not in doc
    assert doc["density"] == compute_prdc(real, fake, 5, strict=False)["density"]


def _write(path, array):
    if path.suffix == ".npz":
        np.savez(path, features=array)
    else:
        np.save(path, array)
    return path


@pytest.mark.parametrize(
    ("make_real", "make_fake", "extra", "message"),
    [
        (lambda p: _write(p / "r.npy", features(5, 4, 1)), lambda p: _write(p / "f.npy", features(9, 4, 2)), [],
         r"real features \(.*r\.npy\) have 5 rows but k=5"),
        (lambda p: _write(p / "r.npy", features(9, 4, 1)), lambda p: _write(p / "f.npy", features(3, 4, 2)),
         ["--k", "3"], r"fake features \(.*f\.npy\) have 3 rows but k=3"),
        (lambda p: _write(p / "r.npy", features(20, 4, 1)), lambda p: _write(p / "f.npz", features(20, 5, 2)), [],
         r"same dimension D, got 4 and 5"),
        (lambda p: _write(p / "r.npy", np.where(np.arange(80).reshape(20, 4) == 41, np.nan, 1.0)),
         lambda p: _write(p / "f.npy", features(20, 4, 2)), [], r"non-finite value \(NaN or Inf\) at row 10, column 1"),
        (lambda p: _write(p / "r.npy", features(20, 4, 1)),
         lambda p: _write(p / "f.npy", np.full((20, 4), np.inf)), [], r"fake features .* non-finite .* row 0"),
        (lambda p: _write(p / "r.npy", np.zeros((0, 4))), lambda p: _write(p / "f.npy", features(9, 4, 2)), [],
         r"r\.npy: features must be non-empty"),
        (lambda p: _write(p / "r.npy", np.zeros(12)), lambda p: _write(p / "f.npy", features(9, 4, 2)), [],
         r"r\.npy: features must be a 2-D array \(N, D\), got shape \(12,\)"),
        (lambda p: (p / "r.csv").write_text("1,2\n") and p / "r.csv", lambda p: _write(p / "f.npy", features(9, 4, 2)),
         [], r"r\.csv: unsupported feature file type '\.csv'"),
        (lambda p: p / "missing.npy", lambda p: _write(p / "f.npy", features(9, 4, 2)), [],
         r"missing\.npy: no such feature file"),
        (lambda p: (p / "r.npy").write_bytes(b"not an npy file") and p / "r.npy",
         lambda p: _write(p / "f.npy", features(9, 4, 2)), [],
         r"r\.npy: not a \.npy file \(starts with text, not a NumPy \.npy header\)"),
        (lambda p: _write(p / "r.npy", features(20, 4, 1)), lambda p: _write(p / "f.npy", features(20, 4, 2)),
         ["--backend", "annoy"], r"unknown knn-backend 'annoy'; choose from: exact, faiss, torch"),
    ],
)
def test_bad_input_is_one_error_line(tmp_path, capsys, make_real, make_fake, extra, message):
    real, fake = make_real(tmp_path), make_fake(tmp_path)
    code, out, err = run_main(["metrics", "--real", str(real), "--fake", str(fake), "--no-fid", *extra], capsys)
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("forge: error: ")
    assert __import__("re").search(message, lines[0]), lines[0]


def test_installed_command_reports_errors_without_traceback(tmp_path):
    _write(tmp_path / "r.npy", features(20, 4, 1))
    proc = subprocess.run(
        [forge_executable(), "metrics", "--real", str(tmp_path / "r.npy"), "--fake", str(tmp_path / "nope.npz")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"forge: error: {tmp_path / 'nope.npz'}: no such feature file"]


def test_progress_goes_through_the_one_progress_display(pair, capsys, monkeypatch):
    # --progress in a log (not a terminal): the same plain lines as every other stage of every command
    real_path, fake_path, _, _ = pair
    monkeypatch.setenv("FORGE_PROGRESS", "lines")
    code, out, err = run_main(["metrics", "--real", str(real_path), "--fake", str(fake_path), "--progress"], capsys)
    assert code == 0
    lines = err.strip().splitlines()
    assert lines[0] == "PRDC distances: started"
    assert lines[-1].startswith("PRDC distances: done, ") and "tiles in" in lines[-1]
    code, out, err = run_main(["metrics", "--real", str(real_path), "--fake", str(fake_path), "--no-progress"],
                              capsys)
    assert code == 0 and err == ""
