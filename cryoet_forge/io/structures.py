"""Atomic models: read PDB/mmCIF (plain or .gz) with gemmi; fetch by PDB id into a cache.

Cache: ``$FORGE_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/cryoet-forge``, else
``~/.cache/cryoet-forge``; structures go to ``<cache>/structures/<id>.cif.gz`` and a cached
file is never downloaded again. Archive: ``$FORGE_PDB_URL`` if set, else the RCSB download
service (``https://files.rcsb.org/download``), asked for ``<base>/<ID>.cif.gz``.
"""

from __future__ import annotations

import gzip
import http.client
import os
import re
import urllib.error
import urllib.request
from pathlib import Path

import gemmi

from cryoet_forge.errors import ConfigError, InputError, NetworkError
from cryoet_forge.io.atomic import write_bytes_atomic

DEFAULT_PDB_URL = "https://files.rcsb.org/download"
PDB_ID = re.compile(r"^(?:[0-9][A-Za-z0-9]{3}|pdb_[0-9]{4}[0-9a-zA-Z]{4})$")


def cache_dir() -> Path:
    """The cryoet-forge cache folder (not created here)."""
    if os.environ.get("FORGE_CACHE_DIR"):
        return Path(os.environ["FORGE_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "cryoet-forge"


def pdb_base_url() -> str:
    return (os.environ.get("FORGE_PDB_URL") or DEFAULT_PDB_URL).rstrip("/")


def check_pdb_id(pdb_id: str) -> str:
    """A valid PDB id in lower case (``1abc`` or extended ``pdb_00001abc``), else InputError."""
    pdb_id = str(pdb_id).strip()
    if not PDB_ID.match(pdb_id):
        raise InputError(f"{pdb_id!r} is not a PDB id; expected 4 characters like 3j9i")
    return pdb_id.lower()


def cached_structure_path(pdb_id: str, cache: str | os.PathLike | None = None) -> Path:
    root = Path(cache) if cache is not None else cache_dir()
    return root / "structures" / f"{check_pdb_id(pdb_id)}.cif.gz"


def fetch_structure(pdb_id: str, cache: str | os.PathLike | None = None, base_url: str | None = None,
                    timeout: float = 30.0) -> Path:
    """Path of the cached mmCIF (.cif.gz) of ``pdb_id``; downloads it only when not cached.

    Raises NetworkError with one line when the archive cannot be reached (offline) or does
    not know the id.
    """
    target = cached_structure_path(pdb_id, cache)
    if target.is_file() and target.stat().st_size > 0:
        return target
    base = (base_url or pdb_base_url()).rstrip("/")
    url = f"{base}/{check_pdb_id(pdb_id).upper()}.cif.gz"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            payload = response.read()
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise NetworkError(f"PDB id {pdb_id} is unknown to {base} (HTTP 404 for {url})") from None
        raise NetworkError(f"cannot download PDB id {pdb_id} from {url}: HTTP {exc.code}") from None
    except ValueError as exc:  # urlopen: a base URL without scheme ("unknown url type")
        raise NetworkError(f"cannot download PDB id {pdb_id} from {url} ({exc}); "
                           f"expected an http(s) archive URL in --base-url / FORGE_PDB_URL") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:  # incl. IncompleteRead
        reason = getattr(exc, "reason", exc)
        raise NetworkError(f"cannot download PDB id {pdb_id} from {url} ({reason}); offline? "
                           f"place the file at {target} to use it without network") from None
    try:
        gzip.decompress(payload)
    except (OSError, EOFError):
        raise NetworkError(f"download of PDB id {pdb_id} from {url} is not a complete .gz file") from None
    try:
        write_bytes_atomic(target, payload)
    except OSError as exc:  # read-only or misplaced cache folder
        raise ConfigError(f"cannot write the structure cache file {target} ({exc.strerror or exc}); "
                          f"set FORGE_CACHE_DIR or --cache to a writable folder") from None
    return target


def read_structure(path: str | os.PathLike, assembly: int | None = None) -> gemmi.Structure:
    """Read a PDB or mmCIF file (plain or .gz); ``assembly=1`` builds biological assembly 1.

    Waters are removed (they are solvent, not part of the particle). Raises InputError naming
    the file when it is missing, unreadable, truncated or has no atoms.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such structure file")
    if path.name.lower().endswith(".gz"):
        try:
            with gzip.open(path, "rb") as handle:
                while handle.read(1 << 20):
                    pass
        except (OSError, EOFError) as exc:
            raise InputError(f"{path}: truncated or corrupt gzip file ({exc})") from None
    try:
        structure = gemmi.read_structure(str(path))
    except Exception as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise InputError(f"{path}: not a readable PDB/mmCIF file ({reason})") from None
    structure.remove_waters()
    structure.remove_empty_chains()
    if len(structure) == 0 or structure[0].count_atom_sites() == 0:
        raise InputError(f"{path}: no atoms found; expected a PDB or mmCIF model")
    if assembly is not None:
        index = int(assembly) - 1
        if not 0 <= index < len(structure.assemblies):
            raise InputError(f"{path}: no biological assembly {assembly} "
                             f"(the file defines {len(structure.assemblies)})")
        model = gemmi.make_assembly(structure.assemblies[index], structure[0],
                                    gemmi.HowToNameCopiedChain.AddNumber)
        built = gemmi.Structure()
        built.name = structure.name
        built.cell = structure.cell
        built.add_model(model)
        structure = built
    return structure
