"""How dark the particles of a tomogram are against its background, as a picker sees them.

    python experiments/picking_contrast.py                       # parakeet_dev/high_snr TS_01 and
                                                                 # the picking script's tomograms
    python experiments/picking_contrast.py --lowpass 0 140       # with the picker's low-pass

For each tomogram and each ``--lowpass`` (Angstrom; 0 = none) the volume is prepared exactly as the
built-in picker prepares it (``cryoet_forge.picking.segmentation.prepare_volume``: the Gaussian
low-pass, then z-scored as a whole) and the mean over the particles of the voxel values in spherical
shells around their centres (0, 2, 4, 6, 10 voxels) is printed and appended as one JSON line per
tomogram and low-pass to ``experiments/results/picking_contrast.jsonl``. Only the *training*
tomogram TS_01 is read, real and synthetic: the test tomogram TS_02 plays no part.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import numpy as np

from cryoet_forge.evaluate.picking import synthetic_source
from cryoet_forge.picking.segmentation import prepare_volume
from cryoet_forge.picking.tomograms import LabelledTomogram, load_labelled_tomograms, read_radii

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "parakeet_dev"
WORK = ROOT / "experiments" / "work" / "picking" / "high_snr"
SHELLS = (0, 2, 4, 6, 10)


def shell_profile(volume: np.ndarray, centres_zyx: np.ndarray, shells=SHELLS) -> list[float]:
    """Mean over particles of each particle's mean value in the shell [r - 0.5, r + 0.5) voxels."""
    offsets = np.stack(np.meshgrid(*[np.arange(-max(shells) - 1, max(shells) + 2)] * 3, indexing="ij"), -1).reshape(-1, 3)
    distance = np.linalg.norm(offsets, axis=1)
    out = []
    for r in shells:
        ring = offsets[(distance >= r - 0.5) & (distance < r + 0.5)] if r else offsets[distance == 0]
        values = []
        for c in np.rint(centres_zyx).astype(int):
            points = c + ring
            inside = np.all((points >= 0) & (points < np.array(volume.shape)), axis=1)
            if inside.any():
                values.append(volume[tuple(points[inside].T)].mean())
        out.append(float(np.mean(values)))
    return out


def tomograms(work: Path, data: Path) -> list[tuple[str, LabelledTomogram]]:
    """(label, TS_01 with its picks) of every source that exists, read as evaluate-picking reads them."""
    found = []
    table = data / "particles.csv"
    radii = read_radii(table, "radius_A")
    if (data / "high_snr" / "TS_01.mrc").is_file():
        found += [("real high_snr", t) for t in load_labelled_tomograms(table, data / "high_snr", ["TS_01"], radii, unit="px")]
    if (work / "synthetic" / "particles.star").is_file():
        for label, folder in (("traditional", None), ("GAN-refined (crops)", work / "refined"),
                              ("GAN-refined (boxes)", work / "refined-boxes")):
            if folder is None or (folder / "TS_01.mrc").is_file():
                found += [(label, t) for t in synthetic_source(work / "synthetic", radii, folder) if t.name == "TS_01"]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--work", type=Path, default=WORK, help="experiments/picking_parakeet.sh's folder of a domain")
    parser.add_argument("--lowpass", type=float, nargs="+", default=[0.0, 140.0])
    parser.add_argument("--out", type=Path, default=ROOT / "experiments" / "results" / "picking_contrast.jsonl")
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    print(f"{'tomogram':22s} {'lowpass_A':>9s} " + " ".join(f"{r:>6d}" for r in SHELLS))
    for label, tomogram in tomograms(args.work, args.data):
        centres = np.concatenate(list(tomogram.picks.values()))[:, ::-1]  # (x, y, z) -> (z, y, x)
        for lowpass in args.lowpass:
            profile = shell_profile(prepare_volume(tomogram.volume, lowpass, tomogram.voxel_size), centres)
            print(f"{label:22s} {lowpass:9g} " + " ".join(f"{v:+6.2f}" for v in profile), flush=True)
            with args.out.open("a") as handle:
                handle.write(json.dumps({"tomogram": label, "lowpass_A": lowpass, "shells_voxels": list(SHELLS),
                                         "profile": profile, "particles": len(centres), "commit": commit}) + "\n")


if __name__ == "__main__":
    main()
