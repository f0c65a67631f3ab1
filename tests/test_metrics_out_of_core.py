"""Feature files out of core: float32 matrices are memory-mapped, not read; other number types are
converted by row blocks (to a scratch file when large); the Python side of the metrics keeps its
own memory far below the inputs' size."""

from __future__ import annotations

import json
import subprocess
import tracemalloc

import numpy as np
import pytest

from cryoet_forge.errors import InputError
from cryoet_forge.io import embeddings
from cryoet_forge.io.embeddings import load_features
from tests_support import forge_executable


def _matrix(n: int = 300, d: int = 12, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def _save(path, array) -> None:
    suffix = path.suffix
    if suffix == ".npy":
        np.save(path, array)
    elif suffix == ".npz":
        np.savez(path, other=np.zeros(3), features=array)
    else:
        from safetensors.numpy import save_file

        save_file({"features": np.ascontiguousarray(array)}, str(path))


@pytest.mark.parametrize("suffix", [".npy", ".safetensors"])
def test_float32_files_are_memory_mapped_not_read(tmp_path, suffix):
    x = _matrix()
    path = tmp_path / f"f{suffix}"
    _save(path, x)
    got = load_features(path)
    assert isinstance(got, np.memmap) and str(got.filename) == str(path.resolve())
    assert got.dtype == np.float32 and got.flags.c_contiguous and got.flags.aligned and not got.flags.writeable
    np.testing.assert_array_equal(got, x)


def test_an_uncompressed_npz_is_streamed_from_a_map(tmp_path, monkeypatch):
    """np.savez does not align its members, so the matrix is copied block by block from a map of
    the archive (into a scratch file when large), never read whole."""
    x = _matrix()
    _save(tmp_path / "f.npz", x)

    def whole(*args, **kwargs):
        raise AssertionError("the member was read whole")

    monkeypatch.setattr(np.lib.format, "read_array", whole)
    monkeypatch.setattr(embeddings, "IN_MEMORY_COPY_BYTES", 0)
    got = load_features(tmp_path / "f.npz")
    assert isinstance(got, np.memmap) and got.filename is None and got.flags.aligned
    np.testing.assert_array_equal(got, x)


def test_a_compressed_npz_is_read_whole(tmp_path):
    x = _matrix()
    np.savez_compressed(tmp_path / "c.npz", features=x)
    got = load_features(tmp_path / "c.npz")
    assert not isinstance(got, np.memmap)
    np.testing.assert_array_equal(got, x)


@pytest.mark.parametrize(("suffix", "dtype"), [(suffix, dtype) for suffix in (".npy", ".npz", ".safetensors")
                                               for dtype in ("<f2", ">f4", "<f8", "<i4")
                                               if not (suffix == ".safetensors" and dtype == ">f4")])  # LE only
def test_other_number_types_are_computed_in_float32(tmp_path, suffix, dtype):
    x = (_matrix() * 10).astype(dtype)
    path = tmp_path / f"f{suffix}"
    _save(path, x)
    got = load_features(path)
    assert got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, x.astype(np.float32))


def test_fortran_order_npy(tmp_path):
    x = _matrix()
    np.save(tmp_path / "f.npy", np.asfortranarray(x))
    got = load_features(tmp_path / "f.npy")
    assert got.flags.c_contiguous
    np.testing.assert_array_equal(got, x)


def test_bfloat16_safetensors(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    t = torch.from_numpy(_matrix()).bfloat16()
    save_file({"features": t}, str(tmp_path / "b.safetensors"))
    got = load_features(tmp_path / "b.safetensors")
    np.testing.assert_array_equal(got, t.float().numpy())


def test_a_large_conversion_goes_to_a_scratch_file_that_is_not_left_behind(tmp_path, monkeypatch):
    import tempfile

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.setattr(embeddings, "IN_MEMORY_COPY_BYTES", 0)
    monkeypatch.setattr(embeddings, "_BLOCK_BYTES", 7 * 12 * 4)  # 7 rows a block: many blocks
    x = _matrix().astype(np.float16)
    np.save(tmp_path / "h.npy", x)
    got = load_features(tmp_path / "h.npy")
    assert isinstance(got, np.memmap) and got.filename is None  # a map of an unlinked file
    assert list(scratch.iterdir()) == []
    np.testing.assert_array_equal(got, x.astype(np.float32))


def test_a_float64_value_beyond_float32_in_a_later_block_names_its_row(tmp_path, monkeypatch):
    monkeypatch.setattr(embeddings, "_BLOCK_BYTES", 10 * 12 * 4)  # 10 rows a block
    x = _matrix().astype(np.float64)
    x[37, 5] = 1e300
    np.save(tmp_path / "big.npy", x)
    with pytest.raises(InputError, match=r"big\.npy: features: value 1e\+300 at row 37, column 5 is beyond the float32"):
        load_features(tmp_path / "big.npy")


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".safetensors"])
def test_truncated_files_are_one_line_errors(tmp_path, suffix):
    path = tmp_path / f"t{suffix}"
    _save(path, _matrix())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(InputError) as info:
        load_features(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def _traced_peak(folder, n: int, d: int) -> tuple[int, object]:
    """Peak NumPy allocation (tracemalloc) of loading, checking and FID with a bootstrap of two
    memory-mapped (n, d) files, and the FID result."""
    from cryoet_forge.metrics.fid import fid_details
    from cryoet_forge.metrics.prdc import validate_pair

    rng = np.random.default_rng(n)
    for name, shift in (("real", 0.0), ("fake", 0.1)):
        np.save(folder / f"{name}{n}.npy", rng.standard_normal((n, d), dtype=np.float32) + np.float32(shift))
    tracemalloc.start()
    try:
        real, fake = validate_pair(load_features(folder / f"real{n}.npy"), load_features(folder / f"fake{n}.npy"), 5)
        assert not real.flags.owndata and not fake.flags.owndata  # views of the maps, not copies
        result = fid_details(real, fake, bootstrap=2)
        return tracemalloc.get_traced_memory()[1], result
    finally:
        tracemalloc.stop()


def test_python_side_memory_does_not_grow_with_the_inputs(tmp_path):
    """Four times the rows (36,000 more of 512 bytes, in each of two files) add only the O(N) index
    arrays of the bootstrap to what NumPy allocates (tracemalloc sees NumPy's allocations; the maps
    are page cache, not allocations), and the values equal those of in-memory arrays."""
    from cryoet_forge.metrics.fid import fid_details

    d, small, large = 128, 12_000, 48_000
    peak_small, _ = _traced_peak(tmp_path, small, d)
    peak_large, got = _traced_peak(tmp_path, large, d)
    added_input = 2 * (large - small) * d * 4
    assert peak_large - peak_small < 0.1 * added_input, (peak_small, peak_large)
    assert peak_large < 0.5 * large * d * 4
    expected = fid_details(np.load(tmp_path / f"real{large}.npy"), np.load(tmp_path / f"fake{large}.npy"), bootstrap=2)
    assert got.fid == pytest.approx(expected.fid, rel=1e-9)
    assert got.ci == pytest.approx(expected.ci, rel=1e-6)


def test_bootstrap_by_row_counts_equals_bootstrap_by_copies():
    """FID of a resample given as row counts equals FID of the resampled rows themselves."""
    from cryoet_forge.metrics.fid import _fid_of_features

    rng = np.random.default_rng(3)
    x, y = _matrix(400, 8, 4), _matrix(300, 8, 5) + np.float32(0.3)
    xi, yi = rng.integers(0, 400, 400), rng.integers(0, 300, 300)
    copies = _fid_of_features(x[xi], y[yi])
    counts = _fid_of_features(x, y, np.bincount(xi, minlength=400), np.bincount(yi, minlength=300))
    assert counts.fid == pytest.approx(copies.fid, rel=1e-10)
    assert counts.n_real == 400 and counts.n_fake == 300


def test_forge_metrics_on_float16_files_equals_float32(tmp_path):
    x, y = _matrix(200, 16, 6), _matrix(180, 16, 7) + np.float32(0.2)
    x16, y16 = x.astype(np.float16), y.astype(np.float16)
    np.save(tmp_path / "r16.npy", x16)
    _save(tmp_path / "f16.safetensors", y16)
    np.save(tmp_path / "r32.npy", x16.astype(np.float32))
    np.savez(tmp_path / "f32.npz", features=y16.astype(np.float32))
    docs = []
    for real, fake in (("r16.npy", "f16.safetensors"), ("r32.npy", "f32.npz")):
        out = tmp_path / f"{real}.json"
        proc = subprocess.run([forge_executable(), "metrics", "--real", str(tmp_path / real), "--fake",
                               str(tmp_path / fake), "--json", str(out)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        docs.append(json.loads(out.read_text()))
    for key in ("precision", "recall", "density", "coverage", "fid"):
        assert docs[0][key] == docs[1][key], key
