"""Every shipped config uses the validated settings (the classifier rule, the measured GAN
setting), or says in a comment line of that section why it differs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cryoet_forge.config import load_config
from cryoet_forge.evaluate.config import load_evaluation_config
from cryoet_forge.options import VALIDATED_RULE

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
EVALUATIONS = sorted(CONFIGS.glob("evaluate-*.toml"))
TRAININGS = sorted(p for p in CONFIGS.glob("*.toml") if not p.name.startswith("evaluate-") and p.name != "suite.toml")
#: the measured GAN setting (forge quickstart's, README "Does the GAN beat traditional simulation?")
MEASURED_GAN = {"model.generator": "unet3d", "train.n_critic": 1}


def _section(path: Path, name: str) -> str:
    """The text of ``[name]`` up to the next table header."""
    text = path.read_text()
    match = re.search(rf"^\[{re.escape(name)}\]\n(.*?)(?=^\[|\Z)", text, flags=re.M | re.S)
    return match.group(1) if match else ""


def _says_why(path: Path, section: str, what: str) -> bool:
    return f"# differs from the {what}:" in _section(path, section)


def test_the_lists_are_not_empty():
    assert len(EVALUATIONS) >= 4 and len(TRAININGS) >= 5


@pytest.mark.parametrize("path", EVALUATIONS, ids=lambda p: p.name)
def test_evaluation_configs_use_the_classifier_rule_or_say_why(path):
    classifier = load_evaluation_config(path).classifier
    differs = {k: getattr(classifier, k) for k, v in VALIDATED_RULE.items() if getattr(classifier, k) != v}
    assert not differs or _says_why(path, "classifier", "validated classifier rule"), (path.name, differs)


@pytest.mark.parametrize("path", EVALUATIONS, ids=lambda p: p.name)
def test_evaluation_configs_train_the_measured_gan_or_say_why(path):
    config = load_evaluation_config(path)
    base = config.gan.config
    cfg = load_config(CONFIGS / base if base else None, dict(config.gan.overrides))
    seen = {"model.generator": cfg.model.generator, "train.n_critic": cfg.train.n_critic}
    assert seen == MEASURED_GAN or _says_why(path, "gan", "measured GAN setting"), (path.name, seen)


@pytest.mark.parametrize("path", TRAININGS, ids=lambda p: p.name)
def test_training_configs_use_the_measured_gan_or_say_why(path):
    cfg = load_config(path, {})
    seen = {"model.generator": cfg.model.generator, "train.n_critic": cfg.train.n_critic}
    assert seen == MEASURED_GAN or _says_why(path, "model", "measured GAN setting"), (path.name, seen)


def test_the_quickstart_classifier_is_the_rule():
    from cryoet_forge.evaluate.config import quickstart_config

    classifier = quickstart_config().classifier
    assert {k: getattr(classifier, k) for k in VALIDATED_RULE} == VALIDATED_RULE


def test_the_quickstart_config_is_a_copy_of_the_packaged_file():
    """``forge quickstart`` reads the packaged quickstart.toml; configs/evaluate-quickstart.toml is its copy."""
    from importlib import resources

    from cryoet_forge.config import read_toml
    from cryoet_forge.evaluate.config import QUICKSTART, QUICKSTART_FILE

    packaged = resources.files("cryoet_forge.evaluate") / QUICKSTART_FILE
    assert (CONFIGS / "evaluate-quickstart.toml").read_bytes() == packaged.read_bytes()
    assert QUICKSTART == read_toml(CONFIGS / "evaluate-quickstart.toml")
