"""Speed of ``forge simulate-tomogram``: particle placement and imaging, each beside a plain reference.

1. **Placement** (the rotated maps added into the volume, with the label map): ours rotates a
   batch of particles of one class in one trilinear ``grid_sample`` (``render_particles``); the
   reference rotates each particle on its own with ``scipy.ndimage.affine_transform`` (order 1,
   the same sampling) and adds it with NumPy. Both place the same layout; the largest difference
   of the two volumes is reported (interpolation rounding only).
2. **Imaging** (tilt series + weighted back-projection of the whole volume, CTF per depth slab,
   shot noise): ours (sparse projection and back-projection matrices shared by every y row, FFTs
   in torch) against a per-tilt reference written the plain way: ``ndimage.rotate`` of the volume
   about y, a sum along z, one CTF, NumPy FFTs, and a back-projection loop over the tilt images.

Rates are voxels per second: placed template voxels (particles x box^3) for the placement,
tomogram voxels x tilts for the imaging; the ratio ours / reference is measured in the same run.
Writes one JSON line per measurement, appended to ``--out FILE`` (default stdout).

    python benchmarks/bench_simulate_tomogram.py --threads 2 --out simulate_tomogram.jsonl
    python benchmarks/bench_simulate_tomogram.py --size 96,256,256 --devices cpu,cuda
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

from cryoet_forge.simulate import ctf as ctf_model
from cryoet_forge.simulate.templates import load_template
from cryoet_forge.simulate.tomogram import (
    TomogramPhysics,
    auto_template_box,
    counts_for_fraction,
    draw_rotations,
    place_particles,
    prepare_template,
    render_particles,
    slab_of,
    tomogram_seeds,
)


# -- references: one particle, one tilt at a time, NumPy + SciPy -----------------------------------
def place_reference(shape, templates, layout, rotations: np.ndarray, label_fraction: float):
    density = np.zeros(shape, dtype=np.float32)
    labels = np.zeros(shape, dtype=np.int16)
    for i, (c, centre) in enumerate(zip(layout.classes, layout.centres)):
        volume = templates[c].density
        box = volume.shape[0]
        anchor = np.round(centre).astype(int)
        shift = centre - anchor  # (z, y, x)
        matrix = rotations[i][::-1, ::-1]  # the rotation in (z, y, x) order
        mid = np.full(3, box // 2, dtype=float)
        offset = mid - matrix.T @ (mid + shift)
        posed = ndimage.affine_transform(volume, matrix.T, offset=offset, order=1, mode="constant")
        lo = anchor - box // 2
        dst = tuple(slice(max(a, 0), min(a + box, n)) for a, n in zip(lo, shape))
        src = tuple(slice(d.start - a, d.stop - a) for d, a in zip(dst, lo))
        density[dst] += posed[src]
        region = labels[dst]
        region[posed[src] > label_fraction] = c + 1
    return density, labels


def ctf_numpy(s2: np.ndarray, defocus_A: float, cs_mm=2.7, kv=300.0, amp=0.07) -> np.ndarray:
    lam = ctf_model.electron_wavelength_A(kv)
    chi = math.pi * lam * defocus_A * s2 - 0.5 * math.pi * cs_mm * 1e7 * lam**3 * s2**2
    return -(math.sqrt(1 - amp**2) * np.sin(chi) + amp * np.cos(chi))


def image_reference(density: np.ndarray, voxel: float, angles: np.ndarray, rng: np.random.Generator,
                    dose: float = 120.0) -> np.ndarray:
    nz, ny, nx = density.shape
    width = int(math.ceil(math.hypot(nz, nx))) + 4
    pad_z, pad_x = (width - nz) // 2, (width - nx) // 2
    canvas = np.zeros((width, ny, width), dtype=np.float32)  # (z, y, x): room to rotate about y
    canvas[pad_z:pad_z + nz, :, pad_x:pad_x + nx] = density
    fy = np.fft.fftfreq(ny)[:, None]
    fx = np.fft.fftfreq(width)[None, :]
    s2 = (fx**2 + fy**2) / voxel**2
    transfer = 2 * 2e-3 * voxel * ctf_numpy(s2, 4e4) * np.exp(-25 * s2)
    ramp = np.abs(fx) * np.sinc(np.sqrt(fx**2 + fy**2))
    n0 = dose / len(angles) * voxel**2
    out = np.zeros((nz, ny, nx))
    zz, xx = np.meshgrid(np.arange(nz) - nz // 2, np.arange(nx) - nx // 2, indexing="ij")
    for alpha in angles:
        rotated = ndimage.rotate(canvas, alpha, axes=(0, 2), reshape=False, order=1)
        image = np.real(np.fft.ifft2(np.fft.fft2(rotated.sum(axis=0)) * transfer))
        counts = rng.poisson(n0 * np.clip(1 + image, 0, None)) / n0 - 1
        filtered = np.real(np.fft.ifft2(np.fft.fft2(counts) * ramp))  # (y, x')
        r = math.radians(alpha)
        position = xx * math.cos(r) + zz * math.sin(r) + width // 2
        i0 = np.clip(np.floor(position).astype(int), 0, width - 2)
        w = position - i0
        out += np.transpose(filtered[:, i0] * (1 - w) + filtered[:, i0 + 1] * w, (1, 0, 2))
    return out / len(angles)


# -- timing ----------------------------------------------------------------------------------------
def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="64,192,192", help="Z,Y,X voxels of the tomogram")
    parser.add_argument("--voxel-size", type=float, default=10.0)
    parser.add_argument("--classes", default="globule,two-lobe,barrel,ring")
    parser.add_argument("--volume-fraction", type=float, default=0.15)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--tilt-step", type=float, default=3.0)
    parser.add_argument("--reference-tilts", type=int, default=6, help="tilts timed for the imaging reference")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--devices", default="auto", help="comma list of cpu,cuda (auto: cpu + cuda if present)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="JSON lines file, appended (default stdout)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) if args.devices == "auto" \
        else [d.strip() for d in args.devices.split(",")]
    shape = tuple(int(v) for v in args.size.split(","))
    voxel = args.voxel_size
    templates = []
    for spec in args.classes.split(","):
        name, volume = load_template(spec, auto_template_box(spec, voxel), voxel)
        templates.append(prepare_template(name, volume))
    slab = slab_of(shape, voxel, None)
    n = counts_for_fraction(args.volume_fraction, [t.radius for t in templates], shape, slab)
    rng, generator = tomogram_seeds(args.seed, 0)
    layout = place_particles(rng, shape, slab, voxel, [t.radius for t in templates], [n] * len(templates),
                             [t.name for t in templates], gap=1.0)
    rotations = draw_rotations(len(layout.classes), generator)
    placed_voxels = int(sum(templates[c].density.size for c in layout.classes))
    common = {"benchmark": "simulate_tomogram", "size_zyx": list(shape), "voxel_size": voxel,
              "classes": [t.name for t in templates], "particles": len(layout.classes),
              "template_boxes": [t.density.shape[0] for t in templates],
              "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
              "machine": platform.machine(), "python": platform.python_version(), "torch": torch.__version__}
    with open(args.out, "a") if args.out else contextlib.nullcontext(sys.stdout) as out:
        # placement: the reference once, ours on every device
        start = time.perf_counter()
        ref_density, ref_labels = place_reference(shape, templates, layout, rotations.numpy(), 0.2)
        ref_rate = placed_voxels / (time.perf_counter() - start)
        for device in devices:
            density = torch.zeros(shape, device=device)
            labels = torch.zeros(shape, dtype=torch.int16, device=device)
            render_particles(density.clone(), labels.clone(), templates, layout, rotations, 0.2, args.batch_size)
            sync(device)  # warm-up: kernels, allocator
            start = time.perf_counter()
            render_particles(density, labels, templates, layout, rotations, 0.2, args.batch_size)
            sync(device)
            rate = placed_voxels / (time.perf_counter() - start)
            diff = float(np.abs(density.cpu().numpy() - ref_density).max())
            agree = float((labels.cpu().numpy() == ref_labels).mean())
            out.write(json.dumps({**common, "stage": "placement", "device": device, "batch": args.batch_size,
                                  "voxels_per_s": round(rate), "reference": "scipy affine_transform per particle",
                                  "reference_voxels_per_s": round(ref_rate), "ratio_vs_reference": round(rate / ref_rate, 2),
                                  "max_abs_diff": diff, "label_agreement": agree}) + "\n")
            out.flush()

        # imaging: the reference on a few tilts, ours on the whole tilt series
        physics = TomogramPhysics(tilt_step=args.tilt_step, ice=0.0)
        angles = np.asarray(physics.angles)
        chosen = angles[np.linspace(0, len(angles) - 1, min(args.reference_tilts, len(angles))).round().astype(int)]
        start = time.perf_counter()
        image_reference(ref_density, voxel, chosen, np.random.default_rng(0))
        ref_rate = int(np.prod(shape)) * len(chosen) / (time.perf_counter() - start)
        for device in devices:
            density = torch.from_numpy(ref_density).to(device)
            physics.image(density, voxel, slab, 4e4, torch.Generator().manual_seed(0))  # warm-up
            sync(device)
            start = time.perf_counter()
            physics.image(density, voxel, slab, 4e4, torch.Generator().manual_seed(0))
            sync(device)
            rate = int(np.prod(shape)) * len(angles) / (time.perf_counter() - start)
            out.write(json.dumps({**common, "stage": "imaging", "device": device, "tilts": len(angles),
                                  "voxels_per_s": round(rate),
                                  "reference": "per tilt ndimage.rotate + sum, NumPy FFT, back-projection loop",
                                  "reference_voxels_per_s": round(ref_rate),
                                  "ratio_vs_reference": round(rate / ref_rate, 2)}) + "\n")
            out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
