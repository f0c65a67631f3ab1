"""The acquisition parameters of ``forge simulate``: flags, a RELION 5 tomograms STAR, the maps' voxel size.

Defocus is given by users in micrometres with **underfocus positive** (as Warp and RELION write
it, ``--defocus 4`` or a range ``--defocus 2,6``); the simulators take ``defocus_um`` with
underfocus negative, and this module converts between the two. A flag and a value read from
``--acquisition tomograms.star`` both map onto the simulator's own option names:

==============  ======================  ===========================================
flag            simulator option        simulators that take it (built in)
==============  ======================  ===========================================
--tilt-range    tilt_range              fourier (missing wedge), tilt-series
--tilt-step     tilt_step               tilt-series
--dose          dose (e/A^2, total)     tilt-series
--voltage       voltage_kv              fourier, tilt-series
--defocus       defocus_um (negated)    fourier, tilt-series
(STAR only)     cs_mm                   fourier, tilt-series
(STAR only)     amplitude_contrast      fourier, tilt-series
==============  ======================  ===========================================
"""

from __future__ import annotations

import inspect
import math
import statistics
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from cryoet_forge.errors import ConfigError, InputError
from cryoet_forge.io.files import check_input_file

# `forge --help` imports this module: what only a command's work needs (numpy, torch, pandas and the
# modules built on them) is imported inside the functions that use it (start-up time).

#: simulator option -> the flag of ``forge simulate`` that sets it
FLAGS: dict[str, str] = {"tilt_range": "--tilt-range", "tilt_step": "--tilt-step", "dose": "--dose",
                         "voltage_kv": "--voltage", "defocus_um": "--defocus"}

#: simulator option -> (the key in simulation.json's "acquisition", its unit)
RECORD_KEYS: dict[str, str] = {"tilt_range": "tilt_range_deg", "tilt_step": "tilt_step_deg",
                               "dose": "dose_e_per_A2", "voltage_kv": "voltage_kv", "cs_mm": "cs_mm",
                               "amplitude_contrast": "amplitude_contrast",
                               "defocus_um": "defocus_underfocus_um"}

#: what each option is called in one-line messages (what a STAR lacks, what a simulator ignores)
WHAT: dict[str, str] = {"tilt_range": "tilt range", "tilt_step": "tilt step", "dose": "dose",
                        "voltage_kv": "voltage", "cs_mm": "spherical aberration", "amplitude_contrast":
                        "amplitude contrast", "defocus_um": "defocus"}

#: the voxel size of --phantoms (and of phantom class names in --structures) when none is given
PHANTOM_VOXEL_SIZE = 9.4

_MAP_SUFFIXES = (".mrc", ".map", ".mrcs")


def _numbers(text: str, flag: str, count: tuple[int, ...]) -> list[float]:
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in count or not all(math.isfinite(v) for v in values):
        shape = "a number or MIN,MAX" if count == (1, 2) else "MIN,MAX"
        raise ConfigError(f"{flag} {text!r}: expected {shape} (numbers, comma-separated)")
    return values


def parse_tilt_range(text: str) -> tuple[float, float]:
    """``"-60,60"`` -> (-60.0, 60.0); ConfigError unless MIN <= MAX within -90..90 degrees."""
    low, high = _numbers(text, "--tilt-range", (2,))
    if not -90 <= low <= high <= 90:
        raise ConfigError(f"--tilt-range {text!r}: expected MIN,MAX degrees with -90 <= MIN <= MAX <= 90")
    return low, high


def parse_defocus(text: str) -> tuple[tuple[float, float], str | None]:
    """``"4"`` or ``"2,6"`` (underfocus positive, micrometres) -> ((low, high) underfocus, note).

    The old form with underfocus negative (``-4``, ``-6,-2``) is read as underfocus, with a note
    saying so; a range that changes sign, or a zero, is a ConfigError.
    """
    values = _numbers(text, "--defocus", (1, 2))
    if all(v > 0 for v in values):
        note = None
    elif all(v < 0 for v in values):
        values = [-v for v in values]
        shown = ",".join(f"{v:g}" for v in sorted(values))
        note = f"--defocus {text}: read as underfocus {shown} um (forge writes underfocus positive, as Warp and RELION)"
    else:
        raise ConfigError(f"--defocus {text!r}: expected underfocus in micrometres, positive (e.g. 4 or 2,6)")
    low, high = min(values), max(values)
    return (low, high), note


def positive_flag(value: float | None, flag: str, unit: str) -> float | None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{flag} {value!r}: expected a number > 0 ({unit})")
    return value


@dataclass
class StarAcquisition:
    """What a RELION 5 tomograms STAR says about the acquisition (user units, underfocus positive)."""

    path: Path
    voxel_size: float | None = None
    values: dict[str, Any] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)


def _column(table, name: str, source: Path, what: str) -> float | None:
    """The one value of ``name`` in ``table`` (None when absent); InputError when not a number > 0
    (amplitude contrast and Cs may be 0), or when tomograms disagree."""
    import pandas as pd  # start-up

    if name not in table.columns:
        return None
    values = pd.to_numeric(table[name], errors="coerce")
    zero_ok = name in ("rlnAmplitudeContrast", "rlnSphericalAberration")
    bad = [str(raw) for raw, v in zip(table[name], values) if not (math.isfinite(v) and (v > 0 or (zero_ok and v == 0)))]
    if bad:
        raise InputError(f"{source}: {name} {bad[0]!r} is not a valid {what}")
    distinct = sorted(set(float(v) for v in values))
    if len(distinct) > 1:
        raise InputError(f"{source}: {name} differs between tomograms ({', '.join(f'{v:g}' for v in distinct)}); "
                         f"simulate each acquisition on its own or give the {what} as a flag")
    return distinct[0] if distinct else None


def _tilt_series_tables(path: Path, table) -> list:
    """The per-tilt tables named in rlnTomoTiltSeriesStarFile (read-only)."""
    # start-up: pandas, starfile
    import pandas as pd
    import starfile

    from cryoet_forge.io.picks import TablePath  # start-up: pandas

    out = []
    for row, value in enumerate(table["rlnTomoTiltSeriesStarFile"], start=1):
        if not isinstance(value, str) or not value:
            continue
        star = TablePath(value, str(path), row, "rlnTomoTiltSeriesStarFile").resolve("tilt-series STAR")
        try:
            blocks = starfile.read(star, always_dict=True)
        except Exception as exc:
            raise InputError(f"{star}: not a readable tilt-series STAR ({' '.join(str(exc).split())})") from None
        frames = [b for b in blocks.values() if isinstance(b, pd.DataFrame) and len(b)]
        if frames:
            out.append(max(frames, key=len))
    return out


def _median_step(values: Iterable[float]) -> float | None:
    ordered = sorted(set(round(float(v), 6) for v in values))
    steps = [b - a for a, b in zip(ordered, ordered[1:]) if b - a > 1e-6]
    return statistics.median(steps) if steps else None


def read_star_acquisition(path: Path) -> StarAcquisition:
    """Pixel size x binning, voltage, Cs and amplitude contrast from a RELION 5 tomograms STAR; tilt
    range and step, total dose and defocus from the tilt-series STARs it names. What is not there is
    listed in ``missing`` (one line each); a value that is there but broken is an InputError."""
    # start-up: pandas, starfile
    import pandas as pd
    import starfile

    from cryoet_forge.io.picks import read_relion_tomograms  # start-up: pandas

    path = Path(path)
    tomograms = read_relion_tomograms(path)  # one clear line for a file that is not a tomograms STAR
    blocks = starfile.read(path, always_dict=True)
    table = next(b for b in blocks.values() if isinstance(b, pd.DataFrame)
                 and {"rlnTomoName", "rlnTomoTiltSeriesPixelSize"} <= set(b.columns))
    result = StarAcquisition(path)

    voxel = sorted(set(round(float(p * b), 6) for p, b in zip(tomograms["pixel_size"], tomograms["binning"])))
    if len(voxel) > 1:
        raise InputError(f"{path}: the tomograms have different voxel sizes (rlnTomoTiltSeriesPixelSize x "
                         f"rlnTomoTomogramBinning: {', '.join(f'{v:g}' for v in voxel)}); give --voxel-size")
    result.voxel_size = voxel[0]
    for key, column in (("voltage_kv", "rlnVoltage"), ("cs_mm", "rlnSphericalAberration"),
                        ("amplitude_contrast", "rlnAmplitudeContrast")):
        value = _column(table, column, path, WHAT[key])
        if value is None:
            result.missing.append(f"{path}: no {column}: the {WHAT[key]} is not read from it")
        else:
            result.values[key] = value

    if "rlnTomoTiltSeriesStarFile" not in table.columns:
        result.missing.append(f"{path}: no rlnTomoTiltSeriesStarFile (tilt-series STARs): the tilt range, "
                              "tilt step, dose and defocus are not read from it")
        return result
    series = _tilt_series_tables(path, table)
    angles, steps, doses, defocus = [], [], [], []
    for tilts in series:
        if "rlnTomoNominalStageTiltAngle" in tilts.columns:
            a = pd.to_numeric(tilts["rlnTomoNominalStageTiltAngle"], errors="coerce").dropna().tolist()
            angles += a
            step = _median_step(a)
            if step is not None:
                steps.append(step)
        if "rlnMicrographPreExposure" in tilts.columns:
            pre = pd.to_numeric(tilts["rlnMicrographPreExposure"], errors="coerce").dropna().tolist()
            per_tilt = _median_step(pre)
            if per_tilt is not None:
                doses.append(max(pre) + per_tilt)  # the last tilt's own exposure completes the total
        if "rlnDefocusU" in tilts.columns:
            u = pd.to_numeric(tilts["rlnDefocusU"], errors="coerce")
            if "rlnDefocusV" in tilts.columns:
                u = (u + pd.to_numeric(tilts["rlnDefocusV"], errors="coerce")) / 2
            defocus += [v / 1e4 for v in u.dropna().tolist() if v > 0]  # Angstrom -> micrometres
    where = "the tilt-series STARs it names"
    if angles:
        result.values["tilt_range"] = (min(angles), max(angles))
    else:
        result.missing.append(f"{path}: no rlnTomoNominalStageTiltAngle in {where}: the tilt range is not read")
    if steps:
        result.values["tilt_step"] = statistics.median(steps)
    elif angles:
        result.missing.append(f"{path}: {where} have a single tilt angle: the tilt step is not read")
    else:
        result.missing.append(f"{path}: no rlnTomoNominalStageTiltAngle in {where}: the tilt step is not read")
    if doses:
        result.values["dose"] = statistics.median(doses)
    else:
        result.missing.append(f"{path}: no rlnMicrographPreExposure (increasing per tilt) in {where}: "
                              "the dose is not read")
    if defocus:
        result.values["defocus_um"] = (min(defocus), max(defocus))
    else:
        result.missing.append(f"{path}: no rlnDefocusU (> 0) in {where}: the defocus is not read")
    return result


def map_voxel_size(path: Path) -> float:
    """The voxel size (Angstrom) in an MRC map's header, without reading its data."""
    import mrcfile  # start-up

    path = check_input_file(path, "MRC file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # mrcfile warns about odd headers; the size is checked below
        try:
            with mrcfile.open(path, header_only=True, permissive=False) as mrc:
                size = float(mrc.voxel_size.x)
        except Exception as exc:  # mrcfile raises ValueError/OSError/... on broken files
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise InputError(f"{path}: not a readable MRC file ({reason})") from None
    if not (math.isfinite(size) and size > 0):
        raise InputError(f"{path}: the header has no voxel size (> 0); give --voxel-size")
    return size


def resolve_voxel_size(voxel_size: float | None, specs: list[str] | None,
                       star: StarAcquisition | None) -> tuple[float, str]:
    """(voxel size, where it came from): --voxel-size, else the --acquisition STAR, else the MRC maps
    among the structures (when they agree), else the phantom default when every class is a phantom;
    ConfigError when none of these gives one (PDB structures carry no voxel size)."""
    from cryoet_forge.simulate.phantoms import PHANTOM_CLASSES  # start-up: numpy, scipy

    if voxel_size is not None:
        return voxel_size, "--voxel-size"
    if star is not None and star.voxel_size is not None:
        return star.voxel_size, f"{star.path} (rlnTomoTiltSeriesPixelSize x rlnTomoTomogramBinning)"
    if specs is None or all(spec in PHANTOM_CLASSES for spec in specs):
        return PHANTOM_VOXEL_SIZE, "the phantom default"
    maps = [Path(spec) for spec in specs if Path(spec).suffix.lower() in _MAP_SUFFIXES]
    sizes = {str(m): map_voxel_size(m) for m in maps}
    distinct = sorted(set(round(v, 4) for v in sizes.values()))
    if len(distinct) == 1:
        return distinct[0], "the MRC map headers"
    if len(distinct) > 1:
        listed = ", ".join(f"{Path(k).name} {v:g} A" for k, v in sizes.items())
        raise ConfigError(f"--structures: the maps have different voxel sizes ({listed}); give --voxel-size "
                          "(each map is resampled to it)")
    raise ConfigError("--voxel-size is required: PDB structures carry no voxel size (give the voxel size of the "
                      "tomograms to match, e.g. --voxel-size 10, or --acquisition tomograms.star)")


def simulator_parameters(factory: Callable[..., Any]) -> tuple[dict[str, Any], bool]:
    """(option -> default (``inspect.Parameter.empty`` when none), takes ``**kwargs``) of a factory."""
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return {}, True
    options = {name: p.default for name, p in parameters.items()
               if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return options, any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def _record(key: str, value: Any) -> Any:
    """A simulator option value as simulation.json's acquisition shows it (defocus underfocus positive)."""
    if key == "defocus_um":
        low, high = (value, value) if isinstance(value, (int, float)) else (float(v) for v in value)
        return sorted([-float(low), -float(high)])
    if isinstance(value, (tuple, list)):
        return [float(v) for v in value]
    return value


def apply_acquisition(simulator: str, factory: Callable[..., Any], flags: dict[str, Any], options: dict,
                      star: StarAcquisition | None) -> tuple[dict, dict[str, Any], list[str]]:
    """Merge the acquisition flags and the STAR's values into the simulator ``options``.

    ``flags`` maps simulator option -> value in user units (defocus underfocus positive), given
    flags only. Returns (options, the acquisition used for simulation.json, notes). A flag the
    simulator does not take, or a flag and ``--option`` of the same key, is a ConfigError; a STAR
    value the simulator does not take is a note.
    """
    accepted, takes_any = simulator_parameters(factory)

    def takes(key: str) -> bool:
        return takes_any or key in accepted

    options = dict(options)
    sources: dict[str, str] = {key: "--option" for key in RECORD_KEYS if key in options}
    notes: list[str] = []
    for key, value in flags.items():
        flag = FLAGS[key]
        if not takes(key):
            offered = [FLAGS[k] for k in FLAGS if k in accepted]
            hint = f"it takes {', '.join(offered)}" if offered else "it takes no acquisition flags"
            raise ConfigError(f"{flag}: the {simulator} simulator has no {WHAT[key]} ({hint}); drop {flag}"
                              + (" or use --simulator tilt-series" if key in ("tilt_step", "dose") else ""))
        if key in options:
            raise ConfigError(f"{flag} and --option {key}={options[key]!r} both set the {WHAT[key]}; give one")
        options[key] = _internal(key, value)
        sources[key] = flag
    if star is not None:
        unused = []
        for key, value in star.values.items():
            if key in options:
                continue
            if not takes(key):
                unused.append(WHAT[key])
                continue
            options[key] = _internal(key, value)
            sources[key] = str(star.path)
        if unused:
            notes.append(f"{star.path}: the {simulator} simulator takes no {', '.join(unused)}; not used")
        for line in star.missing:
            about = _missing_key(line)
            if about is None or (takes(about) and about not in options):  # a flag or --option fills it: no note
                notes.append(line)
    used: dict[str, Any] = {}
    for key, name in RECORD_KEYS.items():
        if key in options:
            used[name] = _record(key, options[key])
        elif key in accepted and accepted[key] is not inspect.Parameter.empty:
            used[name] = _record(key, accepted[key])
            sources.setdefault(key, f"the {simulator} default")
    used["sources"] = {RECORD_KEYS[k]: v for k, v in sources.items() if RECORD_KEYS[k] in used}
    return options, used, notes


def _internal(key: str, value: Any) -> Any:
    """A user-unit value as the simulator option takes it (defocus: underfocus negative)."""
    if key == "defocus_um":
        low, high = value
        return [-float(high), -float(low)]
    if isinstance(value, tuple):
        return [float(v) for v in value]
    return value


def _missing_key(line: str) -> str | None:
    """The option a 'missing' line is about, when it is about one option only."""
    found = [key for key, what in WHAT.items() if f"the {what} is not read" in line]
    return found[0] if len(found) == 1 else None


def acquisition_flags(tilt_range: str | None, tilt_step: float | None, dose: float | None, voltage: float | None,
                      defocus: str | None) -> tuple[dict[str, Any], list[str]]:
    """The acquisition flags of ``forge simulate`` and ``forge simulate-tomogram`` as simulator
    options (each checked, one line naming the flag), and the notes their parsing gave."""
    flags: dict[str, Any] = {}
    notes: list[str] = []
    if tilt_range is not None:
        flags["tilt_range"] = parse_tilt_range(tilt_range)
    if tilt_step is not None:
        flags["tilt_step"] = positive_flag(tilt_step, "--tilt-step", "degrees")
    if dose is not None:
        flags["dose"] = positive_flag(dose, "--dose", "e/A^2")
    if voltage is not None:
        flags["voltage_kv"] = positive_flag(voltage, "--voltage", "kV")
    if defocus is not None:
        flags["defocus_um"], note = parse_defocus(defocus)
        notes += [note] if note else []
    return flags, notes
