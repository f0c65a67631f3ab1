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

The ``forge_register_*`` hooks are made here from ``cryoet_forge.contracts.KINDS``, where each
component kind is declared once (its name, hook, protocol and the hook's documentation); each
hook is a module-level function carrying that documentation, as ``pm.add_hookspecs`` and
``inspect.getdoc`` see it (documentation tools read them by importing the module).
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import pluggy

from cryoet_forge.contracts import KINDS, Kind

PROJECT = "cryoet_forge"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)  # same marker as cryoet_forge.hookimpl


class Register(Protocol):
    """The ``register`` argument of every ``forge_register_*`` hook."""

    def __call__(self, name: str, factory: Callable[..., Any], description: str | None = None) -> None: ...


def _register_hook(kind: Kind) -> Callable[[Register], None]:
    """The hook specification of ``kind``: ``kind.hook(register)``, documented by ``kind.doc``."""

    def hook(register: Register) -> None:
        pass

    hook.__name__ = hook.__qualname__ = kind.hook
    hook.__doc__ = kind.doc
    return hookspec(hook)


for _kind in KINDS:  # forge_register_generators, forge_register_critics, ... (contracts.KINDS)
    globals()[_kind.hook] = _register_hook(_kind)
del _kind


@hookspec
def forge_register_commands(cli: Any) -> None:
    """Add sub-commands to the ``forge`` click group.

    ``cli`` is the ``click.Group``; implementations call ``cli.add_command(...)``.
    Called once when the ``forge`` command starts, after the component registries
    are built; returns nothing.
    """


@hookspec
def forge_register_evaluation_stages(register: Callable[[Any], None]) -> None:
    """Add stages to ``forge evaluate`` (another downstream task, another score).

    Unlike the component hooks, ``register`` takes one argument: a
    ``cryoet_forge.evaluate.stages.EvaluationStage``, the stage's ``name`` (its record folder
    ``OUT/stages/<name>``), the names of the values it reads (``inputs``: the evaluation's base
    values, ``cryoet_forge.evaluate.pipeline.BASE_VALUES``, and the outputs of earlier stages)
    and adds (``outputs``), its ``function(view)``, and ``after``, the stage it follows (default:
    the last one before the report). Its result is stored and read back by ``--resume`` like a
    built-in stage's, and its outputs are written to ``results.json`` under ``plugin_stages``.
    A stage that reads a value no stage before it produces stops the evaluation before its first
    stage (``PluginError``). Called at the start of every evaluation; returns nothing.
    """


@hookspec
def forge_register_train_callbacks(register: Callable[[Any], None]) -> None:
    """Add callbacks to ``forge train`` (a metric, a logger, an early stop).

    Like ``forge_register_evaluation_stages``, ``register`` takes one argument: a callback object
    with one or more of the hooks of ``cryoet_forge.train.callbacks.Callback``:
    ``on_train_start(state)``, ``on_step_end(state)``, ``on_checkpoint(state)`` and
    ``on_train_end(state)``. ``state`` (``cryoet_forge.train.callbacks.TrainState``) holds the
    trainer, the step just done, its losses (``state.losses``, detached tensors) and, at a log
    step, their means over the log interval (``state.logged``); ``state.stop(reason)`` ends
    training after that step, with a checkpoint of it. Every installed plugin's callbacks run, on
    every process of a torchrun, after the built-in ones (losses checked finite, logging,
    TensorBoard, progress, montages). Called at the start of every training run, so each run gets
    fresh callbacks; returns nothing.
    """
