"""A third-party plugin distribution, installed from its own pyproject.toml, found through the
``cryoet_forge`` entry-point group as any installed plugin is, with a loss, a regulariser, a
generator, a critic, a simulator and a dataset that share no class with the built-ins (they are
written against ``cryoet_forge.contracts`` only): ``forge train``, ``forge simulate`` and
``forge evaluate`` run with them end to end.

The distribution's source is ``tests/fixtures/forge-thirdparty``; it is built and installed
(``pip install --no-deps --target``) into a temporary folder put on PYTHONPATH.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from cryoet_forge import contracts, registry
from cryoet_forge.errors import ConfigError
from tests_support import assert_one_line_error, forge_executable

SOURCE = Path(__file__).resolve().parent / "fixtures" / "forge-thirdparty"
DIST = "forge-thirdparty"

#: kind -> (component name, the role it plays where the kind has roles)
COMPONENTS = {
    "generator": [("tiny-residual", None)],
    "critic": [("tiny-patch", None)],
    "loss": [("hinge", "adversarial"), ("mean-match", "regularizer")],
    "simulator": [("blur-noise", None)],
    "dataset": [("dark-blobs", None)],
}

TRAIN_CONFIG = """
    [model]
    generator = "tiny-residual"
    critic = "tiny-patch"
    generator_options = { width = 4 }
    critic_options = { width = 4 }

    [loss]
    adversarial = "hinge"
    options = { margin = 1.0 }

    [loss.regularizers.mean-match]
    weight = 0.5

    [data]
    num_workers = 0

    [data.density]
    dataset = "dark-blobs"
    options = { n = 6, box = 16, seed = 1, noise = 0.0 }

    [data.subtomograms]
    dataset = "dark-blobs"
    options = { n = 6, box = 16, seed = 2 }

    [train]
    steps = 2
    batch_size = 2
    n_critic = 1
    device = "cpu"

    [log]
    every = 1
    image_every = 0
    checkpoint_every = 2
    progress = false
"""

EVALUATE_CONFIG = """
    [data]
    classes = ["barrel", "ring"]
    box = 16
    n_train_per_class = 6
    n_test_per_class = 6
    n_density_per_class = 6

    [experimental]
    simulator = "blur-noise"
    options = { noise = 0.3 }

    [traditional]
    simulator = "blur-noise"
    options = { noise = 0.8 }

    [gan]
    curve_points = 2

    [gan.overrides]
    "train.steps" = 2
    "train.batch_size" = 2
    "train.n_critic" = 1
    "train.device" = "cpu"
    "model.generator" = "tiny-residual"
    "model.critic" = "tiny-patch"
    "model.generator_options" = { width = 4 }
    "model.critic_options" = { width = 4 }
    "loss.adversarial" = "hinge"
    "loss.regularizers" = { mean-match = { weight = 0.5 } }
    "log.every" = 1
    "log.checkpoint_every" = 1
    "log.image_every" = 0
    "log.progress" = false

    [classifier]
    channels = [4, 8, 8, 8]
    fc_width = 16
    epochs = 2
    batch_size = 8

    [downstream]
    n_per_class = 6
    seeds = [0]
    workers = 0

    [metrics]
    k = 2
    is_splits = 1

    [uncertainty]
    enabled = false
"""


def _lay_out(source: Path, site: Path) -> None:
    """What installing does, for an environment without pip or setuptools: the package and a
    dist-info holding the metadata and entry points of the distribution's pyproject.toml."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    project = tomllib.loads((source / "pyproject.toml").read_text())["project"]
    for package in (p for p in source.iterdir() if (p / "__init__.py").is_file()):
        shutil.copytree(package, site / package.name)
    info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    groups = project["entry-points"]
    (info / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{name} = {value}\n" for name, value in entries.items())
        for group, entries in groups.items()))


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The distribution installed into a fresh folder (built from a copy of its source, so that the
    build leaves nothing in the repository)."""
    root = tmp_path_factory.mktemp("thirdparty")
    source, target = root / "source", root / "site"
    shutil.copytree(SOURCE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                             "--no-index", "--quiet", "--target", str(target), str(source)],
                            capture_output=True, text=True, timeout=300)
    if result.returncode != 0:  # no pip or no setuptools here: the installed layout by hand
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir()
        _lay_out(source, target)
    assert (target / "forge_thirdparty" / "components.py").is_file()
    return target


@pytest.fixture
def thirdparty(site, monkeypatch):
    """This process's registry with the installed distribution on sys.path."""
    monkeypatch.syspath_prepend(str(site))
    registry.reset_registry()
    yield registry.get_registry()
    registry.reset_registry()
    for name in [m for m in sys.modules if m == "forge_thirdparty" or m.startswith("forge_thirdparty.")]:
        del sys.modules[name]


def run_forge(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    return subprocess.run([forge_executable(), *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=600)


def _forge_classes(obj) -> list[str]:
    return [f"{k.__module__}.{k.__qualname__}" for k in type(obj).__mro__ if k.__module__.startswith("cryoet_forge")]


def test_the_distribution_registers_components_that_share_no_class_with_the_built_ins(thirdparty):
    report = next(r for r in thirdparty.plugin_reports() if r.name == DIST)
    assert (report.version, report.module, report.error) == ("0.3.0", "forge_thirdparty.plugin", None)
    options = {"generator": {"in_channels": 1, "out_channels": 1}, "critic": {"in_channels": 1}}
    for kind, entries in COMPONENTS.items():
        for name, role in entries:
            component = thirdparty.get(kind, name)
            assert component.origin == DIST
            obj = thirdparty.create(kind, name, **options.get(kind, {}))
            assert _forge_classes(obj) == [], (kind, name)
            contracts.check_instance(kind, obj)
            assert isinstance(obj, contracts.PROTOCOLS[kind])
            if role is not None:
                contracts.check_role(kind, role, obj, name)
    with pytest.raises(ConfigError, match=r"^loss\.adversarial: loss 'mean-match' is not an adversarial loss "):
        contracts.check_role("loss", "adversarial", thirdparty.create("loss", "mean-match"), "mean-match")
    with pytest.raises(ConfigError, match=r"^loss\.regularizers\.hinge: loss 'hinge' is not a generator "
                                          r"regulariser .*; an adversarial loss goes in loss\.adversarial$"):
        contracts.check_role("loss", "regularizer", thirdparty.create("loss", "hinge"), "hinge")


def test_forge_train_runs_with_the_plugins_components(site, tmp_path):
    from safetensors.torch import load_file

    (tmp_path / "train.toml").write_text(textwrap.dedent(TRAIN_CONFIG))
    result = run_forge(site, tmp_path, "train", "--config", "train.toml", "--out", "run")
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = tmp_path / "run" / "checkpoints" / "step-00000002"
    weights = load_file(str(checkpoint / "weights.safetensors"))
    # the plugin's generators (body.*), critics (net.*) and the regulariser's own parameter
    assert {"g_ds.body.0.weight", "g_sd.body.2.bias", "c_s.net.0.weight", "c_d.net.2.weight",
            "reg.mean-match.scale"} <= set(weights)
    assert not [k for k in weights if not k.startswith(("g_ds.body.", "g_sd.body.", "c_s.net.", "c_d.net.",
                                                         "reg.mean-match."))]
    assert all(torch.isfinite(v).all() for v in weights.values())
    saved = (tmp_path / "run" / "config.toml").read_text()
    assert 'adversarial = "hinge"' in saved and 'dataset = "dark-blobs"' in saved


def test_forge_train_refuses_a_loss_in_the_other_roles_place_in_one_line(site, tmp_path):
    (tmp_path / "train.toml").write_text(textwrap.dedent(TRAIN_CONFIG).replace("options = { margin = 1.0 }\n", ""))
    swapped = run_forge(site, tmp_path, "train", "--config", "train.toml", "--out", "a", "--loss", "mean-match")
    assert swapped.returncode == 2
    assert_one_line_error(swapped.returncode, swapped.stderr,
                          "loss.adversarial: loss 'mean-match' is not an adversarial loss "
                          "(contracts.AdversarialLoss: it lacks critic_loss, generator_loss, penalty, "
                          "after_critic_step, gap, needs_interpolates); a generator regulariser goes in "
                          "loss.regularizers.mean-match")
    (tmp_path / "bad.toml").write_text(textwrap.dedent(TRAIN_CONFIG) + "\n[loss.regularizers.hinge]\n")
    misplaced = run_forge(site, tmp_path, "train", "--config", "bad.toml", "--out", "b")
    assert misplaced.returncode == 2
    assert_one_line_error(misplaced.returncode, misplaced.stderr,
                          "loss.regularizers.hinge: loss 'hinge' is not a generator regulariser "
                          "(contracts.GeneratorRegularizer: it lacks setup, forward); an adversarial loss "
                          "goes in loss.adversarial")
    assert not (tmp_path / "a" / "checkpoints").exists() and not (tmp_path / "b" / "checkpoints").exists()


def test_forge_simulate_runs_with_the_plugins_simulator(site, tmp_path):
    import mrcfile
    import starfile

    result = run_forge(site, tmp_path, "simulate", "--phantoms", "--simulator", "blur-noise", "--option",
                       "noise=0.3", "--n-per-class", "2", "--box", "16", "--out", "sim", "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "sim" / "simulation.json").read_text())
    assert (summary["simulator"], summary["options"], summary["particles"]) == ("blur-noise", {"noise": 0.3},
                                                                                  2 * len(summary["classes"]))
    table = starfile.read(tmp_path / "sim" / "particles.star")
    assert len(table) == summary["particles"] and set(table["tpNoise"]) == {0.3}
    for name in table["rlnImageName"]:
        with mrcfile.open(tmp_path / "sim" / name) as volume:
            assert volume.data.shape == (16, 16, 16) and abs(float(volume.voxel_size.x) - 9.4) < 1e-3


def test_forge_evaluate_runs_with_the_plugins_components(site, tmp_path):
    """About 30 s on 2 cores; in the default run, so CI shows a third party's components end to end."""
    (tmp_path / "eval.toml").write_text(textwrap.dedent(EVALUATE_CONFIG))
    result = run_forge(site, tmp_path, "evaluate", "--config", "eval.toml", "--out", "ev", "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert {k: results["gan"][k] for k in ("generator", "critic", "loss")} == {
        "generator": "tiny-residual", "critic": "tiny-patch", "loss": "hinge"}
    assert results["data"]["description"].startswith("embedded: 'experimental' = blur-noise {'noise': 0.3}")
    assert results["data"]["n_generated"] == results["data"]["n_real_test"] == 12
    report = (tmp_path / "ev" / "report.md").read_text()
    assert "tiny-residual generator, tiny-patch critic, hinge adversarial loss" in report
    assert "mean-match 0.500" in report
