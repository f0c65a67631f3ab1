"""Speed of whole-tomogram refinement and of the segmentation picker, each beside a plain reference.

1. **Refinement** (``cryoet_forge.refine.refine_volume``: a generator over a tomogram by
   overlapping tiles, blended): against the same generator over the same tiles *without* overlap
   or blending (a plain loop over abutting tiles, the least work a tiled pass can do). The ratio
   is the price of seamless output: < 1 by about the extra tiles the overlap asks for.
2. **Picker inference** (``SegmentationPicker.probabilities``: softmax of the U-Net by blended
   tiles): against one pass of the U-Net over the whole tomogram at once (where it fits memory).
3. **Picker training**: steps per second of ``SegmentationPicker.fit`` (crop sampling, sphere
   targets, flips, weighted cross-entropy, AdamW) against the bare PyTorch step on random
   tensors of the same shape (the network's own cost: the ratio is our data pipeline's overhead).

Rates are voxels per second (tomogram voxels) or steps per second; the ratio ours / reference is
measured in the same run. One JSON line per measurement, appended to ``--out FILE`` (default stdout).

    python benchmarks/bench_picking.py --threads 2 --out picking.jsonl
    python benchmarks/bench_picking.py --size 96,256,256 --device cuda
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time

import numpy as np
import torch

from cryoet_forge.models.generators import CryoETGANGenerator
from cryoet_forge.picking.segmentation import PickerOptions, SegmentationPicker, zscore
from cryoet_forge.picking.tomograms import LabelledTomogram
from cryoet_forge.picking.unet import SegmentationUNet
from cryoet_forge.refine import refine_volume


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


@torch.no_grad()
def abutting_tiles(model: torch.nn.Module, volume: np.ndarray, tile: int, device: str) -> np.ndarray:
    """The reference: the generator over abutting tiles (the volume a multiple of the tile), no blend."""
    out = np.zeros_like(volume)
    z, y, x = volume.shape
    for a in range(0, z, tile):
        for b in range(0, y, tile):
            for c in range(0, x, tile):
                t = torch.from_numpy(np.ascontiguousarray(volume[a:a + tile, b:b + tile, c:c + tile]))[None, None]
                noise = torch.randn(model.noise_shape(tuple(t.shape))) if getattr(model, "noise", False) else None
                y_ = model(t.to(device), noise=noise.to(device)) if noise is not None else model(t.to(device))
                out[a:a + tile, b:b + tile, c:c + tile] = y_[0, 0].cpu().numpy()
    return out


def toy_tomogram(shape: tuple[int, int, int], seed: int) -> LabelledTomogram:
    rng = np.random.default_rng(seed)
    volume = rng.standard_normal(shape).astype(np.float32)
    picks = {"a": rng.uniform(8, np.array(shape[::-1]) - 8, size=(20, 3)),
             "b": rng.uniform(8, np.array(shape[::-1]) - 8, size=(20, 3))}
    return LabelledTomogram("bench", volume, 10.0, picks, {"a": 60.0, "b": 40.0})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="64,128,128", help="tomogram z,y,x (multiples of --tile)")
    parser.add_argument("--tile", type=int, default=32)
    parser.add_argument("--overlap", type=int, default=8)
    parser.add_argument("--base", type=int, default=16, help="generator width (the quickstart's is 16)")
    parser.add_argument("--steps", type=int, default=10, help="picker training steps timed")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = tuple(int(v) for v in args.size.split(","))
    if any(n % args.tile for n in shape):
        parser.error(f"--size {args.size}: every axis must be a multiple of --tile {args.tile}")
    device = args.device
    voxels = int(np.prod(shape))
    common = {"benchmark": "picking", "size_zyx": list(shape), "tile": args.tile, "overlap": args.overlap,
              "device": device, "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
              "machine": platform.machine(), "python": platform.python_version(), "torch": torch.__version__}
    torch.manual_seed(0)
    volume = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    with open(args.out, "a") if args.out else contextlib.nullcontext(sys.stdout) as out:
        def write(record: dict) -> None:
            out.write(json.dumps({**common, **record}) + "\n")
            out.flush()

        generator = CryoETGANGenerator(base=args.base).eval().to(device)
        refine_volume(generator, volume[:args.tile, :args.tile, :args.tile], 0, args.tile, 0, device=device)  # warm-up
        ours = timed(lambda: refine_volume(generator, volume, 0, args.tile, args.overlap, device=device), device)
        ref = timed(lambda: abutting_tiles(generator, volume, args.tile, device), device)
        write({"stage": "refinement", "generator": f"cryoetgan base {args.base}", "voxels_per_s": round(voxels / ours),
               "reference": "abutting tiles, no overlap, no blend", "reference_voxels_per_s": round(voxels / ref),
               "ratio_vs_reference": round(ref / ours, 3)})

        options = PickerOptions(patch=args.tile, tile=args.tile, overlap=args.overlap, steps=args.steps,
                                device=device)
        tomogram = toy_tomogram(shape, 0)
        picker = SegmentationPicker(options)
        picker.fit([tomogram], seed=0)  # warm-up and a trained network to time inference with
        ours = timed(lambda: picker.probabilities(volume), device)
        net = picker.model
        assert net is not None

        def whole() -> None:
            with torch.no_grad():
                torch.softmax(net(torch.from_numpy(zscore(volume))[None, None].to(device)), dim=1)

        ref = timed(whole, device)
        write({"stage": "picker inference", "channels": options.channels, "voxels_per_s": round(voxels / ours),
               "reference": "one U-Net pass over the whole tomogram", "reference_voxels_per_s": round(voxels / ref),
               "ratio_vs_reference": round(ref / ours, 3)})

        seconds = timed(lambda: SegmentationPicker(options).fit([tomogram], seed=1), device)
        model = SegmentationUNet(3, options.channels).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=options.lr)
        x = torch.randn(options.batch_size, 1, args.tile, args.tile, args.tile, device=device)
        y = torch.randint(0, 3, (options.batch_size, args.tile, args.tile, args.tile), device=device)

        def bare() -> None:
            for _ in range(args.steps):
                loss = torch.nn.functional.cross_entropy(model(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

        ref = timed(bare, device)
        write({"stage": "picker training", "channels": options.channels, "batch": options.batch_size,
               "patch": args.tile, "steps_per_s": round(args.steps / seconds, 3),
               "reference": "bare PyTorch steps on random tensors", "reference_steps_per_s": round(args.steps / ref, 3),
               "ratio_vs_reference": round(ref / seconds, 3)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
