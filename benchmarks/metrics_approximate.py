"""Benchmark of ``forge metrics --approximate`` against the exact backend, measured in the same run.

For N = M in --sizes (D = --d): feature files are written once (memory-mapped .npy in --scratch),
then ``forge metrics --approximate`` runs on them: seconds, peak resident memory, the four
values with their intervals and widths. For N <= --exact-up-to the exact backend (the
reference) runs on the same files, and the record says whether each exact value lies inside its
interval; above that the exact time is projected from the largest exact run (the work grows as
N^2) and the ratio uses the projection. FID is left out (--no-fid): it is exact in both modes.

Data (--data): ``structured`` rows are relu(z W) + noise with z in 32 dimensions (the fake set's
z shifted by --shift along one axis), features whose variance sits in few directions, as learned
embeddings' does; ``isotropic`` rows are standard normal (fake shifted by --shift), the worst
case for the projection bounds. One JSON line per measurement goes to --out (default stdout);
a readable summary goes to stderr.

    python benchmarks/metrics_approximate.py --sizes 100000,1000000 --d 2048 --out bench.jsonl
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LATENT = 32
NOISE = 0.1


def write_features(path: Path, n: int, d: int, kind: str, seed: int, shift: float) -> None:
    """An (n, d) float32 .npy file written in row blocks (no whole copy in memory)."""
    import numpy as np

    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    mixing = (np.random.default_rng(1000).normal(size=(LATENT, d)) / np.sqrt(LATENT)).astype(np.float32)
    rng = np.random.default_rng(seed)
    for start in range(0, n, 20_000):
        rows = min(20_000, n - start)
        if kind == "structured":
            z = rng.standard_normal((rows, LATENT), dtype=np.float32)
            z[:, 0] += np.float32(shift)
            block = np.maximum(z @ mixing, 0.0)
            block += np.float32(NOISE) * rng.standard_normal((rows, d), dtype=np.float32)
        else:
            block = rng.standard_normal((rows, d), dtype=np.float32) + np.float32(shift)
        out[start : start + rows] = block
    out.flush()
    del out


def run_forge(args: list[str], timeout: float) -> dict:
    """``forge metrics ARGS --json``: the JSON document, wall seconds and the child's own peak RSS."""
    import threading

    with tempfile.TemporaryDirectory() as tmp:
        target, log = Path(tmp) / "out.json", Path(tmp) / "stderr.txt"
        forge = shutil.which("forge") or "forge"
        started = time.perf_counter()
        with open(log, "w") as err:
            proc = subprocess.Popen([forge, "metrics", "--no-progress", "--no-fid", *args, "--json", str(target)],
                                    stdout=subprocess.DEVNULL, stderr=err)
            timer = threading.Timer(timeout, proc.kill)
            timer.start()
            _, status, usage = os.wait4(proc.pid, 0)  # this child's rusage alone
            timer.cancel()
        seconds = time.perf_counter() - started
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            if seconds >= timeout:
                return {"error": f"timed out after {timeout:g} s"}
            return {"error": (log.read_text().strip().splitlines() or ["failed"])[-1]}
        doc = json.loads(target.read_text())
    return {"doc": doc, "seconds": seconds, "peak_rss_bytes": usage.ru_maxrss * 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000", help="N = M values, comma-separated")
    parser.add_argument("--d", type=int, default=2048)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--data", choices=["structured", "isotropic"], default="structured")
    parser.add_argument("--shift", type=float, default=0.3, help="shift of the fake set")
    parser.add_argument("--samples", type=int, default=1000, help="--samples of the approximate mode")
    parser.add_argument("--exact-up-to", type=int, default=100_000, help="largest N the exact backend runs at")
    parser.add_argument("--scratch", default=None, help="folder for the feature files (default: TMPDIR)")
    parser.add_argument("--timeout", type=float, default=7200.0, help="seconds per forge run")
    parser.add_argument("--out", help="JSON lines file (default: stdout)")
    args = parser.parse_args()
    with open(args.out, "a") if args.out else contextlib.nullcontext(sys.stdout) as sink:
        run(args, sink)


def run(args: argparse.Namespace, sink) -> None:
    machine = {"machine": platform.machine(), "cpus": os.cpu_count(), "host": platform.node()}
    exact_rate = None  # seconds / N^2 of the largest exact run
    for n in [int(s) for s in args.sizes.split(",") if s]:
        with tempfile.TemporaryDirectory(dir=args.scratch) as tmp:
            real, fake = Path(tmp) / "real.npy", Path(tmp) / "fake.npy"
            started = time.perf_counter()
            write_features(real, n, args.d, args.data, 1, 0.0)
            write_features(fake, n, args.d, args.data, 2, args.shift)
            gen_seconds = time.perf_counter() - started
            files = ["--real", str(real), "--fake", str(fake), "--k", str(args.k)]
            ours = run_forge([*files, "--approximate", "--samples", str(args.samples)], args.timeout)
            record = {"bench": "prdc_approximate", "n": n, "m": n, "d": args.d, "k": args.k, "data": args.data,
                      "samples": args.samples, "generate_seconds": gen_seconds}
            if "doc" in ours:
                doc = ours["doc"]
                record.update(seconds=ours["seconds"], prdc_seconds=doc["prdc_seconds"],
                              intervals=doc["intervals"], info=doc["prdc_info"],
                              widths={name: iv["high"] - iv["low"] for name, iv in doc["intervals"].items()})
            else:
                record["error"] = ours["error"]
            if n <= args.exact_up_to:
                ref = run_forge(files, args.timeout)
                if "doc" in ref:
                    exact = {name: ref["doc"][name] for name in ("precision", "recall", "density", "coverage")}
                    record.update(exact=exact, exact_seconds=ref["seconds"], exact_prdc_seconds=ref["doc"]["prdc_seconds"])
                    exact_rate = ref["doc"]["prdc_seconds"] / float(n) ** 2
                    if "intervals" in record:
                        record["inside"] = {name: record["intervals"][name]["low"] <= value
                                            <= record["intervals"][name]["high"] for name, value in exact.items()}
                else:
                    record["exact_error"] = ref["error"]
            elif exact_rate is not None:
                record["exact_prdc_seconds_projected"] = exact_rate * float(n) ** 2
            reference = record.get("exact_prdc_seconds", record.get("exact_prdc_seconds_projected"))
            if reference is not None and "prdc_seconds" in record:
                record["speedup"] = reference / record["prdc_seconds"]
            record["peak_rss_bytes"] = ours.get("peak_rss_bytes")
            record["input_bytes"] = 2 * n * args.d * 4
            sink.write(json.dumps({**record, **machine, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")
            sink.flush()
            summary = f"N=M={n} D={args.d} ({args.data}, {args.samples} queries): "
            if "intervals" in record:
                summary += f"approximate {record['prdc_seconds']:.1f} s; " + ", ".join(
                    f"{name} {iv['value']:.4f} [{iv['low']:.4f}, {iv['high']:.4f}]"
                    for name, iv in record["intervals"].items())
            else:
                summary += f"approximate failed: {record['error']}"
            if "exact" in record:
                summary += (f"; exact {record['exact_prdc_seconds']:.1f} s: "
                            + ", ".join(f"{name} {value:.4f}" for name, value in record["exact"].items())
                            + f"; inside {record.get('inside')}")
            elif "exact_prdc_seconds_projected" in record:
                summary += f"; exact projected {record['exact_prdc_seconds_projected']:.0f} s"
            if "speedup" in record:
                summary += f"; speed-up {record['speedup']:.1f}x"
            print(summary, file=sys.stderr)


if __name__ == "__main__":
    main()
