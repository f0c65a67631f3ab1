"""Contract tests over every registered generator and critic (narrow widths, CPU)."""

from __future__ import annotations

import inspect

import pytest
import torch

from cryoet_forge import registry
from cryoet_forge.errors import InputError
from cryoet_forge.models.critics import critic_parameter_count
from cryoet_forge.models.generators import cryoetgan_parameter_count

SIZES = [16, 20, 24, 28, 32, 40]


def _narrow(kind: str, name: str) -> dict:
    """Small widths where the factory has a ``base`` option, so the CPU tests stay fast."""
    params = inspect.signature(registry.get(kind, name).factory).parameters
    options = {"base": 4} if "base" in params else {}
    if "n_residual" in params:
        options["n_residual"] = 2
    return options


def _build(kind: str, name: str, **extra):
    torch.manual_seed(0)
    opts = {"in_channels": 1, **_narrow(kind, name), **extra}
    if kind == "generator":
        opts["out_channels"] = 1
    return registry.create(kind, name, **opts).eval()


@pytest.mark.parametrize("name", registry.names("generator"))
def test_generator_shape_range_or_clear_refusal(name):
    model = _build("generator", name)
    supported = []
    for size in SIZES:
        x = torch.randn(2, 1, size, size, size)
        try:
            with torch.no_grad():
                y = model(x)
        except ValueError as exc:  # InputError is a ValueError: a refusal must name the shape
            assert str(size) in str(exc), f"{name} refused {size}^3 without naming it: {exc}"
            continue
        assert y.shape == x.shape
        assert torch.isfinite(y).all()
        assert y.min() >= -1.0 and y.max() <= 1.0
        supported.append(size)
    print(f"{name}: sizes that work {supported}")
    assert 16 in supported and 32 in supported and 40 in supported


@pytest.mark.parametrize("name", registry.names("generator"))
def test_generator_deterministic_with_seed(name):
    x = torch.randn(1, 1, 16, 16, 16)
    outs = []
    for _ in range(2):
        model = _build("generator", name)
        torch.manual_seed(123)
        with torch.no_grad():
            outs.append(model(x))
    assert torch.equal(outs[0], outs[1])


def test_cryoetgan_every_size_16_to_40_including_odd():
    model = _build("generator", "cryoetgan", n_residual=1, base=2)
    for size in range(16, 41):
        x = torch.randn(1, 1, size, size, size)
        with torch.no_grad():
            assert model(x).shape == x.shape, size
    assert model.noise_shape((3, 1, 28, 28, 28)) == (3, 1, 7, 7, 7)
    assert model.noise_shape((3, 1, 25, 25, 25)) == (3, 1, 7, 7, 7)


@pytest.mark.parametrize("name", registry.names("critic"))
@pytest.mark.parametrize("size", [16, 28, 40])
def test_critic_patch_scores(name, size):
    critic = _build("critic", name)
    x = torch.randn(2, 1, size, size, size)
    with torch.no_grad():
        scores = critic(x)
    assert scores.dim() == 5 and scores.shape[:2] == (2, 1)
    assert len(set(scores.shape[2:])) == 1 and 1 <= scores.shape[-1] < size
    assert torch.isfinite(scores).all()


def test_critic_patch_sizes_follow_the_spec():
    x = torch.randn(1, 1, 40, 40, 40)
    with torch.no_grad():
        # four 4^3 stride-1 convs with padding 1: 40 -> 39 -> 38 -> 37 -> 36
        assert registry.create("critic", "sn-wgan", base=4)(x).shape[-1] == 36
        # three stride-2 convs then one stride-1 conv: 40 -> 20 -> 10 -> 5 -> 4
        assert registry.create("critic", "patchgan", base=4)(x).shape[-1] == 4


def test_parameter_counts_match_the_spec():
    generator = registry.create("generator", "cryoetgan")
    inverse = registry.create("generator", "cryoetgan", noise=False)
    critic = registry.create("critic", "sn-wgan")
    n_gen = sum(p.numel() for p in generator.parameters())
    n_inv = sum(p.numel() for p in inverse.parameters())
    n_critic = sum(p.numel() for p in critic.parameters())
    print(f"cryoetgan D->S: {n_gen} parameters, S->D: {n_inv}; sn-wgan: {n_critic}")
    assert n_gen == cryoetgan_parameter_count(noise=True) == 5_886_913
    assert n_inv == cryoetgan_parameter_count(noise=False) == n_gen - 27 * 64
    assert n_critic == critic_parameter_count() == 2_642_369
    # the noise channel enters the first upsampling layer: 128 + 1 input channels
    assert generator.up1.conv.weight.shape[:2] == (129, 64)
    assert inverse.up1.conv.weight.shape[:2] == (128, 64)
    assert generator.stem[0].weight.shape == (32, 1, 7, 7, 7)
    assert generator.head.weight.shape == (1, 32, 7, 7, 7)
    assert len(generator.residual) == 6


def _conv_sigmas(critic) -> list[float]:
    sigmas = []
    for module in critic.modules():
        if isinstance(module, torch.nn.Conv3d):
            w = module.weight.detach()
            sigmas.append(torch.linalg.matrix_norm(w.reshape(w.shape[0], -1), ord=2).item())
    return sigmas


def test_spectral_norm_bounds_every_conv_near_one():
    torch.manual_seed(0)
    critic = registry.create("critic", "sn-wgan", base=4, n_power_iterations=1)
    with torch.no_grad():  # make the raw weights far from norm 1
        for name, p in critic.named_parameters():
            if name.endswith("original"):
                p.mul_(25.0)
    critic.train()
    x = torch.randn(1, 1, 16, 16, 16)
    for _ in range(60):  # each training forward runs one power iteration per conv
        critic(x)
    sigmas = _conv_sigmas(critic.eval())
    print("sn-wgan largest singular values:", [round(s, 4) for s in sigmas])
    assert len(sigmas) == 4
    assert all(abs(s - 1.0) < 0.03 for s in sigmas), sigmas


def test_patchgan_has_no_spectral_norm():
    torch.manual_seed(0)
    critic = registry.create("critic", "patchgan", base=4)
    with torch.no_grad():
        for p in critic.parameters():
            p.mul_(25.0)
    assert max(_conv_sigmas(critic)) > 2.0


def test_noise_changes_output_and_explicit_noise_is_deterministic():
    model = _build("generator", "cryoetgan")
    x = torch.randn(1, 1, 20, 20, 20)
    z = torch.randn(model.noise_shape(tuple(x.shape)))
    with torch.no_grad():
        a, b = model(x, noise=z), model(x, noise=z)
        c = model(x, noise=torch.randn_like(z))
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-4


def test_dropout_is_stochastic_only_in_train_mode():
    model = _build("generator", "cryoetgan", dropout=0.5, noise=False)
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        e1, e2 = model(x), model(x)
        model.train()
        t1, t2 = model(x), model(x)
    assert torch.equal(e1, e2)
    assert (t1 - t2).abs().max() > 1e-4


def test_bad_options_and_inputs_are_clear():
    from cryoet_forge.errors import ConfigError

    with pytest.raises(ConfigError, match="padding_mode"):
        registry.create("generator", "cryoetgan", padding_mode="circular")
    model = _build("generator", "cryoetgan")
    with pytest.raises(InputError, match=r"\(1, 1, 16, 16, 12\)"):
        model(torch.randn(1, 1, 16, 16, 12))
    with pytest.raises(InputError, match="S >= 8"):
        model(torch.randn(1, 1, 6, 6, 6))


def test_zero_padding_variant_works():
    model = _build("generator", "cryoetgan", padding_mode="zeros")
    with torch.no_grad():
        assert model(torch.randn(1, 1, 17, 17, 17)).shape[-1] == 17


def test_cryoetgan_skips_variant_sizes_and_parameter_count():
    model = _build("generator", "cryoetgan", n_residual=1, base=2, skips=True)
    for size in (16, 20, 25, 28, 40):
        x = torch.randn(1, 1, size, size, size)
        with torch.no_grad():
            assert model(x).shape == x.shape, size
    # only u32 and the head grow: u32 takes 2 * 2 base channels, the head 2 base
    n = sum(p.numel() for p in _build("generator", "cryoetgan", base=32, n_residual=6, skips=True).parameters())
    assert n == cryoetgan_parameter_count(skips=True)
    assert n - cryoetgan_parameter_count() == 27 * 64 * 32 + 343 * 32 * 1



def test_unet3d_follows_the_trainer_noise_contract():
    from cryoet_forge.contracts import takes_noise

    model = _build("generator", "unet3d", noise_channels=2)
    plain = _build("generator", "unet3d")
    assert takes_noise(model) and not takes_noise(plain)
    x = torch.randn(3, 1, 24, 24, 24)
    shape = model.noise_shape(tuple(x.shape))
    assert shape == (3, 2, 3, 3, 3)
    z = torch.randn(shape)
    with torch.no_grad():
        assert torch.equal(model(x, noise=z), model(x, noise=z))
        assert (model(x, noise=z) - model(x, noise=torch.randn(shape))).abs().max() > 1e-4


def test_unet3d_noise_injection_adds_learnt_full_resolution_noise():
    """With ``noise_injection`` the noise is drawn at full resolution; at initialisation (zero strength)
    the network is the one without injection fed every eighth voxel of that noise; with a strength the
    output changes voxel by voxel with the noise."""
    torch.manual_seed(0)
    injecting = _build("generator", "unet3d", noise_channels=1, noise_injection=True)
    torch.manual_seed(0)
    plain = _build("generator", "unet3d", noise_channels=1)
    x = torch.randn(2, 1, 16, 16, 16)
    shape = injecting.noise_shape(tuple(x.shape))
    assert shape == (2, 1, 16, 16, 16) and plain.noise_shape(tuple(x.shape)) == (2, 1, 2, 2, 2)
    z = torch.randn(shape)
    state = {k: v for k, v in injecting.state_dict().items() if k != "noise_strength"}
    plain.load_state_dict(state)
    injecting.eval(), plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(injecting(x, noise=z), plain(x, noise=z[..., ::8, ::8, ::8]))
        injecting.noise_strength.fill_(0.5)
        fine = z.clone()
        fine[..., 1::2, :, :] = torch.randn_like(fine[..., 1::2, :, :])  # the bottleneck's voxels kept
        assert (injecting(x, noise=z) - injecting(x, noise=fine)).abs().max() > 1e-3
    assert "noise_strength" in dict(injecting.named_parameters())
    with pytest.raises(ValueError, match="noise_injection needs noise_channels >= 1"):
        _build("generator", "unet3d", noise_injection=True)
