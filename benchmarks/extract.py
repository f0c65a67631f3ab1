"""Subtomogram extraction speed and memory: ``forge extract``'s engine beside a plain NumPy loop.

A 1024 x 1024 x 256 float32 tomogram (1 GiB, noise, written once to a temporary MRC) is
memory-mapped; picks at random sub-voxel positions inside it (sorted by tomogram name only, as a
user's table would be). For box 32 and 64, each in its own child process (so peak RSS is its own):

- ``numpy-slice``: the reference, a per-particle ``np.array(memmap[z0:z1, y0:y1, x0:x1])`` of
  the box around the rounded position: no sub-voxel centring, no normalisation, no edge handling;
- ``forge``: the boxes of ``forge extract`` with its defaults (sub-voxel centring by a Fourier
  shift, z-score in the background mask, edge skipping, every core), streamed as the command
  streams them into a folder (``iter_boxes``; the MRC writing itself is not timed), and
- ``forge-rescale``: the same, output voxel size 1.5x the tomogram's (Fourier rescaling).

Each JSON line: particles/s, the ratio to ``numpy-slice`` of the same box, peak RSS of the child
(MiB, ``VmHWM``) and the tomogram's size (MiB).

    python benchmarks/extract.py --particles 2000 --out extract.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHAPE = (256, 1024, 1024)  # z, y, x


def make_tomogram(path: Path) -> None:
    import mrcfile

    with mrcfile.new_mmap(path, shape=SHAPE, mrc_mode=2, overwrite=True) as mrc:
        rng = np.random.default_rng(0)
        for z in range(0, SHAPE[0], 16):
            mrc.data[z:z + 16] = rng.standard_normal((16, *SHAPE[1:]), dtype=np.float32)
        mrc.voxel_size = 10.0


def picks(n: int, box: int, seed: int = 0) -> np.ndarray:
    """(n, 3) x, y, z voxel positions whose 1.5x box stays inside."""
    rng = np.random.default_rng(seed)
    margin = 1.5 * box
    hi = np.array(SHAPE[::-1], dtype=float) - margin
    return rng.uniform(margin, hi, size=(n, 3))


def child(method: str, path: str, box: int, n: int) -> dict:
    import pandas as pd

    xyz = picks(n, box)
    start = time.perf_counter()
    if method == "numpy-slice":
        data = np.memmap(path, dtype=np.float32, mode="r", offset=1024, shape=SHAPE)
        checksum = 0.0
        for x, y, z in np.round(xyz).astype(int):
            h = box // 2
            volume = np.array(data[z - h:z - h + box, y - h:y - h + box, x - h:x - h + box])
            checksum += float(volume[0, 0, 0])
    else:
        from cryoet_forge.extract import ExtractOptions, iter_boxes, plan_extraction
        from cryoet_forge.io.tomograms import open_tomogram

        table = pd.DataFrame({"x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2], "class_name": "p",
                              "shift_x": 0.0, "shift_y": 0.0, "shift_z": 0.0})
        options = ExtractOptions(box=box, voxel_size=15.0 if method == "forge-rescale" else None)
        checksum = 0.0
        with open_tomogram(path) as tomo:  # streamed, as forge extract writes a folder
            for _, volume in iter_boxes(plan_extraction([(tomo, table, "px")], options)):
                checksum += float(volume[0, 0, 0])
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "particles_per_s": n / seconds, "peak_rss_mib": peak_rss_mib()}


def peak_rss_mib() -> float:
    """This process's resident-set high-water mark (VmHWM: reset at exec, unlike ru_maxrss,
    which a child inherits from the process that started it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--particles", type=int, default=1000)
    parser.add_argument("--boxes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--out", default=None, help="JSON lines file (default stdout)")
    parser.add_argument("--child", nargs=4, metavar=("METHOD", "PATH", "BOX", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        method, path, box, n = args.child
        print(json.dumps(child(method, path, int(box), int(n))))
        return
    sink = open(args.out, "a") if args.out else sys.stdout
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "tomogram.mrc"
        make_tomogram(path)
        size_mib = path.stat().st_size / 2**20
        for box in args.boxes:
            reference = None
            for method in ("numpy-slice", "forge", "forge-rescale"):
                proc = subprocess.run([sys.executable, __file__, "--child", method, str(path), str(box),
                                       str(args.particles)], capture_output=True, text=True, check=True)
                record = json.loads(proc.stdout.strip().splitlines()[-1])
                if method == "numpy-slice":
                    reference = record["particles_per_s"]
                record.update({"benchmark": "extract", "method": method, "box": box, "particles": args.particles,
                               "tomogram_mib": round(size_mib, 1), "ratio_to_numpy_slice":
                               record["particles_per_s"] / reference, "cpu": platform.processor() or platform.machine(),
                               "threads": os.cpu_count()})
                sink.write(json.dumps(record) + "\n")
                sink.flush()
                print(f"box {box} {method:>14}: {record['particles_per_s']:8.1f} particles/s "
                      f"({record['ratio_to_numpy_slice']:.2f}x numpy-slice), peak RSS "
                      f"{record['peak_rss_mib']:.0f} MiB of a {size_mib:.0f} MiB tomogram", file=sys.stderr)
    if args.out:
        sink.close()


if __name__ == "__main__":
    main()
