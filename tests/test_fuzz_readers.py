"""Property-based fuzzing of the file readers (Hypothesis, a bounded number of examples).

Every reader, given any bytes (random, or a valid file with bytes flipped, cut off or
inserted), either returns a well-formed result or raises one of forge's errors, whose
message names the file; never another exception, never a hang. In CI the examples are
derandomized (the same each run); elsewhere each run tries new ones.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402  (after the importorskip)
from hypothesis import strategies as st  # noqa: E402

from cryoet_forge.errors import ForgeError  # noqa: E402

FUZZ = settings(max_examples=int(os.environ.get("FORGE_FUZZ_EXAMPLES", "60")), deadline=None,
                derandomize=os.environ.get("CI") == "true",
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _valid_files() -> dict[str, bytes]:
    """One valid file of each format, as bytes."""
    from safetensors.numpy import save

    from cryoet_forge.io.mrc import write_mrc
    from cryoet_forge.io.star import write_particles

    rng = np.random.default_rng(0)
    out: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_mrc(folder / "v.mrc", rng.random((6, 6, 6), dtype=np.float32), 10.0)
        out[".mrc"] = (folder / "v.mrc").read_bytes()
        write_particles(folder / "p.star", pd.DataFrame(
            {"rlnImageName": ["a.mrc", "b.mrc"], "rlnClassNumber": [1, 2], "forgeClassName": ["x", "y"],
             "rlnImagePixelSize": [10.0, 10.0]}))
        out[".star"] = (folder / "p.star").read_bytes()
    features = rng.normal(size=(8, 3)).astype(np.float32)
    buffer = io.BytesIO()
    np.save(buffer, features, allow_pickle=False)
    out[".npy"] = buffer.getvalue()
    buffer = io.BytesIO()
    np.savez(buffer, features=features)
    out[".npz"] = buffer.getvalue()
    out[".safetensors"] = save({"features": features})
    from cryoet_forge.data.bundle import save_bundle

    with tempfile.TemporaryDirectory() as tmp:
        save_bundle(Path(tmp) / "b.npz", rng.random((2, 4, 4, 4), dtype=np.float32), np.array([0, 1]), ["x", "y"],
                    10.0, pd.DataFrame({"rlnAngleRot": [1.0, 2.0]}))
        out[".bundle.npz"] = (Path(tmp) / "b.npz").read_bytes()
    out[".toml"] = b'[train]\nsteps = 3\nbatch_size = 2\n[model]\ngenerator = "cryoetgan"\n'
    return out


VALID = _valid_files()


@st.composite
def mutated(draw, suffix: str):
    """Random bytes, or the valid file of ``suffix`` with a few bytes flipped, cut or inserted."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=600))
    data = bytearray(VALID[suffix])
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "truncate"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del data[at:at + draw(st.integers(1, 16))]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            data = data[:at]
    return bytes(data)


def _read(suffix: str, path: Path):
    if suffix == ".bundle.npz":
        from cryoet_forge.data.bundle import load_bundle

        bundle = load_bundle(path)
        assert bundle["volumes"].ndim == 4 and len(bundle["labels"]) == len(bundle["volumes"])
    elif suffix == ".mrc":
        from cryoet_forge.io.mrc import read_mrc

        volume, voxel = read_mrc(path)
        assert volume.ndim == 3 and volume.dtype == np.float32 and np.isfinite(volume).all() and voxel > 0
    elif suffix == ".star":
        from cryoet_forge.io.star import read_particles

        table = read_particles(path)
        assert {"rlnImageName", "rlnClassNumber"} <= set(table.columns)
    elif suffix == ".toml":
        from cryoet_forge.config import load_config

        cfg = load_config(path, {})
        assert cfg.train.steps >= 1
    else:
        from cryoet_forge.io.embeddings import load_features

        matrix = load_features(path)
        assert matrix.ndim == 2 and matrix.dtype == np.float32


@pytest.mark.parametrize("suffix", sorted(VALID))
def test_reader_survives_corrupt_files(tmp_path, suffix):
    path = tmp_path / f"fuzzed{suffix}"
    _read(suffix, _write(path, VALID[suffix]))  # the unmutated file reads

    @FUZZ
    @given(data=mutated(suffix))
    def check(data):
        _write(path, data)
        try:
            _read(suffix, path)
        except ForgeError as exc:
            assert str(path) in str(exc) and "\n" not in str(exc).strip(), str(exc)

    check()


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_valid_files_of_random_content_round_trip(tmp_path):
    """MRC and feature files that forge writes read back exactly, for arbitrary finite content."""
    from hypothesis.extra.numpy import arrays

    from cryoet_forge.io.embeddings import load_features, save_features
    from cryoet_forge.io.mrc import read_mrc, write_mrc

    finite = st.floats(allow_nan=False, allow_infinity=False, width=32)

    @FUZZ
    @given(volume=arrays(np.float32, st.tuples(*[st.integers(1, 5)] * 3), elements=finite),
           voxel=st.floats(0.1, 100.0), suffix=st.sampled_from([".npy", ".npz", ".safetensors"]))
    def check(volume, voxel, suffix):
        back, size = read_mrc(write_mrc(tmp_path / "v.mrc", volume, voxel))
        assert np.array_equal(back, volume) and size == pytest.approx(voxel, rel=1e-6)
        matrix = volume.reshape(volume.shape[0], -1)
        assert np.array_equal(load_features(save_features(tmp_path / f"f{suffix}", matrix)), matrix)

    check()
