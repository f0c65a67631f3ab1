"""Run-folder checkpoints without pickle.

``RUN_DIR/checkpoints/step-00000042/`` holds

- ``weights.safetensors``: the state of every network (``g_ds.``, ``g_sd.``, ``c_s.``,
  ``c_d.`` prefixes; spectral-norm power-iteration vectors included);
- ``state.safetensors``: every tensor of the training state (optimizer moments, RNG
  states of torch CPU/CUDA and of the noise generator, numpy's Mersenne-Twister keys);
- ``state.json``: everything else (step, data positions, optimizer hyper-parameters,
  GradScaler state, Python's RNG state, ...);
- ``checksums.json``: the SHA-256 of each of the three, verified before a checkpoint is read,
  so a file changed after it was written (bit rot, a partial copy, garbage of the same size)
  is refused with its name instead of resuming from it.

A checkpoint is written into a temporary folder which is then renamed, so a folder named
``step-N`` is always complete; the oldest ones beyond ``keep`` are deleted afterwards. Every
file gets the mode an ordinary output gets (0666 & ~umask). ``load_newest_intact`` goes back
from the newest checkpoint to the newest one that passes its checks and says which it skipped.

A checkpoint without ``checksums.json`` (written before checksums existed, or copied without
it) cannot be verified: it is read with a warning on stderr, or, under ``configure(strict=True)``
(``--strict`` of ``forge train --resume``, ``forge generate`` and ``forge uncertainty``), refused
like a corrupt one. Warnings go through ``progress.warn``, which ``--quiet`` does not silence.

``CheckpointManager`` is the training loop's view of all this: ``save`` (rank 0 writes, every rank
waits), ``load_newest_intact`` (resume) and ``last_good``; ``capture_rng``/``restore_rng`` are the
process RNG states a checkpoint carries for a bit-exact resume.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, NamedTuple, TypeVar

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from cryoet_forge import progress
from cryoet_forge.errors import InputError
from cryoet_forge.train.distributed import DistContext, barrier

STEP_DIR = re.compile(r"^step-(\d{8})$")
FILES = ("weights.safetensors", "state.safetensors", "state.json")
CHECKSUMS = "checksums.json"
T = TypeVar("T")

_settings: dict[str, Any] = {"strict": False}
#: checkpoints already reported as unverified in this process (each is said once)
_unverified_said: set[str] = set()


def configure(strict: bool | None = None) -> None:
    """Process-wide checkpoint checks: ``strict=True`` refuses a checkpoint without
    ``checksums.json`` instead of reading it unverified with a warning."""
    if strict is not None:
        _settings["strict"] = bool(strict)


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def checkpoint_steps(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of each checkpoint folder of a run, oldest first."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := STEP_DIR.match(p.name)))


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint folders of a run, oldest first."""
    return [p for _, p in checkpoint_steps(run_dir)]


def latest_checkpoint(run_dir: Path) -> Path:
    """The newest checkpoint folder, or InputError naming the run folder."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: no such run folder")
    found = list_checkpoints(run_dir)
    if not found:
        raise InputError(f"{run_dir}: no checkpoint found (expected {checkpoint_dir(run_dir)}/step-NNNNNNNN/)")
    return found[-1]


def flatten_state(prefix: str, state: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Move every tensor of a nested dict/list into ``tensors``; return the JSON-able rest."""
    if isinstance(state, torch.Tensor):
        key = prefix
        tensors[key] = state.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(state, dict):
        return {"__dict__": [[k, flatten_state(f"{prefix}.{k}", v, tensors)] for k, v in state.items()]}
    if isinstance(state, (list, tuple)):
        items = [flatten_state(f"{prefix}.{i}", v, tensors) for i, v in enumerate(state)]
        return {"__tuple__": items} if isinstance(state, tuple) else items
    if state is None or isinstance(state, (bool, int, float, str)):
        return state
    raise TypeError(f"cannot store {type(state).__name__} at {prefix} in a checkpoint")


def unflatten_state(node: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(node, dict):
        if "__tensor__" in node:
            return tensors[node["__tensor__"]]
        if "__dict__" in node:
            return {k: unflatten_state(v, tensors) for k, v in node["__dict__"]}
        if "__tuple__" in node:
            return tuple(unflatten_state(v, tensors) for v in node["__tuple__"])
        raise ValueError(f"unexpected table in checkpoint state: {sorted(node)}")
    if isinstance(node, list):
        return [unflatten_state(v, tensors) for v in node]
    return node


def save_checkpoint(run_dir: Path, step: int, weights: dict[str, torch.Tensor],
                    state: dict[str, Any], keep: int) -> Path:
    """Write checkpoint ``step`` atomically and delete all but the newest ``keep``."""
    root = checkpoint_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".step-{step:08d}.", dir=root))
    try:
        os.chmod(tmp, _default_dir_mode())  # mkdtemp makes 0700; a run folder is shared like any other
        save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()},
                  str(tmp / "weights.safetensors"))
        tensors: dict[str, torch.Tensor] = {}
        meta = flatten_state("state", state, tensors)
        save_file(tensors, str(tmp / "state.safetensors"))
        with open(tmp / "state.json", "w") as fh:
            json.dump({"format": 1, "step": step, "state": meta}, fh)
        sums = {name: _sha256(tmp / name) for name in FILES}
        with open(tmp / CHECKSUMS, "w") as fh:
            json.dump({"sha256": sums}, fh, indent=1)
        for name in (*FILES, CHECKSUMS):  # on disk before the rename makes the folder count as complete
            os.chmod(tmp / name, _default_dir_mode() & 0o666)  # safetensors writes 0600, open() 0644
            _fsync(tmp / name)
        if final.exists():  # the same step written again (a resumed run): replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    # half-written folders of a process killed while saving (only rank 0 ever writes here)
    for stale in root.glob(".step-*"):
        shutil.rmtree(stale, ignore_errors=True)
    return final


def _default_dir_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o777 & ~umask


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_checkpoint(path: Path, names: tuple[str, ...] = FILES) -> None:
    """InputError naming the first of ``names`` that is missing or whose SHA-256 differs from
    the one recorded when the checkpoint was written. A checkpoint without ``checksums.json``
    (written before checksums existed) is read unverified with a warning on stderr, or refused
    (InputError) under ``configure(strict=True)``."""
    path = Path(path)
    for name in names:
        if not (path / name).is_file():
            raise InputError(f"{path / name}: checkpoint file missing")
    record = path / CHECKSUMS
    if not record.exists():
        if _settings["strict"]:
            raise InputError(f"{path}: no {CHECKSUMS}, so the checkpoint cannot be verified (refused under "
                             "--strict)")
        if str(path) not in _unverified_said:
            _unverified_said.add(str(path))
            progress.warn(f"warning: {path}: no {CHECKSUMS}; the checkpoint is read unverified "
                          "(--strict refuses it)")
        return
    try:
        with open(record) as fh:
            sums = json.load(fh)["sha256"]
        expected = {name: str(sums[name]) for name in names}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{record}: corrupt checkpoint ({error_text(exc)})") from None
    for name in names:
        if _sha256(path / name) != expected[name]:
            raise InputError(f"{path / name}: corrupt checkpoint (SHA-256 differs from the one recorded "
                             "when it was written)")


def load_newest_intact(run_dir: Path, load: Callable[[Path], T]) -> tuple[Path, T]:
    """``(path, load(path))`` for the newest checkpoint of a run that ``load`` reads without an
    InputError, going back one checkpoint at a time; each one skipped is reported on stderr
    with its reason (``progress.warn``: also under ``--quiet``). InputError (the newest one's
    reason) when none is intact."""
    newest = latest_checkpoint(run_dir)
    errors: list[str] = []
    for path in reversed(list_checkpoints(run_dir)):
        try:
            loaded = load(path)
        except InputError as exc:
            errors.append(str(exc))
            progress.warn(f"warning: skipped checkpoint {path.name}: {exc}")
            continue
        if errors:
            progress.warn(f"warning: {newest.name} is not intact; using the newest intact checkpoint, {path.name}")
        return path, loaded
    raise InputError(f"{run_dir}: no intact checkpoint ({len(errors)} tried; newest: {errors[0]})")


def load_checkpoint(path: Path) -> tuple[int, dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint folder -> (step, weights, state); InputError naming a bad file."""
    path = Path(path)
    verify_checkpoint(path)
    try:
        weights = load_file(str(path / "weights.safetensors"))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise InputError(f"{path / 'weights.safetensors'}: corrupt checkpoint ({error_text(exc)})") from None
    try:
        tensors = load_file(str(path / "state.safetensors"))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise InputError(f"{path / 'state.safetensors'}: corrupt checkpoint ({error_text(exc)})") from None
    try:
        with open(path / "state.json") as fh:
            meta = json.load(fh)
        step = int(meta["step"])
        state = unflatten_state(meta["state"], tensors)
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path / 'state.json'}: corrupt checkpoint ({error_text(exc)})") from None
    return step, weights, state


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """Only the network weights of a checkpoint folder (for generation)."""
    file = Path(path) / "weights.safetensors"
    verify_checkpoint(Path(path), ("weights.safetensors",))
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise InputError(f"{file}: corrupt checkpoint ({error_text(exc)})") from None


def error_text(exc: BaseException) -> str:
    """An exception's message on one line, at most 200 characters (for ForgeError messages)."""
    text = " ".join(str(exc).split())
    return text[:200] or type(exc).__name__


def sub_state_dict(weights: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) + 1:]: v for k, v in weights.items() if k.startswith(prefix + ".")}


def capture_rng() -> dict[str, Any]:
    """This process's RNG states: torch CPU and CUDA, numpy's legacy generator, Python's ``random``."""
    np_state: Any = np.random.get_state()  # the legacy tuple (name, keys, pos, has_gauss, gaussian)
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
                  "cached_gaussian": float(np_state[4])},
        "python": random.getstate(),
    }


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


class Checkpoint(NamedTuple):
    """A checkpoint read back: its folder, step, network weights and training state."""

    path: Path
    step: int
    weights: dict[str, torch.Tensor]
    state: dict[str, Any]


class CheckpointManager:
    """The checkpoints of one training run (``RUN_DIR/checkpoints``), in the format above.

    ``save`` is collective under torchrun: every rank calls it, rank 0 writes the folder (atomic,
    checksummed, the newest ``keep`` kept) and all wait for it. ``load_newest_intact`` reads the
    newest checkpoint that passes its checks, saying which newer ones it skipped. ``last_good`` is
    the newest checkpoint this run wrote or resumed from (None on ranks other than 0 after a save).
    """

    def __init__(self, run_dir: str | os.PathLike, keep: int, ctx: DistContext | None = None):
        self.run_dir, self.keep = Path(run_dir), keep
        self.ctx = ctx if ctx is not None else DistContext()
        self.last_good: Path | None = None

    def paths(self) -> list[Path]:
        """The complete checkpoint folders, oldest first."""
        return list_checkpoints(self.run_dir)

    def load_newest_intact(self) -> Checkpoint:
        path, (step, weights, state) = load_newest_intact(self.run_dir, load_checkpoint)
        self.last_good = path
        return Checkpoint(path, step, weights, state)

    def save(self, step: int, weights: dict[str, torch.Tensor], state: dict[str, Any]) -> Path | None:
        path = None
        if self.ctx.is_main:
            path = save_checkpoint(self.run_dir, step, weights, state, keep=self.keep)
        barrier(self.ctx)
        self.last_good = path
        return path
