"""Property-based fuzzing of every command's options with bad values (Hypothesis, a bounded number of examples).

For each command and each of its options, a strategy draws INVALID values only (negative numbers,
zero where a count or a size must be positive, NaN, infinities, numbers beyond memory or the
disk, text that is no number, empty strings, wrong enum words, paths that do not exist, files
where folders are expected, folders where files are expected, garbage files named ``x.mrc``,
``x.star``, ``x.npy``, ...). Every other option keeps a tiny valid value, so a value that were
wrongly accepted costs a second, not minutes. Each example runs in-process through the ``forge``
entry point (``cryoet_forge.cli.main``, which is what the console script runs) in a fresh
temporary folder, and must end with exit code 2 (3 for an unknown component name, as
:class:`~cryoet_forge.errors.PluginError`) and exactly one ``forge: error:`` line on stderr that
names the option (or the file) it is about; never a traceback, never success, never a run of
more than :data:`LIMIT_S` seconds.

``FORGE_FUZZ_EXAMPLES=N`` sets the examples per option (default 20; the ``slow`` variant 100);
under ``CI=true`` the examples are derandomized (the same each run).
"""

from __future__ import annotations

import math
import os
import re
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402  (after the importorskip)
from hypothesis import strategies as st  # noqa: E402

from cryoet_forge.cli import BUILTIN_COMMANDS  # noqa: E402
from cryoet_forge.cli import main as forge  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
#: seconds one example may take: a bad value must be refused before any heavy work
LIMIT_S = 30


def _settings(examples: int) -> settings:
    return settings(max_examples=int(os.environ.get("FORGE_FUZZ_EXAMPLES", str(examples))), deadline=None,
                    derandomize=os.environ.get("CI") == "true", database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.filter_too_much])


# -- values --------------------------------------------------------------------------------------

def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


PDB_ID = re.compile(r"^(?:[0-9][A-Za-z0-9]{3}|pdb_[0-9]{4}[0-9a-zA-Z]{4})$", re.IGNORECASE)
#: text a shell can pass (no NUL, no lone surrogates); never a PDB id (that would be a download)
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=10).filter(
    lambda s: not PDB_ID.match(s.strip()))
#: no number at all
NOT_A_NUMBER = st.one_of(
    st.sampled_from(["", " ", "abc", "1,2", "[1]", "0x10", "None", "true", "1e", "--", "½", "1 2", "٣x"]),
    TEXT.filter(lambda s: not _is_number(s)))
#: no list of numbers either (for MIN,MAX options)
NOT_NUMBERS = NOT_A_NUMBER.filter(lambda s: not all(_is_number(p) for p in re.split(r"[,\s]+", s.strip())))
#: no integer (click's INT is int(text))
NOT_AN_INTEGER = st.one_of(NOT_A_NUMBER, st.sampled_from(["1.5", "1e3", "nan", "inf", "-inf", "2.0", "1e400"]),
                           st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: f != int(f)).map(repr))


def ints_below(lo: int) -> st.SearchStrategy[str]:
    """Integers < ``lo``, and text that is no integer."""
    return st.one_of(st.integers(max_value=lo - 1).map(str), NOT_AN_INTEGER)


def floats_outside(lo: float, hi: float = math.inf, lo_valid: bool = False, hi_valid: bool = False):
    """Floats outside the valid range from ``lo`` to ``hi`` (each end valid itself where ``*_valid``),
    NaN, and text that is no number."""
    parts = [st.floats(max_value=lo, exclude_max=lo_valid).map(repr), st.just("nan"), st.just("NaN"), NOT_A_NUMBER]
    if hi < math.inf:
        parts.append(st.floats(min_value=hi, exclude_min=hi_valid).map(repr))
    return st.one_of(*parts)


def positive_floats() -> st.SearchStrategy[str]:
    """What an option of Angstrom, kV, ... > 0 must refuse: <= 0, NaN, +-inf, no number."""
    return st.one_of(floats_outside(0.0), st.just("inf"))


def voxel_sizes() -> st.SearchStrategy[str]:
    """Voxel sizes outside 0.01-1000 A."""
    return st.one_of(positive_floats(), st.sampled_from(["1e-9", "0.001", "5000", "1e9"]))


def huge_ints(lo: int) -> st.SearchStrategy[str]:
    return st.integers(min_value=lo, max_value=10**30).map(str)


def words(*valid: str) -> st.SearchStrategy[str]:
    """Wrong enum words: anything but ``valid`` (compared stripped and in lower case)."""
    return st.one_of(st.sampled_from(["", "x", "none-such", "ZSCORE2", "1"]), TEXT).filter(
        lambda s: s.strip().lower() not in valid)


def paths(*names: str) -> st.SearchStrategy[str]:
    """Bad inputs from the inputs folder (``{in}``)."""
    return st.sampled_from([f"{{in}}/{n}" for n in names])


#: input files that are not what they claim, and paths that are not there
BAD_FILES = ("absent.mrc", "text.mrc", "empty.mrc", "folder", "afile", "text.star", "text.npy", "text.csv",
             "text.toml", "text.json", "absent/x.mrc", "afile/x.mrc", "folder.mrc", "text.pdb")


def bad_file(*leave_out: str) -> st.SearchStrategy[str]:
    """A bad input file or folder, or an empty path."""
    return st.one_of(paths(*(n for n in BAD_FILES if n not in leave_out)), st.just(""))


#: config files: an empty file is a valid (empty) TOML table, so not among them
bad_config = bad_file("empty.mrc")
#: output places that cannot be written: a file where a folder goes, a folder under a file, empty
BAD_OUT = st.sampled_from(["{in}/afile", "{in}/afile/sub", ""])


def _toml_number(text: str) -> bool:
    from cryoet_forge.config import parse_override

    value = parse_override(f"v={text}")[1]  # read as TOML, else kept as text
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def sets(keys: dict[str, st.SearchStrategy[str]]) -> st.SearchStrategy[str]:
    """``--set KEY=VALUE`` with a bad value for a known key, or text that is no KEY=VALUE. A value
    meant as no number that TOML reads as one (``0x10`` is 16) is left out."""
    pairs = [st.tuples(st.just(k), v.filter(lambda t: _is_number(t) or not _toml_number(t))).map(
        lambda kv: f"{kv[0]}={kv[1]}") for k, v in keys.items()]
    return st.one_of(*pairs, st.sampled_from(["nokey", "=3", "nosection=1", "train.nosuch=1"]))


@dataclass(frozen=True)
class Opt:
    """The bad values of one option; ``drop``: base arguments (a flag and, unless it is a switch,
    its value) left out then, ``extra``: arguments added (what the option needs to be read)."""

    values: st.SearchStrategy[str]
    drop: tuple[str, ...] = ()
    extra: tuple[str, ...] = ()
    #: a repeatable option: the base's own values stay
    multiple: bool = False


# -- commands: a tiny valid invocation and, per option, bad values -------------------------------
#
# Placeholders: {in} the inputs folder, {out} a fresh empty folder per example, {run} a tiny
# trained run, {model} a tiny trained classifier, {picker} a tiny saved picker, {repo} the repository. A positional argument is
# written <NAME> in the base: the drawn value of NAME replaces it, else POSITIONAL[NAME].

POSITIONAL = {"STRUCTURE": "{in}/tiny.pdb", "PDB_IDS": "1abc", "KIND": "generator"}
SWITCHES = {"--phantoms", "--approximate"}

SIMULATE = ["simulate", "--phantoms", "--n-per-class", "1", "--box", "8", "--out", "{out}/sim"]
SIMULATE_TOMOGRAM = ["simulate-tomogram", "--structures", "globule", "--voxel-size", "40", "--size", "16",
                     "--n-per-class", "1", "--tilt-step", "30", "--out", "{out}/st"]
EXTRACT = ["extract", "--picks", "{in}/picks.csv", "--unit", "px", "--tomograms", "{in}/TS_01.mrc", "--box", "8",
           "--out", "{out}/x"]
METRICS = ["metrics", "--real", "{in}/a.npy", "--fake", "{in}/b.npy"]
EVALUATE_PICKING = ["evaluate-picking", "--picks", "{in}/picks2.csv", "--unit", "px", "--tomograms", "{in}",
                    "--train", "TS_01", "--test", "TS_02", "--radius", "picks2=40", "--seeds", "0",
                    "--option", "channels=[4,8]", "--option", "patch=16", "--option", "steps=1",
                    "--option", "tile=16", "--option", "overlap=4", "--out", "{out}/ep"]
PICK_TRAIN = ["pick", "train", "--picks", "{in}/picks2.csv", "--unit", "px", "--tomograms", "{in}", "--train", "TS_01",
              "--radius", "picks2=40", "--option", "channels=[4,8]", "--option", "patch=16", "--option", "steps=1",
              "--option", "tile=16", "--option", "overlap=4", "--out", "{out}/pk"]
TINY_MODEL = ("--set", "model.generator_options={base=2, n_residual=1, dropout=0.2}",
              "--set", "model.critic_options={base=2}",
              "--set", "train.batch_size=1", "--set", "train.n_critic=1", "--set", "train.device='cpu'",
              "--set", "log.progress=false", "--set", "log.checkpoint_every=1")
TINY_DATA = ("--set", "data.density.options={simulator='none', box=8, length=2, seed=1}",
             "--set", "data.subtomograms.options={simulator='fourier', box=8, length=2, seed=2}")
TRAIN = ["train", "--out", "{out}/run", "--steps", "1", *TINY_MODEL, *TINY_DATA]

CLASSIFY_TRAIN = ["classify", "train", "--data", "{in}/lab", "--out", "{out}/cls", "--epochs", "1", "--channels",
                  "2,2,2,2", "--fc-width", "4", "--validation-fraction", "0", "--batch-size", "2"]
EVALUATE = ["evaluate", "--config", "{repo}/configs/evaluate-quickstart.toml", "--out", "{out}/ev"]
SEED = Opt(st.one_of(st.integers(max_value=-1).map(str), huge_ints(2**32), NOT_AN_INTEGER))
ZERO_TO_ONE = floats_outside(0.0, 1.0, lo_valid=True)  # [0, 1)

#: command -> (base arguments, {option: its bad values})
COMMANDS: dict[str, tuple[list[str], dict[str, Opt]]] = {
    "simulate": (SIMULATE, {
        "--n-per-class": Opt(st.one_of(ints_below(1), st.just("1000000000000"))),
        "--box": Opt(st.one_of(ints_below(1), huge_ints(10**5))),
        "--voxel-size": Opt(voxel_sizes()),
        "--seed": SEED,
        "--snr": Opt(positive_floats()),
        "--batch-size": Opt(ints_below(1)),
        "--tilt-range": Opt(st.one_of(NOT_NUMBERS, st.sampled_from(
            ["60,-60", "-100,100", "nan,60", "1,2,3", "-inf,inf", "-60", "0,91"]))),
        "--tilt-step": Opt(positive_floats()),
        "--dose": Opt(positive_floats()),
        "--voltage": Opt(positive_floats()),
        "--defocus": Opt(st.one_of(NOT_NUMBERS, st.sampled_from(
            ["nan", "inf", "6,2,1", "nan,2", "1e400", "-inf", "0", "-2,3"]))),
        "--simulator": Opt(words("fourier", "tilt-series", "posed-map", "none")),
        "--structures": Opt(bad_file(), drop=("--phantoms",), extra=("--voxel-size", "10")),
        "--acquisition": Opt(bad_file()),
        "--option": Opt(st.one_of(NOT_A_NUMBER.filter(lambda s: "=" not in s), st.sampled_from(
            ["snr=-1", "snr=nan", "snr=abc", "bfactor=-5", "nosuch=1", "max_shift=-1", "max_shift=100", "=3"])),
            multiple=True),
        "--resolution": Opt(positive_floats()),
        "--assembly": Opt(ints_below(1)),
        "--device": Opt(words("cpu")),
        "--out": Opt(BAD_OUT),
    }),
    "fetch-structures": (["fetch-structures", "<PDB_IDS>", "--cache", "{out}/cache"], {
        "PDB_IDS": Opt(st.one_of(st.sampled_from(["", "abc", "12345", "zz!", "1ab", ",", "../x", " , "]), TEXT)),
        "--cache": Opt(st.sampled_from(["{in}/afile", ""])),
    }),
    "density": (["density", "<STRUCTURE>", "--out", "{out}/d.mrc", "--box", "16", "--voxel-size", "4"], {
        "STRUCTURE": Opt(st.one_of(paths("absent.pdb", "text.pdb", "text.mrc", "empty.mrc", "folder", "afile",
                                         "text.cif"), st.just(""))),
        "--voxel-size": Opt(voxel_sizes()),
        "--box": Opt(st.one_of(ints_below(4), huge_ints(10**5))),
        "--resolution": Opt(positive_floats()),
        "--assembly": Opt(ints_below(1)),
        "--out": Opt(st.sampled_from(["{in}/folder", "{in}/afile/d.mrc", ""])),
    }),
    "simulate-tomogram": (SIMULATE_TOMOGRAM, {
        "--structures": Opt(bad_file()),
        "--size": Opt(st.one_of(ints_below(8), huge_ints(16385), st.sampled_from(["16,16", "16,16,16,16", "0,16,16"]))),
        "--voxel-size": Opt(voxel_sizes()),
        "--n-per-class": Opt(st.one_of(st.sampled_from(["0", "-1", "1,2", "", "x", "1.5", "0,0"]), huge_ints(10**4))),
        "--volume-fraction": Opt(floats_outside(0.0, 0.6, hi_valid=True), drop=("--n-per-class",)),
        "--gap": Opt(st.one_of(floats_outside(0.0, lo_valid=True), st.just("inf"))),
        "--ice-thickness": Opt(st.one_of(positive_floats(), st.sampled_from(["1e6", "10"]))),
        "--membranes": Opt(ints_below(0)),
        "--membrane-radius": Opt(st.one_of(NOT_NUMBERS, st.sampled_from(["0", "-5", "nan", "inf", "1,2,3", "1e5"])),
                                 extra=("--membranes", "1")),
        "--membrane-thickness": Opt(positive_floats()),
        "--label-threshold": Opt(floats_outside(0.0, 1.0)),
        "--template-box": Opt(st.one_of(ints_below(8), huge_ints(1025))),
        "--n-tomograms": Opt(st.one_of(ints_below(1), huge_ints(10000))),
        "--name": Opt(st.sampled_from(["", " ", "a b", "../x", "_x", "x/y", "é"])),
        "--acquisition": Opt(bad_file()),
        "--tilt-range": Opt(st.one_of(NOT_NUMBERS, st.sampled_from(
            ["60,-60", "-100,100", "nan,60", "1,2,3", "-inf,inf", "-60", "0,91", "-90,90"]))),
        "--tilt-step": Opt(positive_floats()),
        "--dose": Opt(positive_floats()),
        "--voltage": Opt(positive_floats()),
        "--defocus": Opt(st.one_of(NOT_NUMBERS, st.sampled_from(
            ["nan", "inf", "6,2,1", "nan,2", "1e400", "-inf", "0", "-2,3"]))),
        "--option": Opt(st.one_of(NOT_A_NUMBER.filter(lambda s: "=" not in s), st.sampled_from(
            ["snr=-1", "bfactor=-5", "nosuch=1", "dose=abc", "shot_noise=5", "defocus_step_A=0", "ice=-1", "=3"])),
            multiple=True),
        "--resolution": Opt(positive_floats()),
        "--assembly": Opt(ints_below(1)),
        "--seed": SEED,
        "--batch-size": Opt(ints_below(1)),
        "--device": Opt(words("cpu")),
        "--out": Opt(BAD_OUT),
    }),
    "extract": (EXTRACT, {
        "--picks": Opt(bad_file()),
        "--tomograms": Opt(bad_file()),
        "--tomograms-star": Opt(bad_file()),
        "--unit": Opt(words("px", "angstrom")),
        "--coords-pixel-size": Opt(voxel_sizes()),
        "--class-column": Opt(st.sampled_from(["nosuch", "", " "])),
        "--copick": Opt(bad_file(), drop=("--picks", "--unit", "--tomograms")),
        "--tomogram-voxel-size": Opt(voxel_sizes()),
        "--copick-voxel-spacing": Opt(voxel_sizes()),
        "--tomo-name": Opt(st.one_of(st.sampled_from(["", " ", "TS_02", "ts_01"]), TEXT.filter(lambda t: t != "TS_01")),
                           multiple=True),
        "--box": Opt(st.one_of(ints_below(4), huge_ints(33))),
        "--voxel-size": Opt(voxel_sizes()),
        "--normalize": Opt(words("none", "zscore")),
        "--background": Opt(st.one_of(ints_below(0), huge_ints(10**12))),
        "--min-distance": Opt(st.one_of(floats_outside(0.0, lo_valid=True), st.just("inf"))),
        "--seed": SEED,
        "--class-names": Opt(st.one_of(st.sampled_from(["", "1", "=x", "1=", "1=a,1=b", "1=a,2=a", "1=a b", "2=x"]),
                                       TEXT.filter(lambda s: "=" not in s))),
        "--out": Opt(BAD_OUT),
    }),
    "metrics": (METRICS, {
        "--real": Opt(bad_file()),
        "--fake": Opt(bad_file()),
        "--features": Opt(words("cb3d", "radial", "inception")),
        "--feature-option": Opt(st.sampled_from(["x", "=1", "nosuch=1"]), extra=("--features", "cb3d")),
        "--save-features": Opt(st.sampled_from(["{in}/afile", "{in}/afile/sub", ""]), extra=("--features", "cb3d")),
        "--is-splits": Opt(ints_below(1), extra=("--features", "cb3d")),
        "--k": Opt(st.one_of(ints_below(1), huge_ints(40))),
        "--backend": Opt(words("exact", "faiss", "torch")),
        "--device": Opt(words("auto", "cpu", "cuda")),
        "--bootstrap": Opt(st.one_of(ints_below(0), st.integers(1, 49).map(str), huge_ints(100001))),
        "--json": Opt(st.sampled_from(["{in}/folder", "{in}/afile/x.json", "{in}/a.npy", ""])),
        "--seed": Opt(SEED.values),  # without --approximate any seed is one; its range is the mode's
        "--samples": Opt(ints_below(2), extra=("--approximate",)),
        "--confidence": Opt(floats_outside(0.5, 1.0, lo_valid=True), extra=("--approximate",)),
    }),
    "train": (TRAIN, {
        "--config": Opt(bad_config),
        "--out": Opt(BAD_OUT),
        "--resume": Opt(st.sampled_from(["{in}/absent", "{in}/afile", "{in}/folder", ""]),
                        drop=("--out",)),
        "--generator": Opt(words()),
        "--critic": Opt(words()),
        "--loss": Opt(words()),
        "--precision": Opt(words("fp32", "bf16", "fp16", "auto")),
        "--steps": Opt(st.one_of(ints_below(0), huge_ints(2**63))),
        # --steps would win over a --set train.steps: the base's --steps gives way to the --set
        "--set": Opt(sets({"train.batch_size": ints_below(1), "train.lr": positive_floats(), "train.seed": SEED.values,
                           "train.steps": st.one_of(ints_below(0), st.sampled_from(["[1]", "inf", "'x'", "1.5"])),
                           "train.n_critic": ints_below(1),
                           "train.device": st.sampled_from(["'tpu'", "3", "'cuda:99'"]),
                           "data.density.options": st.sampled_from(["{box=-1}", "{box='x'}", "3"])}),
                     multiple=True, drop=("--steps",), extra=("--set", "train.steps=1")),
        "--real": Opt(bad_file(), drop=("--set",), extra=(*TINY_MODEL, "--structures", "ring")),
        "--maps": Opt(bad_file(), drop=("--set",), extra=(*TINY_MODEL, "--real", "{in}/lab")),
        "--structures": Opt(bad_file(), drop=("--set",), extra=(*TINY_MODEL, "--real", "{in}/lab")),
        "--gan-input": Opt(words("traditional", "density")),
    }),
    "generate": (["generate", "--run", "{run}", "--structures", "ring", "--out", "{out}/g", "--n-per-map", "1"], {
        "--run": Opt(st.sampled_from(["{in}/absent", "{in}/afile", "{in}/folder", "{in}/lab", ""])),
        "--maps": Opt(bad_file(), drop=("--structures",)),
        "--structures": Opt(bad_file(), multiple=True),
        "--n-per-map": Opt(ints_below(1)),
        "--out": Opt(BAD_OUT),
        "--seed": SEED,
        "--batch-size": Opt(ints_below(1)),
    }),
    "uncertainty": (["uncertainty", "--run", "{run}", "--map", "{in}/map8.mrc", "--out", "{out}/u",
                     "--samples", "2"], {
        "--run": Opt(st.sampled_from(["{in}/absent", "{in}/afile", "{in}/folder", "{in}/lab", ""])),
        "--map": Opt(st.one_of(bad_file(), st.just("{in}/TS_01.mrc"))),
        "--samples": Opt(st.one_of(ints_below(2), huge_ints(10**9))),
        "--dropout": Opt(ZERO_TO_ONE),
        "--seed": SEED,
        "--out": Opt(BAD_OUT),
    }),
    "refine-tomogram": (["refine-tomogram", "--run", "{run}", "--tomogram", "{in}/TS_01.mrc", "--out", "{out}/r",
                         "--tile", "16", "--overlap", "4"], {
        "--run": Opt(st.sampled_from(["{in}/absent", "{in}/afile", "{in}/folder", "{in}/lab", ""])),
        "--tomogram": Opt(st.one_of(bad_file(), st.just("{in}/tiny.pdb")), multiple=True),
        "--out": Opt(BAD_OUT),
        "--tile": Opt(st.one_of(ints_below(2), huge_ints(10**5), st.just("4"))),
        "--overlap": Opt(st.one_of(ints_below(0), st.sampled_from(["16", "100"]))),
        "--checkpoint": Opt(bad_file()),
        "--seed": SEED,
        "--batch-size": Opt(st.one_of(ints_below(1), huge_ints(10**9))),
        "--device": Opt(words("cpu")),
    }),
    "classify train": (CLASSIFY_TRAIN, {
        "--data": Opt(bad_file()),
        "--test": Opt(bad_file()),
        "--out": Opt(BAD_OUT),
        "--epochs": Opt(ints_below(1)),
        "--batch-size": Opt(ints_below(1)),
        "--lr": Opt(positive_floats()),
        "--channels": Opt(st.one_of(st.sampled_from(["", "0", "-1,2", "a,b", "2.5", "1e9", "2,2,2,0",
                                                     "100000,100000,2,2"]), NOT_A_NUMBER)),
        "--convs-per-block": Opt(st.one_of(st.sampled_from(["", "0", "-1", "x", "1,0,1,1"]), NOT_A_NUMBER)),
        "--fc-width": Opt(st.one_of(ints_below(1), huge_ints(10**7))),
        "--dropout": Opt(ZERO_TO_ONE),
        "--normalize": Opt(words("zscore", "minmax", "none")),
        "--validation-fraction": Opt(floats_outside(0.0, 0.9, lo_valid=True)),
        "--patience": Opt(ints_below(1)),
        "--seed": SEED,
        "--device": Opt(words("cpu")),
    }),
    "classify eval": (["classify", "eval", "--model", "{model}", "--data", "{in}/lab", "--out", "{out}/e"], {
        "--model": Opt(st.one_of(bad_file(), st.just("{in}/lab"))),
        "--data": Opt(bad_file()),
        "--out": Opt(BAD_OUT),
        "--device": Opt(words("cpu")),
    }),
    "classify features": (["classify", "features", "--model", "{model}", "--data", "{in}/lab", "--out",
                           "{out}/f.npy"], {
        "--model": Opt(st.one_of(bad_file(), st.just("{in}/lab"))),
        "--data": Opt(bad_file()),
        "--out": Opt(st.sampled_from(["{in}/folder", "{in}/afile/f.npy", "{out}/f.txt", ""])),
        "--probabilities": Opt(st.sampled_from(["{in}/folder", "{in}/afile/p.npy", "{out}/p.txt", ""])),
        "--device": Opt(words("cpu")),
    }),
    "evaluate": (EVALUATE, {
        "--config": Opt(bad_config),
        "--suite": Opt(bad_config, drop=("--config",)),
        "--out": Opt(BAD_OUT),
        "--set": Opt(sets({"data.box": ints_below(4), "data.voxel_size": positive_floats(),
                           "data.n_train_per_class": ints_below(1),
                           "downstream.seeds": st.sampled_from(["[]", "-1", "'x'"]),
                           "data.source": st.sampled_from(["'nowhere'", "3"])}), multiple=True),
        "--budget-minutes": Opt(positive_floats()),
        "--domain": Opt(TEXT, drop=("--config",), extra=("--suite", "{repo}/configs/suite.toml"), multiple=True),
        "--method": Opt(TEXT, drop=("--config",), extra=("--suite", "{repo}/configs/suite.toml"), multiple=True),
    }),
    "quickstart": (["quickstart", "--out", "{out}/q"], {
        "--out": Opt(BAD_OUT),
        "--seed": SEED,
        "--budget-minutes": Opt(positive_floats()),
    }),
    "evaluate-picking": (EVALUATE_PICKING, {
        "--picks": Opt(bad_file()),
        "--tomograms": Opt(bad_file()),
        "--copick": Opt(bad_file(), drop=("--picks", "--unit", "--tomograms")),
        "--train": Opt(st.sampled_from(["", "TS_09", "ts_01", "TS_02"])),
        "--test": Opt(st.sampled_from(["", "TS_09", "TS_01"])),
        "--unit": Opt(words("px", "angstrom")),
        "--class-column": Opt(st.sampled_from(["nosuch", "x", "TS_01"])),
        "--radius": Opt(st.one_of(NOT_A_NUMBER, st.sampled_from(["picks=0", "picks=-1", "picks=nan", "picks=inf",
                                                                  "=40", "picks", "picks=x"])), multiple=True,
                        drop=("--radius",)),
        "--radius-column": Opt(st.sampled_from(["nosuch", "tomogram", ""]), drop=("--radius",)),
        "--synthetic": Opt(st.one_of(bad_file(), st.just("{in}/folder"))),
        "--refined": Opt(st.one_of(bad_file(), st.just("{in}/folder"))),
        "--picker": Opt(words("unet-segmentation")),
        "--option": Opt(st.one_of(NOT_A_NUMBER.filter(lambda s: "=" not in s), st.sampled_from(
            ["patch=15", "steps=0", "nosuch=1", "lr=-1", "threshold=2", "channels=x", "=3"])), multiple=True),
        "--seeds": Opt(st.sampled_from(["", "x", "-1", "1,1", "0,,x", "99999999999"])),
        "--margin": Opt(floats_outside(0.0, 1.0, lo_valid=True, hi_valid=True)),
        "--out": Opt(BAD_OUT),
    }),
    "pick train": (PICK_TRAIN, {
        "--synthetic": Opt(st.one_of(bad_file(), st.just("{in}/folder")), drop=("--picks", "--unit", "--tomograms")),
        "--refined": Opt(st.one_of(bad_file(), st.just("{in}/folder"))),
        "--picks": Opt(bad_file()),
        "--tomograms": Opt(bad_file()),
        "--copick": Opt(bad_file(), drop=("--picks", "--unit", "--tomograms")),
        "--train": Opt(st.sampled_from(["", "TS_09", "ts_01"])),
        "--unit": Opt(words("px", "angstrom")),
        "--class-column": Opt(st.sampled_from(["nosuch", "x", "TS_01"])),
        "--radius": Opt(st.one_of(NOT_A_NUMBER, st.sampled_from(["picks2=0", "picks2=-1", "picks2=nan", "=40",
                                                                  "picks2"])), multiple=True, drop=("--radius",)),
        "--radius-column": Opt(st.sampled_from(["nosuch", "tomogram", ""]), drop=("--radius",)),
        "--picker": Opt(words("unet-segmentation")),
        "--option": Opt(st.one_of(NOT_A_NUMBER.filter(lambda s: "=" not in s), st.sampled_from(
            ["patch=15", "steps=0", "nosuch=1", "lr=-1", "threshold=2", "channels=x", "=3"])), multiple=True),
        "--seed": SEED,
        "--out": Opt(BAD_OUT),
    }),
    "pick apply": (["pick", "apply", "--run", "{picker}", "--tomogram", "{in}/TS_02.mrc", "--out", "{out}/pa"], {
        "--run": Opt(st.sampled_from(["{in}/absent", "{in}/afile", "{in}/folder", "{in}/lab", ""])),
        "--tomogram": Opt(st.one_of(bad_file(), st.just("{in}/tiny.pdb")), multiple=True, drop=("--tomogram",)),
        "--voxel-size": Opt(voxel_sizes()),
        "--copick": Opt(bad_file(), drop=("--tomogram",)),
        "--option": Opt(st.one_of(NOT_A_NUMBER.filter(lambda s: "=" not in s), st.sampled_from(
            ["tile=15", "nosuch=1", "threshold=2", "channels=[4]", "channels=x", "=3"])), multiple=True),
        "--out": Opt(BAD_OUT),
    }),
    "list": (["list", "<KIND>"], {"KIND": Opt(words("generator", "critic", "loss", "dataset", "simulator",
                                                    "knn-backend", "feature-extractor", "classifier", "picker"))}),
    "plugins": (["plugins"], {"--nosuch": Opt(st.sampled_from(["1", ""]))}),
}

#: the options that take a value but are not fuzzed, and why
NOT_FUZZED = {
    ("fetch-structures", "--base-url"): "any text is an archive URL until a download tries it (network)",
    ("extract", "--object"): "copick only: the names of a copick project's pickable objects",
    ("extract", "--tomo-type"): "copick only: the tomogram types of a copick project",
    ("extract", "--scale"): "OME-Zarr only: any text may name a scale level of a .zarr tomogram",
    ("evaluate-picking", "--tomo-type"): "copick only: the tomogram types of a copick project",
    ("evaluate-picking", "--voxel-spacing"): "copick only: one of a copick run's voxel spacings",
    ("evaluate-picking", "--copick-user"): "copick only: any text may be a pick set's user id",
    ("evaluate-picking", "--copick-session"): "copick only: any text may be a pick set's session id",
    ("pick train", "--tomo-type"): "copick only: the tomogram types of a copick project",
    ("pick train", "--voxel-spacing"): "copick only: one of a copick run's voxel spacings",
    ("pick train", "--copick-user"): "copick only: any text may be a pick set's user id",
    ("pick train", "--copick-session"): "copick only: any text may be a pick set's session id",
    ("pick apply", "--runs"): "copick only: the run names of a copick project",
    ("pick apply", "--tomo-type"): "copick only: the tomogram types of a copick project",
    ("pick apply", "--voxel-spacing"): "copick only: one of a copick run's voxel spacings",
    ("pick apply", "--copick-user"): "copick only: any text may be the user id of the picks written",
    ("pick apply", "--copick-session"): "copick only: any text may be the session id of the picks written",
}

#: options naming a registered component: an unknown name is a PluginError (exit code 3), its
#: line names the kind of component
COMPONENTS = {("simulate", "--simulator"): "simulator", ("metrics", "--features"): "feature-extractor",
              ("metrics", "--backend"): "knn-backend", ("train", "--generator"): "generator",
              ("train", "--critic"): "critic", ("train", "--loss"): "loss", ("list", "KIND"): "kind",
              ("evaluate-picking", "--picker"): "picker", ("pick train", "--picker"): "picker"}
#: what an error line may name instead of the option itself
ALSO_NAMED = {"--set": ("override",), "PDB_IDS": ("PDB id",), "STRUCTURE": ("structure",),
              "--nosuch": ("No such option",), "--option": ("option",), "--class-column": ("class column",),
              "--feature-option": ("feature-extractor",), "--k": ("k=",), "--domain": ("domain",),
              "--method": ("method",), "--radius-column": ("radius column",)}


class TookTooLong(BaseException):
    """Raised in the command by SIGALRM: the bad value was not refused before the work began."""


def _alarm(signum, frame):
    raise TookTooLong(f"ran past {LIMIT_S} s: the bad value was not refused before the work")


# -- inputs --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Tiny valid inputs and the bad ones, made once."""
    from test_classify_cli import labelled_folder

    from cryoet_forge.io.mrc import write_mrc

    root = tmp_path_factory.mktemp("fuzz-inputs")
    rng = np.random.default_rng(0)
    np.save(root / "a.npy", rng.normal(size=(40, 4)).astype(np.float32))
    np.save(root / "b.npy", rng.normal(size=(40, 4)).astype(np.float32) + 0.5)
    write_mrc(root / "TS_01.mrc", rng.normal(size=(32, 32, 32)).astype(np.float32), 10.0)
    write_mrc(root / "map8.mrc", rng.random((8, 8, 8), dtype=np.float32), 10.0)
    write_mrc(root / "TS_02.mrc", rng.normal(size=(32, 32, 32)).astype(np.float32), 10.0)
    (root / "picks2.csv").write_text("tomogram,x,y,z\nTS_01,16,16,16\nTS_02,12,14,15\n")
    (root / "tiny.pdb").write_text("ATOM      1  CA  ALA A   1       0.000   0.000   0.000  1.00 20.00           C\n"
                                   "ATOM      2  CA  ALA A   2       3.000   0.000   0.000  1.00 20.00           C\nEND\n")
    (root / "picks.csv").write_text("tomogram,x,y,z\nTS_01,16,16,16\nTS_01,12,14,15\n")
    for name in ("text.mrc", "text.star", "text.npy", "text.toml", "text.json", "text.pdb", "text.cif", "afile"):
        (root / name).write_text("hello, not what the name says\n")
    (root / "text.csv").write_text("a;b\n1;2;3\n")
    (root / "empty.mrc").write_bytes(b"")
    (root / "folder").mkdir()
    (root / "folder.mrc").mkdir()
    labelled_folder(root / "lab", 2, seed=0, box=16)
    return root


@pytest.fixture(scope="module")
def trained(inputs):
    """A tiny training run and a tiny classifier, made once (only for the commands that read them)."""
    root = inputs.parent / "trained"
    root.mkdir(exist_ok=True)
    base = [a.replace("{out}", str(root)) for a in TRAIN]
    assert forge(["-q", *base]) == 0
    assert forge(["-q", *[a.replace("{in}", str(inputs)).replace("{out}", str(root)) for a in CLASSIFY_TRAIN]]) == 0
    assert forge(["-q", *[a.replace("{in}", str(inputs)).replace("{out}", str(root)) for a in PICK_TRAIN]]) == 0
    return {"run": root / "run", "model": root / "cls", "picker": root / "pk"}


def _args(command: str, option: str, value: str, places: dict[str, str]) -> list[str]:
    base, options = COMMANDS[command]
    spec = options[option]
    args = list(base)
    for flag in spec.drop + (() if spec.multiple or option.isupper() else (option,)):
        while flag in args:  # the base's own value is replaced
            i = args.index(flag)
            del args[i:i + (1 if flag in SWITCHES else 2)]
    args += list(spec.extra)
    if option.isupper() and value.startswith("-"):  # as a shell user would: after "--", at the end
        args = [a for a in args if a != f"<{option}>"] + ["--", value]
    args = [value if a == f"<{option}>" else POSITIONAL.get(a.strip("<>"), a) if a.startswith("<") else a
            for a in args]
    if not option.isupper():
        args.append(f"{option}={value}")
    out = []
    for a in args:
        for key, path in places.items():
            a = a.replace("{" + key + "}", path)
        out.append(a)
    return ["-q", *out]


def _check(command: str, option: str, value: str, inputs: Path, trained: dict | None, capsys) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        places = {"in": str(inputs), "out": tmp, "repo": str(REPO), **{k: str(v) for k, v in (trained or {}).items()}}
        args = _args(command, option, value, places)
        here = os.getcwd()
        os.chdir(tmp)  # a default output (quickstart-out, runs/...) lands in the fresh folder
        previous = signal.signal(signal.SIGALRM, _alarm)
        signal.alarm(LIMIT_S)
        capsys.readouterr()
        try:
            code = forge(args)
        except TookTooLong as exc:  # an AssertionError, so that Hypothesis reports (and shrinks) the value
            raise AssertionError(f"{exc}: forge {' '.join(args)}") from None
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)
            os.chdir(here)
        err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if not line.startswith(("note: ", "forge: note: "))]
    shown = f"forge {' '.join(args)}\n{err}"
    assert "Traceback" not in err, shown
    kind = COMPONENTS.get((command, option))
    expected = (2,) if kind is None else (2, 3)
    assert code in expected, f"exit code {code}, expected {expected}: {shown}"
    assert len(lines) == 1 and lines[0].startswith("forge: error: "), shown
    named = [option, *ALSO_NAMED.get(option, ()), *([kind] if kind else [])]
    if option in ("--set", "--option") and "=" in value:  # the key will do
        named.append(value.split("=", 1)[0].strip())
    if value.startswith(("{in}/", "{out}/")):  # a file: its name will do
        named += [Path(value).name, Path(value).stem]
    assert any(n and n in lines[0] for n in named), f"the line names none of {named}: {shown}"


def test_every_command_and_option_is_fuzzed():
    """Every built-in command (and sub-command), and each of its options that takes a value, has
    bad values here or a reason in NOT_FUZZED (switches take none)."""
    import importlib

    import click

    from cryoet_forge.cli import cli

    commands = {"list": cli.commands["list"], "plugins": cli.commands["plugins"]}
    for name, (module, attribute) in BUILTIN_COMMANDS.items():
        command = getattr(importlib.import_module(module), attribute)
        subs = command.commands if isinstance(command, click.Group) else {"": command}
        commands.update({f"{name} {sub}".strip(): c for sub, c in subs.items()})
    assert set(commands) == set(COMMANDS)
    for name, command in commands.items():
        fuzzed = set(COMMANDS[name][1]) | {o for c, o in NOT_FUZZED if c == name}
        for param in command.params:
            if isinstance(param, click.Option) and param.is_flag:
                continue
            names = param.opts if isinstance(param, click.Option) else [str(param.name).upper()]
            assert fuzzed & set(names), f"forge {name} {names[0]}: no bad values, no reason in NOT_FUZZED"


CASES = [(c, o) for c, (_, options) in COMMANDS.items() for o in options]
NEEDS_TRAINED = {"generate", "uncertainty", "refine-tomogram", "classify eval", "classify features", "pick apply"}


def _run_one(command, option, data, inputs, request, capsys):
    trained = request.getfixturevalue("trained") if command in NEEDS_TRAINED else None
    value = data.draw(COMMANDS[command][1][option].values, label=option)
    _check(command, option, value, inputs, trained, capsys)


@pytest.mark.parametrize("command, option", CASES, ids=[f"{c}{o}".replace(" ", "-") for c, o in CASES])
@_settings(20)
@given(data=st.data())
def test_a_bad_value_is_one_line_and_exit_code_2(command, option, data, inputs, request, capsys):
    _run_one(command, option, data, inputs, request, capsys)


@pytest.mark.slow
@pytest.mark.parametrize("command, option", CASES, ids=[f"{c}{o}".replace(" ", "-") for c, o in CASES])
@_settings(100)
@given(data=st.data())
def test_many_bad_values_are_one_line_and_exit_code_2(command, option, data, inputs, request, capsys):
    _run_one(command, option, data, inputs, request, capsys)


# -- what the fuzzing found: each case once, as a plain test -------------------------------------

I, O = "{in}", "{out}"  # noqa: E741
SIM = ["simulate", "--phantoms", "--n-per-class", "1", "--box", "8", "--out", f"{O}/sim"]
EXT = ["extract", "--picks", f"{I}/picks.csv", "--tomograms", f"{I}/TS_01.mrc", "--box", "8", "--out", f"{O}/x"]
MET = ["metrics", "--real", f"{I}/a.npy", "--fake", f"{I}/b.npy"]
CLS = CLASSIFY_TRAIN
EVAL = [a.replace("{repo}", str(REPO)) for a in EVALUATE]
FOUND = [
    # (id, arguments, exit code, words of the one line); before the fix: what happened
    # misleading: "voxel size nan is invalid" (which voxel size?)
    ("simulate-voxel-size-nan", SIM + ["--voxel-size", "nan"], 2, ["--voxel-size nan is invalid"]),
    # misleading: "snr 0.0: expected values > 0" (the simulator's option, not the flag)
    ("simulate-snr-zero", SIM + ["--snr", "0"], 2, ["--snr 0.0: expected a number > 0"]),
    # accepted: --resolution nan with phantoms (unused there) succeeded
    ("simulate-resolution-nan", SIM + ["--resolution", "nan"], 2, ["--resolution nan: expected a number > 0"]),
    # accepted: --structures '' with --phantoms simulated the phantoms
    ("simulate-structures-empty", SIM + ["--structures", ""], 2, ["--structures '' names no structure"]),
    # misleading: "--voxel-size is required: PDB structures carry no voxel size" for a .toml file
    ("simulate-structures-not-a-structure", ["simulate", "--structures", f"{I}/text.toml", "--out", f"{O}/s"], 2,
     ["--structures", "text.toml: not a map (.mrc, .map, .mrcs) or structure"]),
    # accepted: --out '' wrote the simulation into the current folder
    ("simulate-out-empty", SIM[:-2] + ["--out", ""], 2, ["Invalid value for '--out': '' is empty"]),
    ("simulate-assembly-zero", SIM + ["--assembly", "0"], 2, ["--assembly 0: expected"]),
    # accepted: no PDB id at all, nothing fetched, exit 0
    ("fetch-structures-no-id", ["fetch-structures", ",", "--cache", f"{O}/cache"], 2, ["',' names no PDB id"]),
    # traceback: MemoryError (std::bad_alloc) in gemmi's grid
    ("density-box-beyond-memory", ["density", f"{I}/tiny.pdb", "--out", f"{O}/d.mrc", "--box", "100000"], 2,
     ["--box 100000 (a density grid of at least 100000^3 voxels) needs", "expected a smaller --box"]),
    ("density-resolution-zero", ["density", f"{I}/tiny.pdb", "--out", f"{O}/d.mrc", "--resolution", "0"], 2,
     ["--resolution 0.0: expected a number > 0"]),
    # exit code 1, "cannot write there (File exists)" after the map was computed
    ("density-out-under-a-file", ["density", f"{I}/tiny.pdb", "--out", f"{I}/afile/d.mrc"], 2,
     ["--out", "afile is a file, so nothing can be written under it"]),
    # misleading: "--unit None: a coordinate list needs its unit stated"
    ("extract-unit-missing", EXT, 2, ["picks.csv: a coordinate list needs the unit of its x, y, z stated; give "
                                      "--unit px or --unit angstrom"]),
    # misleading: "TS_01.mrc: header voxel size (0.0, 0.0, 0.0) is not positive" (the header was fine)
    ("extract-tomogram-voxel-size-zero", EXT + ["--unit", "px", "--tomogram-voxel-size", "0"], 2,
     ["--tomogram-voxel-size 0.0 is invalid; expected a finite value in Angstrom > 0"]),
    # misleading: "tomogram 'TS_01' named in the picks has no tomogram file (tomograms: text)"
    ("extract-tomograms-not-a-tomogram", EXT[:3] + ["--unit", "px", "--tomograms", f"{I}/text.csv"] + EXT[5:], 2,
     ["--tomograms", "text.csv: not a tomogram; expected an MRC file"]),
    # accepted: an unreadable (or absent) --tomograms-star was never read with CSV picks
    ("extract-tomograms-star-garbage", EXT + ["--unit", "px", "--tomograms-star", f"{I}/text.star"], 2,
     ["text.star"]),
    # misleading: "pick 1 ... at x=inf y=inf z=inf voxels is outside tomogram"
    ("extract-coords-pixel-size-inf", EXT + ["--unit", "px", "--coords-pixel-size", "inf"], 2,
     ["--coords-pixel-size inf is invalid"]),
    # accepted: --min-distance nan
    ("extract-min-distance-nan", EXT + ["--unit", "px", "--min-distance", "nan"], 2,
     ["--min-distance nan: expected a finite distance >= 0"]),
    # accepted: --class-column '' (read as no class column)
    ("extract-class-column-empty", EXT + ["--unit", "px", "--class-column", ""], 2, ["--class-column '' is empty"]),
    # misleading: "k must be a positive integer" (no option named)
    ("metrics-k-negative", MET + ["--k", "-1"], 2, ["--k -1: expected an integer >= 1"]),
    # exit code 1, "Device or resource busy: <the temporary file's name>"
    ("metrics-json-empty", MET + ["--json", ""], 2, ["Invalid value for '--json': '' is empty"]),
    # misleading: "train.steps must be >= 0, got -3" (the config key, not the flag)
    ("train-steps-negative", ["train", "--out", f"{O}/run", "--steps", "-3"], 2,
     ["--steps -3: expected a number of generator steps in [0, 9223372036854775807]"]),
    # ran: beyond int64, training started (and would never end)
    ("train-steps-beyond-int64", ["train", "--out", f"{O}/run", "--steps", str(2**63)], 2,
     [f"--steps {2**63}: expected"]),
    ("train-set-steps-beyond-int64", ["train", "--out", f"{O}/run", "--set", f"train.steps={2**70}"], 2,
     [f"train.steps must be an integer in [0, 9223372036854775807], got {2**70}"]),
    # exit code 1, "Not a directory: .../afile/sub" after the data were built
    ("train-out-under-a-file", TRAIN[:2] + [f"{I}/afile/sub"] + TRAIN[3:], 2,
     ["--out", "afile is a file, so nothing can be written under it"]),
    # misleading: ".: no such structure file"
    ("generate-structures-empty", ["generate", "--run", "{run}", "--structures", "", "--out", f"{O}/g"], 2,
     ["--structures '' is empty"]),
    # misleading: "cryoetgan dropout must be in [0, 1), got nan" (click's FloatRange lets NaN through)
    ("uncertainty-dropout-nan", ["uncertainty", "--run", "{run}", "--map", f"{I}/map8.mrc", "--out", f"{O}/u",
                                 "--dropout", "nan"], 2, ["--dropout nan: expected a probability in [0, 1)"]),
    # ran: every draw is kept, so memory ran out after minutes
    ("uncertainty-samples-beyond-memory", ["uncertainty", "--run", "{run}", "--map", f"{I}/map8.mrc", "--out",
                                           f"{O}/u", "--samples", str(10**15)], 2,
     [f"--samples {10**15} ({10**15} generated volumes of 8^3 voxels", "expected fewer --samples"]),
    # traceback: ValueError "Invalid learning rate: nan" from torch
    ("classify-lr-nan", CLS + ["--lr", "nan"], 2, ["--lr nan: expected a finite learning rate > 0"]),
    # accepted: --lr inf trained (to NaN weights)
    ("classify-lr-inf", CLS + ["--lr", "inf"], 2, ["--lr inf"]),
    # traceback: RuntimeError "DefaultCPUAllocator: can't allocate memory"
    ("classify-fc-width-beyond-memory", CLS[:-6] + ["--fc-width", "100000000"] + CLS[-4:], 2,
     ["--fc-width 100000000", "weights) needs", "expected smaller --channels / --fc-width"]),
    # misleading: "classifier needs epochs >= 1, batch_size >= 1, lr > 0; got 0, 2, 0.001"
    ("classify-epochs-zero", CLS + ["--epochs", "0"], 2, ["--epochs 0: expected an integer >= 1"]),
    ("classify-channels-blocks", CLS + ["--channels", "2,2"], 2,
     ["--channels 2,2 and --convs-per-block 1,1,2,2: expected one entry per block in each"]),
    # exit code 1, "cannot write there (File exists): .../afile/scores.json" after scoring
    ("classify-eval-out-is-a-file", ["classify", "eval", "--model", "{model}", "--data", f"{I}/lab", "--out",
                                     f"{I}/afile"], 2, ["--out", "afile: is a file; expected a folder"]),
    # exit code 1 after the features were computed
    ("classify-features-out-under-a-file", ["classify", "features", "--model", "{model}", "--data", f"{I}/lab",
                                            "--out", f"{I}/afile/f.npy"], 2,
     ["--out", "afile is a file, so nothing can be written under it"]),
    ("classify-features-probabilities-suffix", ["classify", "features", "--model", "{model}", "--data", f"{I}/lab",
                                                "--out", f"{O}/f.npy", "--probabilities", f"{O}/p.txt"], 2,
     ["--probabilities", "p.txt: unsupported feature file type '.txt'"]),
    # misleading: "<config>: data.box must be in 16..128, got 0" (blamed the file for the --set value)
    ("evaluate-set-blames-the-set", EVAL + ["--set", "data.box=0"], 2,
     ["data.box must be in 16..128, got 0 (from --set, over", "evaluate-quickstart.toml)"]),
    # exit code 1, "File exists: .../afile"
    ("evaluate-out-is-a-file", EVAL[:-2] + ["--out", f"{I}/afile"], 2, ["--out", "afile: is a file; expected a folder"]),
    # ran: the whole evaluation started in the current folder
    ("evaluate-out-empty", EVAL[:-2] + ["--out", ""], 2, ["Invalid value for '--out': '' is empty"]),
    # ran: --budget-minutes inf was accepted up to the budget stage
    ("quickstart-budget-inf", ["quickstart", "--out", f"{O}/q", "--budget-minutes", "inf"], 2,
     ["--budget-minutes inf: expected a finite number of minutes > 0"]),
    # accepted: `forge list ''` listed every kind
    ("list-empty-kind", ["list", ""], 3, ["unknown component kind ''"]),
]


@pytest.mark.parametrize("args, code, fragments", [c[1:] for c in FOUND], ids=[c[0] for c in FOUND])
def test_what_the_fuzzing_found_is_one_line(args, code, fragments, inputs, request, tmp_path, capsys):
    places = {"in": str(inputs), "out": str(tmp_path)}
    if any(a in ("{run}", "{model}") for a in args):
        places.update({k: str(v) for k, v in request.getfixturevalue("trained").items()})
    for key, path in places.items():
        args = [a.replace("{" + key + "}", path) for a in args]
    capsys.readouterr()
    got = forge(["-q", *args])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert "Traceback" not in err
    assert got == code, err
    assert len(lines) == 1 and lines[0].startswith("forge: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert not (Path(tmp_path) / "sim").exists() and not (Path(tmp_path) / "run").exists()


def test_the_console_script_gives_the_same_one_line(inputs, tmp_path):
    """In-process runs are faithful: the ``forge`` executable prints the same line, no traceback."""
    import subprocess

    from tests_support import forge_executable

    result = subprocess.run([forge_executable(), "density", str(inputs / "tiny.pdb"), "--out", str(tmp_path / "d.mrc"),
                             "--box", "100000"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("forge: error: --box 100000 (a density grid"), result.stderr
