"""The generator regularisers, PatchNCE (CUT) and the radial spectrum: their layers, values, and the trainer around them."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from test_train_fastpath import losses
from test_train_loop import Volumes, tiny

from cryoet_forge import registry
from cryoet_forge.config import load_config
from cryoet_forge.contrastive import (
    PatchNCELoss,
    RegularizerInputs,
    encoder_layers,
    patch_nce,
)
from cryoet_forge.errors import ConfigError
from cryoet_forge.models.generators import CryoETGANGenerator
from cryoet_forge.train import resume_config, train
from cryoet_forge.train.checkpoint import load_checkpoint


def _names(net, layers):
    names = {id(m): n for n, m in net.named_modules()}
    return [names[id(m)] for m, _ in layers]


def test_encoder_layers_follow_cut_on_the_paper_generator():
    g = CryoETGANGenerator(base=4, n_residual=3)
    x = torch.zeros(1, 1, 16, 16, 16)
    # the stem, each downsampling, the middle convolution of the residual stage; no decoder layer
    assert _names(g, encoder_layers(g, x, 4)) == ["stem.0", "down1.0", "down2.0", "residual.1.body.0"]
    assert [c for _, c in encoder_layers(g, x, 4)] == [4, 8, 16, 16]
    assert _names(g, encoder_layers(g, x, 2)) == ["stem.0", "residual.1.body.0"]
    picked = _names(g, encoder_layers(g, x, 20))
    assert len(picked) == 9 and not any(n.startswith(("up", "head")) for n in picked)
    assert _names(g, encoder_layers(g, x, 1, ["down2.0", "stem.0"])) == ["stem.0", "down2.0"]
    with pytest.raises(ConfigError, match=r"patchnce layer_names \['nope'\]: not Conv3d layers of "
                                          r"CryoETGANGenerator \(its Conv3d layers: stem.0, down1.0"):
        encoder_layers(g, x, 1, ["nope"])


def test_patch_nce_value_for_orthogonal_patches():
    # q = k = P orthonormal features: positive logit 1/T, P - 1 negatives of 0, the masked self -10/T
    p, t = 5, 0.5
    q = torch.eye(p).unsqueeze(0).repeat(2, 1, 1)
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + (p - 1) + math.exp(-10 / t)))
    assert patch_nce(q, q.clone(), t).item() == pytest.approx(expected, rel=1e-6)
    # a query that matches another patch better than its own place pays more
    shifted = torch.roll(q, 1, dims=1)
    assert patch_nce(shifted, q, t).item() > expected + 1.0


def test_patch_nce_is_lowest_when_the_output_keeps_the_input():
    torch.manual_seed(0)
    g, h = CryoETGANGenerator(base=4, n_residual=1), CryoETGANGenerator(base=4, n_residual=1, noise=False)
    reg = PatchNCELoss(weight=2.0, patches=64)
    reg.setup(g, h, torch.zeros(1, 1, 16, 16, 16))
    d = torch.randn(2, 1, 16, 16, 16)
    kept = reg(RegularizerInputs(d, d, d.clone(), d, g, h))
    other = reg(RegularizerInputs(d, d, torch.randn_like(d), d, g, h))
    assert kept.item() < other.item()
    # gradients reach the generator and the heads (through the queries only)
    other.backward()
    assert g.stem[0].weight.grad is not None and g.stem[0].weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in reg.heads.parameters())


def test_patchnce_options_are_checked():
    for bad, text in [({"weight": -1}, "patchnce weight must be >= 0"),
                      ({"temperature": 0}, "patchnce temperature must be > 0"),
                      ({"directions": "sd"}, "patchnce directions must be \"ds\" or \"both\""),
                      ({"patches": 1}, "patchnce needs layers >= 1, patches >= 2")]:
        with pytest.raises(ConfigError, match=text):
            PatchNCELoss(**bad)
    assert registry.get("loss", "patchnce").factory is PatchNCELoss


def test_the_trainer_adds_patchnce_and_is_exact_under_reuse():
    opts = {"loss.regularizers": {"patchnce": {"weight": 1.0, "patches": 32, "features": 16,
                                               "directions": "both"}}}
    a = losses(False, 2, "cryoetgan", **opts, **{"train.reuse_fakes": True})
    b = losses(False, 2, "cryoetgan", **opts, **{"train.reuse_fakes": False})
    assert a == b
    assert all(step["loss/patchnce"] > 0 for step in a)
    # a term of the generator loss only: the first critic update does not see it
    assert losses(False, 1, "cryoetgan")[0]["loss/critic"] == a[0]["loss/critic"]


def test_only_regularisers_go_in_loss_regularizers():
    with pytest.raises(ConfigError, match="loss.regularizers.wgan-gp: loss 'wgan-gp' is not a generator regulariser"):
        losses(False, 1, "cryoetgan", **{"loss.regularizers": {"wgan-gp": {}}})
    with pytest.raises(ConfigError, match="loss.regularizers.patchnce must be a table of options"):
        losses(False, 1, "cryoetgan", **{"loss.regularizers": {"patchnce": 1.0}})


def test_patchnce_heads_are_checkpointed_and_resume_exactly(tmp_path):
    reg = {"loss.regularizers": {"patchnce": {"patches": 16, "features": 8}}, "train.deterministic": True}
    data = (Volumes(), Volumes(seed=1))
    full = train(tiny(**reg, **{"train.steps": 4}), tmp_path / "full", datasets=data)
    part = train(tiny(**reg, **{"train.steps": 2}), tmp_path / "part", datasets=(Volumes(), Volumes(seed=1)))
    train(resume_config(part, {"train.steps": 4}), part, resume=True, datasets=(Volumes(), Volumes(seed=1)))
    _, expected, _ = load_checkpoint(Path(full) / "checkpoints" / "step-00000004")
    _, got, _ = load_checkpoint(Path(part) / "checkpoints" / "step-00000004")
    heads = [k for k in expected if k.startswith("reg.patchnce.heads.")]
    assert heads and expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    # a run without the regulariser cannot resume from it silently
    from cryoet_forge.errors import InputError

    with pytest.raises(InputError, match="checkpoint does not match this run's networks"):
        train(resume_config(part, {"train.steps": 5, "loss.regularizers": {}}), part, resume=True,
              datasets=(Volumes(), Volumes(seed=1)))


def test_a_config_file_switches_patchnce_on(tmp_path):
    path = tmp_path / "train.toml"
    path.write_text("[loss.regularizers.patchnce]\nweight = 0.5\nlayers = 2\n")
    cfg = load_config(path)
    assert cfg.loss.regularizers == {"patchnce": {"weight": 0.5, "layers": 2}}


def test_radial_log_power_of_white_noise_is_flat_and_of_a_blur_falls():
    from cryoet_forge.contrastive import radial_log_power

    noise = torch.randn(8, 1, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    flat = radial_log_power(noise)
    assert flat.shape == (8,)  # shells 1 .. Nyquist (8) of a 16^3 box
    assert float(flat.max() - flat.min()) < 0.3  # white: the same power in every shell
    kernel = torch.ones(1, 1, 3, 3, 3) / 27
    blurred = radial_log_power(torch.nn.functional.conv3d(noise, kernel, padding=1))
    assert float(blurred[0] - blurred[-1]) > 2.0  # a box blur removes the high frequencies


def test_the_radial_spectrum_term_is_zero_for_the_real_spectrum_and_pulls_towards_it():
    from cryoet_forge.contrastive import RadialSpectrumLoss, radial_log_power

    gen = torch.Generator().manual_seed(1)
    real = torch.randn(4, 1, 16, 16, 16, generator=gen)
    fake = (0.2 * torch.nn.functional.conv3d(torch.randn(4, 1, 16, 16, 16, generator=gen),
                                             torch.ones(1, 1, 3, 3, 3) / 27, padding=1)).requires_grad_()
    term = registry.create("loss", "radial-spectrum", weight=2.0)
    same = RegularizerInputs(d=real, s=real, fake_s=real.clone(), fake_d=real, g_ds=None, g_sd=None)
    assert float(term(same)) == pytest.approx(0.0, abs=1e-6)
    inputs = RegularizerInputs(d=real, s=real, fake_s=fake, fake_d=real, g_ds=None, g_sd=None)
    before = term(inputs).item()
    expected = 2.0 * ((radial_log_power(fake) - radial_log_power(real)) ** 2).mean().item()
    assert before == pytest.approx(expected, rel=1e-5) and before > 1.0
    optimiser = torch.optim.Adam([fake], lr=0.05)
    for _ in range(30):
        optimiser.zero_grad()
        term(inputs).backward()
        optimiser.step()
    assert term(inputs).item() < 0.2 * before
    with pytest.raises(ConfigError, match="radial-spectrum directions must be"):
        RadialSpectrumLoss(directions="sd")


def test_the_trainer_adds_the_radial_spectrum_term():
    steps = losses(False, 2, "cryoetgan", **{"loss.regularizers": {"radial-spectrum": {"weight": 0.5}}})
    assert all(step["loss/radial-spectrum"] > 0 for step in steps)
