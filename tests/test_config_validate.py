"""``cryoet_forge.config.validate``: the one validator of a training configuration."""

from __future__ import annotations

import math

import pytest

from cryoet_forge.config import TrainConfig, load_config, validate
from cryoet_forge.errors import ConfigError


@pytest.mark.parametrize("key", ["cycle_noise_std", "identity_weight", "semantic_weight"])
@pytest.mark.parametrize("value", [-0.1, math.nan])
def test_negative_or_nan_loss_weights_are_refused_when_the_config_is_read(key, value):
    with pytest.raises(ConfigError, match=rf"^loss\.{key} must be >= 0, got {value}$"):
        load_config(None, {f"loss.{key}": value})


def test_the_semantic_classifier_is_required_only_for_training():
    cfg = load_config(None, {"loss.semantic_weight": 1.0})  # forge evaluate fills the classifier in later
    with pytest.raises(ConfigError, match="^loss.semantic_weight > 0 needs loss.semantic_classifier"):
        validate(cfg, for_training=True)
    cfg.loss.semantic_classifier = "clf"
    assert validate(cfg, for_training=True) is cfg


def test_a_config_built_in_python_gets_the_same_checks():
    cfg = TrainConfig()
    assert validate(cfg, for_training=True) is cfg
    cfg.loss.identity_weight = -1.0
    with pytest.raises(ConfigError, match=r"^loss\.identity_weight must be >= 0, got -1\.0$"):
        validate(cfg)
