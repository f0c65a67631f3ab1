"""`--budget-minutes`: the evaluation measured first, then scaled to the budget, and the report says so."""

from __future__ import annotations

import json

import pytest
from test_evaluate import TOY

from cryoet_forge.errors import ConfigError
from cryoet_forge.evaluate.budget import (
    MIN_EPOCHS,
    MIN_GAN_STEPS,
    MIN_PER_CLASS,
    Costs,
    fit_to_budget,
    measure_costs,
    predict,
)
from cryoet_forge.evaluate.config import config_from_dict, quickstart_config
from cryoet_forge.evaluate.pipeline import run_evaluation

#: a machine where a quickstart GAN step takes 0.3 s and a CB3D volume-epoch 2 ms (3 ms with one thread)
COSTS = Costs(gan_step_s=0.3, classifier_volume_epoch_s=0.002, experimental_volume_s=0.004,
              traditional_volume_s=0.001, generate_volume_s=0.001, embed_volume_s=0.0005, calibration_s=10.0,
              classifier_volume_epoch_1thread_s=0.003)


def test_prediction_adds_up_the_parts(monkeypatch):
    from cryoet_forge.evaluate import downstream
    from cryoet_forge.evaluate.budget import POOL_START_S

    monkeypatch.setattr(downstream, "usable_cores", lambda: 2)
    config = quickstart_config()
    steps, epochs = config.gan.overrides["train.steps"], config.classifier.epochs
    parts = predict(config, COSTS)
    assert parts["gan_training"] == pytest.approx(steps * 0.3)
    # inception (192 volumes) with the machine's threads, then 2 sources x 5 seeds x 192 volumes in
    # two single-threaded workers: 5 rounds, at most `epochs` each
    assert len(config.downstream.seeds) == 5
    assert parts["classifiers"] == pytest.approx(epochs * 0.002 * 192 + POOL_START_S + 5 * epochs * 0.003 * 192)
    assert parts["total"] == pytest.approx(sum(v for k, v in parts.items() if k != "total"))
    # in this process, one after the other at the multithreaded rate
    config.downstream.workers = 0
    assert predict(config, COSTS)["classifiers"] == pytest.approx(epochs * 0.002 * (192 + 2 * 5 * 192))


@pytest.mark.parametrize("minutes", [2.0, 4.0, 10.0])
def test_scaled_run_is_predicted_to_fit_the_budget(minutes):
    config = quickstart_config()
    original = config.gan.overrides["train.steps"]
    checkpoints = original // config.gan.overrides["log.checkpoint_every"]
    scaled, record = fit_to_budget(config, minutes, costs=COSTS)
    predicted = record["predicted_s"]["total"] + COSTS.calibration_s
    assert predicted == pytest.approx(minutes * 60, rel=0.05)
    steps = scaled.gan.overrides["train.steps"]
    assert record["scaled"]["gan.train.steps"] == {"from": original, "to": steps}
    assert (steps > original) == (minutes > predict(config, COSTS)["total"] / 60)
    # the checkpoint count (and so the selection's cost) is kept
    assert steps // scaled.gan.overrides["log.checkpoint_every"] == checkpoints
    # seeds, classes, box and networks never change
    assert scaled.downstream.seeds == config.downstream.seeds and scaled.data.box == config.data.box
    assert scaled.gan.overrides["model.generator_options"] == config.gan.overrides["model.generator_options"]


def test_tiny_budget_scales_sizes_within_limits_and_warns():
    scaled, record = fit_to_budget(quickstart_config(), 0.3, costs=COSTS)
    assert scaled.gan.overrides["train.steps"] == MIN_GAN_STEPS
    assert scaled.classifier.epochs == MIN_EPOCHS
    assert scaled.data.n_train_per_class >= MIN_PER_CLASS and scaled.data.n_train_per_class < 48
    assert "data.n_train_per_class" in record["scaled"]
    assert "over the budget" in record["warning"]


def test_budget_must_be_positive():
    with pytest.raises(ConfigError, match="--budget-minutes must be > 0, got 0"):
        fit_to_budget(quickstart_config(), 0, costs=COSTS)


def test_measured_costs_are_positive_and_the_report_states_the_scaling(tmp_path):
    config = config_from_dict(TOY, origin="toy")
    costs = measure_costs(config)
    for name in ("gan_step_s", "classifier_volume_epoch_s", "experimental_volume_s", "traditional_volume_s",
                 "generate_volume_s", "embed_volume_s", "calibration_s", "classifier_volume_epoch_1thread_s"):
        assert getattr(costs, name) > 0, name
    scaled, record = fit_to_budget(config, 0.5, costs=costs)
    report = run_evaluation(scaled, tmp_path, log=lambda line: None, budget=record)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["budget"]["scaled"] == record["scaled"]
    assert results["config"]["gan"]["overrides"]["train.steps"] == scaled.gan.overrides["train.steps"]
    text = report.read_text()
    assert "## Time budget" in text and "Asked for 0.500 min" in text
    for key in record["scaled"]:
        assert f"`{key}`" in text
