"""The contract of each component kind, as typed protocols, and the checks the registry runs.

Every component kind is declared once, in :data:`KINDS`: its name, the hook that registers it,
its protocol (or the roles of a kind whose components play different parts: a ``loss`` is an
:class:`AdversarialLoss` for ``loss.adversarial`` or a :class:`GeneratorRegularizer` for
``[loss.regularizers.NAME]``) and the hook's documentation. ``registry.KIND_HOOKS``, the hook
specifications of ``hookspecs`` and the contract tests are derived from it. Every runtime check of
a component is made against these protocols (:func:`check_factory`, :func:`check_instance`,
:func:`check_role`), never against a class of cryoet-forge: a third-party component needs no
base class of this package.

**Noise contract of generators.** A generator with an explicit noise input sets the attribute
``noise = True`` and has ``noise_shape(input_shape) -> shape`` and ``forward(x, noise=None)``;
the trainer then draws the noise itself (seeded, the same on every DDP rank) and passes it in
(:func:`run_generator`). Every other generator is called as ``generator(x)``. Its output is
checked once, at the first batch of ``forge train`` and ``forge generate`` (and ``forge
uncertainty``): the input's shape (N, 1, S, S, S), a floating dtype, finite values; a mismatch is
one line naming the generator, its plugin and the shapes (:func:`check_generator_output`).

The registry checks a component twice: when it is registered (a class must define the methods
of its kind; a generator or critic factory must take ``in_channels`` [and ``out_channels``]),
and when it is built (the object must satisfy the protocol). A failed check is one line naming
the component, its plugin and what is missing; at registration it is shown by ``forge plugins``
and the component is not registered.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol, runtime_checkable

from cryoet_forge.errors import ConfigError, PluginError

# `forge --help` imports this module: torch and numpy are imported inside the checks that use them
# (start-up time), and here only for type checking
if TYPE_CHECKING:
    import numpy as np
    import torch  # start-up: `forge --help` imports this module


@runtime_checkable
class Generator(Protocol):
    """A volume-to-volume network (a ``torch.nn.Module``)."""

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor: ...


@runtime_checkable
class NoiseGenerator(Generator, Protocol):
    """A generator with an explicit noise input (the noise contract)."""

    noise: bool

    def noise_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]: ...


@runtime_checkable
class Critic(Protocol):
    """A critic (discriminator): volumes to a patch of scores (a ``torch.nn.Module``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class AdversarialLoss(Protocol):
    """An adversarial loss on critic scores (see ``cryoet_forge.losses``)."""

    needs_interpolates: bool

    def critic_loss(self, real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor: ...

    def generator_loss(self, fake_scores: torch.Tensor) -> torch.Tensor: ...

    def penalty(self, scores: torch.Tensor, interpolates: torch.Tensor,
                grad_scale: float = 1.0) -> torch.Tensor: ...

    def after_critic_step(self, critic: torch.nn.Module) -> None: ...

    def gap(self, real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class GeneratorRegularizer(Protocol):
    """A term added to the generator loss (see ``cryoet_forge.contrastive``); a ``torch.nn.Module``."""

    def setup(self, g_ds: torch.nn.Module, g_sd: torch.nn.Module, example: torch.Tensor) -> None: ...

    def forward(self, inputs: Any) -> torch.Tensor: ...


@runtime_checkable
class Simulator(Protocol):
    """Turns a batch of density maps into simulated subtomograms, recording every random parameter.

    ``simulate(maps (B, S, S, S), voxel_size, generator)`` returns the volumes (B, S, S, S) and
    one dict of parameters per volume; the same ``torch.Generator`` state gives the same output.
    """

    def simulate(self, maps: torch.Tensor, voxel_size: float,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, list[dict]]: ...


@runtime_checkable
class Dataset(Protocol):
    """A map-style dataset of dicts with at least ``volume`` (1, S, S, S) float32."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, Any]: ...


@runtime_checkable
class FeatureExtractor(Protocol):
    """Volumes to embedding vectors. Optional: ``probabilities``, ``extract_with_probabilities``,
    ``box`` and ``metadata["voxel_size"]`` (see ``hookspecs.forge_register_feature_extractors``)."""

    def extract(self, volumes: Any) -> np.ndarray: ...


#: Called as ``progress(done, total)`` with work units (distance tiles) while a kNN backend runs.
ProgressCallback = Callable[[int, int], Any]


@dataclass
class PrdcCounts:
    """What a kNN backend computes for PRDC: counts, radii and how the result was obtained."""

    n_real: int
    n_fake: int
    k: int
    precision_count: int
    recall_count: int
    density_count: int
    coverage_count: int
    real_radii: np.ndarray
    fake_radii: np.ndarray
    exact: bool = True
    info: dict[str, Any] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """The four values, with the same float64 operations as ``prdc.compute_prdc``."""
        import numpy as np  # start-up: `forge --help` imports this module

        n, m = float(self.n_real), float(self.n_fake)
        return {
            "precision": float(np.float64(self.precision_count) / m),
            "recall": float(np.float64(self.recall_count) / n),
            "density": float((1.0 / float(self.k)) * (np.float64(self.density_count) / m)),
            "coverage": float(np.float64(self.coverage_count) / n),
        }


@runtime_checkable
class KnnBackend(Protocol):
    """What a ``knn-backend`` plugin provides.

    ``exact`` says whether results equal the exact definitions (``prdc`` 0.2 rounding).
    Inputs are validated C-contiguous float32 (N, D) arrays without NaN/Inf.
    """

    name: str
    exact: bool

    def kth_neighbour_distances(self, x: np.ndarray, k: int) -> np.ndarray:
        """float32 distance of each row to its k-th nearest other row."""

    def prdc_counts(
        self, real: np.ndarray, fake: np.ndarray, k: int, inclusive: bool = False,
        progress: ProgressCallback | None = None,
    ) -> PrdcCounts:
        """PRDC counts of ``real`` (N, D) against ``fake`` (M, D)."""


@runtime_checkable
class Classifier(Protocol):
    """A downstream classifier (``forge evaluate`` trains one per data source and seed).

    ``fit(train, seed)`` learns a ``cryoet_forge.classify.LabelledVolumes`` (volumes (N, S, S, S)
    float32, ``labels`` 0..C-1, ``class_names``); the same data and seed give the same model.
    ``probabilities(volumes)`` returns (N, C) class probabilities in ``train.class_names`` order.
    Optional: ``features(volumes) -> (N, D)``, which lets ``metrics.inception`` choose the
    classifier as the network of FID, PRDC and IS.
    """

    def fit(self, train: Any, seed: int) -> None: ...

    def probabilities(self, volumes: np.ndarray) -> np.ndarray: ...


@runtime_checkable
class Picker(Protocol):
    """A particle picker of whole tomograms (``forge evaluate-picking`` trains one per source and seed).

    ``fit(tomograms, seed)`` learns a list of ``cryoet_forge.picking.tomograms.LabelledTomogram``
    (a (Z, Y, X) volume, picks per class as (N, 3) (x, y, z) voxel centres, radii in Angstrom)
    and returns the picker; the same data and seed give the same picker.
    ``pick(volume, voxel_size)`` returns class name -> (N, 3) (x, y, z) voxel centres found in a
    (Z, Y, X) tomogram. Tomograms show protein dark (the project's contrast convention).
    Optional, for ``forge pick train`` / ``apply``: ``save(folder)`` writes the trained picker into
    an existing folder and ``load(folder)`` (on a picker made with the same options) reads it back
    and returns the picker; ``pick_with_scores(volume, voxel_size)`` gives class -> (points, scores).
    """

    def fit(self, tomograms: Any, seed: int) -> Any: ...

    def pick(self, volume: np.ndarray, voxel_size: float) -> Any: ...


@dataclass(frozen=True)
class Role:
    """A part the components of one kind play in a run, each with its own protocol and config key
    (a ``loss`` is an adversarial loss or a generator regulariser). A config that puts a component
    in another role's place is a one-line ConfigError naming the key (:func:`check_role`)."""

    name: str
    protocol: type
    #: how an error names what was expected: "an adversarial loss"
    noun: str
    #: the config key that selects it; ``{name}`` is the component's name
    config_key: str
    #: instances must be torch modules (trained with the generators, saved in checkpoints)
    module: bool = False


@dataclass(frozen=True)
class Kind:
    """One component kind, declared once: ``registry.KIND_HOOKS``, the hook specifications of
    ``hookspecs`` (name and documentation) and the contract tests are derived from :data:`KINDS`."""

    #: the kind's name (``forge list KIND``, ``registry.create(KIND, ...)``)
    name: str
    #: the hook that registers components of this kind (``forge_register_*``; its one argument is
    #: ``register``)
    hook: str
    #: the documentation of the hook (what a factory must return)
    doc: str
    #: the protocol every instance satisfies; None when the kind has ``roles``
    protocol: type | None = None
    #: the roles of a kind whose components play different parts (an instance satisfies one of them)
    roles: tuple[Role, ...] = ()
    #: instances must be torch modules (trained, moved to a device, saved)
    module: bool = False
    #: keyword options the factory must accept (the trainer passes them)
    factory_options: tuple[str, ...] = ()

    @property
    def protocols(self) -> tuple[type, ...]:
        """The protocols an instance may satisfy (any one of them)."""
        if self.roles:
            return tuple(role.protocol for role in self.roles)
        return (self.protocol,) if self.protocol is not None else ()

    def role(self, name: str) -> Role:
        return next(role for role in self.roles if role.name == name)


_BUILT = "Called when the registry is built; returns nothing."

#: every component kind, in the order ``forge list`` shows them
KINDS: tuple[Kind, ...] = (
    Kind("generator", "forge_register_generators", protocol=Generator, module=True,
         factory_options=("in_channels", "out_channels"), doc=f"""Register generators (volume-to-volume networks).

    Factory contract: ``factory(in_channels=1, out_channels=1, **options)`` returns a
    ``torch.nn.Module`` mapping (B, 1, S, S, S) to (B, 1, S, S, S) with values in
    [-1, 1]: ``contracts.Generator``, and ``contracts.NoiseGenerator`` for the noise contract
    (``noise = True``, ``noise_shape``, ``forward(x, noise=None)``). {_BUILT}
    """),
    Kind("critic", "forge_register_critics", protocol=Critic, module=True, factory_options=("in_channels",),
         doc=f"""Register critics (discriminators) for adversarial training.

    Factory contract: ``factory(in_channels=1, **options)`` returns a
    ``torch.nn.Module`` mapping (B, 1, S, S, S) to a patch of scores (B, 1, s, s, s)
    (``contracts.Critic``). {_BUILT}
    """),
    Kind("loss", "forge_register_losses", roles=(
        Role("adversarial", AdversarialLoss, "an adversarial loss", "loss.adversarial"),
        Role("regularizer", GeneratorRegularizer, "a generator regulariser", "loss.regularizers.{name}",
             module=True),
    ), doc=f"""Register adversarial losses (``wgan-clip``, ``lsgan``, ...) and generator regularisers.

    Factory contract: ``factory(**options)`` returns a ``contracts.AdversarialLoss`` (selected
    by ``loss.adversarial``; see ``cryoet_forge.losses``) or a ``contracts.GeneratorRegularizer``,
    a ``torch.nn.Module`` (switched on in ``[loss.regularizers.NAME]``; see
    ``cryoet_forge.contrastive``). Neither needs a base class of cryoet-forge. A config that names
    one where the other is expected is a one-line error naming the key. The cycle term is not a
    registered loss: it is ``loss.cycle_weight``. {_BUILT}
    """),
    Kind("simulator", "forge_register_simulators", protocol=Simulator,
         doc=f"""Register subtomogram simulators (``fourier``, ``tilt-series``, ...).

    Factory contract: ``factory(**options)`` returns an object that turns a batch of
    density maps into simulated subtomograms and records every random parameter
    (``contracts.Simulator``). A simulator that poses the maps itself takes the options ``rotate``
    and ``max_shift``: ``forge simulate``, which poses them first, then passes ``rotate=False,
    max_shift=0``; to one without these options it passes neither. {_BUILT}
    """),
    Kind("dataset", "forge_register_datasets", protocol=Dataset,
         doc=f"""Register dataset kinds (volume folders, labelled folders, on-the-fly simulation).

    Factory contract: ``factory(**options)`` returns a ``torch.utils.data.Dataset``
    (``contracts.Dataset``). {_BUILT}
    """),
    Kind("feature-extractor", "forge_register_feature_extractors", protocol=FeatureExtractor,
         doc=f"""Register feature extractors (volumes -> embedding vectors, e.g. ``cb3d``).

    Factory contract: ``factory(**options)`` returns a ``contracts.FeatureExtractor``:
    ``extract(volumes) -> numpy.ndarray`` of shape (N, D). Optional: ``probabilities(volumes)``
    -> (N, C) class probabilities (``forge metrics --features`` then reports the Inception
    Score), ``extract_with_probabilities(volumes)`` for both in one pass, ``box`` (the one edge
    length it takes) and ``metadata["voxel_size"]`` (checked against the volumes). {_BUILT}
    """),
    Kind("knn-backend", "forge_register_knn_backends", protocol=KnnBackend,
         doc=f"""Register k-nearest-neighbour backends used by the metrics engine.

    Factory contract: ``factory(**options)`` returns a ``contracts.KnnBackend``. {_BUILT}
    """),
    Kind("classifier", "forge_register_classifiers", protocol=Classifier,
         doc=f"""Register downstream classifiers (``cb3d``, ``radial``, ...) for ``forge evaluate``.

    Factory contract: ``factory(**options)`` returns a ``contracts.Classifier``: ``fit(train,
    seed)`` on labelled volumes, ``probabilities(volumes) -> (N, C)``; optional ``features(volumes)
    -> (N, D)`` (then ``metrics.inception`` may choose it). ``[downstream] classifiers``
    names the kinds an evaluation trains; each is trained on the real training split, the
    traditional set and the GAN set, and scored on the real test split. {_BUILT}
    """),
    Kind("picker", "forge_register_pickers", protocol=Picker,
         doc=f"""Register particle pickers of whole tomograms (``unet-segmentation``, ...).

    Factory contract: ``factory(**options)`` returns a ``contracts.Picker``: ``fit(tomograms,
    seed)`` on labelled tomograms (returns the picker), ``pick(volume, voxel_size)`` -> class name
    -> (N, 3) (x, y, z) voxel centres. {_BUILT}
    """),
)

#: kind name -> its declaration
KIND: dict[str, Kind] = {kind.name: kind for kind in KINDS}

#: kind -> the protocols an instance may satisfy (any one of them)
PROTOCOLS: dict[str, tuple[type, ...]] = {kind.name: kind.protocols for kind in KINDS}

#: kinds whose instances must be torch modules (trained, moved to a device, saved)
MODULE_KINDS: tuple[str, ...] = tuple(kind.name for kind in KINDS if kind.module)

#: kind -> keyword options the factory must accept (the trainer passes them)
FACTORY_OPTIONS: dict[str, tuple[str, ...]] = {kind.name: kind.factory_options for kind in KINDS
                                               if kind.factory_options}


class ContractError(Exception):
    """A component does not satisfy its kind's protocol; the message is one line."""


@functools.cache
def _methods(protocol: type) -> tuple[str, ...]:
    """The methods a protocol requires (not its data attributes, which instances set)."""
    names = []
    for klass in protocol.__mro__:
        if klass is object or klass is Protocol or klass.__name__ == "Generic":
            continue
        for name, value in vars(klass).items():
            if callable(value) and (not name.startswith("_") or name in ("__len__", "__getitem__")) \
                    and name not in names:
                names.append(name)
    return tuple(names)


@functools.cache
def _attributes(protocol: type) -> tuple[str, ...]:
    return tuple(name for klass in protocol.__mro__ for name in getattr(klass, "__annotations__", {})
                 if not name.startswith("_"))


def _describe(protocols: tuple[type, ...]) -> str:
    return " or ".join(p.__name__ for p in protocols)


def check_factory(kind: str, factory: Callable[..., Any]) -> None:
    """ContractError when ``factory`` cannot build a component of ``kind``, seen without calling it:
    a class lacking its kind's methods, or a factory that does not take the options the caller
    passes. Lazy factories (functions) are checked on what they build, by :func:`check_instance`."""
    if inspect.isclass(factory):
        missing_all = []
        for protocol in PROTOCOLS[kind]:
            missing = [m for m in _methods(protocol) if not callable(getattr(factory, m, None))]
            if not missing:
                break
            missing_all.append(missing)
        else:
            missing = min(missing_all, key=len)
            raise ContractError(f"class {factory.__name__} lacks {', '.join(missing)} "
                                f"(the {kind} protocol: {_describe(PROTOCOLS[kind])})")
        if kind in MODULE_KINDS:
            import torch  # start-up: `forge --help` imports this module

            if not issubclass(factory, torch.nn.Module):
                raise ContractError(f"class {factory.__name__} is not a torch.nn.Module")
    required = FACTORY_OPTIONS.get(kind, ())
    if required:
        try:
            parameters = inspect.signature(factory).parameters
        except (TypeError, ValueError):
            return
        if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
            return
        missing = [option for option in required if option not in parameters]
        if missing:
            raise ContractError(f"factory takes no {', '.join(missing)} option (a {kind} factory is "
                                f"called as factory({', '.join(f'{o}=1' for o in required)}, **options))")


def check_instance(kind: str, obj: Any) -> None:
    """ContractError when the built object ``obj`` does not satisfy its kind's protocol."""
    protocols = PROTOCOLS[kind]
    if kind in MODULE_KINDS:
        import torch  # start-up: `forge --help` imports this module

        if not isinstance(obj, torch.nn.Module):
            raise ContractError(f"built a {type(obj).__name__}, not a torch.nn.Module")
    if kind == "generator" and getattr(obj, "noise", False) and not callable(getattr(obj, "noise_shape", None)):
        raise ContractError("sets noise=True but has no noise_shape(input_shape) (the noise contract)")
    shortfalls = []
    for protocol in protocols:
        missing = _missing(protocol, obj)
        if not missing:
            return
        shortfalls.append(missing)
    missing = min(shortfalls, key=len)
    raise ContractError(f"built a {type(obj).__name__} that lacks {', '.join(missing)} "
                        f"(the {kind} protocol: {_describe(protocols)})")


def _missing(protocol: type, obj: Any) -> list[str]:
    """The methods (not callable) and attributes (absent) of ``protocol`` that ``obj`` lacks."""
    missing = [m for m in _methods(protocol) if not callable(getattr(obj, m, None))]
    return missing + [a for a in _attributes(protocol) if not hasattr(obj, a)]


def check_role(kind: str, role: str, obj: Any, name: str) -> None:
    """ConfigError (one line) when ``obj``, built from component ``name`` of ``kind``, cannot play
    ``role`` (``Kind.roles``): the line names the config key, what it expects (the role's protocol
    and what ``obj`` lacks of it) and where the component belongs instead. Checked against the
    protocol, so any object that satisfies it plays the role, whatever its class."""
    spec = KIND[kind]
    wanted = spec.role(role)
    key = wanted.config_key.format(name=name)
    missing = _missing(wanted.protocol, obj)
    if missing:
        problem = f"it lacks {', '.join(missing)}"
    elif wanted.module and not _is_module(obj):
        problem = f"it is a {type(obj).__name__}, not a torch.nn.Module"
    else:
        return
    fits = [r for r in spec.roles if r is not wanted and not _missing(r.protocol, obj)]
    hint = f"; {fits[0].noun} goes in {fits[0].config_key.format(name=name)}" if fits else ""
    raise ConfigError(f"{key}: {kind} {name!r} is not {wanted.noun} (contracts.{wanted.protocol.__name__}: "
                      f"{problem}){hint}")


def _is_module(obj: Any) -> bool:
    import torch  # start-up: `forge --help` imports this module

    return isinstance(obj, torch.nn.Module)


def takes_noise(generator: Any) -> bool:
    """True for generators with an explicit noise input (``noise_shape`` + ``noise=True``)."""
    return bool(getattr(generator, "noise", False)) and hasattr(generator, "noise_shape")


def noise_shape(generator: Any, input_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of the noise volume ``generator`` takes for an input of ``input_shape`` (the noise
    contract; only for generators that ``takes_noise``)."""
    return tuple(generator.noise_shape(input_shape))


#: the attribute ``registry`` sets on what it builds: "generator 'NAME' from ORIGIN"
LABEL = "_forge_component"

#: generators whose output was checked against the contract in this process (each once)
_checked: weakref.WeakSet = weakref.WeakSet()


def describe(obj: Any, kind: str = "generator") -> str:
    """How an error names a built component: ``generator 'NAME' from ORIGIN`` (set by the registry),
    else its class."""
    return str(getattr(obj, LABEL, None) or f"{kind} {type(obj).__name__}")


def check_generator_output(generator: Any, x: Any, y: Any) -> None:
    """PluginError (one line naming the generator and the shapes) when ``y = generator(x)`` breaks
    the generator contract: a tensor of the input's shape (N, 1, S, S, S), a floating dtype, finite
    values."""
    import torch  # start-up: `forge --help` imports this module

    name = describe(generator)
    shape = tuple(x.shape)
    if not isinstance(y, torch.Tensor):
        raise PluginError(f"{name} returned a {type(y).__name__} for an input of shape {shape}; a generator "
                          "returns a tensor of its input's shape (N, 1, S, S, S)")
    if tuple(y.shape) != shape:
        raise PluginError(f"{name} returned shape {tuple(y.shape)} for an input of shape {shape}; a generator "
                          "returns its input's shape (N, 1, S, S, S)")
    if not y.is_floating_point():
        raise PluginError(f"{name} returned dtype {str(y.dtype).replace('torch.', '')} for an input of shape "
                          f"{shape}; a generator returns floating-point volumes")
    if not bool(torch.isfinite(y).all()):
        raise PluginError(f"{name} returned NaN or infinite values for an input of shape {shape}")


def run_generator(generator: Any, x: torch.Tensor, noise: torch.Tensor | None,
                  check: bool = True) -> torch.Tensor:
    """Call ``generator`` on ``x`` with ``noise`` when it takes noise (the noise contract). With
    ``check``, the first output of each generator is checked against its contract
    (:func:`check_generator_output`); the training step passes ``check=False`` (its generators are
    checked before the first step)."""
    if noise is not None and takes_noise(generator):
        y = generator(x, noise=noise)
    else:
        y = generator(x)
    if check:
        try:
            seen = generator in _checked
        except TypeError:  # not weakly referenceable: checked on every call
            seen = False
        if not seen:
            check_generator_output(generator, x, y)
            with contextlib.suppress(TypeError):
                _checked.add(generator)
    return y
