"""A network applied to a volume of any size by overlapping cubic tiles with smooth blending.

The volume is covered by tiles of ``tile``^3 voxels whose starts are ``tile - overlap`` apart
(the last tile of each axis ends at the volume's edge; an axis shorter than a tile is padded by
reflection and cropped back). Each output voxel is the weighted mean of the outputs of every tile
that covers it, with a separable weight that is near zero at each face of the tile, rises as a
raised cosine over the ``overlap`` voxels there and is 1 inside (:func:`blend_weights`; faces at
the volume's own faces are not tapered): a tile's border, where a convolution sees padding, counts
little where a neighbour's interior covers the same voxel, and no seam appears. A function that
maps a constant volume to a constant gives that constant everywhere, whatever the tiling.

Memory: the network sees ``batch_size`` tiles at a time; beside them, only the output (one
float32 volume of the input's size per output channel) and the weight sum are held.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator

import numpy as np
import torch

from cryoet_forge.errors import ConfigError, InputError

#: the weight a tile gives its outermost voxel (> 0: a voxel that only one tile's edge covers, at
#: the volume's faces, still gets that tile's value)
EDGE_WEIGHT = 1e-3

#: (tiles (B, 1, T, T, T), their starts [(z, y, x), ...]) -> outputs of the same shape
TileFunction = Callable[[torch.Tensor, list[tuple[int, int, int]]], torch.Tensor]


def check_tiling(tile: int, overlap: int) -> None:
    if tile < 2:
        raise ConfigError(f"tile must be >= 2 voxels, got {tile}")
    if not 0 <= overlap < tile:
        raise ConfigError(f"tile overlap must be >= 0 and below the tile ({tile} voxels), got {overlap}")


def blend_weights(tile: int, overlap: int, left: bool = True, right: bool = True) -> np.ndarray:
    """The 1-D weight of a tile's voxels: EDGE_WEIGHT over the outer quarter of the ``overlap`` at
    each tapered end (where a convolution's padding reaches), then a raised cosine to 1 over the
    rest of it, 1 inside. An end at the volume's face is not tapered (``left`` / ``right`` False):
    there the tile's padding is the volume's own, as an untiled pass would see it."""
    check_tiling(tile, overlap)
    weights = np.ones(tile, dtype=np.float64)
    if overlap > 0:
        margin = overlap // 4
        rise = overlap - margin
        ramp = np.full(overlap, EDGE_WEIGHT)
        ramp[margin:] += (1.0 - EDGE_WEIGHT) * 0.5 * (1.0 - np.cos(np.pi * (np.arange(rise) + 0.5) / rise))
        if left:
            weights[:overlap] = np.minimum(weights[:overlap], ramp)
        if right:
            weights[tile - overlap:] = np.minimum(weights[tile - overlap:], ramp[::-1])
    return weights


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Starts of the tiles along an axis of ``length`` >= ``tile`` voxels: ``tile - overlap`` apart,
    the last one ending at the edge."""
    check_tiling(tile, overlap)
    if length < tile:
        raise InputError(f"an axis of {length} voxels is shorter than the tile ({tile})")
    step = tile - overlap
    starts = list(range(0, length - tile + 1, step))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def tiles_of(shape: tuple[int, int, int], tile: int, overlap: int) -> list[tuple[int, int, int]]:
    """Every tile start (z, y, x) of a volume of ``shape`` (each axis >= ``tile``), z slowest."""
    zs, ys, xs = (tile_starts(n, tile, overlap) for n in shape)
    return [(z, y, x) for z in zs for y in ys for x in xs]


def _tile_weight(shape: tuple[int, ...], start: tuple[int, int, int], tile: int, overlap: int) -> np.ndarray:
    """The 3-D weight of the tile at ``start``: the outer product of its axes' :func:`blend_weights`
    (one of at most 64 kinds, by which faces lie at the volume's own: computed once each)."""
    faces = tuple((s > 0, s + tile < n) for s, n in zip(start, shape))
    return _weight_of(tile, overlap, faces)  # type: ignore[arg-type]


@functools.lru_cache(maxsize=64)
def _weight_of(tile: int, overlap: int, faces: tuple[tuple[bool, bool], ...]) -> np.ndarray:
    z, y, x = (blend_weights(tile, overlap, left=left, right=right) for left, right in faces)
    weight = (z[:, None, None] * y[None, :, None] * x[None, None, :]).astype(np.float32)
    weight.flags.writeable = False
    return weight


def _batches(items: list[tuple[int, int, int]], size: int) -> Iterator[list[tuple[int, int, int]]]:
    for begin in range(0, len(items), size):
        yield items[begin:begin + size]


@torch.no_grad()
def apply_tiled(fn: TileFunction, volume: np.ndarray, tile: int, overlap: int, batch_size: int = 4,
                device: str | torch.device = "cpu", advance: Callable[[int], None] | None = None,
                channels: int | None = None) -> np.ndarray:
    """``fn`` applied to a (Z, Y, X) ``volume`` tile by tile and blended (see the module docstring);
    returns a float32 array of the volume's shape, or with ``channels`` (a network of that many
    output channels, e.g. class scores) one of shape (channels, Z, Y, X). ``advance(n)`` is called
    after each batch of n tiles."""
    array = np.asarray(volume, dtype=np.float32)
    if array.ndim != 3:
        raise InputError(f"a volume to tile must be 3-D (Z, Y, X), got shape {array.shape}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    check_tiling(tile, overlap)
    original = array.shape
    pads = [(0, max(0, tile - n)) for n in original]
    if any(p for _, p in pads):
        array = np.pad(array, pads, mode="reflect" if min(original) > 1 else "edge")
    out_channels = 1 if channels is None else int(channels)
    if out_channels < 1:
        raise ConfigError(f"channels must be >= 1, got {channels}")
    output = np.zeros((out_channels, *array.shape), dtype=np.float32)
    total = np.zeros(array.shape, dtype=np.float32)
    source = torch.from_numpy(np.ascontiguousarray(array))
    for starts in _batches(tiles_of(array.shape, tile, overlap), batch_size):
        batch = torch.stack([source[z:z + tile, y:y + tile, x:x + tile] for z, y, x in starts])[:, None]
        result = fn(batch.to(device), starts)
        expected = (len(starts), out_channels, tile, tile, tile)
        if tuple(result.shape) != expected:
            raise InputError(f"the tiled network returned shape {tuple(result.shape)} for tiles of "
                             f"shape {tuple(batch.shape)}; expected {expected}")
        values = result.detach().float().cpu().numpy()
        for (z, y, x), out in zip(starts, values):
            weight = _tile_weight(array.shape, (z, y, x), tile, overlap)
            output[:, z:z + tile, y:y + tile, x:x + tile] += out * weight
            total[z:z + tile, y:y + tile, x:x + tile] += weight
        if advance is not None:
            advance(len(starts))
    blended = (output / total)[:, :original[0], :original[1], :original[2]]
    return np.ascontiguousarray(blended[0] if channels is None else blended)
