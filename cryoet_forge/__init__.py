"""cryoet-forge: realistic cryo-ET subtomograms from density maps, and how to measure them."""

from __future__ import annotations

from importlib import metadata

import pluggy

try:  # the version of the installed distribution (pyproject.toml's), read at run time
    __version__ = metadata.version("cryoet-forge")
except metadata.PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

#: decorator for plugin hook implementations (``@cryoet_forge.hookimpl``)
hookimpl = pluggy.HookimplMarker("cryoet_forge")

from cryoet_forge.errors import ForgeError  # noqa: E402

__all__ = ["__version__", "hookimpl", "ForgeError", "create", "list_components"]

# `create` and `list_components` import the registry when called: `import cryoet_forge` (which every
# plugin module does, for `hookimpl`) stays light (start-up time).


def create(kind: str, name: str, **options):
    """Build a registered component, e.g. ``create("generator", "unet3d", base=8)``."""
    from cryoet_forge import registry  # start-up: plugins load on first use, not on import

    return registry.create(kind, name, **options)


def list_components(kind: str):
    """Names of the registered components of ``kind`` (``"generator"``, ``"critic"``, ...)."""
    from cryoet_forge import registry  # start-up: plugins load on first use, not on import

    return registry.names(kind)
