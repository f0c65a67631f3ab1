"""The ForgeError hierarchy.

Every error a user can cause (a bad file, a bad value, an unknown component) is a
ForgeError subclass whose message names the file or value and what was expected.
Only ``cryoet_forge.cli`` turns these into a one-line message and an exit code.
"""

from __future__ import annotations


class ForgeError(Exception):
    """Base class of every error cryoet-forge reports to a user."""

    exit_code = 1


class InputError(ForgeError, ValueError):
    """A file or array given to forge is missing, unreadable or malformed."""

    exit_code = 2


class ConfigError(ForgeError):
    """A configuration value or option is invalid."""

    exit_code = 2


class PluginError(ForgeError):
    """A plugin failed to load, or an unknown component was asked for."""

    exit_code = 3


class UnknownComponentError(PluginError):
    """``registry.create(kind, name)`` was asked for a name nobody registered."""

    def __init__(self, kind: str, name: str, choices: list[str]):
        self.kind = kind
        self.name = name
        self.choices = choices
        listed = ", ".join(choices) if choices else "(none registered)"
        super().__init__(f"unknown {kind} {name!r}; choose from: {listed}")


class TrainingError(ForgeError):
    """Training cannot continue (non-finite loss, unusable checkpoint, ...)."""

    exit_code = 4


class NetworkError(ForgeError):
    """A download failed (offline, unknown id, server error)."""

    exit_code = 5
