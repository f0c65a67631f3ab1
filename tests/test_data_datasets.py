"""Dataset plugins: volume folders (STAR, plain, .npz), labelled folders, on-the-fly simulation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from cryoet_forge import registry
from cryoet_forge.data.bundle import load_bundle, save_bundle
from cryoet_forge.errors import ConfigError, InputError
from cryoet_forge.io.mrc import write_mrc
from cryoet_forge.io.star import write_particles


def make_star_folder(root, n=6, box=8, voxel=7.5):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        name = f"vols/v{i}.mrc"
        write_mrc(root / name, rng.normal(size=(box, box, box)).astype(np.float32) * (i + 1) + i, voxel)
        rows.append({"rlnImageName": name, "rlnClassNumber": 1 + i % 2, "forgeClassName": ["ring", "barrel"][i % 2],
                     "rlnImagePixelSize": voxel, "forgeSnr": 0.1 * (i + 1)})
    write_particles(root / "particles.star", pd.DataFrame(rows))
    return root / "particles.star"


@pytest.mark.parametrize("normalize", ["zscore", "minmax", "none"])
def test_volume_folder_from_star(tmp_path, normalize):
    star = make_star_folder(tmp_path)
    ds = registry.create("dataset", "volume-folder", root=star, normalize=normalize)
    assert len(ds) == 6 and ds.class_names == ["ring", "barrel"]
    assert ds.voxel_size == pytest.approx(7.5) and ds.box == 8
    item = ds[3]
    assert item["volume"].shape == (1, 8, 8, 8) and item["volume"].dtype == torch.float32
    assert item["label"] == 1 and item["class_name"] == "barrel" and item["index"] == 3
    v = item["volume"]
    if normalize == "zscore":
        assert v.mean().item() == pytest.approx(0, abs=1e-5) and v.std().item() == pytest.approx(1, rel=1e-4)
    elif normalize == "minmax":
        assert v.min().item() == pytest.approx(-1) and v.max().item() == pytest.approx(1)
    else:
        assert v.mean().item() == pytest.approx(3, abs=0.5)
    assert ds.parameters(3)["forgeSnr"] == pytest.approx(0.4)
    # a folder with exactly one STAR file means that STAR file
    assert registry.create("dataset", "volume-folder", root=tmp_path).class_names == ["ring", "barrel"]


def test_volume_folder_plain_mrc_is_unlabelled(tmp_path):
    for i in range(3):
        write_mrc(tmp_path / f"{i}.mrc", np.full((6, 6, 6), float(i), np.float32), 4.0)
    ds = registry.create("dataset", "volume-folder", root=tmp_path, normalize="none")
    assert len(ds) == 3 and ds.class_names == ["unlabelled"] and ds.voxel_size == 4.0
    assert ds[2]["volume"].mean().item() == 2.0 and ds[2]["label"] == 0


def test_volume_folder_errors(tmp_path):
    with pytest.raises(InputError, match="no such file or folder"):
        registry.create("dataset", "volume-folder", root=tmp_path / "nothing")
    with pytest.raises(InputError, match="no STAR file and no .mrc volumes"):
        registry.create("dataset", "volume-folder", root=tmp_path)
    make_star_folder(tmp_path)
    (tmp_path / "other.star").write_text((tmp_path / "particles.star").read_text())
    with pytest.raises(InputError, match=r"2 STAR files \(other.star, particles.star\); pass one"):
        registry.create("dataset", "volume-folder", root=tmp_path)
    with pytest.raises(ConfigError, match="normalize 'unit'"):
        registry.create("dataset", "volume-folder", root=tmp_path / "particles.star", normalize="unit")


def test_labelled_folder_uses_subfolders_as_classes(tmp_path):
    for c, name in enumerate(["ribosome", "proteasome"]):
        for i in range(2 + c):
            write_mrc(tmp_path / name / f"{i}.mrc", np.full((6, 6, 6), c, np.float32), 9.4)
    ds = registry.create("dataset", "labelled-folder", root=tmp_path, normalize="none")
    assert ds.class_names == ["proteasome", "ribosome"] and len(ds) == 5
    assert [ds[i]["label"] for i in range(5)] == [0, 0, 0, 1, 1]
    assert ds[0]["volume"].mean().item() == 1.0 and ds.voxel_size == pytest.approx(9.4)


def test_npz_bundle_round_trip_keeps_everything(tmp_path):
    volumes = np.random.default_rng(1).normal(size=(4, 6, 6, 6)).astype(np.float32)
    params = pd.DataFrame({"rlnAngleRot": [1.5, 2.5, 3.5, 4.5], "forgeClassName": ["a", "b", "a", "b"]})
    path = save_bundle(tmp_path / "b.npz", volumes, [0, 1, 0, 1], ["a", "b"], 9.4, params)
    back = load_bundle(path)
    np.testing.assert_array_equal(back["volumes"], volumes)
    assert back["class_names"] == ["a", "b"] and back["voxel_size"] == 9.4
    assert back["parameters"]["rlnAngleRot"].tolist() == [1.5, 2.5, 3.5, 4.5]
    ds = registry.create("dataset", "volume-folder", root=path, normalize="none")
    assert ds.voxel_size == 9.4 and ds.class_names == ["a", "b"]
    torch.testing.assert_close(ds[1]["volume"][0], torch.from_numpy(volumes[1]))
    (tmp_path / "bad.npz").write_bytes(b"junk")
    with pytest.raises(InputError, match="bad.npz: not a readable .npz bundle"):
        load_bundle(tmp_path / "bad.npz")
    np.savez(tmp_path / "labels.npz", volumes=volumes, labels=np.array([0, 1, 0, 2]),
             class_names=np.array(["a", "b"]), voxel_size=np.float64(9.4))
    with pytest.raises(InputError, match=r"labels.npz: labels must lie in 0..1"):
        load_bundle(tmp_path / "labels.npz")


@pytest.mark.parametrize("simulator", ["fourier", "none"])
def test_simulated_dataset_is_deterministic_per_index(simulator):
    kwargs = dict(simulator=simulator, box=16, voxel_size=10.0, length=10, seed=4)
    ds = registry.create("dataset", "simulated", **kwargs)
    again = registry.create("dataset", "simulated", **kwargs)
    assert ds.class_names == ["barrel", "two-lobe", "ring", "globule", "membrane"]
    assert ds.box == 16 and ds.voxel_size == 10.0 and len(ds) == 10
    a, b = ds[7], again[7]
    torch.testing.assert_close(a["volume"], b["volume"])
    assert a["label"] == 2 and a["class_name"] == "ring" and a["volume"].shape == (1, 16, 16, 16)
    assert a["volume"].min().item() == pytest.approx(-1) and a["volume"].max().item() == pytest.approx(1)
    assert not torch.allclose(ds[2]["volume"], ds[7]["volume"])  # same class, another particle
    assert ds.parameters(7)["forgeSimulator"] == {"none": "posed-map"}.get(simulator, simulator)
    batch = torch.utils.data.default_collate([ds[i] for i in range(4)])
    assert batch["volume"].shape == (4, 1, 16, 16, 16) and batch["label"].tolist() == [0, 1, 2, 3]


def test_simulated_dataset_takes_maps_and_options(tmp_path):
    from cryoet_forge.simulate.phantoms import make_phantom

    write_mrc(tmp_path / "blob.mrc", make_phantom("globule", 20, 5.0), 5.0)
    ds = registry.create("dataset", "simulated", classes=[str(tmp_path / "blob.mrc"), "ring"], box=16,
                         voxel_size=10.0, length=4, simulator_options={"snr": 2.0})
    assert ds.class_names == ["blob", "ring"]
    assert ds.parameters(0)["forgeSnr"] == 2.0
    with pytest.raises(InputError, match="neither a phantom class"):
        registry.create("dataset", "simulated", classes=["no-such-thing"], box=16)
