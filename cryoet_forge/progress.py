"""One progress display for every long stage of every command.

A stage (simulation, GAN steps, classifier epochs, generation, downstream seeds, ...) is

    with progress.stage("GAN training", total=600, unit="steps") as bar:
        for ...:
            bar.advance(info="G 0.12 cycle 1.3")

and shows, on stderr, in one of three modes:

- ``bar``: a rich progress bar with elapsed time, ETA and the stage's ``info`` (the default
  when stderr is a terminal). Stages opened inside another stage are shown below it and
  removed when they end; top-level stages stay on screen.
- ``lines``: a plain line when the stage starts, then at most one every
  ``FORGE_PROGRESS_INTERVAL`` seconds (default 10) and one when it ends, each with done/total,
  elapsed, ETA and info (the default when stderr is not a terminal: a CI log, ``nohup``).
  A stage inside another prints no start line, and an end line only when it ran long
  enough to print a periodic one.
- ``off``: nothing (``--quiet``, or ``FORGE_PROGRESS=off``).

``FORGE_PROGRESS=bar|lines|off`` forces a mode. ``log(message)`` prints a line on stderr
(above the bars while they are shown) unless the mode is ``off``. ``warn(message)`` prints a
line on stderr in every mode, ``off`` included: quiet silences progress, not warnings (a
skipped or unverified checkpoint, removed leftovers of a killed run). Results (the headline
numbers, where the report is) are the commands' own output on stdout and are never silenced.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import click

# rich is imported when the first progress bar opens: `forge --help` imports this module (start-up time)

MODES = ("bar", "lines", "off")

_settings: dict[str, Any] = {"quiet": False}
_live: dict[str, Any] = {"progress": None, "open": 0}


def configure(quiet: bool | None = None) -> None:
    """Set the process-wide progress settings (``quiet=True``: mode ``off``)."""
    if quiet is not None:
        _settings["quiet"] = bool(quiet)


def mode() -> str:
    """The output mode now in force: ``bar``, ``lines`` or ``off``."""
    if _settings["quiet"]:
        return "off"
    forced = os.environ.get("FORGE_PROGRESS", "").strip().lower()
    if forced in MODES:
        return forced
    stream = sys.stderr
    return "bar" if stream is not None and hasattr(stream, "isatty") and stream.isatty() else "lines"


def interval() -> float:
    """Seconds between two plain progress lines of one stage (``FORGE_PROGRESS_INTERVAL``)."""
    try:
        return max(0.0, float(os.environ.get("FORGE_PROGRESS_INTERVAL", "10")))
    except ValueError:
        return 10.0


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _rich():
    if _live["progress"] is None:
        # start-up: rich is loaded when a progress bar is first drawn, not by `forge --help`
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        _live["progress"] = Progress(
            TextColumn("{task.description}"), BarColumn(bar_width=20), MofNCompleteColumn(),
            TextColumn("{task.fields[unit]}"),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
            console=Console(stderr=True), transient=False)
        _live["progress"].start()
    return _live["progress"]


def log(message: str) -> None:
    """One line on stderr, unless progress is off; above the bars while they are shown."""
    current = mode()
    if current == "off":
        return
    if current == "bar" and _live["progress"] is not None:
        _live["progress"].console.print(message, markup=False, highlight=False)
    else:
        print(message, file=sys.stderr, flush=True)


def warn(message: str) -> None:
    """One line on stderr in every mode (``--quiet`` and ``FORGE_PROGRESS=off`` included);
    above the bars while they are shown."""
    if mode() == "bar" and _live["progress"] is not None:
        _live["progress"].console.print(message, markup=False, highlight=False)
    else:
        print(message, file=sys.stderr, flush=True)


class Stage:
    """One long-running stage; see the module docstring. ``start`` counts work already done
    (a resumed run): the ETA is computed from the rate of this session's work only."""

    def __init__(self, label: str, total: int, unit: str = "", start: int = 0, info: str = "",
                 enabled: bool = True):
        self.label, self.total, self.unit = label, max(int(total), 0), unit
        self.done, self.first, self.info = int(start), int(start), info
        self.mode = mode() if enabled else "off"
        self.started = time.perf_counter()
        self.last_line = self.started
        self.closed = False
        self.task = None
        self.nested = _live["open"] > 0
        self.printed = False
        _live["open"] += 1 if self.mode != "off" else 0
        if self.mode == "bar":
            self.task = _rich().add_task(label, total=self.total or None, completed=self.done,
                                         unit=unit, info=info)
        elif self.mode == "lines" and not self.nested:
            what = f"{self.total} {unit}".strip()
            print(f"{label}: started ({what})" if self.total else f"{label}: started", file=sys.stderr, flush=True)

    # -- updates ------------------------------------------------------------------------------
    def advance(self, n: int = 1, info: str | None = None) -> None:
        self.update(self.done + n, info)

    def update(self, completed: int | None = None, info: str | None = None, total: int | None = None) -> None:
        """``total``: the amount of work, when it is known only once the stage runs (PRDC tiles)."""
        if completed is not None:
            self.done = int(completed)
        if info is not None:
            self.info = info
        if total is not None:
            self.total = max(int(total), 0)
        if self.mode == "bar" and self.task is not None:
            _live["progress"].update(self.task, completed=self.done, info=self.info, total=self.total or None)
        elif self.mode == "lines":
            now = time.perf_counter()
            if now - self.last_line >= interval() and self.done < self.total:
                self._line(now)

    def eta(self, now: float | None = None) -> float | None:
        now = time.perf_counter() if now is None else now
        work = self.done - self.first
        if work <= 0 or not self.total:
            return None
        return (self.total - self.done) * (now - self.started) / work

    def _line(self, now: float, final: bool = False) -> None:
        self.last_line, self.printed = now, True
        elapsed = format_seconds(now - self.started)
        if final:
            text = f"{self.label}: done, {self.done} {self.unit} in {elapsed}".replace("  ", " ")
        else:
            eta = self.eta(now)
            pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
            text = (f"{self.label}: {self.done}/{self.total} {self.unit}{pct}, {elapsed} elapsed, "
                    f"eta {format_seconds(eta) if eta is not None else '?'}")
        if self.info:
            text += f"  {self.info}"
        print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.mode != "off":
            _live["open"] = max(0, _live["open"] - 1)
        if self.mode == "bar" and self.task is not None:
            bar = _live["progress"]
            if self.nested:
                bar.remove_task(self.task)
            else:
                bar.update(self.task, completed=self.done, info=self.info)
            if _live["open"] == 0:
                bar.stop()
                _live["progress"] = None
        elif self.mode == "lines" and (not self.nested or self.printed):
            # a short stage inside another one ends silently; its parent's lines show the progress
            self._line(time.perf_counter(), final=True)

    def __enter__(self) -> "Stage":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def stage(label: str, total: int, unit: str = "", start: int = 0, info: str = "",
          enabled: bool = True) -> Stage:
    """Open a stage (use it as a context manager); ``enabled=False`` shows nothing."""
    return Stage(label, total, unit, start, info, enabled)


def quiet_option(command):
    """The ``--quiet/-q`` option of a long-running command: no progress output at all."""
    def callback(ctx, param, value):
        if value:
            configure(quiet=True)
        return value

    return click.option("--quiet", "-q", is_flag=True, expose_value=False, is_eager=True, callback=callback,
                        help="No progress bars, periodic lines or stage messages (results still print).")(command)
