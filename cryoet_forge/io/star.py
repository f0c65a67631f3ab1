"""STAR particle tables (starfile), one row per subtomogram.

Required columns: ``rlnImageName`` (volume path relative to the STAR file's folder),
``rlnClassNumber`` (int, 1-based), ``forgeClassName`` (str) and ``rlnImagePixelSize``
(Angstrom). Every recorded simulation parameter rides along as further columns
(``rlnAngleRot/Tilt/Psi`` in degrees, ``rlnOriginXAngst``..., ``rlnDefocusU``, ``forgeSnr``, ...).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from cryoet_forge import progress
from cryoet_forge.errors import InputError
from cryoet_forge.io.atomic import atomic_path
from cryoet_forge.io.files import check_input_file, outside_paths_allowed

REQUIRED_COLUMNS = ("rlnImageName", "rlnClassNumber", "forgeClassName", "rlnImagePixelSize")
BLOCK = "particles"


def class_numbers(values: pd.Series, source: str, column: str = "rlnClassNumber") -> pd.Series:
    """Class numbers as integers; InputError naming the first row that is not a whole number
    (``1.5`` is not read as class 1)."""
    numbers = pd.to_numeric(values, errors="coerce")
    finite = np.isfinite(numbers.to_numpy(dtype=float, na_value=np.nan))
    bad = ~finite | (numbers.fillna(0).to_numpy(dtype=float) % 1 != 0)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(f"{source}: row {row + 1}: {column} {str(values.iloc[row])!r} is not an integer; "
                         "class numbers must be integers (1, 2, ...)")
    return numbers.astype(np.int64)


def _check_table(df: pd.DataFrame, source: str) -> pd.DataFrame:
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"{source}: missing STAR column(s) {', '.join(missing)}; "
                         f"expected {', '.join(REQUIRED_COLUMNS)}")
    df = df.copy()
    df["rlnClassNumber"] = class_numbers(df["rlnClassNumber"], source)
    try:
        df["rlnImagePixelSize"] = df["rlnImagePixelSize"].astype(float)
    except (TypeError, ValueError):
        raise InputError(f"{source}: rlnImagePixelSize must be numbers (Angstrom)") from None
    if len(df) and (df["rlnClassNumber"] < 1).any():
        raise InputError(f"{source}: rlnClassNumber must be >= 1 (1-based class ids)")
    if len(df) and not (np.isfinite(df["rlnImagePixelSize"]) & (df["rlnImagePixelSize"] > 0)).all():
        raise InputError(f"{source}: rlnImagePixelSize must be > 0 Angstrom")
    df["forgeClassName"] = df["forgeClassName"].astype(str)
    df["rlnImageName"] = df["rlnImageName"].astype(str)
    return df


def read_particles(path: str | os.PathLike) -> pd.DataFrame:
    """Read a particle STAR file into a DataFrame (InputError naming the file if unusable)."""
    path = check_input_file(path, "STAR file")
    try:
        blocks = starfile.read(path, always_dict=True)
    except Exception as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise InputError(f"{path}: not a readable STAR file ({reason})") from None
    tables = {k: v for k, v in blocks.items() if isinstance(v, pd.DataFrame)}
    if BLOCK in tables:
        df = tables[BLOCK]
    else:
        candidates = [v for v in tables.values() if "rlnImageName" in v.columns]
        if len(candidates) != 1:
            raise InputError(f"{path}: expected one data block with rlnImageName "
                             f"(found blocks: {', '.join(blocks) or 'none'})")
        df = candidates[0]
    return _check_table(df, str(path))


def write_particles(path: str | os.PathLike, df: pd.DataFrame) -> Path:
    """Write ``df`` as data block ``data_particles`` of a STAR file, atomically."""
    path = Path(path)
    df = _check_table(pd.DataFrame(df).reset_index(drop=True), str(path))
    with atomic_path(path, suffix=".star") as tmp:
        starfile.write({BLOCK: df}, tmp, overwrite=True, float_format="%.9g")
    return path


def image_paths(star: str | os.PathLike, names) -> list[Path]:
    """The files a STAR table's rlnImageName entries name, relative to the table's folder.

    A relative name whose file, after symbolic links are followed, lies outside that folder
    (``../../x.mrc``, a link or a linked folder pointing elsewhere) is refused, naming the row,
    unless ``forge --allow-outside-paths`` (or FORGE_ALLOW_OUTSIDE_PATHS=1) allows it: a table
    someone sent you should not make forge read arbitrary files. Absolute names are common
    (RELION, Warp write them) and are read as given; they are reported once on stderr.
    """
    star = Path(star)
    root = star.parent.resolve()
    allow = outside_paths_allowed()
    out, absolute = [], 0
    for row, name in enumerate(names):
        name = str(name)
        if os.path.isabs(name):
            absolute += 1
            out.append(Path(name))
            continue
        real = (root / name).resolve()
        if not allow and real != root and root not in real.parents:
            lexical = Path(os.path.normpath(root / name))
            how = "" if lexical == real else f" (to {real}, through a symbolic link)"
            raise InputError(
                f"{star}: rlnImageName {name!r} (row {row + 1}) leads outside the STAR file's folder{how}; "
                "move the volumes under it, or allow it with forge --allow-outside-paths"
            )
        out.append(star.parent / name)
    if absolute:
        progress.log(f"note: {star}: {absolute} rlnImageName entr{'y is an' if absolute == 1 else 'ies are'} "
                     "absolute path(s), read as given")
    return out
