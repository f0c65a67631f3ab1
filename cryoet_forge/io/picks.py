"""Particle picks from RELION 5, RELION 4 / Warp / M STAR tables and CSV/TSV coordinate lists.

Every reader returns a ``Picks`` table with one row per particle and the columns ``tomogram``
(the name that selects its tomogram), ``x``, ``y``, ``z`` (in ``Picks.unit``: ``"px"`` of the
tomogram, or ``"angstrom"`` from the centre of its first voxel), ``shift_x/y/z`` (Angstrom to
subtract, RELION's refined origin), ``class_name``, and the orientation columns found in the
source (``rlnAngleRot/Tilt/Psi``, ``rlnTomoSubtomogramRot/Tilt/Psi``), carried over unchanged.
``tomogram_path`` (a ``TablePath``, resolved when used) is set where the table names the
tomogram file: RELION 5's ``rlnTomoReconstructedTomogram``, or an ``rlnTomoName`` /
``rlnMicrographName`` / CSV ``tomogram`` value ending in a tomogram suffix (``.mrc``, ``.zarr``, ...).
A relative path is tried as written from the current folder, then from the project folder (the
folder holding ``<JobType>/jobNNN/`` when the table lives in such a job folder, as RELION writes
it), then from the table's folder; the first that exists is read. Its target, symbolic links
followed, must lie inside the project folder (else the table's folder) unless
``forge --allow-outside-paths`` allows it.

Conventions: voxel ``i`` of a tomogram has its centre at ``i`` pixels (0-based). RELION 5's
``rlnCenteredCoordinate{X,Y,Z}Angst`` are relative to the tomogram centre,
``rlnTomoSize{X,Y,Z} / 2`` unbinned tilt-series pixels of ``rlnTomoTiltSeriesPixelSize``, so the
tomograms STAR is needed; the origin shift ``rlnOrigin{X,Y,Z}Angst`` is rotated by the
pseudo-subtomogram matrix of ``rlnTomoSubtomogram{Rot,Tilt,Psi}`` and subtracted, as RELION's
``ParticleSet::getPosition`` does.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from cryoet_forge.errors import InputError
from cryoet_forge.io.files import outside_paths_allowed
from cryoet_forge.io.star import class_numbers

UNITS = ("px", "angstrom")
ANGLE_COLUMNS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi",
                 "rlnTomoSubtomogramRot", "rlnTomoSubtomogramTilt", "rlnTomoSubtomogramPsi")
CENTERED = ("rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst", "rlnCenteredCoordinateZAngst")
PIXEL = ("rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ")
ORIGIN = ("rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst")
TOMO_SUFFIXES = (".tomostar", ".mrc", ".rec", ".st", ".zarr")
#: suffixes of a value that names a tomogram file (not a tilt series or a Warp .tomostar)
FILE_SUFFIXES = (".mrc", ".rec", ".map", ".zarr")
JOB_FOLDER = re.compile(r"job\d+")


def project_folder(table: str | os.PathLike) -> Path | None:
    """The RELION project folder of a table in ``PROJECT/<JobType>/jobNNN/``, else None."""
    folder = Path(os.path.abspath(table)).parent
    if JOB_FOLDER.fullmatch(folder.name) and folder.parent.parent != folder.parent:
        return folder.parent.parent
    return None


@dataclass(frozen=True)
class TablePath:
    """A file named in a table (row ``row``, 1-based, of column ``column``), resolved when used."""

    value: str
    table: str
    row: int
    column: str

    def __str__(self) -> str:
        return self.value

    @property
    def stem(self) -> str:
        return _tomo_name(self.value)

    def candidates(self) -> list[Path]:
        """Where the file is looked for, in order: as written from the current folder, from the
        project folder, from the table's folder."""
        raw = Path(self.value)
        if raw.is_absolute():
            return [raw]
        project = project_folder(self.table)
        bases = [Path.cwd()] + ([project] if project else []) + [Path(os.path.abspath(self.table)).parent]
        out: list[Path] = []
        for base in bases:
            path = Path(os.path.normpath(base / raw))
            if path not in out:
                out.append(path)
        return out

    def resolve(self, what: str = "tomogram") -> Path:
        """The first candidate that exists and lies inside the allowed folder (symbolic links
        followed); InputError naming the table, the row and the path otherwise."""
        where = f"{self.table}: row {self.row}: {self.column} {self.value!r}"
        tried = self.candidates()
        found = [p for p in tried if p.exists()]
        if not found:
            raise InputError(f"{where}: no such {what} (tried {', '.join(map(str, tried))})")
        if outside_paths_allowed():
            return found[0]
        project = project_folder(self.table)
        root = (project or Path(os.path.abspath(self.table)).parent).resolve()
        for path in found:
            real = path.resolve()
            if real == root or root in real.parents:
                return path
        real = found[0].resolve()
        how = "" if real == Path(os.path.normpath(found[0])) else ", through a symbolic link"
        kind = "project folder" if project else "table's folder"
        raise InputError(f"{where} leads outside the {kind} {root} (to {real}{how}); move it under that "
                         "folder, or allow it with forge --allow-outside-paths")


def _table_paths(values: pd.Series, table: Path, column: str) -> list[TablePath | None]:
    """A ``TablePath`` for each value that names a tomogram file, None for plain names."""
    return [TablePath(str(v), str(table), i + 1, column)
            if isinstance(v, str) and v.lower().endswith(FILE_SUFFIXES) else None
            for i, v in enumerate(values)]


@dataclass
class Picks:
    table: pd.DataFrame
    unit: str
    source: str

    def __len__(self) -> int:
        return len(self.table)


def _reason(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _read_star(path: Path) -> dict[str, pd.DataFrame]:
    if not path.is_file():
        raise InputError(f"{path}: no such STAR file")
    try:
        blocks = starfile.read(path, always_dict=True)
    except Exception as exc:
        raise InputError(f"{path}: not a readable STAR file ({_reason(exc)})") from None
    return {k: v for k, v in blocks.items() if isinstance(v, pd.DataFrame)}


def relion_matrix(rot: np.ndarray, tilt: np.ndarray, psi: np.ndarray) -> np.ndarray:
    """RELION's ``Euler_angles2matrix`` (ZYZ, degrees) for arrays of angles -> (N, 3, 3)."""
    a, b, g = (np.deg2rad(np.asarray(v, dtype=float)) for v in (rot, tilt, psi))
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    m = np.empty((len(a), 3, 3))
    m[:, 0] = np.stack([cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb], axis=-1)
    m[:, 1] = np.stack([-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb], axis=-1)
    m[:, 2] = np.stack([sc, ss, cb], axis=-1)
    return m


def _tomo_name(value: str) -> str:
    name = Path(str(value)).name
    for suffix in TOMO_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _classes(df: pd.DataFrame, source: str, class_column: str | None, default: str,
             star: bool) -> pd.Series:
    if class_column:
        if class_column not in df.columns:
            raise InputError(f"{source}: no class column {class_column!r}; its columns are "
                             f"{', '.join(map(str, df.columns))}")
        values = df[class_column]
    elif star and "forgeClassName" in df.columns:  # forge's own tables name their classes
        values = df["forgeClassName"]
    elif star and "rlnClassNumber" in df.columns:
        return "class" + class_numbers(df["rlnClassNumber"], source).astype(str)
    elif not star and "class" in df.columns:
        values = df["class"]
    else:
        return pd.Series([default] * len(df), index=df.index)
    if values.isna().any():
        raise InputError(f"{source}: class column {values.name!r} has empty values")
    return values.astype(str)


def _finish(df: pd.DataFrame, out: dict, source: str, class_column: str | None, default_class: str,
            star: bool, unit: str) -> Picks:
    table = pd.DataFrame(out, index=df.index)
    for c in ("x", "y", "z", "shift_x", "shift_y", "shift_z"):
        values = pd.to_numeric(table[c], errors="coerce")
        if values.isna().any() or not np.isfinite(values.to_numpy()).all():
            row = int(np.flatnonzero(values.isna().to_numpy() | ~np.isfinite(values.fillna(0).to_numpy()))[0])
            raise InputError(f"{source}: row {row + 1}: coordinate {c} is not a finite number")
        table[c] = values.astype(float)
    table["class_name"] = _classes(df, source, class_column, default_class, star).to_numpy()
    for column in ANGLE_COLUMNS:
        if column in df.columns:
            table[column] = pd.to_numeric(df[column], errors="coerce").to_numpy()
    if table.empty:
        raise InputError(f"{source}: the pick set is empty; expected at least one particle")
    return Picks(table.reset_index(drop=True), unit, source)


def read_relion_picks(path: str | os.PathLike, tomograms_star: str | os.PathLike | None = None,
                      class_column: str | None = None, default_class: str | None = None) -> Picks:
    """A RELION 5 particles STAR (with its tomograms STAR) or a RELION 4 / Warp / M one."""
    path = Path(path)
    blocks = _read_star(path)
    candidates = [b for b in blocks.values() if set(CENTERED) <= set(b.columns) or set(PIXEL) <= set(b.columns)]
    if "particles" in blocks and blocks["particles"] is not None and not blocks["particles"].empty:
        df = blocks["particles"]
    elif len(candidates) == 1:
        df = candidates[0]
    elif not candidates:
        if any(len(b) == 0 for b in blocks.values()) or not blocks:
            raise InputError(f"{path}: the pick set is empty; expected at least one particle")
        raise InputError(f"{path}: no block with {', '.join(CENTERED)} (RELION 5) or {', '.join(PIXEL)} "
                         f"(RELION 4, Warp, M); blocks: {', '.join(blocks) or 'none'}")
    else:
        raise InputError(f"{path}: several blocks hold coordinates; expected one 'particles' block")
    if df.empty:
        raise InputError(f"{path}: the pick set is empty; expected at least one particle")
    default_class = default_class or path.stem
    name_column = next((c for c in ("rlnTomoName", "rlnMicrographName") if c in df.columns), None)
    if name_column is None:
        raise InputError(f"{path}: no rlnTomoName or rlnMicrographName column; every pick must name its tomogram")
    names = df[name_column].map(_tomo_name)
    zeros = np.zeros(len(df))
    origin = np.stack([pd.to_numeric(df[c], errors="coerce").to_numpy() if c in df.columns else zeros
                       for c in ORIGIN], axis=-1)
    sub = ("rlnTomoSubtomogramRot", "rlnTomoSubtomogramTilt", "rlnTomoSubtomogramPsi")
    if set(sub) <= set(df.columns):
        # RELION stores the refined shift in the pseudo-subtomogram frame: rotate it back
        origin = np.einsum("nij,nj->ni", relion_matrix(*(df[c].to_numpy() for c in sub)), origin)
    out: dict = {"tomogram": names.to_numpy(),
                 "shift_x": origin[:, 0], "shift_y": origin[:, 1], "shift_z": origin[:, 2]}
    if set(CENTERED) <= set(df.columns):
        if tomograms_star is None:
            raise InputError(f"{path}: RELION 5 centred coordinates need the tomograms STAR "
                             "(--tomograms-star: rlnTomoSizeX/Y/Z, rlnTomoTiltSeriesPixelSize)")
        tomos = read_relion_tomograms(tomograms_star)
        missing = sorted(set(names) - set(tomos.index))
        if missing:
            raise InputError(f"{path}: tomogram(s) {', '.join(missing[:5])} are not in {tomograms_star}")
        info = tomos.loc[names.to_numpy()]
        for axis, column in zip("xyz", CENTERED):
            centre = info[f"size_{axis}"].to_numpy() / 2.0 * info["pixel_size"].to_numpy()
            out[axis] = pd.to_numeric(df[column], errors="coerce").to_numpy() + centre
        if info["path"].notna().all():
            out["tomogram_path"] = info["path"].to_numpy()
        return _finish(df, out, str(path), class_column, default_class, True, "angstrom")
    partial = [c for c in CENTERED if c in df.columns]
    if partial:
        missing = [c for c in CENTERED if c not in df.columns]
        raise InputError(f"{path}: has {', '.join(partial)} but no {', '.join(missing)} column; "
                         f"RELION 5 picks need all of {', '.join(CENTERED)}")
    missing = [c for c in PIXEL if c not in df.columns]
    if missing:
        raise InputError(f"{path}: no {', '.join(missing)} column; RELION 4 / Warp / M picks need "
                         f"{', '.join(PIXEL)} (tomogram pixels)")
    for axis, column in zip("xyz", PIXEL):
        out[axis] = df[column].to_numpy()
    files = _table_paths(df[name_column], path, name_column)
    if any(files):
        out["tomogram_path"] = files
    return _finish(df, out, str(path), class_column, default_class, True, "px")


def read_relion_tomograms(path: str | os.PathLike) -> pd.DataFrame:
    """RELION 5 tomograms STAR -> per rlnTomoName: size_x/y/z (unbinned pixels), pixel_size
    (tilt series, Angstrom), binning, path (rlnTomoReconstructedTomogram as a ``TablePath``, or None)."""
    path = Path(path)
    blocks = _read_star(path)
    need = ("rlnTomoName", "rlnTomoSizeX", "rlnTomoSizeY", "rlnTomoSizeZ", "rlnTomoTiltSeriesPixelSize")
    tables = [b for b in blocks.values() if set(need) <= set(b.columns)]
    if len(tables) != 1:
        raise InputError(f"{path}: expected one block with {', '.join(need)} (a RELION 5 tomograms STAR)")
    df = tables[0].reset_index(drop=True)

    def positive(column: str) -> np.ndarray:
        values = pd.to_numeric(df[column], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        bad = np.flatnonzero(~(np.isfinite(values) & (values > 0)))
        if len(bad):
            row = int(bad[0])
            unit = "Angstrom" if column == "rlnTomoTiltSeriesPixelSize" else "pixels"
            raise InputError(f"{path}: row {row + 1}: {column} {str(df[column].iloc[row])!r} is not a number > 0; "
                             f"expected {unit}")
        return values

    reconstructed = "rlnTomoReconstructedTomogram"
    out = pd.DataFrame({
        "size_x": positive("rlnTomoSizeX"),
        "size_y": positive("rlnTomoSizeY"),
        "size_z": positive("rlnTomoSizeZ"),
        "pixel_size": positive("rlnTomoTiltSeriesPixelSize"),
        "binning": positive("rlnTomoTomogramBinning") if "rlnTomoTomogramBinning" in df.columns else np.ones(len(df)),
        "path": [TablePath(p, str(path), i + 1, reconstructed) if isinstance(p, str) and p else None
                 for i, p in enumerate(df[reconstructed] if reconstructed in df.columns else [None] * len(df))],
    }, index=df["rlnTomoName"].map(_tomo_name).to_numpy())
    return out


def read_csv_picks(path: str | os.PathLike, unit: str | None, class_column: str | None = None,
                   default_class: str | None = None) -> Picks:
    """CSV or TSV with a header: ``tomogram,x,y,z[,class]``; ``unit`` "px" or "angstrom"."""
    path = Path(path)
    if unit is None:
        raise InputError(f"{path}: a coordinate list needs the unit of its x, y, z stated; give --unit "
                         f"{' or --unit '.join(UNITS)}")
    if unit not in UNITS:
        raise InputError(f"--unit {unit!r}: expected one of {', '.join(UNITS)} (the unit of the coordinate list's "
                         "x, y, z)")
    if not path.is_file():
        raise InputError(f"{path}: no such coordinate file")
    try:
        df = pd.read_csv(path, sep=None, engine="python")
    except pd.errors.EmptyDataError:
        raise InputError(f"{path}: the pick set is empty; expected a header tomogram,x,y,z[,class] and rows") from None
    except Exception as exc:
        raise InputError(f"{path}: not a readable CSV/TSV ({_reason(exc)})") from None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in ("tomogram", "x", "y", "z") if c not in df.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)}; expected a header tomogram,x,y,z[,class]")
    zeros = np.zeros(len(df))
    out: dict = {"tomogram": df["tomogram"].astype(str).map(_tomo_name).to_numpy(), "x": df["x"].to_numpy(),
           "y": df["y"].to_numpy(), "z": df["z"].to_numpy(), "shift_x": zeros, "shift_y": zeros, "shift_z": zeros}
    files = _table_paths(df["tomogram"].astype(str), path, "tomogram")
    if any(files):
        out["tomogram_path"] = files
    return _finish(df, out, str(path), class_column, default_class or path.stem, False, unit)


def read_picks(path: str | os.PathLike, *, unit: str | None = None, tomograms_star=None,
               class_column: str | None = None, default_class: str | None = None) -> Picks:
    """By suffix: ``.star`` (RELION / Warp / M) or ``.csv``/``.tsv``/``.txt`` (coordinate list)."""
    path = Path(path)
    if path.suffix.lower() == ".star":
        picks = read_relion_picks(path, tomograms_star, class_column, default_class)
        if unit is not None and unit not in UNITS:
            raise InputError(f"--unit {unit!r}: expected one of {', '.join(UNITS)}")
        if unit == "angstrom" and picks.unit == "px":
            picks.unit = "angstrom"  # rlnCoordinate columns written in Angstrom by some tools
        return picks
    if path.suffix.lower() in (".csv", ".tsv", ".txt"):
        return read_csv_picks(path, unit, class_column, default_class)
    raise InputError(f"{path}: unknown pick format; expected a .star table or a .csv/.tsv coordinate list")
