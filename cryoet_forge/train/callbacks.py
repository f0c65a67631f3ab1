"""Training callbacks: everything the loop does besides training, one object per concern.

The loop (``cryoet_forge.train.loop.fit``) calls each callback's hooks on every rank, in order:

- ``on_train_start(state)`` once, before the first step (``state.step`` is the resumed step);
- ``on_step_end(state)`` after each step, with ``state.losses`` (this step's scalars, detached,
  still on the device: reading one as a float waits for the GPU) and, at a log step, ``state.logged``
  (the means since the last log step over all ranks, with the throughput);
- ``on_checkpoint(state)`` after a checkpoint is written (``state.last_checkpoint``; None on ranks
  other than 0);
- ``on_train_end(state)`` once, after the last step, also when training ends on an error
  (``state.error``; an error of this hook then does not hide the run's own).

A callback is any object with some of these methods (``Callback`` is the protocol, and a base
class whose hooks do nothing). ``state.stop(reason)`` ends training after the current step: a
checkpoint of that step is written and ``forge train --resume`` continues from it exactly as an
uninterrupted run would. Under torchrun every rank stops when any rank asks (one small all-reduce a
step). Raising an exception ends the run with that error.

The built-in callbacks, in the order they run: ``FiniteLosses`` (a TrainingError at a non-finite
loss), ``LossLogger`` (the means and throughput of ``state.logged``), ``TensorBoardLogger``,
``ProgressBar`` and ``Montages`` (the last three on rank 0 only). Plugins add theirs through the
``forge_register_train_callbacks`` hook (``plugin_callbacks``): every installed plugin's callbacks
run, after the built-in ones, in the order pluggy calls the hooks; ``train(..., callbacks=[...])``
appends more after those.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Protocol, Sequence

import torch

from cryoet_forge import progress
from cryoet_forge.config import TrainConfig
from cryoet_forge.errors import PluginError, TrainingError
from cryoet_forge.registry import get_registry
from cryoet_forge.train.checkpoint import CheckpointManager
from cryoet_forge.train.distributed import DistContext, mean_across_ranks
from cryoet_forge.viz import save_slice_montage

HOOKS = ("on_train_start", "on_step_end", "on_checkpoint", "on_train_end")


class Run(Protocol):
    """What a callback may rely on of the trainer (``cryoet_forge.train.loop.Trainer``, which also
    holds the networks ``nets``, the optimisers ``g_opt``/``c_opt`` and more)."""

    cfg: TrainConfig
    run_dir: Path
    ctx: DistContext
    step: int
    checkpoints: CheckpointManager
    last_images: tuple[torch.Tensor, ...]  # d, G_DS(d), its cycle, s, G_SD(s), its cycle (first volume each)
    nets: dict[str, torch.nn.Module]


@dataclass
class TrainState:
    """What the callbacks see of a run: the trainer (networks ``trainer.nets``, optimisers, config),
    the step just done, its losses, and the stop request."""

    trainer: Run
    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    logged: dict[str, float] | None = None
    should_stop: bool = False
    stop_reason: str = ""
    error: BaseException | None = None

    @property
    def step(self) -> int:
        """Steps done (the step just finished, counted from 1)."""
        return self.trainer.step

    @property
    def config(self) -> TrainConfig:
        return self.trainer.cfg

    @property
    def steps(self) -> int:
        """The step the run ends at (``train.steps``)."""
        return self.config.train.steps

    @property
    def run_dir(self) -> Path:
        return self.trainer.run_dir

    @property
    def is_main(self) -> bool:
        return self.trainer.ctx.is_main

    @property
    def last_checkpoint(self) -> Path | None:
        return self.trainer.checkpoints.last_good

    def every(self, n: int) -> bool:
        """True every ``n`` steps and at the last one (never for ``n`` = 0)."""
        return n > 0 and (self.step % n == 0 or self.step == self.steps)

    @property
    def at_log(self) -> bool:
        return self.every(self.config.log.every)

    @property
    def at_image(self) -> bool:
        return self.every(self.config.log.image_every)

    @property
    def at_checkpoint(self) -> bool:
        return self.step == self.steps or self.every(self.config.log.checkpoint_every)

    def stop(self, reason: str) -> None:
        """End training after this step (with a checkpoint of it)."""
        self.should_stop, self.stop_reason = True, reason


class Callback(Protocol):
    """The hooks a training callback may implement (each does nothing here; subclass and override)."""

    def on_train_start(self, state: TrainState) -> None:
        return None

    def on_step_end(self, state: TrainState) -> None:
        return None

    def on_checkpoint(self, state: TrainState) -> None:
        return None

    def on_train_end(self, state: TrainState) -> None:
        return None


class CallbackList:
    """Callbacks called in order, each hook only on the callbacks that have it."""

    def __init__(self, callbacks: Iterable[Any]):
        self.callbacks = list(callbacks)

    def _call(self, hook: str, state: TrainState) -> None:
        for callback in self.callbacks:
            method = getattr(callback, hook, None)
            if method is not None:
                method(state)

    def on_train_start(self, state: TrainState) -> None:
        self._call("on_train_start", state)

    def on_step_end(self, state: TrainState) -> None:
        self._call("on_step_end", state)

    def on_checkpoint(self, state: TrainState) -> None:
        self._call("on_checkpoint", state)

    def on_train_end(self, state: TrainState) -> None:
        """Every callback's ``on_train_end``, even after one fails; the first failure is raised
        afterwards, unless the run is already ending on an error (that one is the one to see)."""
        first: Exception | None = None
        for callback in self.callbacks:
            method = getattr(callback, "on_train_end", None)
            try:
                if method is not None:
                    method(state)
            except Exception as exc:
                first = first or exc
        if first is not None and state.error is None:
            raise first


def check_callback(callback: Any) -> Any:
    """``callback`` if it is a training callback (an object with at least one hook), else PluginError."""
    hooks = ", ".join(HOOKS)
    if isinstance(callback, type):
        raise PluginError(f"forge_register_train_callbacks: register() takes a callback object, got the class "
                          f"{callback.__name__}; register an instance")
    if not any(callable(getattr(callback, hook, None)) for hook in HOOKS):
        raise PluginError(f"forge_register_train_callbacks: register() takes a training callback (an object "
                          f"with one or more of {hooks}), got {type(callback).__name__}")
    return callback


def plugin_callbacks() -> list[Any]:
    """The callbacks plugins add through ``forge_register_train_callbacks``, in the order pluggy
    calls the hooks; a plugin whose registration fails stops training before it starts
    (PluginError) rather than train without its callback."""
    return get_registry().collect("forge_register_train_callbacks", check_callback)


# -- the built-in callbacks ----------------------------------------------------------------------

def check_finite(stats: dict[str, torch.Tensor], step: int, last_good: Path | None) -> None:
    """TrainingError naming each non-finite value of ``stats`` and the last good checkpoint."""
    values = {k: float(v) for k, v in stats.items()}
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    if bad:
        listed = ", ".join(f"{k}={v}" for k, v in bad.items())
        where = str(last_good) if last_good is not None else "none written yet"
        raise TrainingError(f"non-finite loss at step {step} ({listed}); last good checkpoint: {where}")


class FiniteLosses(Callback):
    """Stops the run (TrainingError) at a non-finite loss: every step where reading the losses is
    free (``every_step``: the CPU), else at each step that logs, saves a montage or a checkpoint."""

    def __init__(self, every_step: bool):
        self.every_step = every_step

    def on_step_end(self, state: TrainState) -> None:
        if self.every_step or state.at_log or state.at_checkpoint or state.at_image:
            check_finite(state.losses, state.step, state.last_checkpoint)


class LossLogger(Callback):
    """At each log step ``state.logged``: every loss averaged over the steps since the last log step
    and over the ranks (checked finite), and ``throughput/pairs_per_s``. Runs on every rank (the
    average is collective)."""

    def on_train_start(self, state: TrainState) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count, self.tic = 0, time.perf_counter()

    def on_step_end(self, state: TrainState) -> None:
        self.count += 1
        for k, v in state.losses.items():
            self.sums[k] = self.sums.get(k, 0) + v
        if not state.at_log:
            return
        ctx: DistContext = state.trainer.ctx
        names = sorted(self.sums)
        reduced = mean_across_ranks(ctx, torch.stack([self.sums[k] / self.count for k in names]))
        if ctx.device.type == "cuda":
            torch.cuda.synchronize(ctx.device)
        elapsed = time.perf_counter() - self.tic
        values = dict(zip(names, reduced.tolist()))
        check_finite({k: torch.tensor(v) for k, v in values.items()}, state.step, state.last_checkpoint)
        values["throughput/pairs_per_s"] = self.count * state.config.train.batch_size / max(elapsed, 1e-9)
        state.logged = values
        self.sums, self.count, self.tic = {}, 0, time.perf_counter()


def tensorboard_writer(run_dir: Path, step: int):
    """A TensorBoard writer for ``run_dir/tensorboard``, or None (one line) without tensorboard."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # optional dependency (the tensorboard extra)
    except ImportError:
        progress.log("tensorboard is not installed: no event files are written "
                     "(pip install 'cryoet-forge[tensorboard]'); losses are still in the checkpoints' state")
        return None
    return SummaryWriter(str(run_dir / "tensorboard"), purge_step=step or None)


class TensorBoardLogger(Callback):
    """``state.logged`` into ``RUN_DIR/tensorboard`` (events after a resumed step are purged)."""

    writer: Any = None

    def on_train_start(self, state: TrainState) -> None:
        self.writer = tensorboard_writer(state.run_dir, state.step)

    def on_step_end(self, state: TrainState) -> None:
        if self.writer is not None and state.logged is not None:
            for k, v in state.logged.items():
                self.writer.add_scalar(k, v, state.step)

    def on_train_end(self, state: TrainState) -> None:
        if self.writer is not None:
            self.writer.close()


class ProgressBar(Callback):
    """The "GAN training" progress line, with the logged losses and throughput; says an early stop."""

    bar: Any = None

    def on_train_start(self, state: TrainState) -> None:
        self.bar = progress.stage("GAN training", state.steps, "steps", start=state.step)

    def on_step_end(self, state: TrainState) -> None:
        info = None
        if state.logged is not None:
            v = state.logged
            info = (f"G {v['loss/generator']:.3g} cycle {v['loss/cycle']:.3g} "
                    f"C {v['loss/critic']:.3g} {v['throughput/pairs_per_s']:.1f} pairs/s")
        self.bar.update(state.step, info)

    def on_train_end(self, state: TrainState) -> None:
        if self.bar is not None:
            self.bar.close()
        if state.should_stop and state.error is None:
            progress.log(f"training stopped at step {state.step} of {state.steps}"
                         + (f": {state.stop_reason}" if state.stop_reason else ""))


def save_montage(run_dir: Path, step: int, images: Sequence[torch.Tensor]) -> Path:
    """``RUN_DIR/images/step-N.png``: the first volume of d, G_DS(d), its cycle, s, G_SD(s), its cycle."""
    d, fs, cd, s, fd, cs = (x[0, 0].float().cpu().numpy() for x in images)
    path = run_dir / "images" / f"step-{step:08d}.png"
    save_slice_montage(path, [[d, fs, cd], [s, fd, cs]], row_labels=["D -> S -> D", "S -> D -> S"],
                       col_labels=["input", "generated", "cycled"], title=f"step {step}")
    return path


class Montages(Callback):
    """A slice montage of the last step's translations every ``log.image_every`` steps."""

    def on_step_end(self, state: TrainState) -> None:
        if state.at_image:
            save_montage(state.run_dir, state.step, state.trainer.last_images)


def default_callbacks(cfg: TrainConfig, ctx: DistContext) -> list[Any]:
    """The built-in callbacks of a run on this rank, in the order they run."""
    callbacks: list[Any] = [FiniteLosses(every_step=ctx.device.type == "cpu"), LossLogger()]
    if ctx.is_main:
        callbacks.append(TensorBoardLogger())
        if cfg.log.progress:
            callbacks.append(ProgressBar())
        callbacks.append(Montages())
    return callbacks
