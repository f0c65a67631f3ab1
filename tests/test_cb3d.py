"""CB3D: layout, shapes for 16^3..40^3, features and probabilities, safetensors checkpoints."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from torch import nn

from cryoet_forge import registry
from cryoet_forge.errors import ConfigError, InputError
from cryoet_forge.models.cb3d import (
    CB3D,
    load_cb3d,
    normalize_volumes,
    run_inference,
    save_cb3d,
)

NARROW = dict(channels=(4, 8, 8, 8), convs_per_block=(1, 1, 2, 2), fc_width=32)


def test_default_layout_is_the_paper_network():
    model = CB3D(num_classes=4, box=40)
    convs = [m for m in model.features if isinstance(m, nn.Conv3d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 256, 512, 512]
    assert all(c.kernel_size == (3, 3, 3) for c in convs)
    assert sum(isinstance(m, nn.BatchNorm3d) for m in model.features) == 6
    assert sum(isinstance(m, nn.MaxPool3d) for m in model.features) == 4
    assert model.fc6[0].out_features == 4096 and model.fc7[0].out_features == 4096
    # 40 -> 20 -> 10 -> 5 -> 3 voxels after four ceil-mode pools
    assert model.fc6[0].in_features == 512 * 3 ** 3
    assert model.head.out_features == 4
    assert model.dropout.p == 0.5


@pytest.mark.parametrize("box", [16, 21, 28, 40])
def test_shapes_features_and_probabilities(box):
    torch.manual_seed(0)
    model = CB3D(num_classes=3, box=box, **NARROW)
    volumes = np.random.default_rng(box).normal(size=(5, box, box, box)).astype(np.float32)
    features, probs = run_inference(model, volumes)
    assert features.shape == (5, 32) and features.dtype == np.float32
    assert probs.shape == (5, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert (features >= 0).all()  # post-ReLU activations
    # eval mode: dropout off, so inference is repeatable
    again, _ = run_inference(model, volumes)
    np.testing.assert_array_equal(features, again)


def test_wrong_box_and_bad_options_are_clear_errors():
    model = CB3D(num_classes=2, box=16, **NARROW)
    with pytest.raises(InputError, match=r"\(B, 1, 16, 16, 16\)"):
        model(torch.zeros(1, 1, 20, 20, 20))
    with pytest.raises(ConfigError, match="at least 2 classes"):
        CB3D(num_classes=1, box=16)
    with pytest.raises(InputError, match="NaN"):
        run_inference(model, np.full((1, 16, 16, 16), np.nan, dtype=np.float32))


def test_normalizations():
    x = torch.randn(3, 1, 8, 8, 8) * 5 + 2
    z = normalize_volumes(x, "zscore").reshape(3, -1)
    np.testing.assert_allclose(z.mean(1).numpy(), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(1).numpy(), 1, atol=1e-5)
    m = normalize_volumes(x, "minmax").reshape(3, -1)
    np.testing.assert_allclose(m.min(1).values.numpy(), -1, atol=1e-6)
    np.testing.assert_allclose(m.max(1).values.numpy(), 1, atol=1e-6)
    with pytest.raises(ConfigError, match=r"^normalize 'whiten': choose from zscore, minmax, none$"):
        normalize_volumes(x, "whiten")


def test_one_normalisation_for_datasets_and_models():
    """The dataset path (one volume) and the model path (a batch) agree, flat volumes included."""
    from cryoet_forge.data.normalization import normalize_volume

    x = torch.randn(4, 1, 6, 6, 6)
    x[2] = 3.5  # a flat volume maps to 0 in every mode
    for mode in ("zscore", "minmax", "none"):
        batch = normalize_volumes(x, mode)
        for i in range(4):
            torch.testing.assert_close(normalize_volume(x[i], mode), batch[i], rtol=1e-6, atol=1e-6)
    assert normalize_volumes(x, "minmax")[2].abs().max() == 0 and normalize_volumes(x, "zscore")[2].abs().max() == 0


def test_checkpoint_roundtrip_is_safetensors_and_exact(tmp_path):
    torch.manual_seed(1)
    model = CB3D(num_classes=3, box=16, **NARROW).eval()
    save_cb3d(model, tmp_path / "clf", ["ribosome", "proteasome", "membrane"], normalize="zscore",
              extra={"voxel_size": 10.0})
    weights = (tmp_path / "clf" / "cb3d.safetensors").read_bytes()
    header_len = struct.unpack("<Q", weights[:8])[0]
    header = json.loads(weights[8:8 + header_len])  # a safetensors header, not a pickle
    assert "head.weight" in header
    meta = json.loads((tmp_path / "clf" / "cb3d.json").read_text())
    assert meta["class_names"] == ["ribosome", "proteasome", "membrane"]
    assert meta["config"]["box"] == 16 and meta["voxel_size"] == 10.0

    loaded, metadata = load_cb3d(tmp_path / "clf")
    x = np.random.default_rng(0).normal(size=(4, 16, 16, 16)).astype(np.float32)
    np.testing.assert_array_equal(run_inference(model, x)[0], run_inference(loaded, x)[0])
    # also addressable by the .safetensors file itself
    loaded2, _ = load_cb3d(tmp_path / "clf" / "cb3d.safetensors")
    np.testing.assert_array_equal(run_inference(loaded2, x)[1], run_inference(model, x)[1])


def test_corrupt_or_missing_checkpoint(tmp_path):
    with pytest.raises(InputError, match="checkpoint file not found"):
        load_cb3d(tmp_path / "nothing")
    model = CB3D(num_classes=2, box=16, **NARROW)
    save_cb3d(model, tmp_path / "clf", ["a", "b"])
    (tmp_path / "clf" / "cb3d.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(InputError, match="unreadable or mismatched CB3D weights"):
        load_cb3d(tmp_path / "clf")
    meta = tmp_path / "clf" / "cb3d.json"
    meta.write_text(meta.read_text().replace('"num_classes"', '"n_classes"'))
    with pytest.raises(InputError, match="not a CB3D checkpoint metadata file"):
        load_cb3d(tmp_path / "clf")


def test_feature_extractor_plugin_matches_the_model(tmp_path):
    torch.manual_seed(2)
    model = CB3D(num_classes=2, box=16, **NARROW).eval()
    save_cb3d(model, tmp_path / "clf", ["a", "b"], normalize="minmax")
    extractor = registry.create("feature-extractor", "cb3d", checkpoint=str(tmp_path / "clf"))
    x = np.random.default_rng(3).normal(size=(6, 16, 16, 16)).astype(np.float32)
    expected_features, expected_probs = run_inference(model, x, normalize="minmax")
    np.testing.assert_array_equal(extractor.extract(x), expected_features)
    np.testing.assert_array_equal(extractor.probabilities(x[:, None]), expected_probs)
    assert extractor.dim == 32 and extractor.class_names == ["a", "b"]


def test_radial_pooling_is_a_profile_of_shells():
    from cryoet_forge.models.cb3d import RadialPool, shell_index

    index = shell_index(8)
    assert torch.bincount(index.flatten()).tolist() == [8, 24, 104, 144, 232]
    assert index[3, 3, 3] == 0 and index[0, 0, 0] == 4  # centre voxels and the corners beyond the sphere
    h = torch.randn(2, 3, 8, 8, 8)
    pooled = RadialPool(8)(h)
    assert pooled.shape == (2, 3 * 5)
    # each value is the mean of one channel over one shell
    expected = torch.stack([h[:, :, index == s].mean(-1) for s in range(5)], dim=-1).flatten(1)
    torch.testing.assert_close(pooled, expected)
    # unchanged by the cube's symmetries about the centre
    torch.testing.assert_close(RadialPool(8)(h.permute(0, 1, 3, 4, 2)), pooled)
    torch.testing.assert_close(RadialPool(8)(torch.flip(h, [2, 4])), pooled)


def test_radial_pool_network_shapes_and_checkpoint(tmp_path):
    model = CB3D(num_classes=3, box=16, channels=(4, 8), convs_per_block=(1, 1), fc_width=8, dropout=0.0,
                 pool="radial")
    assert model.config.pooled_features() == 8 * 3  # 4^3 maps: shells 0, 1, 2
    x = torch.randn(2, 1, 16, 16, 16)
    model.eval()
    assert model(x).shape == (2, 3)
    save_cb3d(model, tmp_path / "radial", ["a", "b", "c"])
    loaded, meta = load_cb3d(tmp_path / "radial")
    assert loaded.config.pool == "radial"
    torch.testing.assert_close(loaded(x), model(x))
