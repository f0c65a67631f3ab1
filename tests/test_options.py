"""One place for option checks: configuration keys, component options and the validators' rules."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from cryoet_forge.config import config_from_dict
from cryoet_forge.errors import ConfigError
from cryoet_forge.options import build_dataclass, check_at_least, check_choice, check_options, coerce, fits


@dataclass
class Section:
    steps: int = 1
    rate: float = 0.5
    mode: bool | str = "auto"
    names: list = field(default_factory=list)
    path: str | None = None


def test_coerce_converts_what_the_type_allows():
    built = build_dataclass(Section, {"steps": 3, "rate": 2, "mode": True, "names": ("a", "b")})
    assert (built.steps, built.rate, built.mode, built.names) == (3, 2.0, True, ["a", "b"])
    assert isinstance(built.rate, float)
    assert build_dataclass(Section, {"path": None}).path is None


@pytest.mark.parametrize("key, value, expected", [
    ("steps", 2.5, "'steps' must be of type int, got 2.5"),
    ("steps", True, "'steps' must be of type int, got True"),
    ("rate", "fast", "'rate' must be of type float, got 'fast'"),
    ("mode", 3, "'mode' must be of type bool or str, got 3"),
    ("names", "a", "'names' must be of type list, got 'a'"),
    ("steps", None, "'steps' must be of type int, got None"),
])
def test_coerce_refuses_the_wrong_type_naming_key_and_value(key, value, expected):
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        build_dataclass(Section, {key: value})


def test_unknown_key_lists_the_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown config key 'sec.stpes'; valid keys in \[sec\]: steps, rate"):
        build_dataclass(Section, {"stpes": 1}, prefix="sec")


def test_train_config_union_key_is_now_type_checked():
    # train.channels_last is bool | "auto": a number used to slip through to the validator
    with pytest.raises(ConfigError, match="'train.channels_last' must be of type bool or str, got 3"):
        config_from_dict({"train": {"channels_last": 3}})


def test_component_options_use_the_same_type_rule():
    def factory(base: int = 4, scale: float = 1.0, mode: bool | str = "auto"):
        return None

    assert fits(3, int) and fits(3, float) and not fits(True, int) and fits(None, int) is None
    check_options("generator", "toy", factory, {"base": 2, "scale": 1, "mode": False})
    with pytest.raises(ConfigError, match=r"generator 'toy': option base=2.5 has the wrong type; expected int"):
        check_options("generator", "toy", factory, {"base": 2.5})
    assert coerce(1, float, "x") == 1.0


def test_choice_and_range_rules():
    check_choice("gan.input", "density", ("density", "traditional"))
    with pytest.raises(ConfigError, match=r"^gan.input 'clean'; choose from: density, traditional$"):
        check_choice("gan.input", "clean", ("density", "traditional"))
    check_at_least([("a", 1, 1), ("b", 0.5, 0)])
    with pytest.raises(ConfigError, match=r"^b must be >= 2, got 1$"):
        check_at_least([("a", 5, 1), ("b", 1, 2)])
    with pytest.raises(ConfigError, match=r"^c must be >= 0, got nan$"):
        check_at_least([("c", float("nan"), 0)])
