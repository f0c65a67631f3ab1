"""Losses (values on known scores) and the typed TOML configuration."""

from __future__ import annotations

import pytest
import torch

from cryoet_forge import registry
from cryoet_forge.config import TrainConfig, load_config, parse_override, save_config
from cryoet_forge.errors import ConfigError
from cryoet_forge.losses import CycleL1Loss


def test_losses_registered():
    assert {"wgan-clip", "wgan-gp", "lsgan", "patchnce"} <= set(registry.names("loss"))
    assert "cycle-l1" not in registry.names("loss")  # the cycle term is loss.cycle_weight, not a loss


def test_wgan_values_and_gap():
    loss = registry.create("loss", "wgan-clip")
    real, fake = torch.tensor([3.0, 1.0]), torch.tensor([0.5, -0.5])
    assert loss.critic_loss(real, fake).item() == pytest.approx(0.0 - 2.0)
    assert loss.generator_loss(fake).item() == pytest.approx(0.0)
    assert loss.gap(real, fake).item() == pytest.approx(2.0)


def test_wgan_clip_clamps_every_critic_weight():
    critic = registry.create("critic", "sn-wgan", base=4)
    with torch.no_grad():
        for p in critic.parameters():
            p.normal_(0, 1)
    registry.create("loss", "wgan-clip", clip=0.02).after_critic_step(critic)
    assert max(p.abs().max().item() for p in critic.parameters()) <= 0.02
    with pytest.raises(ConfigError, match="clip"):
        registry.create("loss", "wgan-clip", clip=0)


def test_lsgan_values():
    loss = registry.create("loss", "lsgan")
    assert loss.critic_loss(torch.ones(4), torch.zeros(4)).item() == 0.0
    assert loss.critic_loss(torch.zeros(4), torch.ones(4)).item() == pytest.approx(1.0)
    assert loss.generator_loss(torch.zeros(4)).item() == pytest.approx(0.5)


def test_gradient_penalty_of_a_linear_critic():
    # critic f(x) = a . x has gradient a everywhere: penalty = w * (|a| - 1)^2
    a = torch.full((1, 1, 2, 2, 2), 0.5)  # |a| = sqrt(8 * 0.25) = sqrt(2)
    x = torch.randn(3, 1, 2, 2, 2, requires_grad=True)
    scores = (x * a).flatten(1).sum(1)
    gp = registry.create("loss", "wgan-gp", weight=10.0).penalty(scores, x)
    assert gp.item() == pytest.approx(10.0 * (2**0.5 - 1) ** 2, rel=1e-5)
    # a GradScaler-style scale must not change the value
    x2 = x.detach().clone().requires_grad_(True)
    gp2 = registry.create("loss", "wgan-gp").penalty((x2 * a).flatten(1).sum(1), x2, grad_scale=1024.0)
    assert gp2.item() == pytest.approx(gp.item(), rel=1e-5)


def test_cycle_l1():
    assert CycleL1Loss(10.0)(torch.zeros(2, 3), torch.ones(2, 3)).item() == pytest.approx(10.0)
    assert CycleL1Loss()(torch.ones(2), torch.ones(2)).item() == 0.0


def test_config_defaults_are_the_paper_settings():
    cfg = load_config(None)
    assert (cfg.optim.name, cfg.optim.lr, cfg.loss.cycle_weight) == ("rmsprop", 5e-4, 10.0)
    assert (cfg.model.generator, cfg.model.critic, cfg.loss.adversarial) == ("cryoetgan", "sn-wgan", "wgan-clip")


def test_config_round_trip_and_overrides(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[train]\nsteps = 7\n[model.generator_options]\nbase = 8\n')
    cfg = load_config(path, dict([parse_override("train.batch_size=4"),
                                  parse_override("data.density.options.box=24"),
                                  parse_override("train.precision=bf16")]))
    assert (cfg.train.steps, cfg.train.batch_size, cfg.train.precision) == (7, 4, "bf16")
    assert cfg.model.generator_options == {"base": 8}
    assert cfg.data.density.options["box"] == 24
    save_config(cfg, tmp_path / "saved.toml")
    assert load_config(tmp_path / "saved.toml") == cfg
    assert isinstance(cfg, TrainConfig)


def test_unknown_key_is_named(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[train]\nstepz = 3\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'train.stepz'.*steps"):
        load_config(path)
    with pytest.raises(ConfigError, match="unknown config key 'modell'"):
        load_config(None, {"modell.generator": "x"})


def test_bad_values_are_named():
    with pytest.raises(ConfigError, match="train.steps' must be of type int"):
        load_config(None, {"train.steps": "many"})
    with pytest.raises(ConfigError, match="train.precision 'fp8'"):
        load_config(None, {"train.precision": "fp8"})
    with pytest.raises(ConfigError, match="must look like"):
        parse_override("train.steps")


def test_lsgan_with_a_soft_real_label_and_a_gradient_penalty():
    loss = registry.create("loss", "lsgan", real_label=0.8, gp_weight=10.0)
    assert loss.needs_interpolates and not registry.create("loss", "lsgan").needs_interpolates
    assert loss.critic_loss(torch.full((4,), 0.8), torch.zeros(4)).item() == pytest.approx(0.0)
    assert loss.generator_loss(torch.zeros(4)).item() == pytest.approx(0.5 * 0.64)
    # a linear critic with gradient norm 2 everywhere: penalty 10 * (2 - 1)^2
    x = torch.randn(3, 1, 2, 2, 2, requires_grad=True)
    w = torch.zeros(1, 1, 2, 2, 2)
    w.view(-1)[0] = 2.0
    scores = (x * w).flatten(1).sum(1)
    assert loss.penalty(scores, x).item() == pytest.approx(10.0)
    with pytest.raises(ConfigError, match="lsgan real_label must be in \\(0, 1\\], got 1.5"):
        registry.create("loss", "lsgan", real_label=1.5)


def test_learning_rate_decays_linearly_from_the_stated_step():
    from cryoet_forge.train.loop import lr_factor

    optim = load_config(None, {"optim.decay_start": 4, "optim.decay_steps": 4}).optim
    assert [lr_factor(optim, step) for step in range(10)] == [1, 1, 1, 1, 1, 0.75, 0.5, 0.25, 0, 0]
    assert lr_factor(load_config(None, {}).optim, 10**6) == 1.0
    with pytest.raises(ConfigError, match="optim.decay_start and optim.decay_steps must be >= 0, got -1, 0"):
        load_config(None, {"optim.decay_start": -1})


def test_trainer_applies_the_schedule_to_both_optimizers(tmp_path):
    from pathlib import Path

    from test_train_loop import Volumes

    from cryoet_forge.train.distributed import DistContext
    from cryoet_forge.train.loop import Trainer

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "aitom-reference-cpu.toml", {
        "train.steps": 3, "optim.decay_start": 1, "optim.decay_steps": 2,
        "model.generator_options": {"base": 4, "n_residual": 1, "dropout": 0.1}})
    trainer = Trainer(cfg, tmp_path / "run", DistContext(device=torch.device("cpu")), resume=False,
                      datasets=(Volumes(size=16), Volumes(size=16, seed=1)))
    seen = []
    for step in range(3):
        trainer.step = step
        stats = trainer.train_step()
        seen.append((trainer.g_opt.param_groups[0]["lr"], trainer.c_opt.param_groups[0]["lr"]))
        assert torch.isfinite(stats["loss/penalty"]) and stats["loss/penalty"] > 0  # lsgan + gradient penalty
    assert seen == [(2e-4, 2e-4), (2e-4, 2e-4), (1e-4, 1e-4)]
