"""`forge metrics` out of core and split over processes: the one-process run is the reference,
measured in the same run.

Writes two float32 (N, D) feature files, then times `forge metrics --no-fid` (the exact
backend) in one process and under `torchrun --standalone --nproc_per_node=P` for each P in
--processes, every process with --threads Rust threads. Prints and writes (JSON lines) the PRDC
seconds of each, the speed-up over one process, the parallel efficiency, whether the values are
identical, and the tile rate per process with the projected time of N = M = --project rows at
this D on P processes of this kind. The one-process run also samples the child's anonymous and
file-backed resident memory (/proc/PID/status) to show that the inputs stay page cache.

    python benchmarks/metrics_sharded.py --n 20000 --d 512 --processes 2 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

TILE = 512  # the Rust kernel's tile side (metrics_rs/src/tiles.rs, _metrics_rs.TILE)


def tiles(n: int, m: int) -> int:
    """Distance tiles of one PRDC run: both upper triangles and the real x fake rectangle."""
    nb, mb = -(-n // TILE), -(-m // TILE)
    return nb * (nb + 1) // 2 + mb * (mb + 1) // 2 + nb * mb


def forge() -> str:
    return str(Path(sys.executable).with_name("forge"))


def sample_memory(pid: int, peaks: dict[str, int], stop: threading.Event) -> None:
    """Largest RssAnon / RssFile (bytes) of process ``pid`` seen every 20 ms until ``stop``, and the
    last values seen (``RssAnon_last``, ``RssFile_last``: the maps are still resident then, while
    the import-time peak of file-backed memory, libraries being loaded, is over)."""
    while not stop.is_set():
        try:
            with open(f"/proc/{pid}/status") as fh:
                for line in fh:
                    key = line.split(":")[0]
                    if key in ("RssAnon", "RssFile"):
                        value = int(line.split()[1]) * 1024
                        peaks[key] = max(peaks.get(key, 0), value)
                        peaks[f"{key}_last"] = value
        except OSError:
            return
        stop.wait(0.02)


def run(command: list[str], env: dict[str, str], json_path: Path, timeout: float,
        measure_memory: bool) -> dict:
    started = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peaks: dict[str, int] = {}
    stop = threading.Event()
    sampler = threading.Thread(target=sample_memory, args=(proc.pid, peaks, stop), daemon=True)
    if measure_memory:
        sampler.start()
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return {"error": f"timed out after {timeout:g} s"}
    finally:
        stop.set()
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        return {"error": (err.strip().splitlines() or ["failed"])[-1]}
    doc = json.loads(json_path.read_text())
    out = {"wall_seconds": wall, "prdc_seconds": doc["prdc_seconds"],
           "values": {key: doc[key] for key in ("precision", "recall", "density", "coverage")},
           "counts": doc["counts"]}
    if measure_memory:
        out.update(peak_rss_anon_bytes=peaks.get("RssAnon"), peak_rss_file_bytes=peaks.get("RssFile"),
                   last_rss_anon_bytes=peaks.get("RssAnon_last"), last_rss_file_bytes=peaks.get("RssFile_last"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000, help="rows of each set (N = M)")
    parser.add_argument("--d", type=int, default=512, help="feature dimension")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--processes", default="2", help="process counts for torchrun, comma-separated")
    parser.add_argument("--threads", type=int, default=1, help="Rust threads per process (RAYON_NUM_THREADS)")
    parser.add_argument("--project", type=int, default=1_000_000, help="N = M of the projected time")
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--out", help="JSON lines file (default: stdout)")
    args = parser.parse_args()

    import numpy as np

    machine = {"machine": platform.machine(), "cpus": os.cpu_count(), "host": platform.node(),
               "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    sink = open(args.out, "a") if args.out else sys.stdout
    with tempfile.TemporaryDirectory(prefix="forge-bench-") as folder:
        work = Path(folder)
        rng = np.random.default_rng(0)
        for name, shift in (("real", 0.0), ("fake", 0.02)):
            np.save(work / f"{name}.npy", rng.standard_normal((args.n, args.d), dtype=np.float32) + np.float32(shift))
            np.save(work / f"tiny-{name}.npy", rng.standard_normal((64, args.d), dtype=np.float32))
        input_bytes = 2 * args.n * args.d * 4
        env = {**os.environ, "RAYON_NUM_THREADS": str(args.threads), "OMP_NUM_THREADS": "1"}

        def metrics(prefix: str = "") -> list[str]:
            return ["metrics", "--real", str(work / f"{prefix}real.npy"), "--fake", str(work / f"{prefix}fake.npy"),
                    "--k", str(args.k), "--no-fid", "--no-progress"]

        # the same command on 64 rows: what the interpreter and its libraries hold without data
        tiny = run([forge(), *metrics("tiny-"), "--json", str(work / "tiny.json")], env, work / "tiny.json",
                   args.timeout, True)
        one = run([forge(), *metrics(), "--json", str(work / "one.json")], env, work / "one.json", args.timeout, True)
        record = {"bench": "metrics_sharded", "n": args.n, "d": args.d, "k": args.k, "threads": args.threads,
                  "input_bytes": input_bytes, "one_process": one, "tiny_inputs": tiny, **machine}
        if "prdc_seconds" in one and "peak_rss_anon_bytes" in tiny:
            rate = tiles(args.n, args.n) / one["prdc_seconds"]
            record["tiles_per_second_per_process"] = rate
            anon = one["peak_rss_anon_bytes"] - tiny["peak_rss_anon_bytes"]
            record["anon_beyond_tiny_bytes"] = anon
            print(f"1 process x {args.threads} thread(s): PRDC {one['prdc_seconds']:.2f} s ({rate:.1f} tiles/s); "
                  f"peak anonymous memory {anon / 2**20:.0f} MiB beyond the same command on 64 rows, for "
                  f"{input_bytes / 2**20:.0f} MiB of memory-mapped inputs (their pages are page cache, "
                  "file-backed)", file=sys.stderr)
        for p in [int(v) for v in args.processes.split(",") if v]:
            launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={p}"]
            path = work / f"p{p}.json"
            got = run([*launcher, forge(), *metrics(), "--json", str(path)], env, path, args.timeout, False)
            entry = {"processes": p, **got}
            if "prdc_seconds" in got and "prdc_seconds" in one:
                entry["speedup"] = one["prdc_seconds"] / got["prdc_seconds"]
                entry["efficiency"] = entry["speedup"] / p
                entry["identical"] = got["values"] == one["values"] and got["counts"] == one["counts"]
                print(f"{p} processes x {args.threads} thread(s): PRDC {got['prdc_seconds']:.2f} s, speed-up "
                      f"{entry['speedup']:.2f}x over 1 process (efficiency {entry['efficiency']:.0%}), "
                      f"identical values: {entry['identical']}", file=sys.stderr)
            record.setdefault("sharded", []).append(entry)
        if "tiles_per_second_per_process" in record:
            # the same D, so the measured tile rate carries over; P processes at the measured efficiency
            sharded = record.get("sharded") or [{}]
            efficiency = min(1.0, sharded[-1].get("efficiency", 1.0))
            total = tiles(args.project, args.project)
            record["projection_efficiency"] = efficiency
            record["projection"] = {
                str(p): total / (record["tiles_per_second_per_process"] * p * (efficiency if p > 1 else 1.0))
                for p in (1, 8, 64, 512)}
            print(f"projected PRDC at N = M = {args.project}, D = {args.d} on P processes like these at "
                  f"{args.threads} thread(s) each, efficiency {efficiency:.0%}: " + ", ".join(
                      f"P={p}: {s / 3600:.1f} h" for p, s in record["projection"].items()),
                  file=sys.stderr)
        sink.write(json.dumps(record) + "\n")
    if sink is not sys.stdout:
        sink.close()


if __name__ == "__main__":
    main()
