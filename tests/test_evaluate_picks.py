"""forge evaluate with data.source = "picks": the real splits cut from tomograms at run time, split by tomogram."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cryoet_forge.errors import ConfigError, InputError
from cryoet_forge.evaluate.config import config_from_dict
from cryoet_forge.evaluate.datasets import at_most_per_class, load_picks_splits
from cryoet_forge.io.mrc import write_mrc


def project(tmp_path, n_per_tomogram: int = 6):
    """Three 48^3 tomograms (10 A) with dark balls (class 'ball') and dark shells ('shell') at known
    centres, and a CSV of every pick in pixels."""
    rng = np.random.default_rng(0)
    grid = np.indices((48, 48, 48)).astype(np.float32)
    rows = []
    for name in ("TS_01", "TS_02", "TS_03"):
        volume = rng.normal(0, 0.3, (48, 48, 48)).astype(np.float32)
        for i in range(n_per_tomogram):
            x, y, z = 10 + (i % 3) * 14, 12 + (i // 3) * 22, 24
            r = np.sqrt((grid[2] - x) ** 2 + (grid[1] - y) ** 2 + (grid[0] - z) ** 2)
            shape = (r < 4) if i % 2 == 0 else ((r < 5) & (r > 3))
            volume -= shape.astype(np.float32)
            rows.append({"tomogram": name, "class": "ball" if i % 2 == 0 else "shell", "x": x, "y": y, "z": z})
        write_mrc(tmp_path / "tomos" / f"{name}.mrc", volume, 10.0)
    pd.DataFrame(rows).to_csv(tmp_path / "picks.csv", index=False)
    return tmp_path / "picks.csv", tmp_path / "tomos"


def picks_config(picks_path, tomos, **data):
    return config_from_dict({"data": {"source": "picks", "picks": str(picks_path), "tomograms": str(tomos),
                                      "unit": "px", "box": 16, "train_tomograms": ["TS_01", "TS_02"],
                                      "test_tomograms": ["TS_03"], **data}})


def test_the_splits_are_cut_from_their_own_tomograms(tmp_path):
    picks, tomos = project(tmp_path)
    config = picks_config(picks, tomos)
    lines = []
    train, test = load_picks_splits(config.data, lines.append)
    assert (len(train), len(test)) == (12, 6)
    assert train.class_names == test.class_names == ["ball", "shell"]
    assert np.bincount(train.labels).tolist() == [6, 6] and np.bincount(test.labels).tolist() == [3, 3]
    assert train.volumes.shape[1:] == (16, 16, 16) and train.voxel_size == 10.0
    # the centre of a ball box is dark (protein dark, as the tomogram), the centre of a shell box is not
    ball, shell = train.volumes[train.labels == 0], train.volumes[train.labels == 1]
    assert ball[:, 8, 8, 8].mean() < shell[:, 8, 8, 8].mean() - 0.5
    assert lines == ["data.train_tomograms: 12 boxes cut from TS_01, TS_02", "data.test_tomograms: 6 boxes cut from TS_03"]


def test_a_tomogram_name_without_picks_names_the_key(tmp_path):
    picks, tomos = project(tmp_path)
    config = picks_config(picks, tomos, test_tomograms=["TS_09"])
    with pytest.raises(InputError) as info:
        load_picks_splits(config.data, lambda line: None)
    assert str(info.value).startswith("data.test_tomograms 'TS_09': no pick in")


@pytest.mark.parametrize(("data", "message"), [
    ({"test_tomograms": ["TS_01"]}, "data.train_tomograms and data.test_tomograms share TS_01"),
    ({"test_tomograms": []}, "data.test_tomograms must list at least one tomogram name, got []"),
    ({"picks": ""}, "data.source = 'picks' needs data.picks"),
    ({"unit": "nm"}, "data.unit"),
    ({"real_train_per_class": 1}, "data.real_train_per_class must be 0 (all) or an integer >= 2, got 1"),
])
def test_bad_picks_settings_are_one_line(tmp_path, data, message):
    with pytest.raises(ConfigError) as info:
        picks_config(tmp_path / "p.csv", tmp_path, **data)
    assert message in str(info.value)


def test_at_most_per_class_keeps_a_seeded_subset_of_each_class(tmp_path):
    picks, tomos = project(tmp_path, n_per_tomogram=6)
    train, _ = load_picks_splits(picks_config(picks, tomos).data, lambda line: None)
    kept = at_most_per_class(train, 2, seed=0)
    assert np.bincount(kept.labels).tolist() == [2, 2]
    assert not np.array_equal(kept.volumes, at_most_per_class(train, 2, seed=1).volumes)
    assert np.array_equal(kept.volumes, at_most_per_class(train, 2, seed=0).volumes)
    assert len(at_most_per_class(train, 100, seed=0)) == len(train)


def test_an_evaluation_on_picks_runs_end_to_end(tmp_path):
    """The whole protocol on boxes cut at run time; few labels (real_train_per_class) and the radial kind."""
    import json

    from test_evaluate import TOY

    from cryoet_forge.evaluate.pipeline import run_evaluation

    picks, tomos = project(tmp_path)
    r = np.sqrt(((np.indices((16, 16, 16)) - 7.5) ** 2).sum(0))
    write_mrc(tmp_path / "maps" / "ball.mrc", (r < 4).astype(np.float32), 10.0)  # maps are protein bright
    write_mrc(tmp_path / "maps" / "shell.mrc", ((r < 5) & (r > 3)).astype(np.float32), 10.0)
    table = {**TOY, "data": {"source": "picks", "picks": str(picks), "tomograms": str(tomos), "unit": "px",
                             "maps_dir": str(tmp_path / "maps"),
                             "box": 16, "train_tomograms": ["TS_01", "TS_02"], "test_tomograms": ["TS_03"],
                             "real_train_per_class": 4, "n_density_per_class": 4},
             "ablations": {}, "uncertainty": {"enabled": False},
             "metrics": {"k": 3, "is_splits": 2, "inception": "radial"},
             "downstream": {"n_per_class": 4, "seeds": [0, 1], "workers": 0}}
    out = tmp_path / "evaluation"
    run_evaluation(config_from_dict(table, origin="picks"), out, log=lambda line: None)
    results = json.loads((out / "results.json").read_text())
    assert results["data"]["n_real_train"] == 8 and results["data"]["n_real_test"] == 6
    assert results["data"]["class_names"] == ["ball", "shell"]
    assert "boxes cut from" in results["data"]["description"]
    assert set(results["verdict"]["by_classifier"]) == {"cb3d", "radial"}
    assert (out / "data" / "real_train" / "particles.star").is_file()  # domain S of the GAN
    # metrics.inception = "radial": FID, PRDC and IS on the radial classifier's features, refitted the same
    from cryoet_forge.classify import load_labelled
    from cryoet_forge.io.embeddings import load_features
    from cryoet_forge.metrics import compute_fid
    from cryoet_forge.registry import create

    assert results["metrics_network"]["kind"] == "radial"
    train = load_labelled(out / "data" / "real_train" / "particles.star")
    test = load_labelled(out / "data" / "real_test" / "particles.star").relabelled(train.class_names)
    radial = create("classifier", "radial")
    radial.fit(train, 0)
    saved = load_features(out / "features" / "real_test.features.npy")
    assert saved.shape == (6, radial.features(test.volumes).shape[1])
    np.testing.assert_allclose(saved, radial.features(test.volumes), rtol=1e-5, atol=1e-5)
    traditional = load_labelled(out / "data" / "traditional" / "particles.star")
    fid = float(compute_fid(saved, radial.features(traditional.volumes).astype(np.float32)))
    assert results["quality"]["traditional"]["fid"] == pytest.approx(fid, rel=1e-4)
    assert "features and class probabilities of the radial classifier" in (out / "report.md").read_text()


def test_a_suite_cell_on_absent_shared_picks_is_skipped_with_the_reason(tmp_path):
    from cryoet_forge.evaluate.suite import missing_shared_data

    picks, tomos = project(tmp_path)
    config = picks_config(picks, tomos)
    assert missing_shared_data(config) is None
    config.data.tomograms = "shared:no_such_data_set/tomograms"
    reason = missing_shared_data(config)
    assert reason is not None and reason.startswith("needs shared:no_such_data_set/tomograms (")
    assert reason.endswith("), which is not on this machine")
