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

The evaluation itself is a table of ``EvaluationStage`` declarations (``StageTable``): each
names the values it reads (``inputs``) and adds (``outputs``), and the table runs them in
order, each stored and resumed through ``Stages``. The table is checked before its first
stage runs: a stage that reads a value no earlier stage produces is one clear error. A stage
that its configuration turns off (``enabled``) is skipped, and so is every stage that reads
one of its outputs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TypeVar

import numpy as np
from safetensors.numpy import load_file, save_file

from cryoet_forge import __version__
from cryoet_forge.classify import ClassificationResult, LabelledVolumes
from cryoet_forge.errors import PluginError
from cryoet_forge.evaluate.datasets import EvaluationData
from cryoet_forge.evaluate.downstream import DownstreamResult
from cryoet_forge.io.atomic import atomic_folder, write_json_atomic

T = TypeVar("T")
STAGE_FILE = "stage.json"
ARRAYS_FILE = "arrays.safetensors"
#: the dataclasses a stage value may hold, by the name written in stage.json
TYPES: dict[str, type] = {cls.__name__: cls for cls in (LabelledVolumes, ClassificationResult,
                                                         DownstreamResult, EvaluationData)}


def digest(payload: Any) -> str:
    """A short hex digest of a JSON-able description (keys sorted, so dict order does not matter)."""
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
        arrays: dict[str, np.ndarray] = {}
        encoded = encode(value, arrays)
        with atomic_folder(self.folder / name, stale=(STAGE_FILE, ARRAYS_FILE)) as tmp:
            if arrays:
                save_file(arrays, str(tmp / ARRAYS_FILE))
            write_json_atomic(tmp / STAGE_FILE, {"stage": name, "key": key, "inputs": inputs,
                                                 "seconds": round(seconds, 2), "value": encoded}, allow_nan=False)

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


# --- the table of stages ------------------------------------------------------------------------

#: a stage name: its folder under ``OUT/stages`` (lower case, digits, ``-`` and ``_``)
STAGE_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")
#: stage records that are not stages of the table: the time budget (``--budget-minutes``) and
#: the ablation variants (``ablation-1``, ...; parts of the ``ablations`` stage)
RESERVED_NAMES = ("budget",)
RESERVED_PREFIX = "ablation-"


@dataclass(frozen=True)
class EvaluationStage:
    """One stage of ``forge evaluate``.

    ``inputs``: the names of the values it reads, the evaluation's base values and earlier
    stages' outputs; ``outputs``: the names of the values it adds (default: its own name).
    ``function(view)`` computes its result from ``view[input]``. The result is stored under
    ``OUT/stages/<name>`` (JSON with arrays: ``encode``) and read back by ``--resume`` while
    ``fingerprint(view)``, a JSON-able description of everything the result depends on, is
    unchanged; without one it is the record keys of the stages that produced its inputs and
    the base values that say what is computed (the configuration). ``unpack(view, value)``:
    the outputs from the stored value (default: the value is the one output, or a dict of the
    outputs). ``after``: the stage it follows (a plugin's stage; default: the last stage before
    the report). ``enabled(view)`` False: skipped, with every stage that reads its outputs.
    ``stored`` False: computed on every run (a stage that stores its own parts, the report).
    """

    name: str
    function: Callable[[StageView], Any]
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    fingerprint: Callable[[StageView], Any] | None = None
    unpack: Callable[[StageView, Any], dict[str, Any]] | None = None
    after: str | None = None
    enabled: Callable[[StageView], bool] | None = None
    stored: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", _names(self.inputs))
        object.__setattr__(self, "outputs", _names(self.outputs) or (self.name,))

    @property
    def label(self) -> str:
        """How errors name it: its name and the module of its function."""
        module = getattr(self.function, "__module__", None)
        return f"evaluation stage {self.name!r}" + (f" ({module})" if module else "")


def _names(value: Any) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


class StageView:
    """What one stage's functions see: the values it declared as inputs (``view[name]``), the
    record keys of earlier stages (``key``), the stage store and log, and a scratch dict that
    lives while the stage runs (what ``function`` built that ``unpack`` may reuse)."""

    def __init__(self, stage: EvaluationStage, table: StageTable):
        self.stage, self.table = stage, table
        self.store: Stages = table.store
        self.log = table.store.log
        self.scratch: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in self.stage.inputs:
            raise PluginError(f"{self.stage.label} reads {name!r} without naming it in its inputs")
        return self.table.values[name]

    def key(self, name: str) -> str:
        """The record key of stage ``name`` (run before this one)."""
        return self.store.key(name)


class StageTable:
    """The stages of one evaluation, in order, over the base values the pipeline provides.

    ``described``: the base values that say what is computed (a stage without a ``fingerprint``
    that reads one depends on its value); the others say where or how (the output folder, the
    resume flag) and are not part of any record.
    """

    def __init__(self, stages: Sequence[EvaluationStage], values: dict[str, Any], store: Stages,
                 described: Iterable[str] = ()):
        self.stages = list(stages)
        self.values = dict(values)
        self.store = store
        self.described = frozenset(described)
        #: value name -> the stage that produced it (absent: a base value)
        self.producer: dict[str, EvaluationStage] = {}
        #: the outputs of the stages that were skipped
        self.off: set[str] = set()
        #: the stages that ran (computed, read back, or not stored), by name
        self.ran: list[str] = []
        check_flow(self.stages, self.values)

    def run(self) -> dict[str, Any]:
        """Run every stage in order; returns the values (base values and outputs)."""
        for stage in self.stages:
            view = StageView(stage, self)
            dark = [name for name in stage.inputs if name in self.off]
            if dark or (stage.enabled is not None and not stage.enabled(view)):
                why = f"{dark[0]} is off" if dark else "turned off by the configuration"
                self.store.log(f"stage {stage.name}: skipped ({why})")
                self.off.update(stage.outputs)
                continue
            self.values.update(self.run_stage(stage, view))
            self.producer.update({name: stage for name in stage.outputs})
            self.ran.append(stage.name)
        return self.values

    def run_stage(self, stage: EvaluationStage, view: StageView) -> dict[str, Any]:
        """The outputs of one stage: stored and read back, or computed (``stored`` False)."""

        def outputs(value: Any) -> dict[str, Any]:
            if stage.unpack is not None:
                return stage.unpack(view, value)
            return {stage.outputs[0]: value} if len(stage.outputs) == 1 else value

        def compute() -> Any:  # a value that does not give the declared outputs is not stored
            value = stage.function(view)
            if stage.unpack is None:
                check_outputs(stage, outputs(value))
            return value

        if stage.stored:
            fingerprint = stage.fingerprint(view) if stage.fingerprint is not None else self.fingerprint(stage)
            value = self.store.run(stage.name, fingerprint, compute)
        else:
            value = compute()
        return check_outputs(stage, outputs(value))

    def fingerprint(self, stage: EvaluationStage) -> dict[str, Any]:
        """What a stage without its own ``fingerprint`` depends on: per input, the record key of
        the stage that produced it, or the value itself (a base value of ``described``, or an
        output of a stage that is not stored)."""
        described: dict[str, Any] = {}
        for name in stage.inputs:
            source = self.producer.get(name)
            if source is not None and source.stored:
                described[name] = {"stage": source.name, "key": self.store.key(source.name)}
            elif source is not None or name in self.described:
                described[name] = describe(self.values[name])
        return {"inputs": described}


def check_outputs(stage: EvaluationStage, outputs: Any) -> dict[str, Any]:
    """``outputs`` when it is a dict of exactly the stage's declared outputs, else PluginError."""
    if not isinstance(outputs, dict) or set(outputs) != set(stage.outputs):
        got = sorted(outputs) if isinstance(outputs, dict) else type(outputs).__name__
        raise PluginError(f"{stage.label} gave {got}, not its outputs {list(stage.outputs)}")
    return outputs


def describe(value: Any) -> Any:
    """A JSON-able description of a value for a stage's record: its ``to_dict()`` when it has
    one, else its JSON form with each array replaced by a digest of its bytes."""
    if callable(getattr(value, "to_dict", None)):
        value = value.to_dict()
    arrays: dict[str, np.ndarray] = {}
    try:
        encoded = encode(value, arrays)
    except TypeError:  # not storable: named by its type and text
        return {"type": type(value).__name__, "text": str(value)}
    sums = {name: [str(a.dtype), list(a.shape), hashlib.blake2b(a.tobytes(), digest_size=16).hexdigest()]
            for name, a in arrays.items()}
    return {"value": encoded, "arrays": sums} if sums else encoded


def jsonable(value: Any) -> Any:
    """A stage value as plain JSON for results.json: arrays as lists, paths as text, the stored
    dataclasses by their ``to_dict()`` (or their fields)."""
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if callable(getattr(value, "to_dict", None)):
        return jsonable(value.to_dict())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def check_stage(stage: Any) -> EvaluationStage:
    """A plugin's stage declaration, or PluginError saying what is wrong with it."""
    if not isinstance(stage, EvaluationStage):
        raise PluginError("forge_register_evaluation_stages: register() takes an EvaluationStage "
                          f"(cryoet_forge.evaluate.stages), got {type(stage).__name__}")
    if not isinstance(stage.name, str) or not STAGE_NAME.match(stage.name):
        raise PluginError(f"evaluation stage name {stage.name!r}: expected lower case letters, digits, '-' "
                          "and '_', starting with a letter")
    if stage.name in RESERVED_NAMES or stage.name.startswith(RESERVED_PREFIX):
        raise PluginError(f"{stage.label}: the name is reserved for the evaluation's own records "
                          f"({', '.join(RESERVED_NAMES)}, {RESERVED_PREFIX}N)")
    if not callable(stage.function):
        raise PluginError(f"{stage.label}: function is not callable")
    for field_name in ("inputs", "outputs"):
        names = getattr(stage, field_name)
        if not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
            raise PluginError(f"{stage.label}: {field_name} must be distinct non-empty names, got {list(names)}")
    return stage


def insert_stages(table: Sequence[EvaluationStage], extra: Sequence[EvaluationStage]) -> list[EvaluationStage]:
    """``table`` (its last stage the report) with each stage of ``extra`` after the stage its
    ``after`` names (in the order given among stages after the same one), or before the report."""
    stages = list(table)
    for stage in extra:
        check_stage(stage)
        names = [s.name for s in stages]
        if stage.name in names:
            raise PluginError(f"{stage.label}: a stage of that name is already in the evaluation")
        anchor = stage.after if stage.after is not None else names[-2]
        if anchor not in names[:-1]:
            choices = ", ".join(names[:-1])
            raise PluginError(f"{stage.label}: after={anchor!r} names no stage it can follow; choose from: {choices}")
        index = names.index(anchor) + 1
        while index < len(stages) - 1 and stages[index].after == anchor:  # the built-ins have none
            index += 1
        stages.insert(index, stage)
    return stages


def check_flow(stages: Sequence[EvaluationStage], base: Iterable[str]) -> None:
    """PluginError unless every stage reads only base values and earlier stages' outputs, and no
    two stages (or a stage and a base value) produce the same value."""
    available = {name: "the evaluation" for name in base}
    later = {name: stage.name for stage in stages for name in stage.outputs}
    for stage in stages:
        missing = [name for name in stage.inputs if name not in available]
        if missing:
            name = missing[0]
            where = (f"; stage {later[name]!r} produces it later (after={later[name]!r} puts the stage after it)"
                     if name in later else f"; available: {', '.join(sorted(available))}")
            raise PluginError(f"{stage.label} reads {name!r}, which no stage before it produces{where}")
        for name in stage.outputs:
            if name in available:
                raise PluginError(f"{stage.label} outputs {name!r}, which {available[name]} already provides")
            available[name] = f"stage {stage.name!r}"
