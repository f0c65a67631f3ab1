"""The contract of each component kind, as typed protocols, and the checks the registry runs.

One protocol per kind (``hookspecs`` names them in each hook's documentation):

=====================  =========================================================================
kind                   what ``registry.create(kind, name, **options)`` must return
=====================  =========================================================================
``generator``          :class:`Generator`: a ``torch.nn.Module`` built by
                       ``factory(in_channels=1, out_channels=1, **options)`` mapping (B, 1, S, S, S)
                       to (B, 1, S, S, S) in [-1, 1]; the optional noise contract below
``critic``             :class:`Critic`: a ``torch.nn.Module`` built by ``factory(in_channels=1, ...)``
                       mapping (B, 1, S, S, S) to a patch of scores (B, 1, s, s, s)
``loss``               :class:`AdversarialLoss` (``loss.adversarial``) or
                       :class:`GeneratorRegularizer` (``[loss.regularizers.NAME]``)
``simulator``          :class:`Simulator`: ``simulate(maps, voxel_size, generator)``
``dataset``            :class:`Dataset`: ``__len__`` and ``__getitem__`` (a ``torch`` dataset)
``feature-extractor``  :class:`FeatureExtractor`: ``extract(volumes) -> (N, D)``
``knn-backend``        :class:`KnnBackend`: radii and PRDC counts
``classifier``         :class:`Classifier`: ``fit(train, seed)``, ``probabilities(volumes) -> (N, C)``
=====================  =========================================================================

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
from typing import TYPE_CHECKING, Any, Callable, Protocol, runtime_checkable

if TYPE_CHECKING:  # the contracts module imports nothing heavy at run time
    import numpy as np
    import torch

    from cryoet_forge.metrics.knn import PrdcCounts, ProgressCallback


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


#: kind -> the protocols an instance may satisfy (any one of them)
PROTOCOLS: dict[str, tuple[type, ...]] = {
    "generator": (Generator,),
    "critic": (Critic,),
    "loss": (AdversarialLoss, GeneratorRegularizer),
    "simulator": (Simulator,),
    "dataset": (Dataset,),
    "feature-extractor": (FeatureExtractor,),
    "knn-backend": (KnnBackend,),
    "classifier": (Classifier,),
}

#: kinds whose instances must be torch modules (trained, moved to a device, saved)
MODULE_KINDS = ("generator", "critic")

#: kind -> keyword options the factory must accept (the trainer passes them)
FACTORY_OPTIONS: dict[str, tuple[str, ...]] = {"generator": ("in_channels", "out_channels"),
                                               "critic": ("in_channels",)}


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
            import torch

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
        import torch

        if not isinstance(obj, torch.nn.Module):
            raise ContractError(f"built a {type(obj).__name__}, not a torch.nn.Module")
    if kind == "generator" and getattr(obj, "noise", False) and not callable(getattr(obj, "noise_shape", None)):
        raise ContractError("sets noise=True but has no noise_shape(input_shape) (the noise contract)")
    shortfalls = []
    for protocol in protocols:
        missing = [m for m in _methods(protocol) if not callable(getattr(obj, m, None))]
        missing += [a for a in _attributes(protocol) if not hasattr(obj, a)]
        if not missing:
            return
        shortfalls.append(missing)
    missing = min(shortfalls, key=len)
    raise ContractError(f"built a {type(obj).__name__} that lacks {', '.join(missing)} "
                        f"(the {kind} protocol: {_describe(protocols)})")


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
    import torch

    from cryoet_forge.errors import PluginError

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
