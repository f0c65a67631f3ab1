"""Simulators on CUDA agree with the CPU (skipped without a GPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryoet_forge import registry
from cryoet_forge.simulate.phantoms import PHANTOM_CLASSES, make_phantom


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["fourier", "tilt-series"])
def test_cuda_matches_cpu_without_randomness(name):
    maps = torch.from_numpy(np.stack([make_phantom(n, 24, 10.0) for n in PHANTOM_CLASSES]))
    options = {"rotate": False, "max_shift": 0.0, "defocus_um": -3.0}
    options.update({"snr": None} if name == "fourier" else {"shot_noise": "none", "ice": 0.0, "crowding": 0,
                                                             "ice_thickness_A": 0.0, "field_of_view_A": 0.0})
    sim = registry.create("simulator", name, **options)
    cpu, _ = sim.simulate(maps, 10.0, torch.Generator().manual_seed(0))
    gpu, records = sim.simulate(maps.cuda(), 10.0, torch.Generator(device="cuda").manual_seed(0))
    assert gpu.is_cuda and gpu.shape == cpu.shape
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-3, atol=1e-4 * cpu.abs().max().item())


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["fourier", "tilt-series"])
def test_cuda_with_noise_runs_and_is_deterministic(name):
    maps = torch.from_numpy(np.stack([make_phantom(n, 24, 10.0) for n in PHANTOM_CLASSES])).cuda()
    sim = registry.create("simulator", name)
    a, _ = sim.simulate(maps, 10.0, torch.Generator(device="cuda").manual_seed(1))
    b, _ = sim.simulate(maps, 10.0, torch.Generator(device="cuda").manual_seed(1))
    assert torch.isfinite(a).all()
    torch.testing.assert_close(a, b)
