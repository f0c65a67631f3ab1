"""The plugin manager and the per-kind component registries.

Built-in plugin modules are registered first, then every entry point of the group
``cryoet_forge``. A plugin that raises while it is imported or while it registers
its components is recorded (``plugin_reports()``) and skipped; the rest still work. That holds
for ``SystemExit`` and for a ``KeyboardInterrupt`` the plugin raises itself; a real Ctrl-C
(SIGINT) while plugins load still interrupts.
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import functools
import importlib
import importlib.metadata as metadata
import inspect
import signal
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Generator, Iterable, Iterator

import pluggy

from cryoet_forge import __version__, contracts, hookspecs
from cryoet_forge.errors import ConfigError, PluginError, UnknownComponentError
from cryoet_forge.options import check_options

ENTRY_POINT_GROUP = "cryoet_forge"
BUILTIN_ORIGIN = "cryoet-forge"

#: kind name -> the hook that registers components of that kind (from ``contracts.KINDS``)
KIND_HOOKS: dict[str, str] = {kind.name: kind.hook for kind in contracts.KINDS}

#: kind -> {old or short name: registered name}; ``get`` and ``create`` accept both
ALIASES: dict[str, dict[str, str]] = {"simulator": {"none": "posed-map"}}

#: modules of cryoet-forge itself that implement hooks; registered before any plugin
BUILTIN_PLUGIN_MODULES: tuple[str, ...] = (
    "cryoet_forge.metrics.plugin",
    "cryoet_forge.models.plugin",
    "cryoet_forge.evaluate.plugin",
    "cryoet_forge.simulate.plugin",
    "cryoet_forge.data.plugin",
    "cryoet_forge.picking.plugin",
)


#: what a plugin may raise while it is imported or called without stopping ``forge``: every
#: error, and ``SystemExit`` (a plugin calling ``sys.exit``); a ``KeyboardInterrupt`` that the
#: plugin raised itself is contained too (``_contain``), only a real Ctrl-C goes through
CONTAINED = (Exception, SystemExit)

#: whether SIGINT arrived while plugins were loaded (set by ``_watch_sigint``'s handler)
_sigint = {"watching": 0, "received": False}


@contextlib.contextmanager
def _watch_sigint() -> Iterator[None]:
    """While plugins load, note whether a real SIGINT (Ctrl-C) arrives, so that a
    ``KeyboardInterrupt`` a plugin raises itself can be told apart from the user's (``_contain``).
    The handler in force is still called; outside the main thread nothing is installed."""
    if threading.current_thread() is not threading.main_thread() or _sigint["watching"]:
        yield
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):
        _sigint["received"] = True
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGINT, handler)
    except ValueError:  # signals are not available here
        yield
        return
    _sigint["watching"], _sigint["received"] = 1, False
    try:
        yield
    finally:
        _sigint["watching"] = 0
        signal.signal(signal.SIGINT, previous)


def _exception_text(exc: BaseException) -> str:
    """``Type: message`` of a plugin's exception (``Type`` alone when it has no message)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _contain(exc: BaseException) -> bool:
    """Whether a plugin's exception is recorded on its report instead of stopping ``forge``:
    ``CONTAINED``, and a ``KeyboardInterrupt`` raised by the plugin's own code (no SIGINT came
    while ``_watch_sigint`` watched)."""
    if isinstance(exc, CONTAINED):
        return True
    return isinstance(exc, KeyboardInterrupt) and bool(_sigint["watching"]) and not _sigint["received"]


def normalize_kind(kind: str) -> str:
    """Accept ``generator``, ``generators``, ``knn_backend``, ... and return the kind key."""
    key = kind.strip().lower().replace("_", "-")
    if key not in KIND_HOOKS and key.endswith("s") and key[:-1] in KIND_HOOKS:
        key = key[:-1]
    if key not in KIND_HOOKS:
        raise PluginError(f"unknown component kind {kind!r}; choose from: {', '.join(KIND_HOOKS)}")
    return key


@dataclass(frozen=True)
class Component:
    """One registered component: what ``forge list`` shows and ``create`` builds."""

    kind: str
    name: str
    factory: Callable[..., Any]
    description: str
    origin: str

    def accepts(self, option: str) -> bool:
        """Whether the factory takes keyword ``option`` (a factory taking ``**options``, or one whose
        signature cannot be read, is taken to accept it)."""
        try:
            parameters = inspect.signature(self.factory).parameters
        except (TypeError, ValueError):
            return True
        p = parameters.get(option)
        if p is not None:
            return p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        return any(p.kind is p.VAR_KEYWORD for p in parameters.values())

    def create(self, **options: Any) -> Any:
        """Build the component; options it does not take, or of the wrong type, are a ConfigError,
        and an object that does not satisfy its kind's protocol (``contracts``) a PluginError.

        The options are bound against the factory's signature *before* the call, so a
        TypeError raised inside a factory that accepted its options is a bug and
        propagates unchanged. Factories taking ``**kwargs`` validate their own options.
        """
        try:
            signature = inspect.signature(self.factory)
        except (TypeError, ValueError):  # a builtin or C callable: nothing to bind against
            signature = None
        if signature is None:
            try:
                obj = self.factory(**options)
            except TypeError as exc:
                if "unexpected keyword argument" in str(exc):
                    raise ConfigError(f"{self.kind} {self.name!r}: {exc}") from None
                raise
        else:
            check_options(self.kind, self.name, self.factory, options, signature)
            obj = self.factory(**options)
        try:
            contracts.check_instance(self.kind, obj)
        except contracts.ContractError as exc:
            raise PluginError(f"{self.kind} {self.name!r} from {self.origin}: {exc}") from None
        try:  # how a later contract check names it (contracts.describe)
            object.__setattr__(obj, contracts.LABEL, f"{self.kind} {self.name!r} from {self.origin}")
        except (AttributeError, TypeError):  # slots, or a frozen object: named by its class
            pass
        return obj


@dataclass
class PluginReport:
    """What ``forge plugins`` shows for one plugin (a distribution or a built-in module)."""

    name: str
    version: str
    module: str
    hooks: list[str] = field(default_factory=list)
    error: str | None = None

    def add_error(self, message: str) -> None:
        """Record one more problem (after any earlier one, separated by '; ')."""
        self.error = message if self.error is None else f"{self.error}; {message}"


def _first_doc_line(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0].strip() if doc.strip() else ""


class Registry:
    """Plugin manager plus one name -> Component table per kind."""

    def __init__(self, load_entry_points: bool = True,
                 builtin_modules: Iterable[str] = BUILTIN_PLUGIN_MODULES):
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self._components: dict[str, dict[str, Component]] = {k: {} for k in KIND_HOOKS}
        self._reports: list[PluginReport] = []
        #: id(the object registered with pluggy: a ``_ContainedPlugin``) -> its plugin's report
        self._origins: dict[int, PluginReport] = {}
        #: id(a plugin module or object) -> (the name it is registered under, the plugin)
        self._registered: dict[int, tuple[str, Any]] = {}
        self._cli: Any = None
        with _watch_sigint():
            self._load(load_entry_points, builtin_modules)

    # -- loading ---------------------------------------------------------------------
    def _load(self, load_entry_points: bool, builtin_modules: Iterable[str]) -> None:
        for module_name in builtin_modules:
            report = PluginReport(name=BUILTIN_ORIGIN, version=__version__, module=module_name)
            try:
                module = importlib.import_module(module_name)
            except BaseException as exc:  # a broken built-in must not hide the rest
                if not _contain(exc):
                    raise
                report.error = _exception_text(exc)
                self._reports.append(report)
                continue
            self._add_plugin(module, module_name, report)
        if load_entry_points:
            self._load_entry_points()
        self._collect_components()

    def _add_plugin(self, plugin: Any, plugin_name: str, report: PluginReport) -> None:
        try:
            if id(plugin) in self._registered:  # one module named by two entry points
                raise ValueError(f"plugin {plugin_name!r} is already registered as "
                                 f"{self._registered[id(plugin)][0]!r}")
            contained = _ContainedPlugin(self, plugin, report)
            self.pm.register(contained, name=plugin_name)
        except BaseException as exc:  # pluggy validates hook names and signatures here
            if not _contain(exc):
                raise
            report.error = _exception_text(exc)
            self._reports.append(report)
            return
        self._registered[id(plugin)] = (plugin_name, plugin)
        callers = self.pm.get_hookcallers(contained) or []
        report.hooks = sorted(caller.name for caller in callers)
        unknown = sorted(caller.name for caller in callers if caller.spec is None)
        if unknown:  # most likely a misspelled hook name, which would silently do nothing
            known = [name for name in dir(hookspecs) if name.startswith("forge_")]
            hints = []
            for name in unknown:
                close = difflib.get_close_matches(name, known, n=1)
                hints.append(f"{name} (did you mean {close[0]}?)" if close else name)
            report.error = f"implements unknown hook(s): {', '.join(hints)}"
        self._origins[id(contained)] = report
        self._reports.append(report)

    @contextlib.contextmanager
    def _command_guard(self, hook_name: str, report: PluginReport) -> Iterator[None]:
        """Around a plugin's ``forge_register_commands``: any command of another owner that it
        replaced or removed is put back, and the clash is recorded on its report."""
        if hook_name != "forge_register_commands" or self._cli is None:
            yield
            return
        before = dict(self._cli.commands)
        try:
            yield
        finally:
            _check_commands(self._cli, before, report)

    def _load_entry_points(self) -> None:
        eps = sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)
        seen: set[tuple[str, str]] = set()
        for ep in eps:
            dist = getattr(ep, "dist", None)
            dist_name = dist.metadata["Name"] if dist is not None else ep.name
            version = dist.version if dist is not None else "?"
            if (dist_name, ep.value) in seen:  # the same distribution found twice on sys.path
                continue
            seen.add((dist_name, ep.value))
            report = PluginReport(name=dist_name, version=version, module=ep.value)
            try:
                plugin = ep.load()
            except BaseException as exc:
                if not _contain(exc):
                    raise
                report.error = _exception_text(exc)
                self._reports.append(report)
                continue
            self._add_plugin(plugin, f"{dist_name}:{ep.name}", report)

    def _call_hook(self, hook_name: str, **kwargs: Any) -> None:
        """Call a hook through pluggy (``tryfirst``/``trylast``, wrappers and tracing apply). Each
        implementation contains its own errors (``_ContainedPlugin``); an error raised past them
        (by pluggy itself) is recorded on an "(unknown plugin)" report."""
        try:
            getattr(self.pm.hook, hook_name)(**kwargs)
        except BaseException as exc:
            if not _contain(exc):
                raise
            self._unattributed().add_error(_exception_text(exc))

    def _unattributed(self) -> PluginReport:
        unknown = PluginReport(name="(unknown plugin)", version="?", module="?")
        self._reports.append(unknown)
        return unknown

    def _collect_components(self) -> None:
        for kind, hook_name in KIND_HOOKS.items():
            self._call_hook(hook_name, register=self._make_register(kind))

    def _make_register(self, kind: str) -> hookspecs.Register:
        table = self._components[kind]
        #: name -> the report of the plugin module that registered it (a distribution with several
        #: entry-point modules has one report per module: a clash is shown under the module's own)
        owners: dict[str, PluginReport | None] = {}

        def register(name: str, factory: Callable[..., Any], description: str | None = None) -> None:
            report = _calling.get()
            origin = report.name if report is not None else "(unknown plugin)"
            if not isinstance(name, str) or not name or name != name.strip().lower() or " " in name:
                raise PluginError(f"{kind} name {name!r} from {origin} is not a kebab-case name")
            if not callable(factory):
                raise PluginError(f"{kind} {name!r} from {origin}: factory is not callable")
            try:
                contracts.check_factory(kind, factory)
            except contracts.ContractError as exc:  # this component only: the plugin's others stay
                problem = f"{kind} {name!r} from {origin} is refused: {exc}"
                if report is None:
                    raise PluginError(problem) from None
                report.add_error(problem)
                return
            component = Component(kind, name, factory, description or _first_doc_line(factory), origin)
            held = table.get(name)
            if held is not None:
                # built-ins win whatever order pluggy called in; between plugins, the first called
                if origin == BUILTIN_ORIGIN and held.origin != BUILTIN_ORIGIN:
                    table[name] = component
                    loser, winner, losing = held.origin, origin, owners.get(name)
                    owners[name] = report
                else:
                    loser, winner, losing = origin, held.origin, report
                problem = f"{kind} {name!r} from {loser} is already registered by {winner}"
                if losing is None:
                    raise PluginError(problem)
                losing.add_error(problem)
                return
            table[name] = component
            owners[name] = report

        return register

    # -- queries -----------------------------------------------------------------------
    def names(self, kind: str) -> list[str]:
        return sorted(self._components[normalize_kind(kind)])

    def components(self, kind: str | None = None) -> list[Component]:
        kinds = [normalize_kind(kind)] if kind else list(KIND_HOOKS)
        return [self._components[k][n] for k in kinds for n in sorted(self._components[k])]

    def get(self, kind: str, name: str) -> Component:
        key = normalize_kind(kind)
        name = ALIASES.get(key, {}).get(name, name)
        try:
            return self._components[key][name]
        except KeyError:
            raise UnknownComponentError(key, name, self.names(key)) from None

    def create(self, kind: str, name: str, **options: Any) -> Any:
        return self.get(kind, name).create(**options)

    def plugin_reports(self) -> list[PluginReport]:
        return list(self._reports)

    def collect(self, hook_name: str, check: Callable[[Any], Any]) -> list[Any]:
        """What plugins pass to ``register`` in hook ``hook_name`` (a hook that is not a component
        kind: evaluation stages, training callbacks), each through ``check``, in the order pluggy
        calls the plugins. A registration that fails stops the caller with one PluginError naming
        the plugin, instead of leaving its part out."""
        found: list[Any] = []
        problems: list[str] = []

        def register(obj: Any) -> None:
            try:
                found.append(check(obj))
            except PluginError as exc:
                problems.append(str(exc))  # recorded on the plugin's report too: raised below
                raise

        before = {id(report): report.error for report in self._reports}
        getattr(self.pm.hook, hook_name)(register=register)
        for report in self._reports:
            earlier = before.get(id(report))
            if report.error and report.error != earlier:
                new = report.error[len(earlier) + 2:] if earlier else report.error
                raise PluginError(f"plugin {report.name} ({report.module}): {hook_name}: "
                                  f"{new.removeprefix(hook_name + ': ')}")
        if problems:
            raise PluginError(problems[0])
        return found

    def register_commands(self, cli: Any) -> None:
        """Let each plugin add its commands to ``cli`` (through pluggy). A command name belongs to
        whoever added it first (the built-ins come first): a plugin that replaces or removes
        another's command has it put back, and the clash is that plugin's error in ``forge plugins``."""
        owners: dict[str, str] = cli.__dict__.setdefault("_forge_command_owners", {})
        for name in cli.commands:
            owners.setdefault(name, BUILTIN_ORIGIN)  # defined in cli.py itself
        self._cli = cli
        # built-in modules first, so that their commands are theirs whatever order pluggy calls in
        builtins = [p for p in self.pm.get_plugins() if getattr(self._origins.get(id(p)), "name", None)
                    == BUILTIN_ORIGIN]
        others = [p for p in self.pm.get_plugins() if p not in builtins]
        with _watch_sigint():
            self._register_commands(cli, builtins, others)

    def _register_commands(self, cli: Any, builtins: list[Any], others: list[Any]) -> None:
        self.pm.subset_hook_caller("forge_register_commands", remove_plugins=others)(cli=cli)
        try:
            self.pm.subset_hook_caller("forge_register_commands", remove_plugins=builtins)(cli=cli)
        except BaseException as exc:
            if not _contain(exc):
                raise
            self._unattributed().add_error(_exception_text(exc))

#: the plugin whose hook implementation is running (``register`` names it as the origin)
_calling: contextvars.ContextVar[PluginReport | None] = contextvars.ContextVar("forge_calling", default=None)


@contextlib.contextmanager
def _reporting(report: PluginReport) -> Iterator[None]:
    """While a plugin's hook code runs: ``register`` names that plugin as the origin."""
    token = _calling.set(report)
    try:
        yield
    finally:
        _calling.reset(token)


def _contained(function: Callable[..., Any], hook_name: str, report: PluginReport,
               guard: Callable[[str, PluginReport], contextlib.AbstractContextManager[None]]) -> Callable[..., Any]:
    """``function`` (one plugin's implementation of ``hook_name``) as pluggy will call it:
    with the plugin known to ``register`` and its errors recorded on its report instead of
    ending the hook call for every other plugin (its result then is None). ``guard(hook_name,
    report)`` surrounds the call (the registry's check that a plugin keeps others' commands)."""

    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        with guard(hook_name, report):
            try:
                with _reporting(report):
                    return function(*args, **kwargs)
            except BaseException as exc:
                if not _contain(exc):
                    raise
                report.add_error(_exception_text(exc))
                return None

    return call


def _contained_wrapper(function: Callable[..., Any], hook_name: str, report: PluginReport) -> Callable[..., Any]:
    """A hook wrapper's generator ``function`` (``wrapper=True`` or ``hookwrapper=True``) as
    pluggy will drive it: each step runs with the plugin known to ``register``, and an error the
    plugin's own code raises (before or after its ``yield``) is recorded on its report; the hook
    call then goes on as if the wrapper were not there. What the inner implementations raise
    passes through unchanged."""

    @functools.wraps(function)
    def drive(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
        steps = function(*args, **kwargs)  # a generator: no plugin code has run yet
        try:
            with _reporting(report):
                next(steps)
        except StopIteration:
            report.add_error(f"hook wrapper {hook_name} did not yield")
            return (yield)
        except BaseException as exc:
            if not _contain(exc):
                raise
            report.add_error(_exception_text(exc))
            return (yield)
        inner: BaseException | None = None
        received = None
        try:
            received = yield
        except BaseException as exc:  # raised by the implementations inside this wrapper
            inner = exc
        try:
            with _reporting(report):
                if inner is not None:
                    steps.throw(inner)
                else:
                    steps.send(received)
        except StopIteration as stop:
            return stop.value
        except BaseException as exc:
            if exc is inner or not _contain(exc):
                raise
            report.add_error(_exception_text(exc))
        else:
            report.add_error(f"hook wrapper {hook_name} has a second yield")
            with contextlib.suppress(*CONTAINED):
                steps.close()
        if inner is not None:
            raise inner
        return received

    return drive


def _check_commands(cli: Any, before: dict[str, Any], report: PluginReport) -> None:
    """Put back any command of another owner that the plugin of ``report`` replaced or removed from
    ``cli`` (its commands were ``before``)."""
    owners: dict[str, str] = cli.__dict__["_forge_command_owners"]
    origin = report.name
    problems = []
    for name in sorted(set(before) | set(cli.commands)):
        owner = owners.get(name)
        if name not in before:
            owners.setdefault(name, origin)
            if owners[name] == origin:
                continue
        if before.get(name) is cli.commands.get(name) or owner == origin:
            continue
        if name in before:
            cli.commands[name] = before[name]
        else:
            cli.commands.pop(name, None)
        problems.append(f"command {name!r} belongs to {owner}; a plugin cannot replace it")
    if problems:
        report.add_error("; ".join(problems))


class _ContainedPlugin:
    """A plugin as the registry registers it with pluggy: an object exposing the same hook
    implementations as the plugin (same attribute names, ``@hookimpl`` options and signatures),
    each wrapped so that the plugin's errors are recorded on its report instead of ending the hook
    call for every other plugin. Found through pluggy's own discovery
    (``PluginManager.parse_hookimpl_opts``); a wrapper that is not a generator function is handed
    over as it is, for pluggy to refuse at registration."""

    def __init__(self, registry: Registry, plugin: Any, report: PluginReport) -> None:
        self._forge_plugin = plugin
        for attr in dir(plugin):
            opts = registry.pm.parse_hookimpl_opts(plugin, attr)
            if opts is None:
                continue
            function = getattr(plugin, attr)
            hook_name = opts.get("specname") or attr
            if opts.get("wrapper") or opts.get("hookwrapper"):
                if not inspect.isgeneratorfunction(function):
                    setattr(self, attr, function)
                    continue
                contained = _contained_wrapper(function, hook_name, report)
            else:
                contained = _contained(function, hook_name, report, registry._command_guard)
            setattr(self, attr, hookspecs.hookimpl(contained, **opts))

    def __repr__(self) -> str:
        return f"<contained {self._forge_plugin!r}>"


_lock = threading.Lock()
_registry: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, built on first use."""
    global _registry
    with _lock:
        if _registry is None:
            _registry = Registry()
        return _registry


def reset_registry() -> None:
    """Forget the registry so the next call rebuilds it (after installing a plugin)."""
    global _registry
    with _lock:
        _registry = None


def get(kind: str, name: str) -> Component:
    return get_registry().get(kind, name)


def create(kind: str, name: str, **options: Any) -> Any:
    """Build component ``name`` of ``kind`` with keyword ``options``."""
    return get_registry().create(kind, name, **options)


def names(kind: str) -> list[str]:
    return get_registry().names(kind)
