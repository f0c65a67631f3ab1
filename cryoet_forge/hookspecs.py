"""Hook specifications: every extension point of cryoet-forge.

A plugin is a module (or object) that implements some of these hooks with
``@cryoet_forge.hookimpl``. Built-in components use exactly the same hooks; third
parties are found through the entry-point group ``cryoet_forge``.

Each ``forge_register_*`` hook receives one argument, ``register``, a callable::

    register(name, factory, description=None)

``name`` is the component's kebab-case name (``"unet3d"``), ``factory`` a callable
that builds the component from keyword options (usually the class itself), and
``description`` a one-line summary for ``forge list`` (defaults to the first line
of the factory's docstring). The hooks are called once, when the registry is first
built, through pluggy: ``tryfirst``/``trylast``, hook wrappers (``wrapper=True``) and
tracing work as pluggy documents them (the last registered plugin is called first).
Built-in components win every name clash whatever the order; between two plugins the one
called first keeps the name. The other plugin's ``register`` call is recorded as its error
(``forge plugins``), as is a component that does not satisfy its kind's protocol.

The protocol of each kind is in ``cryoet_forge.contracts`` (named in each hook below).
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import pluggy

from cryoet_forge.contracts import (  # noqa: F401  (the protocols each hook names)
    AdversarialLoss,
    Classifier,
    Critic,
    Dataset,
    FeatureExtractor,
    Generator,
    GeneratorRegularizer,
    KnnBackend,
    NoiseGenerator,
    Simulator,
)

PROJECT = "cryoet_forge"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)  # same marker as cryoet_forge.hookimpl


class Register(Protocol):
    """The ``register`` argument of every ``forge_register_*`` hook."""

    def __call__(self, name: str, factory: Callable[..., Any], description: str | None = None) -> None: ...


@hookspec
def forge_register_generators(register: Register) -> None:
    """Register generators (volume-to-volume networks).

    Factory contract: ``factory(in_channels=1, out_channels=1, **options)`` returns a
    ``torch.nn.Module`` mapping (B, 1, S, S, S) to (B, 1, S, S, S) with values in
    [-1, 1]: ``contracts.Generator``, and ``contracts.NoiseGenerator`` for the noise contract
    (``noise = True``, ``noise_shape``, ``forward(x, noise=None)``). Called when the registry is
    built; returns nothing.
    """


@hookspec
def forge_register_critics(register: Register) -> None:
    """Register critics (discriminators) for adversarial training.

    Factory contract: ``factory(in_channels=1, **options)`` returns a
    ``torch.nn.Module`` mapping (B, 1, S, S, S) to a patch of scores (B, 1, s, s, s)
    (``contracts.Critic``). Called when the registry is built; returns nothing.
    """


@hookspec
def forge_register_losses(register: Register) -> None:
    """Register adversarial losses (``wgan-clip``, ``lsgan``, ...) and generator regularisers.

    Factory contract: ``factory(**options)`` returns a ``contracts.AdversarialLoss`` (selected
    by ``loss.adversarial``; see ``cryoet_forge.losses``) or a ``contracts.GeneratorRegularizer``
    (switched on in ``[loss.regularizers.NAME]``; see ``cryoet_forge.contrastive``). The cycle
    term is not a registered loss: it is ``loss.cycle_weight``. Called when the registry is built.
    """


@hookspec
def forge_register_simulators(register: Register) -> None:
    """Register subtomogram simulators (``fourier``, ``tilt-series``, ...).

    Factory contract: ``factory(**options)`` returns an object that turns a batch of
    density maps into simulated subtomograms and records every random parameter
    (``contracts.Simulator``). Called when the registry is built; returns nothing.
    """


@hookspec
def forge_register_datasets(register: Register) -> None:
    """Register dataset kinds (volume folders, labelled folders, on-the-fly simulation).

    Factory contract: ``factory(**options)`` returns a ``torch.utils.data.Dataset``
    (``contracts.Dataset``).
    Called when the registry is built; returns nothing.
    """


@hookspec
def forge_register_feature_extractors(register: Register) -> None:
    """Register feature extractors (volumes -> embedding vectors, e.g. ``cb3d``).

    Factory contract: ``factory(**options)`` returns a ``contracts.FeatureExtractor``:
    ``extract(volumes) -> numpy.ndarray`` of shape (N, D). Optional: ``probabilities(volumes)``
    -> (N, C) class probabilities (``forge metrics --features`` then reports the Inception
    Score), ``extract_with_probabilities(volumes)`` for both in one pass, ``box`` (the one edge
    length it takes) and ``metadata["voxel_size"]`` (checked against the volumes). Called when
    the registry is built; returns nothing.
    """


@hookspec
def forge_register_knn_backends(register: Register) -> None:
    """Register k-nearest-neighbour backends used by the metrics engine.

    Factory contract: ``factory(**options)`` returns a ``contracts.KnnBackend``. Called when the registry is built.
    """


@hookspec
def forge_register_classifiers(register: Register) -> None:
    """Register downstream classifiers (``cb3d``, ``radial``, ...) for ``forge evaluate``.

    Factory contract: ``factory(**options)`` returns a ``contracts.Classifier``: ``fit(train,
    seed)`` on labelled volumes, ``probabilities(volumes) -> (N, C)``; optional ``features(volumes)
    -> (N, D)`` (then ``metrics.inception`` may choose it). ``[downstream] classifiers``
    names the kinds an evaluation trains; each is trained on the real training split, the
    traditional set and the GAN set, and scored on the real test split. Called when the registry
    is built; returns nothing.
    """


@hookspec
def forge_register_commands(cli: Any) -> None:
    """Add sub-commands to the ``forge`` click group.

    ``cli`` is the ``click.Group``; implementations call ``cli.add_command(...)``.
    Called once when the ``forge`` command starts, after the component registries
    are built; returns nothing.
    """
