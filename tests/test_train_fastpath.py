"""The fast CPU training path computes what the plain eager loop computes.

Fast path (the default): channels_last_3d, the generator forward of the last critic update
reused by the generator update, and the split form of the critics' one-channel score
convolution. Plain loop: contiguous tensors, the generators run twice, ``nn.Conv3d``.
Both draw the same noise and dropout masks.

Tolerances, stated:
- reusing the forward pass changes nothing: the losses are bit-identical (RMSProp, 3 steps);
- with SGD every logged loss of 5 steps agrees within 1e-4 relative + 3e-5 absolute (the
  memory format and the split convolution only reorder float additions; weight clipping at
  the boundary lets 1e-7 differences grow to about 5e-5 in 5 steps; measured: 1.6e-5 on a
  critic loss of 0.018 at step 5, cryoetgan + wgan-clip, in a fresh install of 2026-12-02);
- with the paper's RMSProp + weight clipping the first step's critic losses agree within
  1e-5, but later steps do not stay close for any change of summation order: RMSProp's first
  updates are about lr * g / |g|, so gradients at rounding level flip whole weight steps
  (measured: 1e-7 differences grow to 1e-1 in 3 steps for the memory format alone).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_train_loop import Volumes

from cryoet_forge.config import load_config
from cryoet_forge.models.fastconv import FewOutputConv3d
from cryoet_forge.train.distributed import DistContext
from cryoet_forge.train.loop import Trainer

GENERATORS = {
    "unet3d": {"model.generator": "unet3d",
               "model.generator_options": {"base": 4, "dropout": 0.1, "noise_channels": 1},
               "model.inverse_generator_options": {"noise_channels": 0}, "loss.cycle_noise_std": 0.3},
    "cryoetgan": {"model.generator": "cryoetgan",
                  "model.generator_options": {"base": 4, "n_residual": 1, "dropout": 0.1}},
}


def losses(fast: bool, steps: int, generator: str, **extra) -> list[dict[str, float]]:
    if generator == "unet3d":
        pytest.importorskip("cryoet_forge_unet3d", reason="the unet3d plugin is not installed")
    options = {**GENERATORS[generator], "model.critic_options": {"base": 4}, "train.batch_size": 2,
               "train.n_critic": 2, "train.steps": steps, "train.device": "cpu",
               "data.density_noise_std": 0.05, "train.channels_last": fast, "train.reuse_fakes": fast}
    options.update(extra)
    cfg = load_config(None, options)
    FewOutputConv3d.use_split = fast
    try:
        trainer = Trainer(cfg, Path("unused"), DistContext(device=torch.device("cpu")), resume=False,
                          datasets=(Volumes(), Volumes(seed=1)))
        return [{k: float(v) for k, v in trainer.train_step().items()} for _ in range(steps)]
    finally:
        FewOutputConv3d.use_split = True


def assert_close_losses(fast, plain, rtol, atol):
    assert len(fast) == len(plain)
    for step, (a, b) in enumerate(zip(fast, plain), start=1):
        assert a.keys() == b.keys()
        for key in a:
            assert abs(a[key] - b[key]) <= atol + rtol * abs(b[key]), (step, key, a[key], b[key])


def test_reuse_of_the_forward_pass_is_bit_identical():
    def run(reuse):
        return losses(False, 3, "unet3d", **{"train.reuse_fakes": reuse})
    assert run(True) == run(False)


def test_reuse_stays_bit_identical_with_the_identity_loss():
    def run(reuse):
        return losses(False, 3, "unet3d", **{"train.reuse_fakes": reuse, "loss.identity_weight": 5.0})
    with_identity = run(True)
    assert with_identity == run(False)
    assert all(step["loss/identity"] > 0 for step in with_identity)
    # the identity term enters the generator loss only: the first critic update is the same
    without = losses(False, 1, "unet3d")
    assert "loss/identity" not in without[0]
    assert with_identity[0]["loss/critic"] == without[0]["loss/critic"]


@pytest.mark.parametrize("generator", ["unet3d", "cryoetgan"])
@pytest.mark.parametrize("loss", ["wgan-clip", "wgan-gp"])
def test_fast_path_losses_equal_the_plain_loop_with_sgd(generator, loss):
    # a smaller step for the gradient penalty, whose gradients are ~100x larger
    opts = {"optim.name": "sgd", "optim.lr": 1e-3 if loss == "wgan-clip" else 1e-5, "loss.adversarial": loss}
    assert_close_losses(losses(True, 5, generator, **opts), losses(False, 5, generator, **opts),
                        rtol=1e-4, atol=3e-5)


@pytest.mark.parametrize("generator", ["unet3d", "cryoetgan"])
def test_fast_path_first_step_equals_the_plain_loop_with_rmsprop(generator):
    # one critic update per step: the logged critic losses are those before any update
    fast, plain = (losses(f, 1, generator, **{"train.n_critic": 1}) for f in (True, False))
    for key in ("loss/critic", "critic_gap/subtomograms", "critic_gap/density"):
        assert abs(fast[0][key] - plain[0][key]) <= 1e-6 + 1e-5 * abs(plain[0][key]), key


def test_the_comparison_can_fail():
    # other noise and weights (another seed) give losses far outside the tolerance above
    opts = {"optim.name": "sgd", "optim.lr": 1e-3}
    fast = losses(True, 2, "unet3d", **opts)
    other = losses(True, 2, "unet3d", **opts, **{"train.seed": 1})
    assert any(abs(a[k] - b[k]) > 1e-3 * abs(b[k]) for a, b in zip(fast, other) for k in a)


@pytest.mark.parametrize("avx512_bf16,amx,expected", [(True, False, "bf16"), (False, True, "bf16"),
                                                       (False, False, "fp32")])
def test_auto_precision_follows_the_cpu(monkeypatch, avx512_bf16, amx, expected):
    import torch.cpu

    from cryoet_forge.train.precision import resolve_precision

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    assert resolve_precision("auto", "cpu") == expected
    assert resolve_precision("fp16", "cpu") == "fp16"  # an explicit choice is kept


def test_auto_precision_trains(monkeypatch):
    import torch.cpu

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    cfg = load_config(None, {**GENERATORS["cryoetgan"], "model.critic_options": {"base": 4},
                             "train.batch_size": 2, "train.n_critic": 1, "train.device": "cpu",
                             "train.precision": "auto"})
    trainer = Trainer(cfg, Path("unused"), DistContext(device=torch.device("cpu")), resume=False,
                      datasets=(Volumes(), Volumes(seed=1)))
    assert trainer.autocast_dtype == torch.bfloat16
    stats = trainer.train_step()
    assert all(torch.isfinite(v) for v in stats.values())


def test_semantic_consistency_loss_uses_a_frozen_domain_classifier(tmp_path):
    from cryoet_forge.classify import ClassifierOptions, build_cb3d
    from cryoet_forge.errors import ConfigError, InputError
    from cryoet_forge.models.cb3d import save_cb3d

    with pytest.raises(ConfigError, match="loss.semantic_weight > 0 needs loss.semantic_classifier"):
        losses(False, 1, "cryoetgan", **{"loss.semantic_weight": 1.0})
    options = ClassifierOptions(channels=[2, 2, 2, 2], fc_width=8)
    save_cb3d(build_cb3d(options, 3, 16, seed=0), tmp_path / "clf16", ["a", "b", "c"])
    semantic = {"loss.semantic_weight": 2.0, "loss.semantic_classifier": str(tmp_path / "clf16")}
    a = losses(False, 2, "cryoetgan", **semantic, **{"train.reuse_fakes": True})
    b = losses(False, 2, "cryoetgan", **semantic, **{"train.reuse_fakes": False})
    assert a == b  # exact on the fast path too
    assert all(step["loss/semantic"] > 0 for step in a)
    save_cb3d(build_cb3d(options, 3, 24, seed=0), tmp_path / "clf24", ["a", "b", "c"])
    with pytest.raises(InputError, match="trained on 24\\^3 volumes, the run's are 16\\^3"):
        losses(False, 1, "cryoetgan", **{**semantic, "loss.semantic_classifier": str(tmp_path / "clf24")})
