"""Stages of ``forge evaluate``: each one's result on disk with a record of what it was computed from.

A stage is a name, a description of its inputs (configuration sections and the keys of the
stages it reads) and a function. Its key is a digest of that description and the package
version. ``Stages.run`` stores the result in ``OUT/stages/<name>/`` (``stage.json``: key, inputs,
seconds, the value as JSON; ``arrays.safetensors``: its arrays), all or nothing
(``atomic_folder``). With ``resume`` a stage whose stored key equals the new one is read back
instead of computed; a changed input changes the key of that stage and of every stage that
reads it, so exactly those are recomputed.

Every result, computed or read back, is what the stored files say (a computed one is written
and read again), so a resumed evaluation and an uninterrupted one see the same values bit for
bit.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np

from cryoet_forge.classify import ClassificationResult, LabelledVolumes
from cryoet_forge.evaluate.datasets import EvaluationData
from cryoet_forge.evaluate.downstream import DownstreamResult

T = TypeVar("T")
STAGE_FILE = "stage.json"
ARRAYS_FILE = "arrays.safetensors"
#: the dataclasses a stage value may hold, by the name written in stage.json
TYPES: dict[str, type] = {cls.__name__: cls for cls in (LabelledVolumes, ClassificationResult,
                                                         DownstreamResult, EvaluationData)}


def digest(payload: Any) -> str:
    """A short hex digest of a JSON-able description (keys sorted, so dict order does not matter)."""
    from cryoet_forge import __version__

    text = json.dumps({"version": __version__, "payload": payload}, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def encode(value: Any, arrays: dict[str, np.ndarray]) -> Any:
    """``value`` as JSON, its arrays moved into ``arrays`` (named a0, a1, ...)."""
    if isinstance(value, np.ndarray):
        name = f"a{len(arrays)}"
        arrays[name] = np.ascontiguousarray(value)
        return {"__array__": name}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return {"__path__": str(value)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        kind = type(value).__name__
        if TYPES.get(kind) is not type(value):
            raise TypeError(f"stage values cannot hold a {kind}")
        fields = {f.name: encode(getattr(value, f.name), arrays) for f in dataclasses.fields(value)}
        return {"__dataclass__": kind, "fields": fields}
    if isinstance(value, dict):
        if any(not isinstance(k, str) or k.startswith("__") for k in value):
            raise TypeError(f"stage values need plain string keys, got {sorted(map(str, value))}")
        return {k: encode(v, arrays) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode(v, arrays) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"stage values cannot hold a {type(value).__name__}")


def decode(value: Any, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(value, dict):
        if "__array__" in value:
            return arrays[value["__array__"]]
        if "__path__" in value:
            return Path(value["__path__"])
        if "__dataclass__" in value:
            cls = TYPES[value["__dataclass__"]]
            return cls(**{k: decode(v, arrays) for k, v in value["fields"].items()})
        return {k: decode(v, arrays) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v, arrays) for v in value]
    return value


def _paths(value: Any) -> list[Path]:
    """Every ``Path`` a value holds (they must still exist for a stored stage to be used)."""
    if isinstance(value, Path):
        return [value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [p for f in dataclasses.fields(value) for p in _paths(getattr(value, f.name))]
    if isinstance(value, dict):
        return [p for v in value.values() for p in _paths(v)]
    if isinstance(value, (list, tuple)):
        return [p for v in value for p in _paths(v)]
    return []


class Stages:
    """The stage records of one evaluation folder (``OUT/stages``)."""

    def __init__(self, out: Path, resume: bool, log: Callable[[str], None]):
        self.folder = Path(out) / "stages"
        self.resume = resume
        self.log = log
        #: stage name -> key, seconds it took when computed, and "computed" or "reused"
        self.done: dict[str, dict[str, Any]] = {}

    def key(self, name: str) -> str:
        return self.done[name]["key"]

    def stored(self, name: str, key: str) -> tuple[Any, float] | None:
        """(value, seconds) of the stored stage ``name`` when its key is ``key`` and it is intact."""
        folder = self.folder / name
        try:
            record = json.loads((folder / STAGE_FILE).read_text())
            if record.get("key") != key:
                return None
            arrays: dict[str, np.ndarray] = {}
            if (folder / ARRAYS_FILE).is_file():
                from safetensors.numpy import load_file

                arrays = load_file(str(folder / ARRAYS_FILE))
            value = decode(record["value"], arrays)
        except (OSError, ValueError, KeyError, TypeError):  # absent, torn or from another version
            return None
        missing = [p for p in _paths(value) if not p.exists()]
        if missing:
            self.log(f"stage {name}: recomputed, {missing[0]} is gone")
            return None
        return value, float(record.get("seconds", 0.0))

    def write(self, name: str, key: str, inputs: Any, value: Any, seconds: float) -> None:
        from safetensors.numpy import save_file

        from cryoet_forge.classify import write_json
        from cryoet_forge.io.atomic import atomic_folder

        arrays: dict[str, np.ndarray] = {}
        encoded = encode(value, arrays)
        with atomic_folder(self.folder / name, stale=(STAGE_FILE, ARRAYS_FILE)) as tmp:
            if arrays:
                save_file(arrays, str(tmp / ARRAYS_FILE))
            write_json(tmp / STAGE_FILE, {"stage": name, "key": key, "inputs": inputs,
                                          "seconds": round(seconds, 2), "value": encoded})

    def run(self, name: str, inputs: dict[str, Any], compute: Callable[[], T]) -> T:
        """The value of stage ``name``: read back (resume, same key) or computed and stored.

        ``inputs``: everything the result depends on besides the code (JSON-able; the keys of
        upstream stages by ``self.key(name)``).
        """
        key = digest({"stage": name, "inputs": inputs})
        if self.resume:
            found = self.stored(name, key)
            if found is not None:
                self.log(f"stage {name}: finished before, read back from {self.folder / name}")
                self.done[name] = {"key": key, "seconds": found[1], "status": "reused"}
                return found[0]
        tic = time.perf_counter()
        value = compute()
        seconds = time.perf_counter() - tic
        self.write(name, key, inputs, value, seconds)
        found = self.stored(name, key)
        if found is None:
            raise OSError(f"{self.folder / name}: stage written but not readable")
        self.done[name] = {"key": key, "seconds": round(seconds, 2), "status": "computed"}
        return found[0]
