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
built, built-in plugins first, then entry-point plugins in name order.
"""

from __future__ import annotations

import pluggy

PROJECT = "cryoet_forge"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)  # same marker as cryoet_forge.hookimpl


@hookspec
def forge_register_generators(register):
    """Register generators (volume-to-volume networks).

    Factory contract: ``factory(in_channels=1, out_channels=1, **options)`` returns a
    ``torch.nn.Module`` mapping (B, 1, S, S, S) to (B, 1, S, S, S) with values in
    [-1, 1]. Called when the registry is built; returns nothing.
    """


@hookspec
def forge_register_critics(register):
    """Register critics (discriminators) for adversarial training.

    Factory contract: ``factory(in_channels=1, **options)`` returns a
    ``torch.nn.Module`` mapping (B, 1, S, S, S) to a patch of scores (B, 1, s, s, s).
    Called when the registry is built; returns nothing.
    """


@hookspec
def forge_register_losses(register):
    """Register adversarial / reconstruction losses (``wgan-clip``, ``lsgan``, ...).

    Factory contract: ``factory(**options)`` returns a loss object whose interface is
    documented in ``cryoet_forge.losses``. Called when the registry is built.
    """


@hookspec
def forge_register_simulators(register):
    """Register subtomogram simulators (``fourier``, ``tilt-series``, ...).

    Factory contract: ``factory(**options)`` returns an object that turns a batch of
    density maps into simulated subtomograms and records every random parameter.
    Called when the registry is built; returns nothing.
    """


@hookspec
def forge_register_datasets(register):
    """Register dataset kinds (volume folders, labelled folders, on-the-fly simulation).

    Factory contract: ``factory(**options)`` returns a ``torch.utils.data.Dataset``.
    Called when the registry is built; returns nothing.
    """


@hookspec
def forge_register_feature_extractors(register):
    """Register feature extractors (volumes -> embedding vectors, e.g. ``cb3d``).

    Factory contract: ``factory(**options)`` returns an object with
    ``extract(volumes) -> numpy.ndarray`` of shape (N, D). Optional: ``probabilities(volumes)``
    -> (N, C) class probabilities (``forge metrics --features`` then reports the Inception
    Score), ``extract_with_probabilities(volumes)`` for both in one pass, ``box`` (the one edge
    length it takes) and ``metadata["voxel_size"]`` (checked against the volumes). Called when
    the registry is built; returns nothing.
    """


@hookspec
def forge_register_knn_backends(register):
    """Register k-nearest-neighbour backends used by the metrics engine.

    Factory contract: ``factory(**options)`` returns an object implementing
    ``cryoet_forge.metrics.knn.KnnBackend``. Called when the registry is built.
    """


@hookspec
def forge_register_commands(cli):
    """Add sub-commands to the ``forge`` click group.

    ``cli`` is the ``click.Group``; implementations call ``cli.add_command(...)``.
    Called once when the ``forge`` command starts, after the component registries
    are built; returns nothing.
    """
