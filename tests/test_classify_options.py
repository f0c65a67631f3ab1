"""The classifier options for low-SNR, few-particle data: low-pass, global pooling, test-time
augmentation (all part of the network), mixup, class-balanced epochs, label smoothing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from test_classify import TOY_OPTIONS, toy_shapes

from cryoet_forge.classify import (
    ClassifierOptions,
    build_cb3d,
    epoch_order,
    evaluate_cb3d,
    mixup_batch,
    train_cb3d,
)
from cryoet_forge.errors import ConfigError
from cryoet_forge.models.cb3d import (
    CB3D,
    TTA_FLIPS,
    GaussianLowpass,
    load_cb3d,
    lowpass_sigma_voxels,
    run_inference,
    save_cb3d,
)

NARROW = dict(channels=(4, 8, 8, 8), convs_per_block=(1, 1, 2, 2), fc_width=16, dropout=0.0)


def test_lowpass_resolution_converts_to_a_half_transfer_sigma():
    sigma = lowpass_sigma_voxels(40.0, 10.0)
    assert sigma == pytest.approx(np.sqrt(np.log(2) / 2) * 4.0 / np.pi)
    # the Gaussian's transfer exp(-2 pi^2 sigma^2 f^2) is 1/2 at 1/40 A^-1 = 0.25 per voxel
    assert np.exp(-2 * np.pi ** 2 * sigma ** 2 * 0.25 ** 2) == pytest.approx(0.5)
    assert lowpass_sigma_voxels(40.0, 5.0) == pytest.approx(2 * sigma)
    with pytest.raises(ConfigError, match="voxel size > 0"):
        lowpass_sigma_voxels(40.0, 0.0)


@pytest.mark.parametrize("sigma", [0.6, 1.5])
def test_lowpass_layer_matches_scipy(sigma):
    x = torch.randn(3, 1, 12, 12, 12, generator=torch.Generator().manual_seed(0))
    out = GaussianLowpass(sigma, 12)(x)
    for i in range(3):
        expected = gaussian_filter(x[i, 0].numpy().astype(np.float64), sigma, mode="mirror", truncate=4.0)
        np.testing.assert_allclose(out[i, 0].numpy(), expected, atol=1e-5)
    assert out.std() < 0.7 * x.std()  # white noise loses most of its power


def test_lowpass_is_inside_the_network_and_its_checkpoint(tmp_path):
    torch.manual_seed(0)
    plain = CB3D(num_classes=2, box=16, **NARROW).eval()
    filtered = CB3D(num_classes=2, box=16, lowpass_sigma=1.0, **NARROW).eval()
    filtered.load_state_dict(plain.state_dict())  # the filter holds no saved state
    assert not any(p is filtered.lowpass.kernel for p in filtered.parameters())
    assert set(filtered.state_dict()) == set(plain.state_dict())
    x = np.random.default_rng(1).normal(size=(4, 16, 16, 16)).astype(np.float32)
    blurred = np.stack([gaussian_filter(v, 1.0, mode="mirror") for v in
                        ((x - x.mean(axis=(1, 2, 3), keepdims=True)) / x.std(axis=(1, 2, 3), ddof=1, keepdims=True))])
    # the filtered network on raw volumes = the plain network on z-scored, blurred volumes
    np.testing.assert_allclose(run_inference(filtered, x)[1], run_inference(plain, blurred, normalize="none")[1],
                               atol=1e-5)
    save_cb3d(filtered, tmp_path / "clf", ["a", "b"])
    assert json.loads((tmp_path / "clf" / "cb3d.json").read_text())["config"]["lowpass_sigma"] == 1.0
    loaded, _ = load_cb3d(tmp_path / "clf")
    np.testing.assert_array_equal(run_inference(loaded, x)[1], run_inference(filtered, x)[1])


def test_options_build_the_lowpass_from_the_voxel_size():
    options = ClassifierOptions(**{**TOY_OPTIONS, "lowpass_A": 30.0})
    model = build_cb3d(options, 3, 16, seed=0, voxel_size=10.0)
    assert model.config.lowpass_sigma == pytest.approx(lowpass_sigma_voxels(30.0, 10.0))
    with pytest.raises(ConfigError, match="lowpass_A needs the voxel size"):
        build_cb3d(options, 3, 16, seed=0)
    assert build_cb3d(ClassifierOptions(**TOY_OPTIONS), 3, 16, seed=0).lowpass is None
    data = toy_shapes(3, seed=0)
    trained, _ = train_cb3d(data, ClassifierOptions(**{**TOY_OPTIONS, "epochs": 1, "lowpass_A": 30.0}), seed=0)
    assert trained.config.lowpass_sigma == pytest.approx(lowpass_sigma_voxels(30.0, data.voxel_size))


def test_global_pooling_averages_the_last_block():
    torch.manual_seed(0)
    model = CB3D(num_classes=3, box=24, pool="global", **NARROW).eval()
    assert model.fc6[0].in_features == 8  # the last block's channels, whatever the box
    x = torch.randn(2, 1, 24, 24, 24)
    expected = model.fc7(model.fc6(model.features(x).mean(dim=(2, 3, 4))))
    torch.testing.assert_close(model.embed(x), expected)
    assert CB3D(num_classes=3, box=24, **NARROW).fc6[0].in_features == 8 * 2 ** 3
    with pytest.raises(ConfigError, match="pool 'max'"):
        CB3D(num_classes=3, box=24, pool="max")


def test_tta_averages_probabilities_and_features_over_the_eight_flips():
    torch.manual_seed(0)
    plain = CB3D(num_classes=3, box=16, **NARROW).eval()
    tta = CB3D(num_classes=3, box=16, tta=True, **NARROW).eval()
    tta.load_state_dict(plain.state_dict())
    x = torch.randn(5, 1, 16, 16, 16)
    with torch.no_grad():
        probabilities = torch.stack([torch.softmax(plain(torch.flip(x, d) if d else x), 1) for d in TTA_FLIPS]).mean(0)
        features = torch.stack([plain.embed(torch.flip(x, d) if d else x) for d in TTA_FLIPS]).mean(0)
        features_tta, logits_tta = tta.forward_all(x)
        torch.testing.assert_close(torch.softmax(tta(x), 1), probabilities)
        torch.testing.assert_close(features_tta, features)
        torch.testing.assert_close(torch.softmax(logits_tta, 1), probabilities)
        # flipping the input changes nothing, and plain inference differs
        torch.testing.assert_close(tta(torch.flip(x, (2, 4))), tta(x), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(torch.softmax(plain(x), 1), probabilities)
    assert len(set(TTA_FLIPS)) == 8
    tta.train()
    torch.testing.assert_close(tta(x), plain.train()(x))  # training passes are single


def test_epoch_order_shuffles_or_balances_the_classes():
    labels = torch.tensor([0] * 30 + [1] * 6 + [2] * 4)
    shuffle = epoch_order(labels, torch.Generator().manual_seed(0), balanced=False)
    assert sorted(shuffle.tolist()) == list(range(40))
    draws = torch.cat([epoch_order(labels, torch.Generator().manual_seed(s), balanced=True) for s in range(50)])
    assert len(draws) == 50 * 40
    share = torch.bincount(labels[draws], minlength=3).double() / len(draws)
    torch.testing.assert_close(share, torch.full((3,), 1 / 3, dtype=torch.float64), atol=0.03, rtol=0)


def test_mixup_mixes_volumes_and_labels_with_one_weight():
    x = torch.randn(6, 1, 4, 4, 4)
    y = torch.arange(6)
    mixed, partner, lam = mixup_batch(x, y, 0.4, np.random.default_rng(0), torch.Generator().manual_seed(0))
    assert 0 <= lam <= 1
    assert sorted(partner.tolist()) == list(range(6))
    torch.testing.assert_close(mixed, lam * x + (1 - lam) * x[partner])
    assert lam == pytest.approx(np.random.default_rng(0).beta(0.4, 0.4))


@pytest.mark.parametrize("change", [{"mixup": 0.4}, {"balanced": True}, {"label_smoothing": 0.1},
                                    {"pool": "global", "tta": True, "validation_fraction": 0.3}])
def test_new_options_train_deterministically_and_differently(change):
    data = toy_shapes(4, seed=5)
    options = ClassifierOptions(**{**TOY_OPTIONS, "epochs": 2, **change})
    a, history = train_cb3d(data, options, seed=3)
    b, _ = train_cb3d(data, options, seed=3)
    default, default_history = train_cb3d(data, ClassifierOptions(**{**TOY_OPTIONS, "epochs": 2}), seed=3)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert history.loss != default_history.loss
    assert not torch.equal(a.head.weight, default.head.weight)
    result = evaluate_cb3d(a, toy_shapes(2, seed=6), data.class_names)
    np.testing.assert_allclose(result.probabilities.sum(1), 1.0, rtol=1e-5)


def test_defaults_are_off_and_bad_values_refused():
    options = ClassifierOptions()
    assert (options.lowpass_A, options.pool, options.mixup, options.balanced, options.tta,
            options.label_smoothing) == (0.0, "flatten", 0.0, False, False, 0.0)
    model = build_cb3d(ClassifierOptions(**TOY_OPTIONS), 3, 16, seed=0)
    assert model.lowpass is None and model.config.pool == "flatten" and not model.config.tta
    with pytest.raises(ConfigError, match="classifier pool 'mean'; choose from: flatten, global"):
        ClassifierOptions(pool="mean")
    with pytest.raises(ConfigError, match="classifier lowpass_A must be a number >= 0, got -5"):
        ClassifierOptions(lowpass_A=-5)
    with pytest.raises(ConfigError, match="classifier mixup must be a number >= 0, got 'x'"):
        ClassifierOptions(mixup="x")
    with pytest.raises(ConfigError, match="label_smoothing must be below 1, got 1.0"):
        ClassifierOptions(label_smoothing=1.0)


def test_radial_baseline_takes_its_low_pass_as_an_option():
    from cryoet_forge.evaluate.baseline import SIGMA, radial_baseline, radial_profiles

    train, test = toy_shapes(6, seed=0, noise=2.0), toy_shapes(6, seed=1, noise=2.0)
    default = radial_baseline(train, test)
    assert default.to_dict()["sigma_voxels"] == SIGMA
    assert radial_baseline(train, test, sigma=SIGMA).accuracy == default.accuracy
    unfiltered = radial_baseline(train, test, sigma=0.0)
    assert unfiltered.to_dict()["sigma_voxels"] == 0.0
    assert not np.allclose(radial_profiles(train.volumes, 0.0), radial_profiles(train.volumes, SIGMA))
