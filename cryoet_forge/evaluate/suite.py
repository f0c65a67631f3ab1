"""``forge evaluate --suite FILE``: the evaluation protocol on several domains and methods, one table.

A suite file (TOML) names a base evaluation (``base = "quickstart"``, a path to an evaluation
TOML relative to the suite file, or an inline ``[base]`` table of one), overrides applied to every cell, and two tables of named
override sets: ``[domains.NAME]`` (what the "experimental" data are: simulator physics, maps,
sizes) and ``[methods.NAME]`` (how the synthetic data are made: the GAN's input, losses). Every
(domain, method) cell is one ``forge evaluate`` run in ``OUT/<domain>/<method>/``; the suite
then writes ``suite.json`` and ``suite.md``: per cell chance, the real ceiling (CB3D trained on
the real training split), the radial-profile baseline, traditional and GAN accuracy with
intervals, the paired GAN minus traditional interval, FID with its reliability flag and the
verdict; per method the number of domains it wins.

A cell whose ``results.json`` already holds the same configuration is read, not run again, so
an interrupted suite continues where it stopped; downstream scores are kept in ``OUT/.cache`` by
a digest of their data, options and seed, so the traditional classifiers of a domain are
trained once for all its methods. A domain whose maps, picks or tomograms come from the shared data
folder (``data.maps_dir = "shared:..."``, ``data.picks``, ``data.tomograms``) is skipped, with
the reason in the table, when that folder is absent.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryoet_forge.config import read_toml
from cryoet_forge.errors import ConfigError
from cryoet_forge.evaluate import pipeline  # the module: its run_evaluation is looked up at each call
from cryoet_forge.evaluate.config import config_from_dict, load_evaluation_config, quickstart_table
from cryoet_forge.evaluate.datasets import SHARED_PREFIX, resolve_maps_dir
from cryoet_forge.evaluate.gan import train_config_for
from cryoet_forge.evaluate.report import number
from cryoet_forge.io.atomic import write_bytes_atomic, write_json_atomic

#: a domain "can be won" when its real ceiling is at least this far above chance
HEADROOM = 0.2


@dataclass
class Cell:
    name: str
    description: str = ""
    overrides: dict = field(default_factory=dict)


@dataclass
class Suite:
    title: str
    #: "quickstart", a path to an evaluation TOML, or an evaluation table
    base: str | dict
    overrides: dict
    domains: list[Cell]
    methods: list[Cell]
    origin: str = "<dict>"
    folder: Path = field(default_factory=Path)
    #: dotted keys set on top of every cell's overrides (``--set``)
    extra: dict = field(default_factory=dict)


def _cells(table: Any, kind: str, origin: str) -> list[Cell]:
    if not isinstance(table, dict) or not table:
        raise ConfigError(f"{origin}: [{kind}] must name at least one {kind[:-1]} ([{kind}.NAME] tables)")
    cells = []
    for name, body in table.items():
        if not isinstance(body, dict):
            raise ConfigError(f"{origin}: [{kind}.{name}] must be a table with 'overrides' (and 'description')")
        _check_keys(body, ("description", "overrides"), f"{origin}: [{kind}.{name}]")
        overrides = _overrides(body, f"{origin}: {kind}.{name}.overrides")
        if "/" in name or name.startswith("."):
            raise ConfigError(f"{origin}: {kind[:-1]} name {name!r} must not contain '/' or start with '.'")
        cells.append(Cell(str(name), str(body.get("description", "")), overrides))
    return cells


def _check_keys(table: dict, allowed: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise ConfigError(f"{where} unknown key(s) {', '.join(unknown)}; expected {', '.join(allowed)}")


def _overrides(table: dict, where: str) -> dict:
    overrides = table.get("overrides", {})
    if not isinstance(overrides, dict):
        raise ConfigError(f"{where} must be a table of dotted keys")
    return dict(overrides)


def suite_from_dict(table: dict, origin: str = "<dict>", folder: Path | None = None,
                    extra: dict[str, Any] | None = None) -> Suite:
    """A checked Suite; ``extra`` (dotted keys, e.g. from ``--set``) goes on top of every cell."""
    _check_keys(table, ("title", "base", "overrides", "domains", "methods"), f"{origin}:")
    overrides = _overrides(table, f"{origin}: [overrides]")
    base = table.get("base", "quickstart")
    if not isinstance(base, (str, dict)):
        raise ConfigError(f"{origin}: base must be \"quickstart\", a path to an evaluation TOML or a [base] table")
    suite = Suite(str(table.get("title", "cryoet-forge domain suite")), base,
                  overrides, _cells(table.get("domains"), "domains", origin),
                  _cells(table.get("methods"), "methods", origin), origin, Path(folder or "."), dict(extra or {}))
    for domain in suite.domains:  # every cell's configuration is checked before any work
        for method in suite.methods:
            cell_config(suite, domain, method)
    return suite


def load_suite(path: str | Path, extra: dict[str, Any] | None = None) -> Suite:
    path = Path(path)
    return suite_from_dict(read_toml(path), origin=str(path), folder=path.parent, extra=extra)


def cell_config(suite: Suite, domain: Cell, method: Cell):
    """The EvaluationConfig of one cell: base, then the suite's, the domain's and the method's overrides."""
    overrides = {**suite.overrides, **domain.overrides, **method.overrides, **suite.extra}
    where = f"{suite.origin}: domain {domain.name!r}, method {method.name!r}"
    try:
        if isinstance(suite.base, dict):
            config = config_from_dict(suite.base, overrides, origin=where)
        elif suite.base == "quickstart":
            config = config_from_dict(quickstart_table(), overrides, origin=where)
        else:
            base = Path(suite.base)
            if not base.is_absolute():
                base = suite.folder / base
            if not base.is_file():
                raise ConfigError(f"base {suite.base!r}: no such evaluation TOML (looked at {base})")
            config = load_evaluation_config(base, overrides)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    config.report.title = f"{suite.title}: {domain.name} / {method.name}"
    config.origin = where
    return config


def missing_shared_data(config) -> str | None:
    """Why a cell cannot run on this machine (its maps, picks or tomograms live in an absent shared
    folder), else None."""
    d = config.data
    texts = [d.maps_dir] + ([d.picks, d.tomograms] if d.source == "picks" else [])
    for text in texts:
        if text.startswith(SHARED_PREFIX):
            path = resolve_maps_dir(text)
            if path is None or not path.exists():
                return f"needs {text} ({path}), which is not on this machine"
    return None


def _normalised(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def resolved(config_table: dict | None) -> Any:
    """What a cell computes: its evaluation config with ``gan.overrides`` replaced by the training
    configuration they resolve to, so an override that restates a default (``identity_weight =
    0``) is the same cell as one that leaves it out; None when the table no longer parses."""
    if not isinstance(config_table, dict):
        return None
    table = {k: v for k, v in config_table.items() if k != "origin"}
    try:
        config = config_from_dict(table)
        train = train_config_for(config, Path("density"), Path("real")).to_dict()
    except (ConfigError, TypeError, ValueError, KeyError):
        return None
    out = _normalised(config.to_dict())
    out.pop("origin", None)
    out["gan"]["overrides"] = _normalised(train)
    return out


def row_from_results(domain: Cell, method: Cell, results: dict[str, Any]) -> dict[str, Any]:
    """One table row from a cell's results.json."""
    down, paired, verdict = results["downstream"], results["downstream_paired"], results["verdict"]
    real = results["inception"]["real_test"]["accuracy"]
    chance = results["chance"]
    return {
        "domain": domain.name, "method": method.name, "status": "done",
        "n_train_per_class": round(results["data"]["n_real_train"] / len(results["data"]["class_names"])),
        "chance": chance, "real": real, "baseline": results["baseline"]["accuracy"],
        "traditional": {k: down["traditional"][k] for k in ("mean", "ci_low", "ci_high")},
        "gan": {k: down["cryoetgan"][k] for k in ("mean", "ci_low", "ci_high")},
        "paired": {k: paired[k] for k in ("mean", "ci_low", "ci_high", "n", "gan_wins")},
        "fid_traditional": results["quality"]["traditional"]["fid"],
        "fid_gan": results["quality"]["cryoetgan"]["fid"],
        "metrics_reliable": verdict["metrics_reliable"],
        "outcome": _outcome(verdict),
        "headroom": real - chance >= HEADROOM,
        "seconds": results.get("timings_s", {}).get("total"),
        "by_classifier": classifier_rows(results),
    }


def _outcome(verdict: dict[str, Any]) -> str:
    """The cell's outcome; a cell finished before CB3D's "neither-transfers" rule reached the
    headline takes it from CB3D's own answer, so an old table counts no win between two failures."""
    cb3d = verdict.get("by_classifier", {}).get("cb3d", {})
    return "neither-transfers" if cb3d.get("outcome") == "neither-transfers" else verdict["outcome"]


def classifier_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Per downstream classifier kind of a cell: the accuracy trained on the real split, on the
    traditional and on the GAN set (means), the paired difference and that kind's verdict."""
    rows = []
    for kind, verdict in results["verdict"].get("by_classifier", {}).items():
        if kind in results.get("downstream_by_classifier", {}):
            sets = results["downstream_by_classifier"][kind]
            means = {"traditional": sets["traditional"]["mean"], "gan": sets["cryoetgan"]["mean"]}
        else:  # the first kind's sets are the cell's main downstream scores
            means = {"traditional": results["downstream"]["traditional"]["mean"],
                     "gan": results["downstream"]["cryoetgan"]["mean"]}
        paired = verdict["paired"]
        rows.append({"classifier": kind, "real": verdict["real_accuracy"], **means,
                     "paired": {k: paired[k] for k in ("mean", "ci_low", "ci_high", "n", "gan_wins")},
                     "outcome": verdict["outcome"]})
    return rows


def run_suite(suite: Suite, out_dir: str | Path, log: Callable[[str], None] = print,
              domains: list[str] | None = None, methods: list[str] | None = None) -> dict[str, Any]:
    """Run (or read back) every cell, then write suite.json and suite.md; returns the suite record.

    ``domains`` / ``methods`` restrict what is run to those names; the other cells are read back
    when ``OUT`` already holds them and left out of the table (which is then incomplete) when not.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    started = time.perf_counter()
    n_cells = len(suite.domains) * len(suite.methods)
    for kind, names, cells in (("domain", domains, suite.domains), ("method", methods, suite.methods)):
        unknown = sorted(set(names or ()) - {c.name for c in cells})
        if unknown:
            raise ConfigError(f"{suite.origin}: no {kind} named {', '.join(map(repr, unknown))}; "
                              f"the suite has {', '.join(c.name for c in cells)}")
    k = 0

    def write() -> dict[str, Any]:
        # table rows domain by domain, written after every cell so a stopped suite shows what it has
        ordered = [rows[(d.name, m.name)] for d in suite.domains for m in suite.methods if (d.name, m.name) in rows]
        record = {"title": suite.title, "origin": suite.origin, "headroom": HEADROOM,
                  "domains": [vars(d) for d in suite.domains], "methods": [vars(m) for m in suite.methods],
                  "rows": ordered, "tally": tally(ordered, suite), "complete": len(ordered) == n_cells,
                  "seconds": round(time.perf_counter() - started, 1)}
        write_json_atomic(out / "suite.json", record, allow_nan=False)
        write_bytes_atomic(out / "suite.md", render_suite(record).encode())
        return record

    # method by method: a suite stopped early has every domain of its first methods
    for method in suite.methods:
        for domain in suite.domains:
            k += 1
            config = cell_config(suite, domain, method)
            cell = out / domain.name / method.name
            selected = (domains is None or domain.name in domains) and (methods is None or method.name in methods)
            reason = missing_shared_data(config)
            if reason is not None:  # a cell that cannot run here is in the table, selected or not
                if selected:
                    log(f"[{k}/{n_cells}] {domain.name} / {method.name}: skipped, {reason}")
                rows[(domain.name, method.name)] = {"domain": domain.name, "method": method.name,
                                                    "status": "skipped", "reason": reason}
                write()
                continue
            if not selected and not (cell / "results.json").is_file():
                continue
            wanted = resolved(config.to_dict())
            if (cell / "results.json").is_file():
                done = pipeline.load_results(cell)
                if resolved(done.get("config")) != wanted:
                    raise ConfigError(f"{cell}: holds results of a different configuration for domain "
                                      f"{domain.name!r}, method {method.name!r}; write the suite to a new --out")
                log(f"[{k}/{n_cells}] {domain.name} / {method.name}: done before, read from {cell / 'results.json'}")
            else:
                log(f"[{k}/{n_cells}] {domain.name} / {method.name}: running into {cell}")
                # a cell stopped half-way goes on from its finished stages
                pipeline.run_evaluation(config, cell, log=log, cache_dir=out / ".cache", resume=True)
                done = pipeline.load_results(cell)
            rows[(domain.name, method.name)] = row_from_results(domain, method, done)
            write()
    return write()


#: a classifier kind's outcomes that answer the GAN-vs-traditional question (it learns the real
#: data and at least one synthetic set teaches it something)
ANSWERS = ("gan-ahead", "traditional-ahead", "no-clear-difference")


def any_kind_outcome(row: dict[str, Any]) -> str | None:
    """What the cell's classifier kinds say together: None when no kind answers the question
    (each does not learn the real data, or neither synthetic set transfers to it, or one seed);
    "traditional-ahead" when any kind that answers puts traditional ahead (a loss for one kind
    is not outvoted by another's win); else "gan-ahead" when any kind puts the GAN ahead; else
    "no-clear-difference"."""
    answers = {c["outcome"] for c in row.get("by_classifier", []) if c["outcome"] in ANSWERS}
    if not answers:
        return None
    for outcome in ("traditional-ahead", "gan-ahead"):
        if outcome in answers:
            return outcome
    return "no-clear-difference"


def tally(rows: list[dict[str, Any]], suite: Suite) -> dict[str, Any]:
    """Per method: domains won (CB3D's paired interval above zero), lost, undecided, inconclusive;
    the ones with headroom counted apart; the domains answered by any classifier kind that learns
    the real data and what they say (``any_kind_outcome``); and the method that wins the most
    domains (ties: more domains won by any kind, then the larger mean gain)."""
    per_method: dict[str, dict[str, Any]] = {}
    for method in suite.methods:
        done = [r for r in rows if r["method"] == method.name and r["status"] == "done"]
        counts = {o: sum(r["outcome"] == o for r in done)
                  for o in ("gan-ahead", "traditional-ahead", "no-clear-difference", "neither-transfers",
                            "inconclusive")}
        with_room = [r for r in done if r["headroom"]]
        gains = [r["paired"]["mean"] for r in done]
        by_kind = [any_kind_outcome(r) for r in done]
        per_method[method.name] = {
            **counts, "domains": len(done),
            "with_headroom": len(with_room),
            "won_with_headroom": sum(r["outcome"] == "gan-ahead" for r in with_room),
            "mean_gain": sum(gains) / len(gains) if gains else None,
            "answered_by_a_kind": sum(o is not None for o in by_kind),
            "won_by_a_kind": by_kind.count("gan-ahead"),
            "lost_by_a_kind": by_kind.count("traditional-ahead"),
        }
    ranked = sorted((m for m in per_method if per_method[m]["domains"]),
                    key=lambda m: (-per_method[m]["gan-ahead"], -per_method[m]["won_by_a_kind"],
                                   -(per_method[m]["mean_gain"] or 0.0)))
    return {"methods": per_method, "best": ranked[0] if ranked else None}


def _interval(v: dict[str, Any]) -> str:
    return f"{number(v['mean'])} [{number(v['ci_low'])}, {number(v['ci_high'])}]"


OUTCOME_TEXT = {"gan-ahead": "GAN ahead", "traditional-ahead": "traditional ahead",
                "no-clear-difference": "no clear difference", "neither-transfers": "neither set transfers",
                "does-not-learn": "does not learn the real data", "inconclusive": "inconclusive"}


def render_suite(record: dict[str, Any]) -> str:
    intro = (f"Suite file: `{record['origin']}`. Accuracies are on each domain's real test split; traditional "
             "and GAN are CB3D trained on that synthetic data alone (mean [95% t-interval] over seeds); "
             "the paired column is GAN minus traditional per seed (same seed, same initialisation). "
             f"\"Headroom\": the real ceiling is at least {number(record['headroom'])} above chance, so a "
             "method can show a gain there.")
    if not record.get("complete", True):
        intro += " **Incomplete**: the cells not listed have not run yet."
    lines = [f"# {record['title']}", "", intro, "",
             "## Domains", ""]
    for d in record["domains"]:
        lines.append(f"- **{d['name']}**: {d['description'] or '(no description)'}")
    lines += ["", "## Methods", ""]
    for m in record["methods"]:
        lines.append(f"- **{m['name']}**: {m['description'] or '(no description)'}")
    lines += ["", "## Results", "",
              "| domain | method | n/class | chance | real | radial baseline | traditional | GAN | GAN - traditional (paired) | FID trad / GAN | verdict |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in record["rows"]:
        if r["status"] != "done":
            lines.append(f"| {r['domain']} | {r['method']} | | | | | | | | | skipped: {r['reason']} |")
            continue
        fid = f"{number(r['fid_traditional'])} / {number(r['fid_gan'])}"
        if not r["metrics_reliable"]:
            fid += " (unreliable)"
        verdict = OUTCOME_TEXT[r["outcome"]] + ("" if r["headroom"] else " (no headroom)")
        lines.append(f"| {r['domain']} | {r['method']} | {r['n_train_per_class']} | {number(r['chance'])} | "
                     f"{number(r['real'])} | {number(r['baseline'])} | {_interval(r['traditional'])} | "
                     f"{_interval(r['gan'])} | {_interval(r['paired'])} | {fid} | {verdict} |")
    lines += ["", "## Per method", "",
              "| method | domains | GAN ahead | traditional ahead | no clear difference | neither transfers | "
              "inconclusive | won / with headroom | mean gain | any kind: won / lost / answered |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for name, t in record["tally"]["methods"].items():
        gain = "" if t["mean_gain"] is None else number(t["mean_gain"])
        kinds = f"{t['won_by_a_kind']} / {t['lost_by_a_kind']} / {t['answered_by_a_kind']}"
        lines.append(f"| {name} | {t['domains']} | {t['gan-ahead']} | {t['traditional-ahead']} | "
                     f"{t['no-clear-difference']} | {t['neither-transfers']} | {t['inconclusive']} | "
                     f"{t['won_with_headroom']} / {t['with_headroom']} | {gain} | {kinds} |")
    best = record["tally"]["best"]
    lines += ["", "The first columns count CB3D's verdicts; \"any kind\" counts the domains where some "
              "downstream classifier kind learns the real data and is taught by a synthetic set: won when one "
              "puts the GAN ahead and none puts traditional ahead, lost when one puts traditional ahead.", "",
              f"Most domains won: **{best}** (ties go to more domains won by any kind, then to the larger mean "
              "gain)." if best else "No cell finished.", ""]
    lines += _classifier_table(record["rows"])
    return "\n".join(lines)


def _classifier_table(rows: list[dict[str, Any]]) -> list[str]:
    """Every downstream classifier kind of every finished cell (the table above shows CB3D's)."""
    found = [(r, c) for r in rows if r["status"] == "done" for c in r.get("by_classifier", [])]
    if not found:
        return []
    lines = ["## Per classifier kind", "",
             "Each downstream classifier kind trained on the real training split, on traditional and on GAN data "
             "(means over seeds), and its own verdict: the question has an answer where a kind learns the real data.",
             "", "| domain | method | classifier | real | traditional | GAN | GAN - traditional (paired) | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for r, c in found:
        outcome = OUTCOME_TEXT.get(c["outcome"], str(c["outcome"]).replace("-", " "))
        lines.append(f"| {r['domain']} | {r['method']} | {c['classifier']} | {number(c['real'])} | "
                     f"{number(c['traditional'])} | {number(c['gan'])} | {_interval(c['paired'])} | {outcome} |")
    return lines + [""]
