"""The downstream classifiers in worker processes: the same scores whatever the number of workers,
the same as one thread in this process, and errors that arrive as they would without workers."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from test_classify import TOY_OPTIONS, toy_shapes
from test_evaluate import TOY

from cryoet_forge.classify import ClassifierOptions
from cryoet_forge.errors import ConfigError, InputError
from cryoet_forge.evaluate import downstream
from cryoet_forge.evaluate.config import config_from_dict
from tests_support import assert_one_line_error

OPTIONS = ClassifierOptions(**{**TOY_OPTIONS, "epochs": 3})


@pytest.fixture(scope="module")
def sets():
    return {"first": toy_shapes(5, seed=0), "second": toy_shapes(5, seed=4, noise=0.6)}, toy_shapes(4, seed=1)


def _scores(sets, workers):
    sources, test = sets
    return downstream.score_sources(sources, test, test.class_names, OPTIONS, [0, 3], workers=workers)


def _same(a, b):
    for source in a:
        assert a[source].accuracies == b[source].accuracies
        assert a[source].per_class == b[source].per_class
        np.testing.assert_array_equal(a[source].first.probabilities, b[source].first.probabilities)
        np.testing.assert_array_equal(a[source].first.confusion, b[source].first.confusion)


def test_one_worker_and_two_give_the_same_scores_as_one_thread_here(sets):
    one, two = _scores(sets, 1), _scores(sets, 2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        here = _scores(sets, 0)
    finally:
        torch.set_num_threads(threads)
    _same(one, two)
    _same(one, here)
    assert set(one) == {"first", "second"} and one["first"].seeds == [0, 3]
    assert one["first"].first.probabilities.shape == (12, 3)  # 4 test volumes per class, 3 classes
    # the seeds and the sources are different classifiers, not one result copied
    assert not np.array_equal(one["first"].first.probabilities, one["second"].first.probabilities)


def test_an_error_in_a_worker_arrives_as_the_same_error(sets):
    _, test = sets
    one_class = toy_shapes(4, seed=0).subset(np.arange(4))  # the first class only
    with pytest.raises(InputError, match="need at least 2 classes to train a classifier, got only ball"):
        downstream.score_sources({"x": one_class, "y": toy_shapes(4, seed=2)}, test, test.class_names, OPTIONS,
                                 [0], workers=2)


def test_the_worker_count_follows_the_cores_the_jobs_and_the_device(monkeypatch):
    monkeypatch.setattr(downstream, "usable_cores", lambda: 2)
    assert downstream.resolve_workers("auto", 10, "cpu") == 2
    assert downstream.resolve_workers("auto", 1, "cpu") == 1
    assert downstream.resolve_workers(8, 3, "cpu") == 3
    assert downstream.resolve_workers(0, 10, "cpu") == 0
    assert downstream.resolve_workers("auto", 10, "cuda") == 0  # one device: in this process


def test_the_stage_key_says_in_workers_only_where_workers_run(monkeypatch):
    from cryoet_forge.evaluate.pipeline import downstream_inputs

    monkeypatch.setattr(downstream, "usable_cores", lambda: 2)

    def key(**settings):
        return downstream_inputs(config_from_dict(TOY, settings, origin="toy"))

    assert key(**{"downstream.workers": "auto"})["in_workers"] is True
    assert key(**{"downstream.workers": 0})["in_workers"] is False
    # a CUDA classifier trains in this process whatever the setting: the key must say so
    assert key(**{"downstream.workers": "auto", "classifier.device": "cuda"})["in_workers"] is False
    # any count of workers gives the same scores: the count itself is not in the key
    assert key(**{"downstream.workers": 1}) == key(**{"downstream.workers": 2})


@pytest.mark.parametrize("value", [-1, "many", True, 1.5])
def test_a_bad_worker_setting_is_one_config_error(value):
    table = copy.deepcopy(TOY)
    table["downstream"]["workers"] = value
    with pytest.raises(ConfigError, match=r"downstream.workers must be \"auto\" or an integer >= 0"):
        config_from_dict(table)


def test_a_bad_worker_setting_on_the_command_line(tmp_path, capsys):
    from pathlib import Path

    from cryoet_forge.cli import main as forge

    config = Path(__file__).resolve().parents[1] / "configs" / "evaluate-quickstart.toml"
    code = forge(["evaluate", "--config", str(config), "--set", "downstream.workers=-2",
                  "--out", str(tmp_path / "ev")])
    assert code == 2
    assert_one_line_error(code, capsys.readouterr().err, "downstream.workers", "-2")
    assert not (tmp_path / "ev").exists()
