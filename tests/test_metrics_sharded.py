"""Exact PRDC split over the processes of a torch.distributed job (Gloo on CPU): 2 processes give
the same radii and counts as 1, bit for bit, through the Python API and through
`torchrun ... forge metrics`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cryoet_forge.metrics.knn import ExactKnn
from tests_support import assert_one_line_error, forge_executable


def _sets(kind: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    if kind == "gaussian":  # 3 x 3 tiles of 512 rows: every process gets several of each sweep
        real = rng.standard_normal((1300, 9), dtype=np.float32)
        fake = rng.standard_normal((1100, 9), dtype=np.float32) * np.float32(1.1) + np.float32(0.05)
    else:  # many exact duplicates: candidate lists overflow and rows are recomputed against all
        base = rng.standard_normal((25, 4), dtype=np.float32)
        real = np.repeat(base, 48, axis=0)
        fake = np.repeat(base[:20] + np.float32(0.01), 40, axis=0)
    return real, fake


WORKER = """
import sys
import numpy as np
import torch.distributed as dist
from cryoet_forge.metrics.sharded import ShardedExactKnn

rank, world, store, data, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
arrays = np.load(data)
engine = ShardedExactKnn()
results = {}
for inclusive in (False, True):
    c = engine.prdc_counts(arrays["real"], arrays["fake"], int(arrays["k"]), inclusive=inclusive)
    results[f"{inclusive}_counts"] = np.array([c.precision_count, c.recall_count, c.density_count, c.coverage_count])
    results[f"{inclusive}_real_radii"] = c.real_radii
    results[f"{inclusive}_fake_radii"] = c.fake_radii
np.savez(f"{out}.{rank}.npz", **results)
dist.destroy_process_group()
"""


def _run_workers(tmp_path: Path, real, fake, k: int, world: int) -> list[dict[str, np.ndarray]]:
    data = tmp_path / "data.npz"
    np.savez(data, real=real, fake=fake, k=k)
    env = {**os.environ, "RAYON_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(rank), str(world), str(tmp_path / "store"),
                               str(data), str(tmp_path / "out")], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in range(world)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    return [dict(np.load(tmp_path / f"out.{rank}.npz")) for rank in range(world)]


@pytest.mark.parametrize("kind", ["gaussian", "duplicates"])
def test_two_gloo_processes_equal_one_bit_for_bit(tmp_path, kind):
    real, fake = _sets(kind)
    k = 5 if kind == "gaussian" else 45
    results = _run_workers(tmp_path, real, fake, k, world=2)
    for inclusive in (False, True):
        one = ExactKnn().prdc_counts(real, fake, k, inclusive=inclusive)
        want = np.array([one.precision_count, one.recall_count, one.density_count, one.coverage_count])
        for rank, got in enumerate(results):
            np.testing.assert_array_equal(got[f"{inclusive}_counts"], want, err_msg=f"rank {rank}")
            assert np.array_equal(got[f"{inclusive}_real_radii"].view(np.uint32), one.real_radii.view(np.uint32))
            assert np.array_equal(got[f"{inclusive}_fake_radii"].view(np.uint32), one.fake_radii.view(np.uint32))
    if kind == "duplicates":  # 48 copies of each real row and k = 45: every real radius is 0
        assert (results[0]["False_real_radii"] == 0).all() and (results[0]["False_fake_radii"] > 0).all()


def _torchrun() -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def test_torchrun_forge_metrics_equals_one_process(tmp_path):
    real, fake = _sets("gaussian")
    np.save(tmp_path / "real.npy", real)
    np.save(tmp_path / "fake.npy", fake)
    args = ["metrics", "--real", str(tmp_path / "real.npy"), "--fake", str(tmp_path / "fake.npy"), "--k", "5"]
    one = subprocess.run([forge_executable(), *args, "--json", str(tmp_path / "one.json")],
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run([*_torchrun(), forge_executable(), *args, "--json", str(tmp_path / "two.json")],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("forge metrics: 1300 real x 1100 fake") == 1  # the first process reports
    assert "x 2 processes" in two.stdout
    a, b = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("one", "two"))
    for key in ("precision", "recall", "density", "coverage", "counts", "real_radius_median",
                "fake_radius_median", "fid"):
        assert a[key] == b[key], key
    assert b["prdc_info"]["world_size"] == 2


def test_under_a_launcher_only_the_exact_backend_is_split(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((10, 2), np.float32))
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "0"}
    proc = subprocess.run([forge_executable(), "metrics", "--real", str(tmp_path / "x.npy"), "--fake",
                           str(tmp_path / "x.npy"), "--backend", "torch"], capture_output=True, text=True, env=env)
    assert_one_line_error(proc.returncode, proc.stderr, "under torchrun (WORLD_SIZE=2)",
                          "splits the exact backend only; got --backend torch")
    env["RANK"] = "5"
    proc = subprocess.run([forge_executable(), "metrics", "--real", str(tmp_path / "x.npy"), "--fake",
                           str(tmp_path / "x.npy")], capture_output=True, text=True, env=env)
    assert_one_line_error(proc.returncode, proc.stderr, "RANK=5 is outside 0..1 for WORLD_SIZE=2")
