"""Training throughput of the paper-spec CryoETGAN (cryoetgan + sn-wgan, wgan-clip, RMSProp).

For each batch size it times the real training step (``Trainer.train_step``: n_critic
critic updates + one generator update with both cycles) on synthetic volumes already on
the device, in three modes, all in this one run:

- ``fp32``: plain fp32 eager, TF32 off (the baseline);
- ``bf16``: bf16 autocast, TF32 on;
- ``fast``: bf16 autocast + channels_last_3d + torch.compile + fused/foreach optimizer.

Each JSON line gives pairs/s (one pair = one density map + one subtomogram through a full
training step), seconds per step, peak memory (CUDA allocator peak; on CPU the process's
peak RSS), achieved TFLOP/s (FLOPs of one step counted by torch.utils.flop_counter in
eager mode, divided by the measured step time) and the ratio to the fp32 baseline.

    python benchmarks/train_throughput.py                      # GPU: 40^3, batch 8 and 32
    python benchmarks/train_throughput.py --device cpu --size 16 --batch 2 --steps 2 \\
        --gen-base 4 --critic-base 4 --compile off             # CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

from cryoet_forge.config import load_config
from cryoet_forge.train.distributed import DistContext, resolve_device
from cryoet_forge.train.loop import Trainer


class _Volumes(torch.utils.data.Dataset):
    """Stand-in dataset: the benchmark feeds device tensors directly (see SyntheticTrainer)."""

    def __init__(self, n: int, size: int):
        self.n, self.size, self.box, self.voxel_size, self.class_names = n, size, size, 10.0, ["x"]

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"volume": torch.zeros(1, self.size, self.size, self.size), "label": 0,
                "class_name": "x", "index": i}


class SyntheticTrainer(Trainer):
    """The real training step, fed from pre-made device batches (no data loading in the timing)."""

    def _next(self, name: str) -> torch.Tensor:
        batch = self._batches[name]
        self.positions[name] += 1
        return batch


def build(args, mode: str, batch: int, device: torch.device) -> SyntheticTrainer:
    fast = mode == "fast"
    compile_on = fast and (args.compile == "on" or (args.compile == "auto" and device.type == "cuda"))
    cfg = load_config(None, {
        "model.generator_options": {"base": args.gen_base},
        "model.critic_options": {"base": args.critic_base},
        "train.batch_size": batch, "train.n_critic": args.n_critic, "train.steps": 10**9,
        "train.precision": "fp32" if mode == "fp32" else "bf16",
        "train.tf32": mode != "fp32", "train.compile": compile_on,
        "train.channels_last": fast, "optim.fused": fast, "train.device": str(device),
        "log.progress": False,
    })
    n = max(batch, 2)
    trainer = SyntheticTrainer(cfg, Path("unused-run-dir"), DistContext(device=device), resume=False,
                               datasets=(_Volumes(n, args.size), _Volumes(n, args.size)))
    g = torch.Generator(device=device).manual_seed(0)
    shape = (batch, 1, args.size, args.size, args.size)
    fmt = torch.channels_last_3d if fast else torch.contiguous_format
    trainer._batches = {
        "density": (torch.rand(shape, generator=g, device=device) * 2 - 1).contiguous(memory_format=fmt),
        "subtomograms": torch.randn(shape, generator=g, device=device).contiguous(memory_format=fmt),
    }
    return trainer


def count_flops(args, batch: int, device: torch.device) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    trainer = build(args, "fp32", batch, device)
    trainer.train_step()
    counter = FlopCounterMode(display=False)
    with counter:
        trainer.train_step()
    return float(counter.get_total_flops())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(args, mode: str, batch: int, device: torch.device) -> dict:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    trainer = build(args, mode, batch, device)
    for _ in range(args.warmup):
        trainer.train_step()
    sync(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        stats = trainer.train_step()
    sync(device)
    elapsed = time.perf_counter() - start
    finite = all(torch.isfinite(v).item() for v in stats.values())
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    del trainer
    return {"step_s": elapsed / args.steps, "pairs_per_s": batch * args.steps / elapsed,
            "peak_mem_gib": peak, "finite": finite}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=40)
    parser.add_argument("--batch", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per mode")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation)")
    parser.add_argument("--n-critic", type=int, default=1)
    parser.add_argument("--gen-base", type=int, default=32)
    parser.add_argument("--critic-base", type=int, default=64)
    parser.add_argument("--modes", default="fp32,bf16,fast")
    parser.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                        help="torch.compile in the fast mode (auto: on CUDA only)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, help="JSON lines file (default: stdout)")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    out = open(args.out, "a") if args.out else sys.stdout
    try:
        for batch in args.batch:
            flops = count_flops(args, batch, device)
            baseline = None
            for mode in modes:
                row = measure(args, mode, batch, device)
                if mode == "fp32":
                    baseline = row["pairs_per_s"]
                row.update({
                    "benchmark": "train_throughput", "device": name, "torch": torch.__version__,
                    "size": args.size, "batch": batch, "n_critic": args.n_critic, "mode": mode,
                    "gen_base": args.gen_base, "critic_base": args.critic_base,
                    "flops_per_step": flops, "tflops": flops / row["step_s"] / 1e12,
                    "ratio_to_fp32": row["pairs_per_s"] / baseline if baseline else None,
                })
                print(json.dumps(row), file=out, flush=True)
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
