"""A network applied to a volume of any size by overlapping tiles (cryoet_forge.models.tiling)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryoet_forge.errors import ConfigError, InputError
from cryoet_forge.models.tiling import apply_tiled, blend_weights, tile_starts, tiles_of


def small_net() -> torch.nn.Module:
    """Two 3x3x3 convolutions with zero padding: a receptive-field radius of 2 voxels."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv3d(4, 1, 3, padding=1)).eval()


def test_tile_starts_cover_the_axis_and_end_at_its_edge():
    assert tile_starts(24, 24, 8) == [0]
    assert tile_starts(40, 24, 8) == [0, 16]
    assert tile_starts(41, 24, 8) == [0, 16, 17]
    assert tile_starts(64, 16, 0) == [0, 16, 32, 48]
    assert len(tiles_of((40, 41, 24), 24, 8)) == 2 * 3 * 1
    with pytest.raises(InputError, match="shorter than the tile"):
        tile_starts(10, 24, 8)


def test_blend_weights_taper_only_inner_faces():
    w = blend_weights(24, 8)
    assert w.shape == (24,)
    assert w[0] == w[1] == pytest.approx(1e-3)  # the outer quarter of the overlap
    assert np.all(np.diff(w[:8]) >= 0) and np.all(w[8:16] == 1.0)
    np.testing.assert_allclose(w, w[::-1])
    assert np.all(blend_weights(24, 8, left=False)[:8] == 1.0)
    assert np.all(blend_weights(24, 0) == 1.0)
    with pytest.raises(ConfigError, match="overlap must be >= 0 and below the tile"):
        blend_weights(24, 24)


def test_a_pointwise_function_is_reproduced_exactly():
    volume = np.random.default_rng(1).standard_normal((30, 41, 27)).astype(np.float32)
    seen: list[tuple[int, int, int]] = []

    def affine(tiles: torch.Tensor, starts: list[tuple[int, int, int]]) -> torch.Tensor:
        seen.extend(starts)
        return 2.0 * tiles + 1.0

    out = apply_tiled(affine, volume, tile=16, overlap=4, batch_size=3)
    np.testing.assert_allclose(out, 2.0 * volume + 1.0, rtol=1e-6, atol=1e-6)
    assert sorted(seen) == sorted(tiles_of((30, 41, 27), 16, 4))


def test_tiled_and_untiled_agree_without_seams():
    """Tolerance: 1% of the output's mean magnitude at any voxel, when a quarter of the overlap
    (2 voxels) reaches the network's receptive-field radius (2 voxels)."""
    net = small_net()
    volume = np.random.default_rng(0).standard_normal((40, 44, 37)).astype(np.float32)
    with torch.no_grad():
        whole = net(torch.from_numpy(volume)[None, None])[0, 0].numpy()
    tiled = apply_tiled(lambda t, _: net(t), volume, tile=24, overlap=8)
    assert tiled.shape == volume.shape and tiled.dtype == np.float32
    assert np.abs(tiled - whole).max() < 0.01 * np.abs(whole).mean()
    # without overlap the tile borders show: the blend is what removes the seams
    seams = apply_tiled(lambda t, _: net(t), volume, tile=24, overlap=0)
    assert np.abs(seams - whole).max() > 0.1 * np.abs(whole).mean()


def test_constant_content_stays_constant_inside():
    net = small_net()
    volume = np.full((40, 44, 37), 0.7, dtype=np.float32)
    with torch.no_grad():
        whole = net(torch.from_numpy(volume)[None, None])[0, 0].numpy()
    tiled = apply_tiled(lambda t, _: net(t), volume, tile=24, overlap=8)
    inner = tiled[3:-3, 3:-3, 3:-3]
    # a seam would show the size of the zero-padding effect at the volume's faces: well under 1% of it
    border_effect = float(np.ptp(whole))
    assert border_effect > 0.1
    assert np.abs(inner - whole[20, 20, 20]).max() < 0.01 * border_effect


def test_axes_shorter_than_a_tile_are_padded_and_cropped():
    volume = np.random.default_rng(2).standard_normal((10, 30, 20)).astype(np.float32)
    out = apply_tiled(lambda t, _: t * 3.0, volume, tile=16, overlap=4)
    assert out.shape == (10, 30, 20)
    np.testing.assert_allclose(out, 3.0 * volume, rtol=1e-6)


def test_bad_tiling_and_bad_networks_are_one_line():
    volume = np.zeros((20, 20, 20), dtype=np.float32)
    with pytest.raises(InputError, match="must be 3-D"):
        apply_tiled(lambda t, _: t, volume[0], tile=8, overlap=2)
    with pytest.raises(ConfigError, match="tile must be >= 2"):
        apply_tiled(lambda t, _: t, volume, tile=1, overlap=0)
    with pytest.raises(InputError, match=r"returned shape \(1, 1, 4, 4, 4\)"):
        apply_tiled(lambda t, _: t[:1, :, :4, :4, :4], volume, tile=8, overlap=2)


def test_several_output_channels_are_blended_alike():
    volume = np.random.default_rng(3).standard_normal((20, 26, 18)).astype(np.float32)

    def two(tiles: torch.Tensor, _: list) -> torch.Tensor:
        return torch.cat([tiles, -2.0 * tiles], dim=1)

    out = apply_tiled(two, volume, tile=16, overlap=4, channels=2)
    assert out.shape == (2, 20, 26, 18)
    np.testing.assert_allclose(out[0], volume, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out[1], -2.0 * volume, rtol=1e-6, atol=1e-6)
    with pytest.raises(InputError, match=r"expected \(.*, 3, 16, 16, 16\)"):
        apply_tiled(two, volume, tile=16, overlap=4, channels=3)
