"""The same work on the CPU and on CUDA: each test runs on the CPU everywhere and again on the GPU
where one is visible (the `cuda` cases are marked `gpu` and skipped without one). What is asserted
is behaviour that must hold on either device: a bit-exact resume, finite mixed-precision steps, a
classifier and a picker that learn, a refined tomogram equal to the CPU's up to rounding.
`benchmarks/device/check.sh` runs them on a GPU machine."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_classify import TOY_OPTIONS, toy_shapes
from test_picking import toy_tomogram
from test_train_callbacks import EXACT, Recorder, data, final_state
from test_train_loop import tiny

from cryoet_forge.classify import ClassifierOptions, evaluate_cb3d, train_cb3d
from cryoet_forge.picking.score import score_picks
from cryoet_forge.picking.segmentation import PickerOptions, SegmentationPicker
from cryoet_forge.train import resume_config, train

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.mark.parametrize("device", DEVICES)
def test_training_stopped_and_resumed_equals_training_straight_through(device, tmp_path):
    reference = Recorder()
    train(tiny(**EXACT, **{"train.device": device}), tmp_path / "reference", datasets=data(), callbacks=[reference])
    stopper = Recorder(stop_at=2)
    run = train(tiny(**EXACT, **{"train.device": device}), tmp_path / "stopped", datasets=data(),
                callbacks=[stopper])
    resumed = Recorder()
    train(resume_config(run), run, resume=True, datasets=data(), callbacks=[resumed])
    assert sorted(resumed.losses) == [3, 4]
    assert all(resumed.losses[s] == reference.losses[s] for s in (3, 4))
    (expected, expected_json), (got, got_json) = final_state(tmp_path / "reference", 4), final_state(run, 4)
    assert expected.keys() == got.keys() and got_json == expected_json
    different = [k for k in expected if not torch.equal(expected[k], got[k])]
    assert not different, f"{len(different)} tensors differ on {device}, e.g. {different[:3]}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("precision", ["bf16", "fp16", "auto"])
def test_mixed_precision_steps_are_finite_and_train(device, precision, tmp_path):
    recorder = Recorder()
    cfg = tiny(**{"train.device": device, "train.precision": precision, "train.steps": 3,
                  "optim.fused": device == "cuda"})
    train(cfg, tmp_path / precision, datasets=data(), callbacks=[recorder])
    assert sorted(recorder.losses) == [1, 2, 3]
    for losses in recorder.losses.values():
        assert losses and all(np.isfinite(v) for v in losses.values()), losses
    final, _ = final_state(tmp_path / precision, 3)
    assert all(torch.isfinite(t).all() for k, t in final.items() if t.is_floating_point())


@pytest.mark.parametrize("device", DEVICES)
def test_cb3d_learns_the_toy_shapes(device):
    options = ClassifierOptions(**{**TOY_OPTIONS, "epochs": 12, "device": device})
    model, history = train_cb3d(toy_shapes(12, seed=0), options, seed=0)
    assert next(model.parameters()).device.type == device
    result = evaluate_cb3d(model, toy_shapes(8, seed=1), ["ball", "shell", "rod"], device=device)
    assert result.accuracy >= 0.8, result.accuracy
    assert len(history.loss) == 12


@pytest.mark.parametrize("device", DEVICES)
def test_the_picker_finds_the_big_balls(device):
    train_tomogram, test = toy_tomogram(0), toy_tomogram(1)
    options = PickerOptions(channels=[8, 16], patch=24, steps=60, batch_size=4, tile=32, overlap=8, lr=3e-3,
                            device=device)
    picker = SegmentationPicker(options).fit([train_tomogram], seed=0)
    result = score_picks(test.picks, picker.pick(test.volume, test.voxel_size), test.radii_A)
    assert result["classes"]["big"]["recall"] >= 0.8, result


@pytest.mark.gpu
def test_refinement_on_cuda_equals_the_cpu(tmp_path):
    from test_generate_uncertainty import TINY_RUN

    from cryoet_forge.config import load_config
    from cryoet_forge.refine import refine_tomogram

    run = train(load_config(None, TINY_RUN), tmp_path / "run")
    volume = np.random.default_rng(0).standard_normal((40, 48, 56)).astype(np.float32)
    cpu = refine_tomogram(run, volume, seed=0, tile=32, overlap=8, device="cpu")
    gpu = refine_tomogram(run, volume, seed=0, tile=32, overlap=8, device="cuda")
    assert gpu.shape == cpu.shape == volume.shape
    # cuDNN may convolve in TF32 (10-bit mantissa): equal up to that rounding, not bit for bit
    assert float(np.abs(gpu - cpu).max()) <= 0.02 * float(np.abs(cpu).max())
    assert np.corrcoef(gpu.ravel(), cpu.ravel())[0, 1] > 0.9999
