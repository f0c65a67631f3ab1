"""Per-classifier summary of a `forge evaluate --suite` output folder: one row per domain, method
and downstream classifier kind (accuracy trained on the real split, on traditional and on GAN
data, the paired GAN-minus-traditional difference and the verdict), as a Markdown table, and the
rows of each cell not yet in the JSON-lines file appended to it.

    python experiments/suite_summary.py SUITE_OUT [--jsonl experiments/results/FILE.jsonl]

The suite's own suite.md reports CB3D only; this reads each cell's results.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from datetime import date
from pathlib import Path


def rows(cell: Path) -> list[dict]:
    r = json.loads((cell / "results.json").read_text())
    out = []
    for kind, verdict in r["verdict"].get("by_classifier", {}).items():
        if kind == "cb3d":
            real = r["inception"]["real_test"].get("accuracy") if isinstance(r["inception"]["real_test"], dict) else None
            real = verdict.get("real_accuracy", real)
            trad, gan = r["downstream"]["traditional"]["mean"], r["downstream"]["cryoetgan"]["mean"]
        else:
            by = r["downstream_by_classifier"][kind]
            real, trad, gan = by["real"]["mean"], by["traditional"]["mean"], by["cryoetgan"]["mean"]
        p = verdict["paired"]
        out.append({"domain": cell.parent.name, "method": cell.name, "classifier": kind, "real": real,
                    "traditional": trad, "gan": gan, "paired": [p["mean"], p["ci_low"], p["ci_high"]],
                    "gan_wins": p["gan_wins"], "n": p["n"], "outcome": verdict["outcome"],
                    "fid": [r["quality"]["traditional"]["fid"], r["quality"]["cryoetgan"]["fid"]],
                    "chance": r["chance"], "baseline": r["baseline"]["accuracy"],
                    "checkpoint_step": r["gan_checkpoint"]["step"]})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite_out", type=Path)
    parser.add_argument("--jsonl", type=Path)
    args = parser.parse_args()
    found = [row for cell in sorted(args.suite_out.glob("*/*")) if (cell / "results.json").is_file()
             for row in rows(cell)]
    print("| domain | method | classifier | real | traditional | GAN | GAN - traditional (paired) | wins | verdict |")
    print("|---|---|---|---|---|---|---|---|---|")
    for x in found:
        m, lo, hi = x["paired"]
        print(f"| {x['domain']} | {x['method']} | {x['classifier']} | {x['real']:.3f} | {x['traditional']:.3f} | "
              f"{x['gan']:.3f} | {m:+.3f} [{lo:+.3f}, {hi:+.3f}] | {x['gan_wins']}/{x['n']} | {x['outcome']} |")
    if args.jsonl:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        key = ("domain", "method", "classifier")
        have = set()
        if args.jsonl.is_file():
            have = {tuple(json.loads(line)[k] for k in key) for line in args.jsonl.read_text().splitlines() if line.strip()}
        with args.jsonl.open("a") as f:
            for x in found:
                if tuple(x[k] for k in key) in have:
                    continue
                f.write(json.dumps({"recorded": str(date.today()), "commit": commit, **x}) + "\n")


if __name__ == "__main__":
    main()
