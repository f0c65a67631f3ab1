"""Input files: one check that says what a path is when it is not a readable regular file."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Iterable

from cryoet_forge.errors import InputError

_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def check_input_file(path: str | os.PathLike, what: str = "file") -> Path:
    """``path`` when it names a regular file (through symlinks); else InputError saying what it
    is instead: missing (or a broken link), a folder, a FIFO, a device, a socket."""
    p = Path(path)
    try:
        mode = os.stat(p).st_mode
    except FileNotFoundError:
        broken = " (a broken symbolic link)" if p.is_symlink() else ""
        raise InputError(f"{p}: no such {what}{broken}") from None
    except OSError as exc:
        raise InputError(f"{p}: cannot read this {what} ({exc.strerror})") from None
    if stat.S_ISREG(mode):
        return p
    article = "an" if what[:1].lower() in "aeiou" or what.startswith("MRC") else "a"
    if stat.S_ISDIR(mode):
        raise InputError(f"{p}: a folder; expected {article} {what}")
    kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
    link = " (through a symbolic link)" if p.is_symlink() else ""
    raise InputError(f"{p}: {kind}{link}; expected a regular {what}")


def check_output_target(path: str | os.PathLike, folder: bool = True, option: str = "--out") -> Path:
    """``path`` when an output can be written there: (for ``folder``) not an existing file, and no
    existing part above it a file. Checked before any work, so a long job does not fail at its end."""
    p = Path(path)
    if folder and p.exists() and not p.is_dir():
        raise InputError(f"{option} {p}: is a file; expected a folder")
    if not folder and p.is_dir():
        raise InputError(f"{option} {p}: is a folder; expected a file name")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"{option} {p}: {parent} is a file, so nothing can be written under it")
            break
    return p


def check_not_an_input(output: str | os.PathLike, inputs: Iterable[str | os.PathLike], option: str) -> Path:
    """``output`` unless it resolves (symbolic links followed, ``Path.resolve``) to one of
    ``inputs``: writing there would replace the input being read. Checked before any work."""
    out = Path(output)
    target = out.resolve()
    for given in inputs:
        if Path(given).resolve() == target:
            same = "" if Path(given) == out else f" (the same file as {given})"
            raise InputError(f"{option} {out}: is an input of this command{same}; writing there would replace "
                             "it; expected another file name")
    return out


_paths = {"allow_outside": False}


def configure_paths(allow_outside: bool) -> None:
    """``forge --allow-outside-paths``: paths named in tables (rlnImageName, tomogram paths, copick
    tomograms) may lead outside the table's or project's folder."""
    _paths["allow_outside"] = bool(allow_outside)


def outside_paths_allowed() -> bool:
    return _paths["allow_outside"] or os.environ.get("FORGE_ALLOW_OUTSIDE_PATHS") == "1"
