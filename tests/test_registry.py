"""Plugin discovery, the component registry and plugin error reporting."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cryoet_forge import registry
from cryoet_forge.errors import ConfigError, PluginError, UnknownComponentError
from tests_support import forge_executable


def make_distribution(root: Path, dist: str, module: str, source: str, version: str = "0.0.1") -> None:
    """Lay out an installed distribution (module + dist-info with an entry point) under root."""
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[cryoet_forge]\n{module} = {module}\n")


GOOD_PLUGIN = '''
    import torch
    from cryoet_forge import hookimpl
    from cryoet_forge.losses import WGANClipLoss

    class Doubler(torch.nn.Module):
        """Doubles its input (a throwaway test generator)."""

        def __init__(self, in_channels=1, out_channels=1, factor=2):
            super().__init__()
            self.factor = factor

        def forward(self, x):
            return torch.tanh(self.factor * x)

    @hookimpl
    def forge_register_generators(register):
        register("throwaway-doubler", Doubler)

    @hookimpl
    def forge_register_losses(register):
        register("throwaway-loss", WGANClipLoss, "a loss with its own description")
'''

BROKEN_PLUGIN = '''
    raise RuntimeError("this plugin is broken on purpose")
'''


def test_builtin_and_plugin_distribution_components_are_listed():
    reg = registry.Registry()
    assert "exact" in reg.names("knn-backend")
    assert reg.get("knn-backend", "exact").origin == "cryoet-forge"
    assert reg.get("generator", "unet3d").origin == "cryoet-forge-unet3d"


def test_throwaway_entry_point_plugin_is_discovered(plugin_path):
    make_distribution(plugin_path, "forge-throwaway", "forge_throwaway", GOOD_PLUGIN)
    reg = registry.get_registry()
    component = reg.get("generator", "throwaway-doubler")
    assert component.origin == "forge-throwaway"
    assert component.description == "Doubles its input (a throwaway test generator)."
    assert reg.get("loss", "throwaway-loss").description == "a loss with its own description"
    assert registry.create("generator", "throwaway-doubler", factor=3).factor == 3
    report = next(r for r in reg.plugin_reports() if r.name == "forge-throwaway")
    assert report.version == "0.0.1"
    assert report.hooks == ["forge_register_generators", "forge_register_losses"]
    assert report.error is None


def test_unknown_component_lists_choices():
    with pytest.raises(UnknownComponentError) as info:
        registry.Registry().create("generator", "no-such-net")
    message = str(info.value)
    assert message.startswith("unknown generator 'no-such-net'; choose from: ")
    assert "unet3d" in message


UNET3D_OPTIONS = "in_channels, out_channels, base, dropout, noise_channels, noise_injection"


def test_unknown_option_names_the_component_and_lists_the_accepted_ones():
    with pytest.raises(ConfigError) as info:
        registry.Registry().create("generator", "unet3d", wings=2)
    assert str(info.value) == f"generator 'unet3d': unknown option 'wings'; accepted options: {UNET3D_OPTIONS}"
    with pytest.raises(ConfigError) as info:
        registry.Registry().create("generator", "unet3d", bsae=8, in_channels=1)
    assert str(info.value) == ("generator 'unet3d': unknown option 'bsae' (did you mean 'base'?); "
                               f"accepted options: {UNET3D_OPTIONS}")


def test_wrongly_typed_or_missing_option_is_a_config_error():
    reg = registry.Registry()
    with pytest.raises(ConfigError) as info:
        reg.create("generator", "unet3d", base="16")
    assert str(info.value) == "generator 'unet3d': option base='16' has the wrong type; expected int"
    with pytest.raises(ConfigError) as info:
        reg.create("simulator", "fourier", tilt_range=["-60", 60])
    assert str(info.value) == ("simulator 'fourier': option tilt_range=['-60', 60] has the wrong type; "
                               "expected Sequence[float]")
    with pytest.raises(ConfigError) as info:
        reg.create("dataset", "volume-folder")
    assert str(info.value) == ("dataset 'volume-folder': missing a required argument: 'root'; "
                               "accepted options: root, normalize")
    # what a config file gives for these annotations is accepted: ints for floats, lists for sequences
    reg.create("simulator", "fourier", snr=[1, 2], tilt_range=[-50, 50], voltage_kv=300)


def test_lazy_factories_check_the_class_they_build():
    with pytest.raises(ConfigError) as info:
        registry.Registry().create("knn-backend", "torch", blok=64)
    assert str(info.value) == ("knn-backend 'torch': unknown option 'blok' (did you mean 'block'?); "
                               "accepted options: device, block")


FACTORIES_MODULE = '''
    class Strict:
        def __init__(self, size: int = 2, name: str = "x"):
            self.size = size
            self.parts = [0] * size + None  # a bug inside a factory that took its options fine

        def __len__(self):
            return self.size

        def __getitem__(self, index):
            return {"volume": None}

    def anything(**options):
        return sorted(options, key=len)(1)  # a bug, whatever the options

    def positional(size, /):
        return size
'''


@pytest.fixture
def factories(plugin_path):
    """A Registry holding throwaway dataset factories (registered as a built-in module would be);
    ``dict`` has no signature to read and builds a mapping, which has the dataset methods."""
    (plugin_path / "forge_factories.py").write_text(textwrap.dedent(FACTORIES_MODULE) + textwrap.dedent('''
        from cryoet_forge import hookimpl

        @hookimpl
        def forge_register_datasets(register):
            register("strict", Strict)
            register("anything", anything)
            register("positional", positional)
            register("builtin", dict)
    '''))
    return registry.Registry(load_entry_points=False, builtin_modules=["forge_factories"])


def test_a_type_error_inside_a_factory_is_not_relabelled(factories):
    with pytest.raises(TypeError, match="can only concatenate list"):
        factories.create("dataset", "strict", size=3)
    with pytest.raises(TypeError, match="'list' object is not callable"):
        factories.create("dataset", "anything", whatever=1)  # **options binds anything: the factory judges
    with pytest.raises(ConfigError, match=r"^dataset 'strict': unknown option 'sise' \(did you mean 'size'\?\); "
                                          r"accepted options: size, name$"):
        factories.create("dataset", "strict", sise=3)


def test_factories_without_keyword_options(factories):
    with pytest.raises(ConfigError, match=r"^dataset 'positional': unknown option 'size'; accepted options: \(none\)$"):
        factories.create("dataset", "positional", size=3)
    assert factories.create("dataset", "builtin", a=1) == {"a": 1}  # no signature to check against


def test_cli_reports_a_bad_component_option_in_one_line(tmp_path):
    result = run_forge("simulate", "--phantoms", "--option", "voltage_kv=high", "--out", str(tmp_path / "o"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "forge: error: simulator 'fourier': option voltage_kv='high' has the wrong type; expected float"]
    assert not (tmp_path / "o").exists()


def test_kind_names_are_normalised_and_checked():
    assert registry.normalize_kind("generators") == "generator"
    assert registry.normalize_kind("knn_backend") == "knn-backend"
    with pytest.raises(PluginError, match="unknown component kind 'gizmo'; choose from: generator, critic"):
        registry.normalize_kind("gizmo")


def test_name_clash_keeps_first_and_reports_the_second(plugin_path):
    make_distribution(plugin_path, "forge-clash", "forge_clash", '''
        from cryoet_forge import hookimpl

        from cryoet_forge.metrics.knn import ExactKnn

        class Impostor(ExactKnn):
            """Claims the built-in's name."""

        @hookimpl
        def forge_register_knn_backends(register):
            register("exact", Impostor)
    ''')
    reg = registry.get_registry()
    assert reg.get("knn-backend", "exact").origin == "cryoet-forge"
    report = next(r for r in reg.plugin_reports() if r.name == "forge-clash")
    assert "knn-backend 'exact' from forge-clash is already registered by cryoet-forge" in report.error


def run_forge(*args: str, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), env.get("PYTHONPATH")]))
    return subprocess.run([forge_executable(), *args], capture_output=True, text=True, env=env,
                          cwd=pythonpath or None, timeout=120)


def test_cli_lists_unet3d_from_the_plugin_distribution():
    result = run_forge("list", "generator")
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.strip().startswith("unet3d"))
    assert "cryoet-forge-unet3d" in line


def test_cli_lists_a_plugin_installed_at_test_time(tmp_path):
    make_distribution(tmp_path, "forge-throwaway", "forge_throwaway", GOOD_PLUGIN)
    result = run_forge("list", "generator", pythonpath=tmp_path)
    assert result.returncode == 0, result.stderr
    assert any(line.split()[:2] == ["throwaway-doubler", "forge-throwaway"] for line in result.stdout.splitlines())


def test_broken_plugin_is_reported_and_the_rest_still_works(tmp_path):
    make_distribution(tmp_path, "forge-broken", "forge_broken", BROKEN_PLUGIN, version="9.9")
    plugins = run_forge("plugins", pythonpath=tmp_path)
    assert plugins.returncode == 0, plugins.stderr
    text = plugins.stdout
    assert "forge-broken 9.9 [error]" in text
    assert "error: RuntimeError: this plugin is broken on purpose" in text
    import tomllib
    unet3d = tomllib.loads((Path(__file__).resolve().parents[1] / "plugins/cryoet-forge-unet3d/pyproject.toml")
                           .read_text())["project"]["version"]
    assert f"cryoet-forge-unet3d {unet3d} [ok]" in text
    listing = run_forge("list", pythonpath=tmp_path)
    assert listing.returncode == 0, listing.stderr
    assert "unet3d" in listing.stdout


def test_plugin_with_a_misspelled_hook_is_reported(tmp_path):
    make_distribution(tmp_path, "forge-typo", "forge_typo", '''
        from cryoet_forge import hookimpl

        @hookimpl
        def forge_register_generatorz(register):
            pass
    ''')
    result = run_forge("plugins", pythonpath=tmp_path)
    assert result.returncode == 0
    assert "forge-typo 0.0.1 [error]" in result.stdout
    assert "forge_register_generatorz" in result.stdout


def test_readme_plugin_example_works(plugin_path):
    """The plugin tutorial's example (docs/plugins/tutorial.md), run as written."""
    import re

    import torch

    readme = (Path(__file__).resolve().parents[1] / "docs/plugins/tutorial.md").read_text()
    source = re.search(r"```python\n# forge_tiny_generator.py\n(.*?)```", readme, re.S).group(1)
    entry = re.search(r"\[project.entry-points.cryoet_forge\]\n(\w+) = \"(\w+)\"", readme)
    assert entry.groups() == ("tiny", "forge_tiny_generator")
    make_distribution(plugin_path, "forge-tiny-generator", "forge_tiny_generator", source)
    model = registry.create("generator", "tiny")
    out = model(torch.randn(2, 1, 8, 8, 8))
    assert out.shape == (2, 1, 8, 8, 8)
    assert registry.get("generator", "tiny").origin == "forge-tiny-generator"


def test_a_plugin_that_exits_on_import_stops_no_command(tmp_path):
    make_distribution(tmp_path, "forge-exits", "forge_exits", '''
        raise SystemExit("this plugin exits on import")
    ''')
    version = run_forge("--version", pythonpath=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("forge, version"), version.stderr
    plugins = run_forge("plugins", pythonpath=tmp_path)
    assert plugins.returncode == 0, plugins.stderr
    assert "forge-exits 0.0.1 [error]" in plugins.stdout
    assert "error: SystemExit: this plugin exits on import" in plugins.stdout
    listing = run_forge("list", "generator", pythonpath=tmp_path)
    assert listing.returncode == 0 and "unet3d" in listing.stdout


def test_a_plugin_cannot_replace_a_built_in_command(tmp_path):
    make_distribution(tmp_path, "forge-hijack", "forge_hijack", '''
        import click
        from cryoet_forge import hookimpl

        @hookimpl
        def forge_register_commands(cli):
            @cli.command("list")
            def hijacked():
                click.echo("hijacked")

            @cli.command("hello")
            def hello():
                click.echo("hello from a plugin")

            cli.commands.pop("simulate")
    ''')
    listing = run_forge("list", "generator", pythonpath=tmp_path)
    assert listing.returncode == 0 and "hijacked" not in listing.stdout and "unet3d" in listing.stdout
    assert run_forge("hello", pythonpath=tmp_path).stdout.strip() == "hello from a plugin"
    assert run_forge("simulate", "--help", pythonpath=tmp_path).returncode == 0  # put back
    plugins = run_forge("plugins", pythonpath=tmp_path).stdout
    assert "forge-hijack 0.0.1 [error]" in plugins
    assert "command 'list' belongs to cryoet-forge; a plugin cannot replace it" in plugins
    assert "command 'simulate' belongs to cryoet-forge" in plugins


def test_commands_are_checked_again_on_every_invocation_in_one_process(plugin_path, capsys):
    """forge's main() registers plugin commands each call; a plugin's own command is not a clash."""
    make_distribution(plugin_path, "forge-own", "forge_own", '''
        import click
        from cryoet_forge import hookimpl

        @hookimpl
        def forge_register_commands(cli):
            @cli.command("own-command")
            def own():
                click.echo("own")
    ''')
    from cryoet_forge.cli import cli, main

    try:
        for _ in range(2):
            assert main(["own-command"]) == 0
    finally:  # the command group is the process's: leave it as other tests expect
        cli.commands.pop("own-command", None)
        cli.__dict__.get("_forge_command_owners", {}).pop("own-command", None)
    assert capsys.readouterr().out.split() == ["own", "own"]
    report = next(r for r in registry.get_registry().plugin_reports() if r.name == "forge-own")
    assert report.error is None


def test_a_component_that_breaks_its_protocol_is_refused_at_registration(tmp_path):
    make_distribution(tmp_path, "forge-bad-contract", "forge_bad_contract", '''
        import torch
        from cryoet_forge import hookimpl

        class NoSimulate:
            """Has no simulate method."""

        class NoChannels(torch.nn.Module):
            """A generator factory that takes no in_channels/out_channels."""

            def __init__(self, width=4):
                super().__init__()

            def forward(self, x):
                return x

        @hookimpl
        def forge_register_simulators(register):
            register("no-simulate", NoSimulate)

        @hookimpl
        def forge_register_generators(register):
            register("no-channels", NoChannels)
            register("identity-ok", torch.nn.Identity, "a generator that is fine")
    ''')
    plugins = run_forge("plugins", pythonpath=tmp_path)
    assert plugins.returncode == 0, plugins.stderr
    assert "forge-bad-contract 0.0.1 [error]" in plugins.stdout
    line = next(x for x in plugins.stdout.splitlines() if "no-simulate" in x)
    assert ("simulator 'no-simulate' from forge-bad-contract is refused: class NoSimulate lacks simulate "
            "(the simulator protocol: Simulator)") in line
    assert "generator 'no-channels' from forge-bad-contract is refused: factory takes no in_channels, " \
           "out_channels option" in plugins.stdout
    listing = run_forge("list", "generator", pythonpath=tmp_path).stdout
    assert "identity-ok" in listing and "no-channels" not in listing  # the plugin's good one stays


def test_a_lazy_factory_that_builds_the_wrong_object_is_a_one_line_plugin_error(plugin_path):
    make_distribution(plugin_path, "forge-lazy", "forge_lazy", '''
        from cryoet_forge import hookimpl

        def lazy(**options):
            """Builds a dict, not a kNN backend."""
            return dict(options)

        @hookimpl
        def forge_register_knn_backends(register):
            register("lazy", lazy)
    ''')
    reg = registry.get_registry()
    assert reg.get("knn-backend", "lazy").origin == "forge-lazy"  # a function cannot be judged unbuilt
    with pytest.raises(PluginError, match=r"^knn-backend 'lazy' from forge-lazy: built a dict that lacks "
                                          r"kth_neighbour_distances, prdc_counts, name, exact "
                                          r"\(the knn-backend protocol: KnnBackend\)$"):
        reg.create("knn-backend", "lazy")


TWO_CLAIMS = '''
    import torch
    from cryoet_forge import hookimpl

    class {cls}(torch.nn.Module):
        """Claimed by {dist}."""

        def __init__(self, in_channels=1, out_channels=1):
            super().__init__()

        def forward(self, x):
            return x

    @hookimpl{marker}
    def forge_register_generators(register):
        register("shared-name", {cls})
'''


def test_tryfirst_decides_a_clash_between_two_plugins(plugin_path):
    """pluggy calls the last registered plugin first; ``tryfirst`` moves one ahead of it."""
    make_distribution(plugin_path, "forge-aaa", "forge_aaa", TWO_CLAIMS.format(cls="A", dist="forge-aaa",
                                                                           marker="(tryfirst=True)"))
    make_distribution(plugin_path, "forge-zzz", "forge_zzz", TWO_CLAIMS.format(cls="Z", dist="forge-zzz", marker=""))
    reg = registry.get_registry()
    assert reg.get("generator", "shared-name").origin == "forge-aaa"
    loser = next(r for r in reg.plugin_reports() if r.name == "forge-zzz")
    assert loser.error == "generator 'shared-name' from forge-zzz is already registered by forge-aaa"
    registry.reset_registry()
    (plugin_path / "forge_aaa.py").write_text(textwrap.dedent(TWO_CLAIMS.format(cls="A", dist="forge-aaa",
                                                                                marker="")))
    sys.modules.pop("forge_aaa", None)  # import the edited module, not the cached one
    reg = registry.get_registry()  # without tryfirst, forge-zzz (registered last) is called first
    assert reg.get("generator", "shared-name").origin == "forge-zzz"


def test_hook_wrappers_run_around_every_registration_and_errors_stay_contained(plugin_path):
    make_distribution(plugin_path, "forge-wrap", "forge_wrap", '''
        from cryoet_forge import hookimpl

        SEEN = []

        @hookimpl(wrapper=True)
        def forge_register_generators(register):
            SEEN.append("before")
            result = yield
            SEEN.append("after")
            return result
    ''')
    make_distribution(plugin_path, "forge-raises", "forge_raises", '''
        import torch
        from cryoet_forge import hookimpl

        @hookimpl(tryfirst=True)
        def forge_register_generators(register):
            register("registered-before-raising", torch.nn.Identity)
            raise RuntimeError("broken halfway")
    ''')
    reg = registry.get_registry()
    import forge_wrap

    assert forge_wrap.SEEN == ["before", "after"]
    assert {"cryoetgan", "unet3d", "registered-before-raising"} <= set(reg.names("generator"))
    report = next(r for r in reg.plugin_reports() if r.name == "forge-raises")
    assert report.error == "RuntimeError: broken halfway"


def test_builtins_win_a_clash_even_when_pluggy_calls_the_plugin_first(plugin_path):
    make_distribution(plugin_path, "forge-first", "forge_first", '''
        import torch
        from cryoet_forge import hookimpl

        class Early(torch.nn.Module):
            """Wants the built-in name."""

            def __init__(self, in_channels=1):
                super().__init__()

            def forward(self, x):
                return x

        @hookimpl(tryfirst=True)
        def forge_register_critics(register):
            register("sn-wgan", Early)
    ''')
    reg = registry.get_registry()
    assert reg.get("critic", "sn-wgan").origin == "cryoet-forge"
    report = next(r for r in reg.plugin_reports() if r.name == "forge-first")
    assert report.error == "critic 'sn-wgan' from forge-first is already registered by cryoet-forge"


def test_a_clash_is_shown_under_the_module_that_caused_it(plugin_path):
    """A distribution with two entry-point modules: the second one's clash with a built-in name is
    its own error, not the first module's (it was once shown under the first)."""
    a = '''
        import torch
        from cryoet_forge import hookimpl

        class Net(torch.nn.Module):
            """A throwaway generator."""

            def __init__(self, in_channels=1, out_channels=1):
                super().__init__()

            def forward(self, x):
                return x

        @hookimpl
        def forge_register_generators(register):
            register("two-modules-net", Net)
    '''
    b = '''
        import torch
        from cryoet_forge import hookimpl

        class Critic(torch.nn.Module):
            """A throwaway critic under a built-in's name."""

            def __init__(self, in_channels=1):
                super().__init__()

            def forward(self, x):
                return x

        @hookimpl
        def forge_register_critics(register):
            register("sn-wgan", Critic)
    '''
    (plugin_path / "forge_two_a.py").write_text(textwrap.dedent(a))
    (plugin_path / "forge_two_b.py").write_text(textwrap.dedent(b))
    info = plugin_path / "forge_two-0.0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: forge-two\nVersion: 0.0.1\n")
    (info / "entry_points.txt").write_text("[cryoet_forge]\nforge_two_a = forge_two_a\nforge_two_b = forge_two_b\n")
    reports = {r.module: r for r in registry.get_registry().plugin_reports() if r.name == "forge-two"}
    assert set(reports) == {"forge_two_a", "forge_two_b"}
    assert reports["forge_two_a"].error is None
    assert reports["forge_two_b"].error == "critic 'sn-wgan' from forge-two is already registered by cryoet-forge"
    assert registry.get("generator", "two-modules-net").origin == "forge-two"


def test_an_error_in_a_hook_wrapper_is_its_plugins_and_the_hook_goes_on(plugin_path):
    """Before its yield or after it, a hook wrapper's error is recorded on its own plugin; the other
    plugins' components of that kind are registered all the same, and what it registers is its."""
    make_distribution(plugin_path, "forge-wrap-raises", "forge_wrap_raises", '''
        import torch
        from cryoet_forge import hookimpl

        @hookimpl(wrapper=True)
        def forge_register_generators(register):
            register("from-a-wrapper", torch.nn.Identity)
            raise RuntimeError("before the yield")
            yield

        @hookimpl(hookwrapper=True)
        def forge_register_critics(register):
            yield
            raise ValueError("after the yield")
    ''')
    reg = registry.get_registry()
    assert {"cryoetgan", "unet3d", "from-a-wrapper"} <= set(reg.names("generator"))
    assert reg.get("generator", "from-a-wrapper").origin == "forge-wrap-raises"
    assert {"sn-wgan", "patchgan"} <= set(reg.names("critic"))
    report = next(r for r in reg.plugin_reports() if r.name == "forge-wrap-raises")
    assert report.hooks == ["forge_register_critics", "forge_register_generators"]
    assert report.error == "RuntimeError: before the yield; ValueError: after the yield"
    assert not [r for r in reg.plugin_reports() if r.name == "(unknown plugin)"]


def test_plugins_are_registered_through_wrappers_with_their_own_hooks(plugin_path):
    """pluggy sees an object per plugin holding the plugin's hook implementations, each wrapped (its
    errors are its own); the plugin's module and functions are left as they are."""
    make_distribution(plugin_path, "forge-plain", "forge_plain", GOOD_PLUGIN)
    reg = registry.get_registry()
    import forge_plain

    registered = reg.pm.get_plugin("forge-plain:forge_plain")
    assert registered is not forge_plain
    wrapped = registered.forge_register_generators
    assert wrapped is not forge_plain.forge_register_generators
    assert wrapped.__wrapped__ is forge_plain.forge_register_generators
    assert not hasattr(forge_plain.forge_register_generators, "__wrapped__")
    names: list[str] = []
    wrapped(lambda name, factory, description=None: names.append(name))
    assert names == ["throwaway-doubler"]


def test_a_component_says_which_options_its_factory_takes(factories):
    strict = factories.get("dataset", "strict")
    assert strict.accepts("size") and strict.accepts("name") and not strict.accepts("rotate")
    assert factories.get("dataset", "anything").accepts("rotate")  # **options: the factory judges
    assert not factories.get("dataset", "positional").accepts("size")  # positional-only
    assert factories.get("dataset", "builtin").accepts("rotate")  # no signature to read
