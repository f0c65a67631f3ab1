"""Training throughput of CryoETGAN: the plain eager loop beside the fast paths, in one run.

Every mode times the real training step (``Trainer.train_step``: ``n_critic`` critic updates
and one generator update with both cycles) on the same data, so the ratio column compares
like with like:

- ``eager``: the plain loop, the reference: fp32, contiguous tensors, the generators run twice
  per step (no-grad for the critic, again for the generator update), ``nn.Conv3d`` everywhere,
  TF32 off;
- ``fast``: the default path, exact: channels_last_3d, the generator forward of the last
  critic update reused by the generator update, the split form of the critics' one-channel
  score convolution on CPU (``cryoet_forge.models.fastconv``), TF32 on CUDA;
- ``fast-bf16``: ``fast`` + bf16 autocast (+ fused optimizer on CUDA); not exact;
- ``compile``: ``fast`` + ``torch.compile`` (inductor); only when listed in ``--modes``.

Settings: ``quickstart`` (the embedded quickstart's GAN: 24^3, batch 4, ``unet3d`` base 8 +
``sn-wgan`` base 4, cycle noise 0.3, identity weight 5, n_critic 1) and ``paper`` (the paper's ``cryoetgan`` +
``sn-wgan`` widths, 40^3, batch 2 on CPU, 8 and 32 on CUDA). On CPU the batches come through
the trainer's own DataLoader from in-memory volumes (the quickstart's data path); on CUDA
they are pre-made device tensors.

Each JSON line has pairs/s (one pair = one density map + one subtomogram through a full
step), seconds per step, the ratio to ``eager`` of the same setting and batch, FLOPs of one
step (``torch.utils.flop_counter``, eager) and achieved TFLOP/s, the matmul peak of the
machine at the mode's precision and ``ceiling_ratio_to_eager`` (the speed-up over eager if every
FLOP of the step ran at that peak: no exact path can beat it), peak memory (CUDA: allocator
peak; CPU: the process's peak RSS so far, not per mode) and the CPU's native bf16 support.

    python benchmarks/train_throughput.py --device cpu                     # both settings
    python benchmarks/train_throughput.py --device cpu --settings quickstart --steps 10
    python benchmarks/train_throughput.py --device cuda --out gpu.jsonl    # 40^3, batch 8 and 32
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

import torch

from cryoet_forge.config import load_config
from cryoet_forge.models.fastconv import FewOutputConv3d
from cryoet_forge.train.distributed import DistContext, resolve_device
from cryoet_forge.train.loop import Trainer
from cryoet_forge.train.precision import native_bf16

SETTINGS = {
    "quickstart": {
        "size": 24, "cpu_batches": [4], "cuda_batches": [4, 32],
        "overrides": {
            "model.generator": "unet3d",
            "model.generator_options": {"base": 8, "dropout": 0.1, "noise_channels": 1},
            "model.inverse_generator_options": {"noise_channels": 0},
            "model.critic_options": {"base": 4},
            "loss.cycle_noise_std": 0.3, "data.density_noise_std": 0.05,
            # the quickstart's identity loss (configs/evaluate-quickstart.toml): two more generator passes
            "loss.identity_weight": 5.0,
        },
    },
    "paper": {
        "size": 40, "cpu_batches": [2], "cuda_batches": [8, 32],
        "overrides": {"model.generator_options": {"base": 32}, "model.critic_options": {"base": 64}},
    },
}


class Volumes(torch.utils.data.Dataset):
    """In-memory volumes in [-1, 1] with the dataset contract's item dicts."""

    def __init__(self, n: int, size: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.v = torch.rand(n, 1, size, size, size, generator=g) * 2 - 1
        self.box, self.voxel_size, self.class_names = size, 10.0, ["x"]

    def __len__(self):
        return len(self.v)

    def __getitem__(self, i):
        return {"volume": self.v[i], "label": 0, "class_name": "x", "index": i}


class DeviceBatchTrainer(Trainer):
    """The real training step, fed from pre-made device batches (no data loading timed)."""

    def _next(self, name: str) -> torch.Tensor:
        self.positions[name] += 1
        return self._batches[name]


def build(setting: dict, mode: str, batch: int, device: torch.device, n_critic: int) -> Trainer:
    fast = mode != "eager"
    cfg = load_config(None, {
        **setting["overrides"],
        "train.batch_size": batch, "train.n_critic": n_critic, "train.steps": 10**9,
        "train.precision": "bf16" if mode == "fast-bf16" else "fp32",
        "train.tf32": fast, "train.compile": mode == "compile", "train.channels_last": "auto" if fast else False,
        "train.reuse_fakes": fast, "optim.fused": mode == "fast-bf16", "train.device": str(device),
        "log.progress": False,
    })
    size = setting["size"]
    datasets = (Volumes(4 * batch, size, 0), Volumes(4 * batch, size, 1))
    cls = DeviceBatchTrainer if device.type == "cuda" else Trainer
    trainer = cls(cfg, Path("unused-run-dir"), DistContext(device=device), resume=False, datasets=datasets)
    if device.type == "cuda":
        fmt = trainer.memory_format
        trainer._batches = {name: ds.v[:batch].to(device).contiguous(memory_format=fmt)
                            for name, ds in zip(("density", "subtomograms"), datasets)}
    return trainer


def cpu_name() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_flops(setting: dict, batch: int, device: torch.device, n_critic: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    FewOutputConv3d.use_split = False
    try:
        trainer = build(setting, "eager", batch, device, n_critic)
        trainer.train_step()
        counter = FlopCounterMode(display=False)
        with counter:
            trainer.train_step()
    finally:
        FewOutputConv3d.use_split = True
    return float(counter.get_total_flops())


def gemm_peak(device: torch.device, dtype: torch.dtype, n: int = 4096, reps: int = 5) -> float:
    """FLOP/s of a large square matmul in ``dtype``: what this machine's BLAS reaches at best.

    The step's FLOPs divided by this peak give the shortest step the hardware allows, so
    ``ceiling_ratio_to_eager`` (eager step time / that shortest step) is the largest speed-up over
    the plain loop any path could reach at that precision without computing less.
    """
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    torch.mm(a, b)
    sync(device)
    tic = time.perf_counter()
    for _ in range(reps):
        torch.mm(a, b)
    sync(device)
    return reps * 2 * n**3 / (time.perf_counter() - tic)


def measure(setting: dict, mode: str, batch: int, device: torch.device, args, steps: int) -> dict:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    FewOutputConv3d.use_split = mode != "eager"
    try:
        trainer = build(setting, mode, batch, device, args.n_critic)
        tic = time.perf_counter()
        for _ in range(args.warmup):
            trainer.train_step()
        sync(device)
        warmup_s = time.perf_counter() - tic
        start = time.perf_counter()
        for _ in range(steps):
            stats = trainer.train_step()
        sync(device)
        elapsed = time.perf_counter() - start
    finally:
        FewOutputConv3d.use_split = True
    finite = all(torch.isfinite(v).item() for v in stats.values())
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    return {"step_s": elapsed / steps, "pairs_per_s": batch * steps / elapsed,
            "warmup_s": warmup_s, "peak_mem_gib": peak, "finite": finite}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default="quickstart,paper", help="comma-separated: quickstart, paper")
    parser.add_argument("--batch", type=int, nargs="+", default=None,
                        help="batch sizes (default: per setting and device, see the module docstring)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per mode (CPU 10/3, CUDA 20)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation, caches)")
    parser.add_argument("--n-critic", type=int, default=1)
    parser.add_argument("--modes", default="eager,fast,fast-bf16", help="eager is always run first")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--out", type=Path, help="append JSON lines here (default: stdout)")
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP count (two more eager steps)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    modes = [m.strip() for m in args.modes.split(",") if m.strip() and m.strip() != "eager"]
    unknown = set(modes) - {"fast", "fast-bf16", "compile"}
    if unknown:
        parser.error(f"unknown modes {sorted(unknown)}; choose from eager, fast, fast-bf16, compile")
    out = open(args.out, "a") if args.out else sys.stdout
    peaks = {"fp32": None, "bf16": None}
    if not args.no_flops:
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = False
        peaks = {"fp32": gemm_peak(device, torch.float32), "bf16": gemm_peak(device, torch.bfloat16)}
        print(f"# matmul peak: fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s",
              file=sys.stderr, flush=True)
    try:
        for setting_name in [s.strip() for s in args.settings.split(",") if s.strip()]:
            if setting_name not in SETTINGS:
                parser.error(f"unknown setting {setting_name!r}; choose from {', '.join(SETTINGS)}")
            setting = SETTINGS[setting_name]
            batches = args.batch or setting["cuda_batches" if device.type == "cuda" else "cpu_batches"]
            steps = args.steps or (20 if device.type == "cuda" else (10 if setting_name == "quickstart" else 3))
            for batch in batches:
                flops = None if args.no_flops else count_flops(setting, batch, device, args.n_critic)
                baseline = None
                for mode in ["eager", *modes]:
                    row = measure(setting, mode, batch, device, args, steps)
                    if mode == "eager":
                        baseline, eager_step = row["pairs_per_s"], row["step_s"]
                    peak = peaks["bf16" if mode == "fast-bf16" else "fp32"]
                    row.update({
                        "benchmark": "train_throughput", "setting": setting_name, "mode": mode,
                        "device": name, "threads": torch.get_num_threads(), "torch": torch.__version__,
                        "native_bf16": native_bf16(device), "size": setting["size"], "batch": batch,
                        "n_critic": args.n_critic, "steps": steps, "flops_per_step": flops,
                        "tflops": None if flops is None else flops / row["step_s"] / 1e12, "reference": "eager",
                        "reference_pairs_per_s": baseline, "ratio_to_eager": row["pairs_per_s"] / baseline,
                        "gemm_peak_tflops": None if peak is None else peak / 1e12,
                        "ceiling_ratio_to_eager": (None if flops is None or peak is None
                                                   else eager_step / (flops / peak)),
                    })
                    print(json.dumps(row), file=out, flush=True)
                    print(f"# {setting_name} batch {batch} {mode:9s} {row['pairs_per_s']:8.2f} pairs/s "
                          f"({row['step_s']:.3f} s/step), eager {baseline:.2f} pairs/s, "
                          f"ratio {row['ratio_to_eager']:.2f}x"
                          + ("" if row["ceiling_ratio_to_eager"] is None else
                             f" (ceiling at matmul peak {row['ceiling_ratio_to_eager']:.2f}x)"),
                          file=sys.stderr, flush=True)
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
