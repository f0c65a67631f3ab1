"""Typed configuration of ``forge evaluate`` (TOML), and the quickstart setting (the packaged quickstart.toml).

Sections: ``[data]`` (where "real" data and the clean maps come from), ``[experimental]``
(the simulator standing in for experimental data in the embedded default), ``[traditional]``
(the baseline simulator), ``[gan]`` (training configuration and overrides, or an existing
run), ``[classifier]`` (CB3D options used for the Inception network and the downstream
classifiers), ``[downstream]``, ``[metrics]``, ``[ablations]``, ``[uncertainty]``,
``[report]``. Every key is optional; an unknown key is a ConfigError naming it.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from cryoet_forge import registry
from cryoet_forge.classify import ClassifierOptions
from cryoet_forge.config import apply_overrides, load_config, parse_override, read_toml
from cryoet_forge.devices import check_seed
from cryoet_forge.errors import ConfigError, InputError
from cryoet_forge.evaluate.classifiers import RuleOptions
from cryoet_forge.evaluate.downstream import check_workers
from cryoet_forge.evaluate.report import DEFAULT_TITLE
from cryoet_forge.io.mrc import check_voxel_size
from cryoet_forge.options import build_dataclass, check_at_least, check_choice
from cryoet_forge.simulate.acquisition import FLAGS, apply_acquisition, read_star_acquisition


@dataclass
class DataSection:
    #: "embedded": simulate the "experimental" domain; "folders": read real_train/real_test STAR files;
    #: "copick": cut the real splits from a copick project (``copick``), split by run; "picks": cut
    #: them from tomograms at a particle table, split by tomogram
    source: str = "embedded"
    #: class names: phantom names, or map ids found in ``maps_dir`` (e.g. 3j9i, 4v94)
    classes: list = field(default_factory=lambda: ["barrel", "two-lobe", "ring", "membrane"])
    #: folder of clean maps <class>.mrc or atomic models <class>.pdb / .cif (gzipped or not) (domain D
    #: templates); "" = phantoms. A path starting with "shared:" is relative to the shared data
    #: folder beside the repository (../shared/data)
    maps_dir: str = ""
    #: atomic models in ``maps_dir``: build biological assembly N (1 = the first); 0 = the model as deposited
    assembly: int = 0
    box: int = 32
    voxel_size: float = 10.0
    n_train_per_class: int = 100
    n_test_per_class: int = 50
    #: number of randomly rotated clean maps per class in domain D (GAN training)
    n_density_per_class: int = 100
    #: per-particle structural variability of the embedded "experimental" phantoms (seeded shape changes)
    vary_shapes: bool = True
    seed: int = 0
    #: source = "folders": labelled STAR files of the real splits
    real_train: str = ""
    real_test: str = ""
    #: source = "copick": options of the copick dataset (config, objects, voxel_spacing, tomo_type,
    #: box, voxel_size, invert, ...; see cryoet_forge.data.copick); the real splits are split by
    #: run, never by particle: ``test_runs`` names the test runs, or ``test_fraction`` of the runs
    #: (seeded by ``seed``) are drawn
    copick: dict = field(default_factory=dict)
    test_runs: list = field(default_factory=list)
    test_fraction: float = 0.25
    #: source = "picks": cut the real splits at run time (as ``forge extract``, box ``box`` at
    #: ``voxel_size``) from the tomograms in ``tomograms`` (a folder or file) at the particle table
    #: ``picks`` (CSV/STAR, classes from its class column; ``unit`` "px" or "angstrom" for CSV),
    #: ``train_tomograms`` for the training split and ``test_tomograms`` for the test split
    #: (disjoint). Paths may start with "shared:" like ``maps_dir``
    picks: str = ""
    tomograms: str = ""
    unit: str = ""
    train_tomograms: list = field(default_factory=list)
    test_tomograms: list = field(default_factory=list)
    #: every real source: keep at most this many labelled training particles per class (drawn with
    #: ``seed``; 0 = all), to measure with fewer labels
    real_train_per_class: int = 0
    #: source = "folders"/"copick"/"picks": the real splits must follow the contrast convention (protein
    #: dark, cryoet_forge.data.polarity): "check" stops when the training split is measurably
    #: protein-bright, "auto" inverts both splits then, "off" skips the check
    polarity: str = "check"


@dataclass
class SimulatorSection:
    simulator: str = "fourier"
    options: dict = field(default_factory=dict)


#: the keys of ``[traditional.acquisition]`` (user units: degrees, e/A^2, kV, micrometres of
#: underfocus, positive) -> the simulator option each sets (``simulate.acquisition``)
ACQUISITION_KEYS: dict[str, str] = {"tilt_range": "tilt_range", "tilt_step": "tilt_step", "dose": "dose",
                                    "voltage_kv": "voltage_kv", "defocus": "defocus_um"}


@dataclass
class TraditionalSection(SimulatorSection):
    """``[traditional]``: the baseline simulator, its options, and what the user knows of the
    acquisition of the experimental data (``[traditional.acquisition]``): ``star`` (a RELION 5
    tomograms STAR: tilt angles, dose, defocus, voltage, Cs, amplitude contrast), and/or
    ``tilt_range``, ``tilt_step``, ``dose``, ``voltage_kv``, ``defocus`` (underfocus positive, um;
    one value or [low, high]). A value given here wins over the STAR's; an option of the same
    name in ``options`` is an error (give one). The report lists what was used and from where."""

    acquisition: dict = field(default_factory=dict)


@dataclass
class ExperimentalSection(SimulatorSection):
    """``[experimental]``: its own defaults, so a table that sets only ``options`` keeps ``tilt-series``."""

    # neighbours reaching into the box, uneven ice, dose-limited shot noise: harder than the baseline
    simulator: str = "tilt-series"
    options: dict = field(default_factory=lambda: {"crowding": 2, "ice": 0.15, "dose": 120.0})


@dataclass
class GanSection:
    #: TrainConfig TOML to start from ("" = the training defaults)
    config: str = ""
    #: dotted TrainConfig keys set on top, e.g. {"train.steps" = 200}
    overrides: dict = field(default_factory=dict)
    #: an already trained run folder: skip training the main GAN
    run: str = ""
    #: checkpoints of the main run scored for the metric curves (evenly spaced, last included)
    curve_points: int = 4
    #: which checkpoint generates the evaluated data: "last", or "best-fid-train" (lowest FID of its
    #: output against the real *training* split, so the test split plays no part in the choice)
    select_checkpoint: str = "last"
    #: the GAN's domain D: "density" (posed clean maps, the paper) or "traditional" (refinement:
    #: the traditional simulation of those maps, so the generator learns only what the physics
    #: misses; SimGAN, Shrivastava et al. 2017; FakET, Harar et al. 2023). With "traditional" the
    #: evaluated GAN set is G(the traditional set itself), a paired comparison volume by volume
    input: str = "density"


@dataclass
class ClassifierSection(RuleOptions):
    """``[classifier]``: the fields of ``ClassifierOptions`` (checked when the config is read),
    with the validated rule as defaults (``options.VALIDATED_RULE``, as ``forge classify train``).

    The evaluation's training rule for every CB3D (the inception network and each downstream
    classifier): 20% of each class of its own training set is held out, training keeps the
    epoch with the best accuracy on that part and stops 20 epochs after it (docs/results.md, "The
    classifier training rule"). A downstream classifier's held-out part is synthetic, like the
    rest of its training set: no real label enters it.
    """

    #: "auto" = cuda when available, else cpu
    device: str = "auto"


@dataclass
class DownstreamSection:
    #: training volumes per class for each downstream classifier (the same for traditional and GAN)
    n_per_class: int = 100
    seeds: list = field(default_factory=lambda: [0, 1, 2])
    confidence: float = 0.95
    #: processes that train the downstream classifiers side by side on a CPU, each with one
    #: thread: "auto" = one per usable core; 0 = one after the other in this process with torch's
    #: threads (the scores then differ in the last bits, another summation order). The scores do
    #: not depend on the number when it is >= 1 (docs/results.md, "The classifier training rule")
    workers: Any = "auto"
    #: the classifier kinds (``forge list classifier``) trained on the real training split, the
    #: traditional set and the GAN set and scored on the real test split, each with its own
    #: paired difference and verdict. ``cb3d`` takes the ``[classifier]`` table (it is also the
    #: inception network); every other kind its table in ``classifier_options``
    classifiers: list = field(default_factory=lambda: ["cb3d", "radial"])
    #: ``{kind: {option: value}}`` for the kinds other than ``cb3d``, e.g. {radial = {sigma = 1.0}}
    classifier_options: dict = field(default_factory=dict)


@dataclass
class MetricsSection:
    k: int = 5
    backend: str = "exact"
    is_splits: int = 10
    #: FID, PRDC and IS are marked unreliable when the inception network's accuracy on the real
    #: test split is less than this far above chance (absolute accuracy)
    reliability_margin: float = 0.1
    #: the network whose features and probabilities FID, PRDC and IS use: "best" = of cb3d and
    #: the ``[downstream] classifiers`` that give features, the one most accurate on the real
    #: validation part (the held-out ``classifier.validation_fraction`` of the real training
    #: split that CB3D's early stopping uses; CB3D wins ties); or one kind by name
    inception: str = "best"


@dataclass
class AblationsSection:
    #: density-map noise std values, each a separately trained GAN
    noise_std: list = field(default_factory=list)
    #: "without Wasserstein": lsgan loss
    lsgan: bool = False
    #: "without spectral norm": patchgan critic
    patchgan: bool = False
    #: downstream seeds for each ablation variant
    seeds: list = field(default_factory=lambda: [0])


@dataclass
class UncertaintySection:
    enabled: bool = True
    samples: int = 20


@dataclass
class ReportSection:
    title: str = DEFAULT_TITLE
    #: volumes per class shown in the montages
    montage_per_class: int = 1


@dataclass
class EvaluationConfig:
    data: DataSection = field(default_factory=DataSection)
    experimental: ExperimentalSection = field(default_factory=ExperimentalSection)
    traditional: TraditionalSection = field(default_factory=TraditionalSection)
    gan: GanSection = field(default_factory=GanSection)
    classifier: ClassifierSection = field(default_factory=ClassifierSection)
    downstream: DownstreamSection = field(default_factory=DownstreamSection)
    metrics: MetricsSection = field(default_factory=MetricsSection)
    ablations: AblationsSection = field(default_factory=AblationsSection)
    uncertainty: UncertaintySection = field(default_factory=UncertaintySection)
    report: ReportSection = field(default_factory=ReportSection)
    #: where the config came from (for the report)
    origin: str = "<defaults>"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def classifier_options(config: EvaluationConfig) -> ClassifierOptions:
    """The ``[classifier]`` section as ``ClassifierOptions``, its ``device = "auto"`` resolved here."""
    c = config.classifier
    device = c.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return ClassifierOptions(**{**dataclasses.asdict(c), "device": device})


#: a path that starts with this is a path in the shared data folder (``shared_data_folder``)
SHARED_PREFIX = "shared:"


def shared_data_folder() -> Path:
    """../shared/data beside the repository root (where reference structures and maps live)."""
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


def resolve_maps_dir(text: str) -> Path | None:
    """A path of the configuration: ``shared:NAME`` in the shared data folder, nothing for ""."""
    if not text:
        return None
    if text.startswith(SHARED_PREFIX):
        return shared_data_folder() / text[len(SHARED_PREFIX):]
    return Path(text)


def parse_overrides(items: typing.Iterable[str]) -> dict[str, Any]:
    """``["downstream.seeds=[0,1]"]`` -> ``{"downstream.seeds": [0, 1]}`` (values read as TOML, else strings)."""
    return dict(parse_override(text) for text in items)


def _apply(table: dict, overrides: dict[str, Any]) -> dict:
    plain = {}
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        # [gan].overrides holds dotted TrainConfig keys: everything after it is one key
        if len(parts) > 2 and parts[0] == "gan" and parts[1] == "overrides":
            table.setdefault("gan", {}).setdefault("overrides", {})[".".join(parts[2:])] = value
        else:
            plain[dotted] = value
    return apply_overrides(table, plain)


def validate(config: EvaluationConfig) -> EvaluationConfig:
    d = config.data
    check_choice("data.source", d.source, ("embedded", "folders", "copick", "picks"))
    if d.source == "picks":
        if not (d.picks and d.tomograms):
            raise ConfigError("data.source = 'picks' needs data.picks (a particle table) and data.tomograms "
                              "(a folder or file of tomograms)")
        for key in ("train_tomograms", "test_tomograms"):
            value = getattr(d, key)
            if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
                raise ConfigError(f"data.{key} must list at least one tomogram name, got {value!r}")
        shared = sorted(set(d.train_tomograms) & set(d.test_tomograms))
        if shared:
            raise ConfigError(f"data.train_tomograms and data.test_tomograms share {', '.join(shared)}; the splits "
                              "must come from different tomograms")
        check_choice("data.unit", d.unit or "px", ("px", "angstrom"))
    if isinstance(d.assembly, bool) or not isinstance(d.assembly, int) or d.assembly < 0:
        raise ConfigError(f"data.assembly must be 0 (the deposited model) or a biological assembly number >= 1, "
                          f"got {d.assembly!r}")
    if isinstance(d.real_train_per_class, bool) or not isinstance(d.real_train_per_class, int) \
            or d.real_train_per_class < 0 or d.real_train_per_class == 1:
        raise ConfigError(f"data.real_train_per_class must be 0 (all) or an integer >= 2, got {d.real_train_per_class!r}")
    check_choice("data.polarity", d.polarity, ("check", "auto", "off"))
    if d.source == "copick" and not d.copick.get("config"):
        raise ConfigError("data.source = 'copick' needs data.copick.config (a copick project's JSON)")
    if d.source == "copick" and not 0 < d.test_fraction < 1:
        raise ConfigError(f"data.test_fraction {d.test_fraction}: expected a fraction in (0, 1)")
    if d.source == "folders" and not (d.real_train and d.real_test):
        raise ConfigError("data.source = 'folders' needs data.real_train and data.real_test (STAR files)")
    if d.source == "embedded" and len(d.classes) < 2:
        raise ConfigError(f"data.classes needs at least 2 classes, got {d.classes}")
    if not 16 <= d.box <= 128:
        raise ConfigError(f"data.box must be in 16..128, got {d.box}")
    if not d.voxel_size > 0:  # NaN fails too
        raise ConfigError(f"data.voxel_size must be > 0 Angstrom, got {d.voxel_size}")

    try:
        check_voxel_size(d.voxel_size, "data.voxel_size")  # finite, within 0.01-1000 A
    except InputError as exc:
        raise ConfigError(str(exc)) from None
    check_at_least([(f"data.{key}", getattr(d, key), 2)
                    for key in ("n_train_per_class", "n_test_per_class", "n_density_per_class")]
                   + [("downstream.n_per_class", config.downstream.n_per_class, 2)])
    if not config.downstream.seeds:
        raise ConfigError("downstream.seeds must list at least one seed")

    check_seed(d.seed, "data.seed")
    for what, seeds in (("downstream.seeds", config.downstream.seeds), ("ablations.seeds", config.ablations.seeds)):
        for seed in seeds:
            check_seed(seed, what)

    config.downstream.workers = check_workers(config.downstream.workers)
    check_classifiers(config.downstream.classifiers, config.downstream.classifier_options)
    if config.metrics.inception != "best" and config.metrics.inception not in config.downstream.classifiers:
        raise ConfigError(f"metrics.inception {config.metrics.inception!r}: expected \"best\" or one of "
                          f"downstream.classifiers ({', '.join(config.downstream.classifiers)})")
    if config.traditional.acquisition:
        traditional_acquisition(config.traditional)  # every value checked before any work
    if not 0 < config.downstream.confidence < 1:
        raise ConfigError(f"downstream.confidence must be in (0, 1), got {config.downstream.confidence}")
    if config.metrics.k < 1 or config.metrics.is_splits < 1:
        raise ConfigError("metrics.k and metrics.is_splits must be >= 1")
    if not 0 <= config.metrics.reliability_margin < 1:
        raise ConfigError(f"metrics.reliability_margin must be in [0, 1), got {config.metrics.reliability_margin}")
    for value in config.ablations.noise_std:
        if not isinstance(value, (int, float)) or not value >= 0:  # NaN fails too
            raise ConfigError(f"ablations.noise_std values must be numbers >= 0, got {value!r}")
    check_choice("gan.select_checkpoint", config.gan.select_checkpoint, ("last", "best-fid-train"))
    check_choice("gan.input", config.gan.input, ("density", "traditional"))
    check_gan_run_input(config.gan)
    check_at_least([("gan.curve_points", config.gan.curve_points, 1)])
    return config


def check_gan_run_input(gan: GanSection) -> None:
    """ConfigError when ``gan.run`` names a run trained on another domain D than ``gan.input``
    says (``forge train --real`` trains on the traditional ``fourier`` simulation by default; the
    evaluation would feed it clean maps). Runs whose domain D cannot be told are not checked."""
    if not gan.run:
        return
    path = Path(gan.run) / "config.toml"
    try:
        density = read_toml(path).get("data", {}).get("density", {})
    except (OSError, ConfigError, AttributeError):
        return  # no readable run config here: the GAN stage reports it
    options = density.get("options", {}) if isinstance(density, dict) else {}
    if density.get("dataset") != "simulated" or not isinstance(options, dict) or "simulator" not in options:
        return
    simulator = str(options["simulator"])
    trained = "density" if simulator in ("posed-map", "none") else "traditional"
    if trained != gan.input:
        raise ConfigError(f"gan.run {gan.run} was trained on {'clean posed maps' if trained == 'density' else f'the traditional {simulator} simulation'} "
                          f"(data.density simulator {simulator!r} in {path}), but gan.input = {gan.input!r}; "
                          f"set gan.input = \"{trained}\"")


def traditional_acquisition(section: TraditionalSection) -> tuple[dict, dict[str, Any], list[str]]:
    """(the traditional simulator's options with ``[traditional.acquisition]`` merged in, the
    acquisition used with the source of each value, notes); ConfigError/InputError naming the key."""
    table = dict(section.acquisition)
    unknown = sorted(set(table) - {"star", *ACQUISITION_KEYS})
    if unknown:
        raise ConfigError(f"traditional.acquisition: unknown key(s) {', '.join(unknown)}; expected star, "
                          f"{', '.join(ACQUISITION_KEYS)}")
    flags: dict[str, Any] = {}
    for key, option in ACQUISITION_KEYS.items():
        if key not in table:
            continue
        value = table[key]
        pair = key in ("tilt_range", "defocus")
        values = value if pair and isinstance(value, list) else [value]
        if (not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
                or len(values) not in ((1, 2) if key == "defocus" else (2,) if pair else (1,))):
            shape = ("[low, high] in degrees" if key == "tilt_range" else
                     "one number or [low, high] (um, underfocus positive)" if key == "defocus" else "a number > 0")
            raise ConfigError(f"traditional.acquisition.{key} must be {shape}, got {value!r}")
        if key == "defocus":
            low, high = (float(values[0]), float(values[-1]))
            if min(low, high) <= 0:
                raise ConfigError(f"traditional.acquisition.defocus {value!r}: underfocus is positive (um), as Warp "
                                  "and RELION write it")
            flags[option] = (min(low, high), max(low, high))
        elif key == "tilt_range":
            flags[option] = (float(values[0]), float(values[1]))
        else:
            if not values[0] > 0:
                raise ConfigError(f"traditional.acquisition.{key} must be > 0, got {value!r}")
            flags[option] = float(values[0])
    star = None
    if table.get("star"):
        path = resolve_maps_dir(str(table["star"]))
        if path is None or not path.is_file():
            raise InputError(f"traditional.acquisition.star {table['star']}: no such file (a RELION 5 tomograms STAR)")
        star = read_star_acquisition(path)
    factory = registry.get("simulator", section.simulator).factory
    try:
        options, used, notes = apply_acquisition(section.simulator, factory, flags, section.options, star)
    except ConfigError as exc:
        text = str(exc)
        for key, option in ACQUISITION_KEYS.items():
            text = text.replace(f"--option {option}=", f"traditional.options {option}=").replace(
                FLAGS[option], f"traditional.acquisition.{key}")
        raise ConfigError(text) from None
    names = {flag: f"traditional.acquisition.{key}" for key, flag in
             ((key, FLAGS[option]) for key, option in ACQUISITION_KEYS.items())}
    names["--option"] = "traditional.options"
    used["sources"] = {key: names.get(source, source) for key, source in used.get("sources", {}).items()}
    return options, used, notes


def check_classifiers(kinds: Any, options: Any) -> None:
    """ConfigError unless ``downstream.classifiers`` lists registered classifier kinds, ``cb3d``
    among them (the inception network), each once, and every ``downstream.classifier_options``
    table builds its kind (options checked by the registry, before any work)."""
    known = registry.names("classifier")
    if not isinstance(kinds, list) or not all(isinstance(k, str) for k in kinds):
        raise ConfigError(f"downstream.classifiers must be a list of classifier names, got {kinds!r}")
    unknown = [k for k in kinds if k not in known]
    if unknown:
        raise ConfigError(f"downstream.classifiers: unknown classifier(s) {', '.join(map(repr, unknown))}; "
                          f"choose from: {', '.join(known)}")
    if "cb3d" not in kinds or len(set(kinds)) != len(kinds):
        raise ConfigError(f"downstream.classifiers must name cb3d (the inception network) and each kind once, "
                          f"got {kinds}")
    if not isinstance(options, dict):
        raise ConfigError(f"downstream.classifier_options must be a table of tables, got {options!r}")
    for kind, table in options.items():
        if kind not in kinds or kind == "cb3d":
            raise ConfigError(f"downstream.classifier_options.{kind}: not a classifier of downstream.classifiers "
                              "other than cb3d (cb3d takes the [classifier] table)")
        if not isinstance(table, dict):
            raise ConfigError(f"downstream.classifier_options.{kind} must be a table, got {table!r}")
        try:
            registry.create("classifier", kind, **table)
        except ConfigError as exc:
            raise ConfigError(f"downstream.classifier_options.{kind}: {exc}") from None


class SetOverrideError(ConfigError):
    """A bad value given on the command line (its message names the ``--set``, not the file)."""


def gan_data_overrides(density_star: str | Path, real_star: str | Path) -> dict[str, Any]:
    """The data sections of every GAN an evaluation trains: the folders it writes itself."""
    return {
        "data.density.dataset": "volume-folder",
        "data.density.options": {"root": str(density_star), "normalize": "minmax"},
        "data.subtomograms.dataset": "volume-folder",
        "data.subtomograms.options": {"root": str(real_star), "normalize": "minmax"},
    }


def _gan_keys(overrides: dict[str, Any]) -> set[str]:
    """The ``gan.overrides`` keys (and ``"gan.config"``) that dotted ``overrides`` set."""
    keys: set[str] = set()
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        if parts[:2] == ["gan", "overrides"] and len(parts) > 2:
            keys.add(".".join(parts[2:]))
        elif dotted == "gan.overrides" and isinstance(value, dict):
            keys.update(str(k) for k in value)
        elif dotted == "gan.config":
            keys.add("gan.config")
        elif dotted == "gan" and isinstance(value, dict):
            keys.update(str(k) for k in value.get("overrides", {}) or {})
            if "config" in value:
                keys.add("gan.config")
    return keys


def check_gan_overrides(config: EvaluationConfig, given: set[str] | None = None, label: str = "--set") -> None:
    """Validate ``gan.config`` and every ``gan.overrides`` key through the training configuration's
    own validator (``cryoet_forge.config.load_config``), as the GAN stage builds it, so a bad key
    is found when the evaluation config is read, not after the data and inception stages.
    ConfigError naming ``gan.overrides.KEY``; SetOverrideError naming ``LABEL gan.overrides.KEY``
    for the keys in ``given`` (those of the command line)."""
    given = given or set()

    def fail(key: str, shown: str, exc: ConfigError) -> None:
        if key in given:
            raise SetOverrideError(f"{label} {shown}: {exc}") from None
        raise ConfigError(f"{shown}: {exc}") from None

    base = gan_data_overrides("density", "real")
    gan_config = config.gan.config or None
    try:
        load_config(gan_config, base)
    except ConfigError as exc:
        fail("gan.config", "gan.config", exc)
    for key, value in config.gan.overrides.items():
        try:
            load_config(gan_config, {**base, str(key): value})
        except ConfigError as exc:
            fail(str(key), f"gan.overrides.{key}", exc)
    try:  # values that are valid one by one but not together
        load_config(gan_config, {**base, **config.gan.overrides})
    except ConfigError as exc:
        fail("gan.overrides" if set(config.gan.overrides) <= given else "", "gan.overrides", exc)


def config_from_dict(table: dict, overrides: dict[str, Any] | None = None, origin: str = "<dict>",
                     folder: str | Path | None = None, overrides_label: str | None = None) -> EvaluationConfig:
    """``folder``: where the config file is (a relative ``gan.config`` is looked up there first);
    ``overrides_label``: where ``overrides`` come from (``--set``), named by an error in them."""
    overrides = dict(overrides or {})
    table = _apply(copy.deepcopy(table), overrides)
    config = validate(build_dataclass(EvaluationConfig, table, skip=("origin",)))
    config.origin = origin
    gan_config = config.gan.config
    if folder is not None and gan_config and not Path(gan_config).is_absolute() \
            and (Path(folder) / gan_config).is_file():
        config.gan.config = str(Path(folder) / gan_config)
    given = _gan_keys(overrides) if overrides_label else set()
    if given and set(config.gan.overrides) <= given:
        given.add("gan.overrides")
    check_gan_overrides(config, given, overrides_label or "")
    return config


def load_evaluation_config(path: str | Path, overrides: dict[str, Any] | None = None,
                           overrides_label: str | None = None) -> EvaluationConfig:
    """The evaluation config of a TOML file with dotted ``overrides`` (from ``overrides_label``,
    e.g. ``--set``); every key is checked here, ``gan.overrides`` through the training validator."""
    path = Path(path)
    table = read_toml(path)
    try:
        # a relative [gan] config is looked up beside the evaluation config first
        return config_from_dict(table, overrides, origin=str(path), folder=path.parent,
                                overrides_label=overrides_label)
    except SetOverrideError:
        raise
    except ConfigError as exc:
        if overrides:  # blame the file only when the file alone fails too (as load_config does)
            try:
                config_from_dict(table, None, origin=str(path), folder=path.parent)
            except ConfigError:
                pass
            else:
                where = overrides_label or "the command line"
                raise SetOverrideError(f"{exc} (from {where}, over {path})") from None
        raise ConfigError(f"{path}: {exc}") from None


#: the packaged file of the quickstart setting; configs/evaluate-quickstart.toml is a copy of it
QUICKSTART_FILE = "quickstart.toml"


def _read_quickstart() -> dict[str, Any]:
    """The table of the packaged quickstart setting (``cryoet_forge/evaluate/quickstart.toml``)."""
    with resources.as_file(resources.files("cryoet_forge.evaluate") / QUICKSTART_FILE) as path:
        return read_toml(path)


#: the small CPU setting of ``forge quickstart`` (docs/results.md, "How long it takes"), read from the
#: packaged ``quickstart.toml`` (its comments say why each value). The generator is the U-Net of the
#: ``cryoet-forge-unet3d`` plugin distribution (installed by the README's commands): at this scale the
#: paper's ResNet generator hides its input map from the critic and its output carries no class
#: (docs/results.md, "How the default was reached"); ``quickstart_config`` falls back to ``cryoetgan``
#: with skip connections when the plugin is not installed.
QUICKSTART: dict[str, Any] = _read_quickstart()

#: the core package's stand-in when the unet3d plugin is not installed
QUICKSTART_CORE_GENERATOR: dict[str, Any] = {
    "model.generator": "cryoetgan",
    "model.generator_options": {"base": 4, "n_residual": 2, "dropout": 0.1, "skips": True},
    "model.inverse_generator_options": {"skips": False},
}


def quickstart_table(log=None) -> dict[str, Any]:
    """A copy of ``QUICKSTART``, with the core generator when the unet3d plugin is not installed."""
    table = copy.deepcopy(QUICKSTART)
    if QUICKSTART["gan"]["overrides"]["model.generator"] not in registry.names("generator"):
        if log is not None:
            log("generator 'unet3d' is not installed (pip install ./plugins/cryoet-forge-unet3d); "
                "using 'cryoetgan' with skip connections instead")
        table["gan"]["overrides"].update(QUICKSTART_CORE_GENERATOR)
    return table


def quickstart_config(seed: int = 0, log=None) -> EvaluationConfig:
    return config_from_dict(quickstart_table(log), {"data.seed": seed}, origin="forge quickstart (embedded)")
