"""The documentation cannot rot: the README's links and commands, the version, the generated reference
pages, the error texts of the troubleshooting page, and every runnable block of the guides, run.

Runnable blocks are marked in the Markdown by a comment on the line before their fence:

- ``<!-- runnable -->``: a ``bash`` or ``python`` block run by :func:`test_runnable_blocks_of_a_page`
  (``<!-- runnable: slow -->``: the page's test is marked ``slow``);
- ``<!-- file: PATH -->``: the block's text is written to PATH before the next runnable block;
- ``<!-- runnable-after: PAGE -->`` anywhere in a page: its blocks continue in a copy of PAGE's folder.

A page's blocks run one after the other in one temporary folder (the repository's ``configs/``
linked into it, as the guides are read from the repository folder), with this environment's ``forge``
first on ``PATH``; then the page's expectations below check what they wrote.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from functools import cache
from importlib import metadata
from pathlib import Path

import pytest
import starfile

from tests_support import forge_executable

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"

# --- the README ------------------------------------------------------------------------------------

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """The anchor MkDocs (Python-Markdown's toc) gives a heading."""
    text = re.sub(r"[`*]", "", heading).strip().lower()
    text = re.sub(r"[^\w\s-]", "", text)
    return re.sub(r"[-\s]+", "-", text).strip("-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {slug(m) for m in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}


def test_the_readme_is_short():
    assert len(README.read_text().splitlines()) <= 200


def test_every_relative_link_of_the_readme_and_the_changelog_resolves():
    for document in (README, ROOT / "CHANGELOG.md"):
        links = [t for t in LINK.findall(document.read_text()) if not re.match(r"[a-z]+:", t)]
        if document == README:
            assert len(links) >= 20, links
        for target in links:
            path, _, anchor = target.partition("#")
            file = (document.parent / path) if path else document
            assert file.exists(), f"{document.name}: link {target!r}: no file {file}"
            if anchor:
                assert anchor in anchors(file), f"{document.name}: link {target!r}: no heading with that anchor"


def readme_block_with(word: str) -> str:
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    found = [b.strip() for b in blocks if word in b]
    assert len(found) == 1, f"one README bash block should hold {word!r}, found {len(found)}"
    return found[0]


def test_ci_runs_exactly_the_readme_test_command():
    command = readme_block_with(".venv/bin/pytest")
    ci = (ROOT / ".ci/run").read_text().splitlines()
    assert command in ci, "the README's test command and .ci/run differ"
    steps = command.split(" && ")
    assert '".[test,docs]"' in steps[1]
    assert steps.index(".venv/bin/mkdocs build --strict") < steps.index(".venv/bin/pytest")
    install = (ROOT / "docs/getting-started/install.md").read_text()
    assert command in install and readme_block_with("forge quickstart") in install


# --- the version -----------------------------------------------------------------------------------

def test_the_version_comes_from_the_package_metadata():
    import cryoet_forge

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert re.fullmatch(r"0\.\d+\.\d+", declared), declared
    assert metadata.version("cryoet-forge") == declared, "the installed metadata is stale: reinstall"
    assert cryoet_forge.__version__ == declared
    done = subprocess.run([forge_executable(), "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout == f"forge, version {declared}\n"
    newest = re.search(r"^## \[([^\]]+)\] - \d{4}-\d{2}-\d{2}$", (ROOT / "CHANGELOG.md").read_text(), flags=re.M)
    assert newest and newest[1] == declared, "the changelog's newest release is not the package's version"


# --- the generated reference -------------------------------------------------------------------------

def hook_module():
    spec = importlib.util.spec_from_file_location("docs_reference_hook", DOCS / "_hooks" / "reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CONFIGS = [("cryoet_forge.config:TrainConfig", ()), ("cryoet_forge.evaluate.config:EvaluationConfig", ("origin",))]


@pytest.mark.parametrize(("target", "skip"), CONFIGS, ids=["train", "evaluate"])
def test_every_configuration_key_has_a_type_a_default_and_one_meaning(target, skip):
    hook = hook_module()
    cls = hook.load(target)
    rows = {f"{section}.{key}": row for section, _, keys in hook.sections(cls, skip) for key, *row in keys}
    assert rows and all(kind and default and meaning for kind, default, meaning in rows.values()), \
        [key for key, (kind, default, meaning) in rows.items() if not meaning]
    # every key of the shipped configs is among them
    for path in sorted((ROOT / "configs").glob("*.toml")):
        if path.name == "suite.toml" or path.name.startswith("evaluate-") != target.startswith("cryoet_forge.evaluate"):
            continue
        for key in dotted_keys(tomllib.loads(path.read_text())):
            assert any(key == k or key.startswith(k + ".") for k in rows), (path.name, key)
    # a key that has its `#:` comment in the code has no entry in meanings.toml, and no entry names a missing key
    fallback = hook.FALLBACK[cls.__name__]
    own = {f"{section}.{key}": meaning for section, _, keys in hook.sections(cls, skip, fallback=False)
           for key, _, _, meaning in keys}
    for key in fallback:
        assert key in own, f"meanings.toml names {key!r}, which {cls.__name__} does not have"
        assert not own[key], f"{key!r} has a `#:` comment in the code now: remove it from meanings.toml"


def dotted_keys(table: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in table.items():
        dotted = f"{prefix}.{key}" if prefix else key
        keys += dotted_keys(value, dotted) if isinstance(value, dict) and key not in ("options", "overrides") \
            and not key.endswith("_options") and key not in ("copick", "acquisition", "regularizers") else [dotted]
    return keys


def test_the_configuration_table_renders_types_defaults_and_the_comments_of_the_code():
    text = hook_module().config_markdown("cryoet_forge.config:TrainConfig")
    assert "### `[train]`" in text and "### `[data.density]`" in text
    assert "| `steps` | `int` | `1000` | generator steps in all;" in text
    assert "| `channels_last` | `bool | str` | `\"auto\"` | channels_last_3d memory format:" in text
    assert ('| `options` | `dict` | `{ simulator = "posed-map", box = 32, seed = 1 }` |' in text)
    assert "mean \\|G_DS(s) - s\\|" in text  # a pipe of a comment is escaped in the table


def test_the_site_builds_and_documents_every_command_key_and_hook(tmp_path):
    mkdocs = Path(sys.executable).with_name("mkdocs")
    site = tmp_path / "site"
    done = subprocess.run([str(mkdocs), "build", "--strict", "--site-dir", str(site)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    import click

    from cryoet_forge import hookspecs
    from cryoet_forge.cli import cli

    cli_page = (site / "reference/cli/index.html").read_text()
    for name in cli.list_commands(click.Context(cli)):
        assert f'id="forge-{name}"' in cli_page, name
    config_page = (site / "reference/config/index.html").read_text()
    for target, skip in CONFIGS:
        hook = hook_module()
        for _, _, rows in hook.sections(hook.load(target), skip):
            for key, *_ in rows:
                assert f"<code>{key}</code>" in config_page, key
    hooks_page = (site / "plugins/hooks/index.html").read_text()
    for name in (n for n in vars(hookspecs) if n.startswith("forge_register_")):
        assert f"<code>{name}(" in hooks_page, name
    assert 'id="cryoet_forge.contracts.Generator"' in hooks_page
    api_page = (site / "reference/api/index.html").read_text()
    assert 'id="cryoet_forge.metrics.prdc.compute_prdc"' in api_page
    # the README's walk is included, not copied, in the guide
    walk = (site / "guides/your-data/index.html").read_text()
    assert "particles train a better classifier than traditional simulation" in re.sub(r"\s+", " ", walk)
    assert "--8&lt;--" not in walk and "8<--" not in walk


# --- the troubleshooting page -------------------------------------------------------------------------

@cache
def message_patterns() -> list[re.Pattern]:
    """Every string and f-string of the package with at least 20 characters of its own, as a pattern:
    its text, each replacement field any text."""
    patterns = []
    for path in (ROOT / "cryoet_forge").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.JoinedStr):
                parts = [re.escape(v.value) if isinstance(v, ast.Constant) else ".*?" for v in node.values]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                parts = [re.escape(node.value)]
            else:
                continue
            literal = sum(len(v.value) for v in getattr(node, "values", [node]) if isinstance(v, ast.Constant))
            if literal >= 20:
                patterns.append(re.compile("".join(parts), re.S))
    return patterns


def test_the_troubleshooting_errors_are_the_texts_forge_prints():
    page = (DOCS / "troubleshooting.md").read_text()
    messages = re.findall(r"```text\nforge: error: (.+?)\n```", page)
    assert len(messages) >= 10
    for message in messages:
        assert any(p.fullmatch(message) for p in message_patterns()), f"no message of forge reads: {message}"


# --- the config files -----------------------------------------------------------------------------------

DURATION = re.compile(r"\b(?:\d+(?:\.\d+)?\s*(?:s|sec|seconds?|min|minutes?|h|hours?)|(?:a|an|one)\s+(?:second|minute|hour)s?)\b(?![-/^])")


def test_shipped_configs_carry_reasons_not_timings():
    for path in sorted((ROOT / "configs").glob("*.toml")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            comment = line.partition("#")[2] if line.lstrip().startswith("#") else ""
            assert not DURATION.search(comment), f"{path.name}:{number}: a timing belongs in docs/results.md"


# --- the runnable blocks ------------------------------------------------------------------------------

BLOCK = re.compile(r"^<!-- (runnable|runnable: slow|file: (?P<file>\S+)) -->\n```(?P<lang>\w+)[^\n]*\n(?P<body>.*?)^```",
                   flags=re.M | re.S)


def runnable_blocks(page: str) -> list[tuple[str, str, str]]:
    """``(kind, language or file name, text)`` of the marked blocks of a page, in order."""
    text = (DOCS / page).read_text()
    markers = re.findall(r"^<!-- (?:runnable(?:: slow)?|file: \S+) -->$", text, flags=re.M)
    found = [("file", m["file"], m["body"]) if m["file"] else (m[1], m["lang"], m["body"]) for m in BLOCK.finditer(text)]
    assert len(found) == len(markers), f"{page}: a marker is not followed by a fenced block"
    for kind, lang, _ in found:
        assert kind == "file" or lang in ("bash", "python"), f"{page}: cannot run a {lang} block"
    return found


def pages_with_runnable_blocks() -> list[str]:
    return sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md") if "<!-- runnable" in p.read_text())


def environment(folder: Path) -> dict[str, str]:
    env = dict(os.environ, FORGE_PROGRESS="off", PYTHONDONTWRITEBYTECODE="1")
    env["PATH"] = os.pathsep.join([str(Path(forge_executable()).parent), env.get("PATH", "")])
    if (folder / "site-packages").is_dir():  # a plugin "installed" by the page's setup
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(folder / "site-packages"), env.get("PYTHONPATH")]))
    return env


def install_tutorial_plugin(folder: Path) -> None:
    """`pip install -e ./forge-tiny-generator` of the plugin tutorial, without pip: the module and a
    dist-info with the distribution's entry points, on a folder the page's commands get on PYTHONPATH."""
    project = tomllib.loads((folder / "forge-tiny-generator/pyproject.toml").read_text())["project"]
    site = folder / "site-packages"
    site.mkdir()
    for module in (folder / "forge-tiny-generator").glob("*.py"):
        shutil.copy(module, site / module.name)
    info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    entries = project["entry-points"]["cryoet_forge"]
    (info / "entry_points.txt").write_text("[cryoet_forge]\n" + "".join(f"{k} = {v}\n" for k, v in entries.items()))


#: what a page does between writing its files and running its first block
SETUP = {"plugins/tutorial.md": install_tutorial_plugin}

_done: dict[str, tuple[Path, str]] = {}


def run_page(page: str, folder: Path) -> str:
    """Run the page's blocks in ``folder`` (after the page it continues, if any); their output."""
    text = (DOCS / page).read_text()
    after = re.search(r"^<!-- runnable-after: (\S+) -->$", text, flags=re.M)
    output = ""
    if after:
        if after[1] not in _done:
            _done[after[1]] = (folder.parent / "before", run_page(after[1], folder.parent / "before"))
        shutil.copytree(_done[after[1]][0], folder, symlinks=True)
    else:
        folder.mkdir(parents=True)
        (folder / "configs").symlink_to(ROOT / "configs", target_is_directory=True)
    set_up = False
    for kind, lang, body in runnable_blocks(page):
        if kind == "file":
            (folder / lang).parent.mkdir(parents=True, exist_ok=True)
            (folder / lang).write_text(body)
            continue
        if not set_up and page in SETUP:
            SETUP[page](folder)
        set_up = True
        command = ["bash", "-euo", "pipefail", "-c", body] if lang == "bash" else [sys.executable, "-c", body]
        done = subprocess.run(command, cwd=folder, env=environment(folder), capture_output=True, text=True,
                              timeout=600)
        output += done.stdout + done.stderr
        assert done.returncode == 0, f"{page}: block failed\n{body}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    _done[page] = (folder, output)
    return output


def expect_install(folder: Path, output: str) -> None:
    assert f"forge, version {metadata.version('cryoet-forge')}" in output
    assert re.search(r"^  unet3d\s+cryoet-forge-unet3d", output, flags=re.M)


def expect_simulate(folder: Path, output: str) -> None:
    table = starfile.read(folder / "sim/particles.star")
    assert len(table) == 10 and table["forgeClassName"].value_counts().to_dict() == {
        name: 2 for name in ("barrel", "two-lobe", "ring", "globule", "membrane")}
    assert len(list((folder / "sim/subtomograms").glob("*.mrc"))) == 10
    assert (folder / "sim/simulation.json").is_file() and len(list((folder / "sim/templates").glob("*.mrc"))) == 5


def expect_your_data(folder: Path, output: str) -> None:
    table = starfile.read(folder / "particles/particles.star")
    assert sorted(table["forgeClassName"]) == ["barrel", "barrel", "ring", "ring"]
    from cryoet_forge.io.mrc import read_mrc

    volume, voxel = read_mrc(folder / "particles" / table["rlnImageName"].iloc[0])
    assert volume.shape == (16, 16, 16) and voxel == pytest.approx(10.0)


def expect_train(folder: Path, output: str) -> None:
    checkpoints = sorted(p.name for p in (folder / "runs/tiny/checkpoints").iterdir())
    assert checkpoints[-1] == "step-00000006"
    assert (folder / "runs/tiny/config.toml").is_file() and list((folder / "runs/tiny/images").glob("*.png"))


def expect_generate(folder: Path, output: str) -> None:
    table = starfile.read(folder / "gen/particles.star")
    assert table["forgeClassName"].value_counts().to_dict() == {"ring": 3, "barrel": 3}
    for name in ("mean.mrc", "std.mrc", "overlay.png"):
        assert (folder / "unc" / name).is_file(), name


def expect_metrics(folder: Path, output: str) -> None:
    import json

    one, sharded = (json.loads((folder / name).read_text()) for name in ("metrics.json", "sharded.json"))
    for key in ("precision", "recall", "density", "coverage"):
        assert one[key] == sharded[key] and 0 < one[key] <= 2, key  # split over processes: the same values
    assert "Clopper-Pearson" in output


def expect_tutorial(folder: Path, output: str) -> None:
    assert re.search(r"^  tiny\s+forge-tiny-generator\s+Two 3x3x3 convolutions", output, flags=re.M)
    assert re.search(r"^  hinge\s+forge-tiny-generator\s+Hinge adversarial loss", output, flags=re.M)
    assert "margin = 1.0" in output and "forge-tiny-generator 0.1.0 [ok]" in output
    assert list((folder / "runs/tiny-plugin/checkpoints").glob("step-*/weights.safetensors"))


def expect_evaluate(folder: Path, output: str) -> None:
    import json

    results = json.loads((folder / "evaluation/results.json").read_text())
    assert results["data"]["class_names"] == ["barrel", "ring"] and results["data"]["box"] == 16
    assert (folder / "evaluation/report.md").read_text().startswith("# CryoETGAN evaluation")
    assert (folder / "evaluation/figures/montage.png").is_file()


def expect_tomograms(folder: Path, output: str) -> None:
    import json

    for name in ("TS_01.mrc", "TS_02.mrc"):
        assert (folder / "tomos/real/labels" / name).is_file() and (folder / "tomos/refined" / name).is_file()
    results = json.loads((folder / "picking/results.json").read_text())
    assert list(results["sources"]) == ["real", "traditional", "gan"] and results["paired"]["n"] == 2
    assert "**Verdict:" in (folder / "picking/report.md").read_text()
    picker = json.loads((folder / "pickers/refined/picker.json").read_text())
    assert picker["classes"] == ["globule", "two-lobe"] and picker["trained_on"] == ["TS_01", "TS_02"]
    import starfile

    picks = starfile.read(folder / "picks/particles.star")
    assert "rlnAutopickFigureOfMerit" in picks.columns and set(picks["rlnTomoName"]) <= {"TS_02"}


EXPECT = {"getting-started/install.md": expect_install, "guides/simulate.md": expect_simulate,
          "guides/your-data.md": expect_your_data, "guides/train.md": expect_train,
          "guides/generate.md": expect_generate, "guides/metrics.md": expect_metrics,
          "plugins/tutorial.md": expect_tutorial, "guides/evaluate.md": expect_evaluate,
          "guides/tomograms.md": expect_tomograms}


def test_every_page_with_runnable_blocks_has_expectations():
    assert set(pages_with_runnable_blocks()) == set(EXPECT)


@pytest.mark.parametrize("page", [pytest.param(page, marks=[pytest.mark.slow] if any(
    kind == "runnable: slow" for kind, _, _ in runnable_blocks(page)) else []) for page in pages_with_runnable_blocks()])
def test_runnable_blocks_of_a_page(page, tmp_path):
    if page not in _done:  # a page another page continues from may have run already
        run_page(page, tmp_path / "work")
    folder, output = _done[page]
    EXPECT[page](folder, output)

