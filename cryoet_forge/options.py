"""Option and value checking, in one place: the types of configuration keys (``build_dataclass``
for the TOML sections of ``forge train`` and ``forge evaluate``), the keyword options of a
registered component (``check_options``), and the choice/range rules of both validators.

Every failure is a ``ConfigError`` naming the key or option, the value and what was expected.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import inspect
import os
import types
import typing
from typing import Any, Callable, Iterable

from cryoet_forge.errors import ConfigError

#: the value types a configuration file or the command line can produce; only these are
#: checked against a factory's annotations (anything else is the component's to judge)
_PLAIN_TYPES = (type(None), bool, int, float, str, list, tuple, dict)
_SEQUENCES = (list, tuple, collections.abc.Sequence, collections.abc.Collection, collections.abc.Iterable)


def fits(value: Any, hint: Any) -> bool | None:
    """Whether a plain ``value`` fits the annotation ``hint``: True, False, or None (can't tell)."""
    if value is None or not isinstance(value, _PLAIN_TYPES):
        return None  # None often stands for "off" or "default" where the annotation leaves it out
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        verdicts = [fits(value, arm) for arm in typing.get_args(hint)]
        if True in verdicts:
            return True
        return False if all(v is False for v in verdicts) else None
    if hint is Any:
        return True
    if hint is None or hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint is os.PathLike or origin is os.PathLike:
        return False  # no plain value is a path object
    target = origin or hint
    if target in (dict, collections.abc.Mapping):
        return isinstance(value, dict)
    if target in _SEQUENCES:
        if not isinstance(value, (list, tuple)):
            return False
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        if len(args) == 1 or (target is tuple and len(set(args)) == 1):
            return not any(fits(item, args[0]) is False for item in value)
        return True
    return None


def check_options(kind: str, name: str, factory: Callable[..., Any], options: dict[str, Any],
                  signature: inspect.Signature | None = None) -> None:
    """ConfigError naming component ``name`` of ``kind`` and the option when ``options`` do not
    fit ``factory``'s signature: an unknown or missing option, or a plain value (what a config
    file or the command line gives) of a type the parameter's annotation rules out.

    ``create`` runs this on every factory; a lazy factory taking ``**options`` (one that imports
    its class only when called) runs it on the class it forwards to. A factory whose signature
    cannot be read is not checked.
    """
    if signature is None:
        try:
            signature = inspect.signature(factory)
        except (TypeError, ValueError):
            return
    accepted = [option for option, p in signature.parameters.items()
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    listed = ", ".join(accepted) if accepted else "(none)"
    what = f"{kind} {name!r}"
    takes_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    unknown = [option for option in options if option not in accepted]
    if unknown and not takes_any:
        names = ", ".join(repr(n) for n in unknown)
        hint = ""
        if len(unknown) == 1:
            close = difflib.get_close_matches(unknown[0], accepted, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{what}: unknown option{'s' if len(unknown) > 1 else ''} {names}{hint}; "
                          f"accepted options: {listed}")
    try:
        signature.bind(**options)
    except TypeError as exc:  # a required option left out, a positional-only one given by name
        raise ConfigError(f"{what}: {exc}; accepted options: {listed}") from None
    try:
        hints = typing.get_type_hints(factory.__init__ if inspect.isclass(factory) else factory)
    except Exception:  # an annotation that does not resolve: leave the types to the component
        return
    for option, value in options.items():
        if option in hints and option in signature.parameters and fits(value, hints[option]) is False:
            annotation = signature.parameters[option].annotation
            expected = annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)
            raise ConfigError(f"{what}: option {option}={value!r} has the wrong type; expected {expected}")


def coerce(value: Any, annotation: Any, key: str) -> Any:
    """``value`` of configuration key ``key`` as its field's type (int -> float, tuple -> list), or a
    ConfigError when the annotation rules it out."""
    origin = typing.get_origin(annotation) or annotation
    if dataclasses.is_dataclass(origin):
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r} must be a table, got {value!r}")
        return build_dataclass(typing.cast(type, origin), value, key)
    union = origin in (typing.Union, types.UnionType)
    arms = typing.get_args(annotation) if union else (origin,)
    wrong = (annotation is not Any and type(None) not in arms) if value is None else fits(value, annotation) is False
    if wrong:
        expected = " or ".join(getattr(a, "__name__", str(a)) for a in arms)
        raise ConfigError(f"config key {key!r} must be of type {expected}, got {value!r}")
    if origin is float and not isinstance(value, bool):
        return float(value)
    if origin is list:
        return list(value)
    if origin is dict:
        return dict(value)
    return value


def build_dataclass(cls: type, table: dict, prefix: str = "", skip: tuple[str, ...] = ()) -> Any:
    """Build dataclass ``cls`` from a TOML table, type-checking every value; fields in ``skip``
    cannot be set from the table. Unknown keys are a ConfigError naming the key."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name not in skip]
    kwargs = {}
    for key, value in table.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if key not in names:
            where = f"[{prefix}]" if prefix else "the top level"
            raise ConfigError(f"unknown config key {dotted!r}; valid keys in {where}: {', '.join(names)}")
        kwargs[key] = coerce(value, hints[key], dotted)
    return cls(**kwargs)


def check_choice(key: str, value: Any, choices: Iterable[str]) -> None:
    """ConfigError unless ``value`` is one of ``choices``."""
    choices = list(choices)
    if value not in choices:
        raise ConfigError(f"{key} {value!r}; choose from: {', '.join(choices)}")


def check_at_least(items: Iterable[tuple[str, Any, float]]) -> None:
    """ConfigError for the first (key, value, low) with ``value < low`` (NaN fails too)."""
    for key, value, low in items:
        if not value >= low:
            raise ConfigError(f"{key} must be >= {low}, got {value}")


#: the validated training rule of every CB3D the product trains by default (``forge classify
#: train``, the ``[classifier]`` of forge evaluate's embedded setting): narrow widths, one 64-wide
#: dense layer without dropout, 20% of each class held out to keep the best epoch, at most 40
#: epochs, patience 20 (docs/results.md, "The classifier training rule", says how it was chosen on a
#: held-out part of the real training split). ``cryoet_forge.classify.ClassifierOptions``' own defaults are the
#: paper's. Here, free of torch, so that command-line defaults can show it.
VALIDATED_RULE: dict[str, Any] = {"channels": [8, 16, 32, 32], "convs_per_block": [1, 1, 2, 2], "fc_width": 64,
                                  "dropout": 0.0, "epochs": 40, "batch_size": 16, "lr": 1e-3,
                                  "validation_fraction": 0.2, "patience": 20}
