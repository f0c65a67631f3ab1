"""Benchmark of the metrics engine against the reference tools, measured in the same run.

For N = M in --sizes and D in --dims: ``prdc.compute_prdc`` versus our exact PRDC (time,
peak memory beyond the input arrays, their ratios, and whether all four values are equal);
our PRDC's distance FLOP rate versus NumPy's float32 matmul rate; and FID at --fid-dims:
ours (from moments) versus ``scipy.linalg.sqrtm`` (the pytorch-fid formula).

Every measurement runs in a fresh child process so that its peak resident memory
(``getrusage``, which also sees the Rust allocations) belongs to it alone; the inputs are
generated in the child and their memory is subtracted. One JSON line per measurement goes
to --out (default stdout); a readable summary goes to stderr.

    python benchmarks/metrics.py --sizes 10000 --dims 4096 --out bench.jsonl
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import resource
import subprocess
import sys
import time

TILE = 512  # the Rust kernel's tile side (metrics_rs/src/tiles.rs)


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def make_features(n: int, d: int, seed: int, shift: float):
    """Overlapping Gaussian sets, generated directly as float32 (no float64 temporaries)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d), dtype=np.float32)
    if shift:
        x += np.float32(shift)
    return x


def our_prdc_flops(n: int, m: int, d: int) -> float:
    """Distance FLOPs the exact backend performs: two upper-triangle tile sweeps + N x M."""
    def triangle(rows: int) -> int:
        blocks = -(-rows // TILE)
        full = 0
        for bi in range(blocks):
            hi = min((bi + 1) * TILE, rows) - bi * TILE
            for bj in range(bi, blocks):
                full += hi * (min((bj + 1) * TILE, rows) - bj * TILE)
        return full

    return 2.0 * d * (triangle(n) + triangle(m) + n * m)


# -- child-process measurements --------------------------------------------------------------
def child_prdc(spec: dict) -> dict:
    x = make_features(spec["n"], spec["d"], 1, 0.0)
    y = make_features(spec["n"], spec["d"], 2, spec["shift"])
    import_ours = spec["tool"] == "ours"
    if import_ours:
        from cryoet_forge.metrics import prdc_counts

        # load the plugin registry and start the thread pool before the baseline is taken
        prdc_counts(x[:64, :8].copy(), y[:64, :8].copy(), spec["k"])
    else:
        import prdc

        with contextlib.redirect_stdout(io.StringIO()):
            prdc.compute_prdc(x[:64, :8].copy(), y[:64, :8].copy(), spec["k"])
    baseline = current_rss_bytes()
    started = time.perf_counter()
    if import_ours:
        counts = prdc_counts(x, y, spec["k"])
        values = counts.metrics()
        extra = {"exact_pairs": counts.info.get("exact_pairs"), "exact_rows": counts.info.get("exact_rows")}
    else:
        with contextlib.redirect_stdout(io.StringIO()):
            values = {key: float(v) for key, v in prdc.compute_prdc(x, y, spec["k"]).items()}
        extra = {}
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "peak_extra_bytes": max(0, peak_rss_bytes() - baseline),
            "input_bytes": int(x.nbytes + y.nbytes), "values": values, **extra}


def child_matmul(spec: dict) -> dict:
    d = spec["d"]
    a = make_features(4096, d, 3, 0.0)
    b = make_features(4096, d, 4, 0.0)
    a @ b.T  # warm-up (thread pool, pages)
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        a @ b.T
        best = min(best, time.perf_counter() - started)
    return {"seconds": best, "gflops": 2.0 * 4096 * 4096 * d / best / 1e9}


def child_fid(spec: dict) -> dict:
    import numpy as np
    import scipy.linalg

    from cryoet_forge.metrics import fid_from_moments

    d = spec["d"]
    rng = np.random.default_rng(5)
    # two well-conditioned covariances and means, as from features with N > D
    b1 = rng.standard_normal((d, d)) / np.sqrt(d)
    b2 = rng.standard_normal((d, d)) / np.sqrt(d)
    s1 = b1 @ b1.T + 0.1 * np.eye(d)
    s2 = b2 @ b2.T * 1.2 + 0.1 * np.eye(d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d) + 0.1
    started = time.perf_counter()
    ours = fid_from_moments(mu1, s1, mu2, s2).fid
    ours_seconds = time.perf_counter() - started
    out = {"ours_seconds": ours_seconds, "ours_fid": ours}
    if spec["reference"]:
        started = time.perf_counter()
        covmean = scipy.linalg.sqrtm(s1.dot(s2))  # pytorch-fid's calculate_frechet_distance
        if np.iscomplexobj(covmean):
            covmean = covmean.real
        diff = mu1 - mu2
        ref = float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))
        out.update(sqrtm_seconds=time.perf_counter() - started, sqrtm_fid=ref,
                   relative_difference=abs(ours - ref) / abs(ref))
    return out


CHILDREN = {"prdc": child_prdc, "matmul": child_matmul, "fid": child_fid}


def run_child(kind: str, spec: dict, timeout: float) -> dict:
    try:
        proc = subprocess.run(
            [sys.executable, __file__, "--child", kind, json.dumps(spec)],
            capture_output=True, text=True, timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:g} s"}
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2000,5000,10000,20000", help="N = M values, comma-separated")
    parser.add_argument("--dims", default="2048,4096", help="feature dimensions D, comma-separated")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--shift", type=float, default=0.02, help="mean shift of the fake set")
    parser.add_argument("--fid-dims", default="4096", help="D values for the FID comparison ('' to skip)")
    parser.add_argument("--no-reference", action="store_true", help="skip prdc and sqrtm (ours only)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per child measurement")
    parser.add_argument("--out", help="JSON lines file (default: stdout)")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        kind, spec = args.child
        print(json.dumps(CHILDREN[kind](json.loads(spec))))
        return

    with open(args.out, "a") if args.out else contextlib.nullcontext(sys.stdout) as sink:
        run_benchmarks(args, sink)


def run_benchmarks(args: argparse.Namespace, sink) -> None:
    machine = {"machine": platform.machine(), "cpus": os.cpu_count(), "host": platform.node()}

    def emit(record: dict) -> None:
        record = {**record, **machine, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        sink.write(json.dumps(record) + "\n")
        sink.flush()

    sizes = [int(s) for s in args.sizes.split(",") if s]
    dims = [int(s) for s in args.dims.split(",") if s]
    for d in dims:
        mm = run_child("matmul", {"d": d}, args.timeout)
        emit({"bench": "numpy_matmul_f32", "d": d, **mm})
        for n in sizes:
            spec = {"n": n, "d": d, "k": args.k, "shift": args.shift}
            ours = run_child("prdc", {**spec, "tool": "ours"}, args.timeout)
            record = {"bench": "prdc", "n": n, "m": n, "d": d, "k": args.k, "ours": ours}
            if "seconds" in ours:
                flops = our_prdc_flops(n, n, d)
                record["ours_gflops"] = flops / ours["seconds"] / 1e9
                if "gflops" in mm:
                    record["flop_rate_vs_numpy"] = record["ours_gflops"] / mm["gflops"]
            if not args.no_reference:
                ref = run_child("prdc", {**spec, "tool": "prdc"}, args.timeout)
                record["prdc"] = ref
                if "seconds" in ref and "seconds" in ours:
                    record["speedup"] = ref["seconds"] / ours["seconds"]
                    record["memory_ratio"] = ours["peak_extra_bytes"] / max(ref["peak_extra_bytes"], 1)
                    record["equal"] = ref["values"] == ours["values"]
            emit(record)
            print(
                f"PRDC N=M={n} D={d}: ours {ours.get('seconds', float('nan')):.2f} s, "
                f"{ours.get('peak_extra_bytes', 0) / 2**20:.0f} MiB, {record.get('ours_gflops', 0):.0f} GFLOP/s "
                f"({record.get('flop_rate_vs_numpy', 0):.0%} of NumPy's {mm.get('gflops', 0):.0f}); "
                + (f"prdc {record['prdc'].get('seconds', float('nan')):.2f} s, "
                   f"{record['prdc'].get('peak_extra_bytes', 0) / 2**20:.0f} MiB; speedup "
                   f"{record.get('speedup', float('nan')):.2f}x, memory ratio {record.get('memory_ratio', float('nan')):.3f}, "
                   f"equal {record.get('equal')}" if not args.no_reference else ""),
                file=sys.stderr,
            )
    for d in [int(s) for s in args.fid_dims.split(",") if s]:
        fid = run_child("fid", {"d": d, "reference": not args.no_reference}, args.timeout)
        record = {"bench": "fid", "d": d, **fid}
        if "sqrtm_seconds" in fid:
            record["speedup"] = fid["sqrtm_seconds"] / fid["ours_seconds"]
        emit(record)
        print(f"FID D={d}: ours {fid.get('ours_seconds', float('nan')):.2f} s, sqrtm "
              f"{fid.get('sqrtm_seconds', float('nan')):.2f} s, speedup {record.get('speedup', float('nan')):.1f}x, "
              f"relative difference {fid.get('relative_difference', float('nan')):.2e}", file=sys.stderr)


if __name__ == "__main__":
    main()
