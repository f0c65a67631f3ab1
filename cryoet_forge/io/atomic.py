"""Atomic replacement of output files: write to a temporary file beside the target, then rename."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from cryoet_forge import progress
from cryoet_forge.errors import ConfigError, ForgeError, InputError
from cryoet_forge.io.files import check_output_target


def _default_mode(folder: bool = False) -> int:
    # mkstemp creates 0600 files (mkdtemp 0700 folders); outputs should get the usual
    # 0666 (0777) & ~umask like open() (mkdir) gives
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if folder else 0o666) & ~umask


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it replaces ``path``.

    ``suffix`` defaults to the target's own suffix so that writers which pick a format
    from the file name (matplotlib, starfile) still see the right extension.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{target.name}.", suffix=target.suffix if suffix is None else suffix,
            dir=target.parent,
        )
    except OSError as exc:  # name the file asked for, not the temporary one
        raise OSError(exc.errno, f"cannot write there ({exc.strerror})", str(target)) from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, _default_mode())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; a reader sees the old file or the new one, never half."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, obj: Any, *, indent: int | None = 2,
                      default: Callable[[Any], Any] | None = None, allow_nan: bool = True) -> Path:
    """Write ``obj`` as JSON (``indent`` spaces, a trailing newline) to ``path`` atomically, as
    ``write_bytes_atomic``. ``default`` converts what ``json`` cannot; ``allow_nan=False`` refuses
    NaN and infinities (ValueError) instead of writing tokens that are not standard JSON."""
    text = json.dumps(obj, indent=indent, default=default, allow_nan=allow_nan) + "\n"
    return write_bytes_atomic(path, text.encode())


@contextmanager
def atomic_folder(path: str | os.PathLike, stale: tuple[str, ...] = ()) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path`` (``.NAME.partial-XXXX``) to write into;
    its contents appear in ``path`` only when the block succeeds.

    When ``path`` does not exist the temporary folder is renamed to it, so a reader sees no
    folder or the complete one. When it does, each entry of the temporary folder replaces the
    entry of that name in ``path``, and the entries named in ``stale`` that the new contents
    lack are removed; the old entries are moved aside first and deleted only once every new
    one is in place, and anything else in ``path`` stays. When the block raises, the temporary
    folder is removed and ``path`` is left exactly as it was. What a killed earlier run left
    beside ``path`` is cleaned up first (``remove_stale_work``).
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_work(target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-{os.getpid()}-", dir=target.parent))
    except OSError as exc:  # name the folder asked for, not the temporary one
        raise OSError(exc.errno, f"cannot write there ({exc.strerror})", str(target)) from None
    try:
        os.chmod(tmp, _default_mode(folder=True))
        try:
            yield tmp
        except Exception as exc:  # name the output asked for, never the temporary folder
            _rename_in_message(exc, tmp, target)
            raise
        if not target.exists():
            try:
                os.rename(tmp, target)
                return
            except OSError:  # created meanwhile: merge into it below
                if not target.is_dir():
                    raise
        _merge_into(tmp, target, stale)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _rename_in_message(exc: Exception, tmp: Path, target: Path) -> None:
    """Replace the temporary folder's path (absolute or as given) by ``target``'s in a forge
    error's message, in place (same exception, same type)."""
    if not isinstance(exc, ForgeError) or not exc.args or not isinstance(exc.args[0], str):
        return
    message = exc.args[0]
    # the longest spelling first, so that a shorter one never rewrites part of a longer one
    for old, new in ((str(tmp), str(target)), (os.path.relpath(tmp), os.path.relpath(target)), (tmp.name, target.name)):
        message = message.replace(old, new)
    exc.args = (message, *exc.args[1:])


def _merge_into(new: Path, target: Path, stale: tuple[str, ...]) -> None:
    """Move the entries of ``new`` into ``target``, replacing same-named ones and ``stale`` ones;
    all or nothing: on an error every entry moved so far goes back where it was."""
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-{os.getpid()}-", dir=target.parent))
    names = sorted(entry.name for entry in new.iterdir())
    replaced = names + [name for name in stale if name not in names]
    moved_aside: list[str] = []
    moved_in: list[str] = []
    try:
        for name in replaced:
            old = target / name
            if old.exists() or old.is_symlink():
                os.replace(old, aside / name)
                moved_aside.append(name)
        for name in names:
            os.replace(new / name, target / name)
            moved_in.append(name)
    except BaseException:
        for name in reversed(moved_in):
            os.replace(target / name, new / name)
        for name in reversed(moved_aside):
            os.replace(aside / name, target / name)
        aside.rmdir()  # empty again; if a step above failed, the old entries stay in it
        raise
    shutil.rmtree(aside, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except OSError:
        return False
    return True


def remove_stale_work(target: str | os.PathLike) -> list[Path]:
    """Remove the ``.NAME.partial-PID-XXXX`` and ``.NAME.old-PID-XXXX`` folders that a killed
    ``atomic_folder`` left beside ``target`` (those of a process still running stay); returns
    what was removed and says so on stderr (``progress.warn``: also under ``--quiet``). Every
    folder writer goes through ``atomic_folder``, which calls this first. An entry of an ``.old-`` folder that ``target``
    lacks (the process was killed between moving the old entries aside and the new ones in)
    is moved back into ``target`` first, so nothing written earlier is lost."""
    target = Path(target)
    if not target.parent.is_dir():
        return []
    pattern = re.compile(r"^\." + re.escape(target.name) + r"\.(partial|old)-(?:(\d+)-)?[^/]*$")
    removed, size = [], 0
    for entry in target.parent.iterdir():
        m = pattern.match(entry.name)
        if m is None or not entry.is_dir() or entry.is_symlink():
            continue
        pid = int(m.group(2)) if m.group(2) else None
        if pid is not None and pid != os.getpid() and _alive(pid):
            continue  # another run on the same target is writing it now
        if m.group(1) == "old" and target.is_dir():
            for child in list(entry.iterdir()):
                if not (target / child.name).exists() and not (target / child.name).is_symlink():
                    os.replace(child, target / child.name)
        size += sum(f.stat().st_size for f in entry.rglob("*") if f.is_file() and not f.is_symlink())
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    if removed:
        progress.warn(f"removed {len(removed)} unfinished folder(s) that an interrupted earlier run left beside "
                     f"{target} ({size / 2**20:.1f} MiB)")
    return removed


#: output locks this process holds: resolved target -> open lock file descriptor
_locks: dict[str, int] = {}


def lock_output(target: str | os.PathLike) -> None:
    """Hold an exclusive lock on ``target`` until ``release_output_locks`` or the process ends, so
    that a second forge run writing the same output stops with one line instead of silently
    replacing the first one's result. Taken by the output checks before any work; a lock this
    process already holds is kept. The lock is a ``flock`` on a file named by the hash of the
    target's absolute path in a per-user folder of the temporary folder (``cryoet-forge-locks-UID/``),
    so nothing is written beside the output (a failed run leaves nothing there); it guards runs of
    one user on one machine."""
    import fcntl  # optional: POSIX only, as the lock itself; imported where the lock is taken

    target = Path(target)
    key = str(Path(os.path.abspath(target)))
    if key in _locks:
        return
    folder = Path(tempfile.gettempdir()) / f"cryoet-forge-locks-{os.getuid()}"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(folder / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:  # no usable temporary folder: write without the lock rather than not at all
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise InputError(f"{target}: another forge run (process {holder}) is writing this output now; wait "
                         "for it to finish or choose another --out") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _locks[key] = fd


def release_output_locks() -> None:
    """Release every output lock of this process (the end of one command)."""
    while _locks:
        _, fd = _locks.popitem()
        os.close(fd)


def check_output_folder(out: str | os.PathLike, names: tuple[str, ...], what: str, overwrite: bool) -> list[str]:
    """The entries of ``names`` that folder ``out`` already holds (to pass as ``atomic_folder``'s
    ``stale``); InputError when ``out`` cannot be a folder (``check_output_target``) or another run
    writes it now (``lock_output``), ConfigError when it holds any of them without ``overwrite``."""
    out = check_output_target(out, folder=True)
    lock_output(out)
    # never write into a folder that holds files this writer did not make (hidden entries are
    # forge's own work and lock files, or the user's dotfiles, which nothing here replaces)
    foreign = sorted(entry.name for entry in out.iterdir() if entry.name not in names
                     and not entry.name.startswith(".")) if out.is_dir() else []
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise ConfigError(f"{out} holds files that are not {what} ({shown}); forge writes only into a new or "
                          "empty folder or one holding its own earlier output: choose another --out")
    existing = [name for name in names if (out / name).exists() or (out / name).is_symlink()]
    if existing and not overwrite:
        raise ConfigError(f"{out} already holds {what} ({', '.join(existing)}); "
                          "choose another --out or pass --overwrite")
    return existing
