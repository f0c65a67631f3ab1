"""MRC and STAR round trips and their one-line errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cryoet_forge.errors import InputError
from cryoet_forge.io.mrc import read_mrc, write_mrc
from cryoet_forge.io.star import read_particles, write_particles


def test_mrc_round_trip_keeps_values_axis_order_and_voxel_size(tmp_path):
    volume = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    path = write_mrc(tmp_path / "v.mrc", volume, 9.4)
    back, voxel = read_mrc(path)
    assert back.dtype == np.float32 and back.shape == (4, 5, 6)
    np.testing.assert_array_equal(back, volume)
    assert voxel == pytest.approx(9.4, rel=1e-6)
    assert [p.name for p in tmp_path.iterdir()] == ["v.mrc"]  # no temporary file left behind


def test_write_mrc_rejects_bad_voxel_size_and_nan(tmp_path):
    with pytest.raises(InputError, match=r"voxel size 0 is invalid"):
        write_mrc(tmp_path / "a.mrc", np.zeros((4, 4, 4)), 0)
    with pytest.raises(InputError, match=r"voxel size -1.0 is invalid"):
        write_mrc(tmp_path / "a.mrc", np.zeros((4, 4, 4)), -1.0)
    bad = np.zeros((4, 4, 4), dtype=np.float32)
    bad[1, 2, 3] = np.nan
    with pytest.raises(InputError, match=r"1 voxel\(s\) are NaN"):
        write_mrc(tmp_path / "a.mrc", bad, 10.0)
    assert not (tmp_path / "a.mrc").exists()


def test_read_mrc_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match=r"missing.mrc: no such MRC file"):
        read_mrc(tmp_path / "missing.mrc")
    garbage = tmp_path / "garbage.mrc"
    garbage.write_bytes(b"not an mrc file at all" * 3)
    with pytest.raises(InputError, match=r"garbage.mrc: not a readable MRC file"):
        read_mrc(garbage)
    good = write_mrc(tmp_path / "good.mrc", np.ones((8, 8, 8), np.float32), 5.0)
    truncated = tmp_path / "truncated.mrc"
    truncated.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(InputError, match=r"truncated.mrc: not a readable MRC file"):
        read_mrc(truncated)


def test_read_mrc_rejects_nan_voxels(tmp_path):
    import mrcfile

    data = np.ones((6, 6, 6), np.float32)
    data[0, 0, 0] = np.nan
    with pytest.warns(RuntimeWarning), mrcfile.new(tmp_path / "nan.mrc") as mrc:
        mrc.set_data(data)
        mrc.voxel_size = 10.0
    with pytest.raises(InputError, match=r"nan.mrc: 1 voxel\(s\) are NaN or infinite"):
        read_mrc(tmp_path / "nan.mrc")


def test_star_round_trip_keeps_types_and_parameters(tmp_path):
    df = pd.DataFrame({
        "rlnImageName": ["sub/a.mrc", "sub/b.mrc"], "rlnClassNumber": [1, 2],
        "forgeClassName": ["ring", "barrel"], "rlnImagePixelSize": [9.4, 9.4],
        "rlnAngleRot": [12.345678, -170.5], "forgeSnr": [0.5, 0.25],
    })
    path = write_particles(tmp_path / "particles.star", df)
    back = read_particles(path)
    assert list(back.columns) == list(df.columns)
    assert back["rlnClassNumber"].tolist() == [1, 2]
    assert back["forgeClassName"].tolist() == ["ring", "barrel"]
    np.testing.assert_allclose(back["rlnAngleRot"], df["rlnAngleRot"], rtol=1e-8)
    np.testing.assert_allclose(back["rlnImagePixelSize"], 9.4)


def test_star_missing_column_is_one_clear_error(tmp_path):
    df = pd.DataFrame({"rlnImageName": ["a.mrc"], "rlnClassNumber": [1]})
    with pytest.raises(InputError, match=r"missing STAR column\(s\) forgeClassName, rlnImagePixelSize"):
        write_particles(tmp_path / "p.star", df)
    with pytest.raises(InputError, match=r"nope.star: no such STAR file"):
        read_particles(tmp_path / "nope.star")


def test_slice_montage_is_a_png_of_the_grid(tmp_path):
    from matplotlib.image import imread

    from cryoet_forge.viz import save_slice_montage

    volumes = [np.random.default_rng(i).normal(size=(8, 8, 8)).astype(np.float32) for i in range(3)]
    path = save_slice_montage(tmp_path / "m.png", [volumes, volumes[:2]], ["a", "b"], ["x", "y", "z"], title="t")
    image = imread(path)
    assert image.ndim == 3 and image.shape[1] > image.shape[0]  # 3 columns, 2 rows
    assert [p.name for p in tmp_path.iterdir()] == ["m.png"]
    with pytest.raises(ValueError, match="2 rows but 1 row labels"):
        save_slice_montage(tmp_path / "n.png", [volumes, volumes], ["a"])
