"""Feature files: round trips through every format and clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from cryoet_forge.errors import InputError
from cryoet_forge.io.embeddings import load_features, save_features


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".safetensors"])
def test_round_trip_as_float32(tmp_path, suffix):
    x = np.random.default_rng(0).standard_normal((17, 5))
    path = save_features(tmp_path / f"feats{suffix}", x)
    got = load_features(path)
    assert got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, x.astype(np.float32))
    assert [p.name for p in tmp_path.iterdir()] == [f"feats{suffix}"]  # no temporary file left


def test_npz_prefers_features_key_then_first_array(tmp_path):
    a, b = np.ones((3, 2)), np.zeros((4, 2))
    np.savez(tmp_path / "a.npz", other=a, features=b)
    assert load_features(tmp_path / "a.npz").shape == (4, 2)
    np.savez(tmp_path / "b.npz", only=a)
    assert load_features(tmp_path / "b.npz").shape == (3, 2)


def test_safetensors_without_features_key(tmp_path):
    from safetensors.numpy import save_file

    save_file({"x": np.ones((2, 3), np.float32), "y": np.ones((2, 3), np.float32)}, str(tmp_path / "t.safetensors"))
    with pytest.raises(InputError, match="no tensor named 'features' among \\['x', 'y'\\]"):
        load_features(tmp_path / "t.safetensors")


def test_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match=r"x\.txt: unsupported feature file type '\.txt'"):
        load_features(tmp_path / "x.txt")
    with pytest.raises(InputError, match=r"gone\.npy: no such feature file"):
        load_features(tmp_path / "gone.npy")
    np.save(tmp_path / "s.npy", np.array(["a", "b"]).reshape(1, 2))
    with pytest.raises(InputError, match=r"s\.npy: features must be real numbers"):
        load_features(tmp_path / "s.npy")
    with pytest.raises(InputError, match=r"out\.bin: unsupported"):
        save_features(tmp_path / "out.bin", np.ones((2, 2)))
