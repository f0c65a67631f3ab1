"""Volumes per second of the ``fourier`` and ``tilt-series`` simulators at 40^3.

Beside each torch figure, the same algorithm written the plain way (one volume at a time,
NumPy + SciPy: ``ndimage.affine_transform`` for rotations, ``numpy.fft``, per-tilt
rotate-and-sum projection and a per-tilt back-projection loop) is timed in the same run, and
the ratio is reported. Writes one JSON line per measurement (``--out FILE``, default stdout).

    python benchmarks/simulate.py                  # CPU (and CUDA when present)
    python benchmarks/simulate.py --threads 2 --out simulate.jsonl
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import sys
import time

import numpy as np
import torch
from scipy import ndimage

from cryoet_forge import registry
from cryoet_forge.simulate import ctf as ctf_model
from cryoet_forge.simulate.phantoms import PHANTOM_CLASSES, make_phantom
from cryoet_forge.simulate.tilt_series import tilt_angles


# -- per-volume NumPy baselines ------------------------------------------------------------
def random_rotation(rng: np.random.Generator) -> np.ndarray:
    w, x, y, z = (q := rng.normal(size=4)) / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def rotate_numpy(volume: np.ndarray, rotation: np.ndarray, shift: np.ndarray) -> np.ndarray:
    # (z, y, x) indices: out(p) = in(R^T (p - t)) about the centre index
    s = volume.shape[0]
    perm = rotation[::-1, ::-1]  # the same matrix in (z, y, x) order
    centre = np.full(3, s // 2, float)
    offset = centre - perm.T @ (centre + shift[::-1])
    return ndimage.affine_transform(volume, perm.T, offset=offset, order=1, mode="constant")


def ctf_numpy(s2: np.ndarray, defocus_A: float, cs_mm=2.7, kv=300.0, amp=0.07) -> np.ndarray:
    lam = ctf_model.electron_wavelength_A(kv)
    chi = math.pi * lam * defocus_A * s2 - 0.5 * math.pi * cs_mm * 1e7 * lam**3 * s2**2
    return -(math.sqrt(1 - amp**2) * np.sin(chi) + amp * np.cos(chi))


def fourier_numpy(volume: np.ndarray, voxel: float, rng: np.random.Generator, snr=0.5) -> np.ndarray:
    s = volume.shape[0]
    posed = rotate_numpy(volume, random_rotation(rng), rng.uniform(-2, 2, 3))
    kz = np.fft.fftfreq(s)[:, None, None]
    ky = np.fft.fftfreq(s)[None, :, None]
    kx = np.fft.rfftfreq(s)[None, None, :]
    s2 = (kz**2 + ky**2 + kx**2) / voxel**2
    angle = np.degrees(np.arctan2(kz, kx))
    wedge = ((np.abs(angle) <= 60) | ((kx == 0) & (kz == 0))).astype(float)
    mtf = np.sinc(np.sqrt(s2) * voxel)
    signal = np.fft.irfftn(np.fft.rfftn(posed) * ctf_numpy(s2, rng.uniform(2e4, 6e4)) * np.exp(-25 * s2)
                           * wedge * mtf, s=posed.shape, axes=(0, 1, 2))
    noise = np.fft.irfftn(np.fft.rfftn(rng.normal(size=posed.shape)) * wedge * mtf, s=posed.shape, axes=(0, 1, 2))
    return signal + noise * math.sqrt(signal.var() / (snr * noise.var()))


def tilt_series_numpy(volume: np.ndarray, voxel: float, rng: np.random.Generator) -> np.ndarray:
    s = volume.shape[0]
    p = 2 * s
    canvas = np.zeros((p, p, p))
    a = p // 2 - s // 2
    canvas[a:a + s, a:a + s, a:a + s] = rotate_numpy(volume, random_rotation(rng), rng.uniform(-2, 2, 3))
    angles = tilt_angles((-60, 60), 3)
    fy = np.fft.fftfreq(p)[:, None]
    fx = np.fft.fftfreq(p)[None, :]
    s2 = (fx**2 + fy**2) / voxel**2
    defocus = rng.uniform(2e4, 6e4)
    n0 = 120.0 / len(angles) * voxel**2
    out = np.zeros((s, s, s))
    zz, xx = np.meshgrid(np.arange(s) - s // 2, np.arange(s) - s // 2, indexing="ij")
    for alpha in angles:
        rotated = ndimage.rotate(canvas, alpha, axes=(0, 2), reshape=False, order=1)  # tilt about y
        projection = rotated.sum(axis=0) * 2e-3 * voxel
        image = np.real(np.fft.ifft2(np.fft.fft2(projection) * 2 * ctf_numpy(s2, defocus)))
        expected = n0 * np.clip(1 + image, 0, None)
        counts = rng.poisson(expected) / n0 - 1
        filtered = np.real(np.fft.ifft2(np.fft.fft2(counts) * np.abs(fx) * np.sinc(np.sqrt(fx**2 + fy**2))))
        rows = filtered[p // 2 - s // 2:p // 2 - s // 2 + s]  # (y, x')
        r = math.radians(alpha)
        position = xx * math.cos(r) + zz * math.sin(r) + p // 2
        i0 = np.floor(position).astype(int)
        w = position - i0
        out += np.transpose(rows[:, i0] * (1 - w) + rows[:, np.clip(i0 + 1, 0, p - 1)] * w, (1, 0, 2))
    return out / len(angles)


# -- timing ---------------------------------------------------------------------------------
def time_torch(name: str, maps: torch.Tensor, voxel: float, repeats: int, device: str) -> float:
    sim = registry.create("simulator", name)
    maps = maps.to(device)
    generator = torch.Generator(device=device).manual_seed(0)
    sim.simulate(maps[:2], voxel, generator)  # warm-up: caches, allocator, kernels
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        sim.simulate(maps, voxel, generator)
    if device == "cuda":
        torch.cuda.synchronize()
    return repeats * len(maps) / (time.perf_counter() - start)


def time_numpy(function, volumes: np.ndarray, voxel: float) -> float:
    rng = np.random.default_rng(0)
    function(volumes[0], voxel, rng)
    start = time.perf_counter()
    for v in volumes:
        function(v, voxel, rng)
    return len(volumes) / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--box", type=int, default=40)
    parser.add_argument("--voxel-size", type=float, default=9.4)
    parser.add_argument("--fourier-batch", type=int, default=64)
    parser.add_argument("--tilt-batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline-volumes", type=int, default=8, help="volumes timed for each NumPy baseline")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--devices", default="auto", help="comma list of cpu,cuda (auto: cpu + cuda if present)")
    parser.add_argument("--out", default=None, help="JSON lines file (default stdout)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) if args.devices == "auto" \
        else [d.strip() for d in args.devices.split(",")]
    volumes = np.stack([make_phantom(PHANTOM_CLASSES[i % len(PHANTOM_CLASSES)], args.box, args.voxel_size, seed=i)
                        for i in range(max(args.fourier_batch, args.tilt_batch))])
    common = {"benchmark": "simulate", "box": args.box, "voxel_size": args.voxel_size,
              "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
              "machine": platform.machine(), "python": platform.python_version(), "torch": torch.__version__}
    with open(args.out, "a") if args.out else contextlib.nullcontext(sys.stdout) as out:
        run(args, devices, volumes, common, out)
    return 0


def run(args, devices, volumes, common, out) -> None:
    baselines = {
        "fourier": time_numpy(fourier_numpy, volumes[:args.baseline_volumes], args.voxel_size),
        "tilt-series": time_numpy(tilt_series_numpy, volumes[:max(2, args.baseline_volumes // 4)], args.voxel_size),
    }
    for name, rate in baselines.items():
        out.write(json.dumps({**common, "simulator": name, "impl": "numpy-per-volume", "device": "cpu",
                              "volumes_per_s": round(rate, 3)}) + "\n")
    for device in devices:
        for name, batch in (("fourier", args.fourier_batch), ("tilt-series", args.tilt_batch)):
            maps = torch.from_numpy(volumes[:batch])
            rate = time_torch(name, maps, args.voxel_size, args.repeats, device)
            out.write(json.dumps({**common, "simulator": name, "impl": "torch-batched", "device": device,
                                  "batch": batch, "volumes_per_s": round(rate, 3),
                                  "ratio_vs_numpy": round(rate / baselines[name], 2)}) + "\n")
            out.flush()


if __name__ == "__main__":
    sys.exit(main())
