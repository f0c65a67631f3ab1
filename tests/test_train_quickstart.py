"""End to end: the quickstart configuration trains on the CPU, then generate and uncertainty work."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from tests_support import forge_executable

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quickstart_trains_then_generates_and_estimates_uncertainty(tmp_path):
    # the wall time is printed, not asserted: timings belong in benchmarks (shared machines vary)
    run = tmp_path / "quickstart"
    start = time.perf_counter()
    subprocess.run([forge_executable(), "train", "--config", str(REPO / "configs" / "quickstart.toml"),
                    "--out", str(run)], check=True, timeout=900)
    elapsed = time.perf_counter() - start
    print(f"quickstart training took {elapsed:.0f} s")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000075", "step-00000100"]
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert sorted(p.name for p in (run / "images").glob("*.png")) == [
        "step-00000025.png", "step-00000050.png", "step-00000075.png", "step-00000100.png"]

    for seed in ("0", "0", "1"):
        subprocess.run([forge_executable(), "generate", "--run", str(run), "--structures", "ring",
                        "--n-per-map", "2", "--out", str(tmp_path / f"gen-{seed}-{time.monotonic_ns()}"),
                        "--seed", seed], check=True, timeout=300)
    outs = sorted(tmp_path.glob("gen-*"), key=lambda p: int(p.name.split("-")[-1]))
    from cryoet_forge.io.mrc import read_mrc, write_mrc

    volumes = [np.stack([read_mrc(f)[0] for f in sorted((o / "subtomograms").glob("*.mrc"))]) for o in outs]
    assert volumes[0].shape == (2, 24, 24, 24)
    assert np.array_equal(volumes[0], volumes[1])
    assert np.abs(volumes[0] - volumes[2]).max() > 1e-3

    from cryoet_forge.simulate.phantoms import make_phantom

    write_mrc(tmp_path / "ring.mrc", make_phantom("ring", 24, 10.0), 10.0)
    subprocess.run([forge_executable(), "uncertainty", "--run", str(run), "--map", str(tmp_path / "ring.mrc"),
                    "--samples", "20", "--out", str(tmp_path / "unc")], check=True, timeout=300)
    assert {p.name for p in (tmp_path / "unc").iterdir()} == {"mean.mrc", "std.mrc", "overlay.png"}
