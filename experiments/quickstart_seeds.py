"""`forge quickstart --seed N` for several seeds: does the GAN come out ahead on most of them?

    python experiments/quickstart_seeds.py --out qs-seeds --seeds 0 1 2 3 4

Each seed is a separate quickstart (its own data, GAN and classifiers) in OUT/seed-N; a seed
already run there is read back. Prints one line per seed (real ceiling, traditional, GAN, the
paired GAN minus traditional interval over the quickstart's downstream seeds, the verdict, the
wall time) and how many seeds the GAN is ahead on (paired interval above zero) or merely higher.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cryoet_forge import progress
from cryoet_forge.evaluate.config import quickstart_config
from cryoet_forge.evaluate.pipeline import run_evaluation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    args = parser.parse_args()
    progress.configure(quiet=True)
    ahead = higher = 0
    for seed in args.seeds:
        folder = args.out / f"seed-{seed}"
        if not (folder / "results.json").is_file():
            run_evaluation(quickstart_config(seed=seed), folder, log=lambda line: None)
        r = json.loads((folder / "results.json").read_text())
        p, d = r["downstream_paired"], r["downstream"]
        ahead += r["verdict"]["outcome"] == "gan-ahead"
        higher += p["mean"] > 0
        print(f"seed {seed}: real {r['inception']['real_test']['accuracy']:.3f}, traditional "
              f"{d['traditional']['mean']:.3f}, GAN {d['cryoetgan']['mean']:.3f}, GAN - traditional "
              f"{p['mean']:+.3f} [{p['ci_low']:+.3f}, {p['ci_high']:+.3f}] ({r['verdict']['outcome']}), "
              f"{r['timings_s']['total']:.0f} s", flush=True)
    print(f"GAN ahead (paired interval above zero) on {ahead} of {len(args.seeds)} seeds; "
          f"higher mean on {higher}")


if __name__ == "__main__":
    main()
