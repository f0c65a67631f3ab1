"""The training loop on tiny in-memory volumes: losses, precisions, logging, NaN handling, sampler."""

from __future__ import annotations

import glob

import pytest
import torch

from cryoet_forge.config import load_config
from cryoet_forge.errors import TrainingError
from cryoet_forge.train import train
from cryoet_forge.train.checkpoint import list_checkpoints
from cryoet_forge.train.distributed import ResumableBatchSampler


class Volumes(torch.utils.data.Dataset):
    """Random cubes in [-1, 1]; from call ``nan_after`` on, volumes are NaN."""

    def __init__(self, n=8, size=16, seed=0, nan_after=None):
        g = torch.Generator().manual_seed(seed)
        self.v = torch.rand(n, 1, size, size, size, generator=g) * 2 - 1
        self.box, self.voxel_size, self.class_names = size, 10.0, ["phantom"]
        self.calls, self.nan_after = 0, nan_after

    def __len__(self):
        return len(self.v)

    def __getitem__(self, i):
        self.calls += 1
        v = self.v[i]
        if self.nan_after is not None and self.calls > self.nan_after:
            v = torch.full_like(v, float("nan"))
        return {"volume": v, "label": 0, "class_name": "phantom", "index": i}


def tiny(**extra):
    base = {"model.generator_options": {"base": 4, "n_residual": 1},
            "model.critic_options": {"base": 4}, "train.batch_size": 2, "train.n_critic": 2,
            "train.steps": 2, "train.device": "cpu", "log.every": 1, "log.image_every": 0,
            "log.checkpoint_every": 1, "log.progress": False}
    base.update(extra)
    return load_config(None, base)


@pytest.mark.parametrize("loss", ["wgan-clip", "wgan-gp", "lsgan"])
def test_each_loss_trains_and_logs_scalars(loss, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = train(tiny(**{"loss.adversarial": loss}), tmp_path / loss, datasets=(Volumes(), Volumes(seed=1)))
    events = EventAccumulator(glob.glob(str(run / "tensorboard" / "events.*"))[0])
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss/critic", "loss/generator", "loss/cycle", "critic_gap/subtomograms",
            "critic_gap/density", "throughput/pairs_per_s"} <= tags
    assert [e.step for e in events.Scalars("loss/cycle")] == [1, 2]
    assert all(e.value > 0 for e in events.Scalars("throughput/pairs_per_s"))
    if loss == "wgan-gp":
        assert events.Scalars("loss/penalty")[-1].value > 0


def test_wgan_clip_keeps_critic_weights_clipped(tmp_path):
    from safetensors.torch import load_file

    run = train(tiny(**{"loss.options": {"clip": 0.005}}), tmp_path / "r", datasets=(Volumes(), Volumes(seed=1)))
    weights = load_file(str(list_checkpoints(run)[-1] / "weights.safetensors"))
    critic = [v for k, v in weights.items() if k.startswith("c_") and k.endswith(("original", "bias"))]
    assert critic and max(v.abs().max().item() for v in critic) <= 0.005 + 1e-9


@pytest.mark.parametrize(("precision", "loss"), [("bf16", "wgan-clip"), ("fp16", "wgan-clip"), ("fp16", "wgan-gp")])
def test_mixed_precision_on_cpu(precision, loss, tmp_path):
    from cryoet_forge.train.checkpoint import load_checkpoint

    run = train(tiny(**{"train.precision": precision, "loss.adversarial": loss}), tmp_path / precision,
                datasets=(Volumes(), Volumes(seed=1)))
    step, weights, state = load_checkpoint(list_checkpoints(run)[-1])
    assert step == 2 and all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())
    if precision == "fp16":
        assert state["scalers"]["generator"]["scale"] > 0  # the GradScaler state is checkpointed


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    # each step draws n_critic = 2 batches of 2 per domain: calls 1-4 are step 1, 5-8 step 2
    density = Volumes(nan_after=6)
    with pytest.raises(TrainingError, match=r"non-finite loss at step 2 .*last good checkpoint: .*step-00000001"):
        train(tiny(**{"train.steps": 4}), tmp_path / "r", datasets=(density, Volumes(seed=1)))
    assert [p.name for p in list_checkpoints(tmp_path / "r")] == ["step-00000001"]


def test_data_positions_are_checkpointed(tmp_path):
    from cryoet_forge.train.checkpoint import load_checkpoint

    run = train(tiny(**{"train.steps": 3, "train.n_critic": 3}), tmp_path / "r",
                datasets=(Volumes(), Volumes(seed=1)))
    _, _, state = load_checkpoint(list_checkpoints(run)[-1])
    assert state["data_position"] == {"density": 9, "subtomograms": 9}
    assert state["step"] == 3


def test_refuses_to_overwrite_a_run(tmp_path):
    from cryoet_forge.errors import InputError

    run = train(tiny(), tmp_path / "r", datasets=(Volumes(), Volumes(seed=1)))
    with pytest.raises(InputError, match="already holds checkpoints; continue it with --resume"):
        train(tiny(), run, datasets=(Volumes(), Volumes(seed=1)))


def test_sampler_shards_the_global_batch_and_resumes():
    full = ResumableBatchSampler(10, 4, seed=3)
    ranks = [ResumableBatchSampler(10, 4, seed=3, rank=r, world_size=2) for r in range(2)]
    it_full, it_ranks = iter(full), [iter(s) for s in ranks]
    seen = []
    for _ in range(5):  # 2 batches per epoch: crosses epochs
        batch = next(it_full)
        assert next(it_ranks[0]) + next(it_ranks[1]) == batch
        seen.append(batch)
    assert sorted(seen[0] + seen[1]) != sorted(range(10))  # 8 of 10: the remainder is dropped
    assert len(set(seen[0] + seen[1])) == 8
    later = iter(ResumableBatchSampler(10, 4, seed=3, start=3))
    assert next(later) == seen[3] and next(later) == seen[4]
    from cryoet_forge.errors import ConfigError

    with pytest.raises(ConfigError, match="not divisible"):
        ResumableBatchSampler(10, 3, seed=0, world_size=2)


@pytest.mark.slow
def test_torch_compile_step_on_cpu(tmp_path):
    run = train(tiny(**{"train.compile": True, "train.steps": 1}), tmp_path / "c",
                datasets=(Volumes(), Volumes(seed=1)))
    assert list_checkpoints(run)


def test_cycle_noise_changes_training_and_is_validated(tmp_path):
    from cryoet_forge.errors import ConfigError
    from cryoet_forge.train.checkpoint import load_weights

    def final_weights(name, **extra):
        # a fixed memory format: "auto" measures, and a close call may go either way between runs
        extra.setdefault("train.channels_last", True)
        run = train(tiny(**extra), tmp_path / name, datasets=(Volumes(), Volumes(seed=1)))
        return load_weights(list_checkpoints(run)[-1])

    plain, again = final_weights("plain"), final_weights("again")
    noisy = final_weights("noisy", **{"loss.cycle_noise_std": 0.3})
    assert all(torch.equal(plain[k], again[k]) for k in plain)  # the option off changes nothing
    # the cycle noise reaches the S -> D generator's gradients in the D -> S -> D cycle
    assert any(not torch.equal(plain[k], noisy[k]) for k in plain if k.startswith("g_sd."))
    with pytest.raises(ConfigError, match="cycle_noise_std must be >= 0, got -0.1"):
        train(tiny(**{"loss.cycle_noise_std": -0.1}), tmp_path / "bad", datasets=(Volumes(), Volumes(seed=1)))


def test_auto_memory_format_is_measured_saved_and_kept_on_resume(tmp_path, monkeypatch):
    from cryoet_forge.train import memory_format

    calls = []
    real = memory_format.time_forward_backward

    def timed(net, box, device, fmt, autocast, batch=1):
        calls.append((fmt, batch))
        return real(net, box, device, fmt, autocast, batch)

    monkeypatch.setattr(memory_format, "time_forward_backward", timed)
    run = train(tiny(), tmp_path / "auto", datasets=(Volumes(), Volumes(seed=1)))
    # generators at the batch (2), critics at twice it (real and fake together), each in both formats
    assert sorted(b for _, b in calls) == [2, 2, 4, 4] and len({f for f, _ in calls}) == 2
    from cryoet_forge.train.checkpoint import load_checkpoint

    saved = load_checkpoint(list_checkpoints(run)[-1])[2]["memory_formats"]
    assert set(saved) == {"g_ds", "g_sd", "c_s", "c_d"} and set(saved.values()) <= {"channels_last", "contiguous"}
    assert saved["g_ds"] == saved["g_sd"] and saved["c_s"] == saved["c_d"]

    calls.clear()
    from cryoet_forge.train import resume_config

    train(resume_config(run, {"train.steps": 3}), run, resume=True, datasets=(Volumes(), Volumes(seed=1)))
    assert calls == []  # the resumed run reuses the saved formats
    assert load_checkpoint(list_checkpoints(run)[-1])[2]["memory_formats"] == saved

    train(tiny(**{"train.deterministic": True}), tmp_path / "det", datasets=(Volumes(), Volumes(seed=1)))
    assert calls == []  # deterministic runs do not measure


def test_channels_last_setting_is_validated(tmp_path):
    with pytest.raises(Exception, match="train.channels_last 'yes'; choose from: true, false"):
        tiny(**{"train.channels_last": "yes"})
