"""Whole tomograms refined by a trained run's D -> S generator, tile by tile.

A refining generator is fully convolutional, so it applies to a tomogram of any size: the
tomogram (protein dark, as every simulator writes it) is normalised as a whole the way the run's
domain D was (``density_normalization``), cut into overlapping cubic tiles, each tile refined,
and the tiles blended with weights that fall to near zero at inner tile faces
(:mod:`cryoet_forge.models.tiling`), so no seams show. A generator with per-sample normalisation
(the built-in one's InstanceNorm) normalises each tile on its own, as it normalised each box in
training: its output is then not the output of one pass over the whole tomogram (which it never
saw in training), and tiles near the training box size keep it closest to what it learnt. Memory is bounded by the tile size and
``batch_size`` (plus the output volume). A generator with the noise contract gets one noise
volume for the whole tomogram, drawn from ``seed``, each tile its part of it when the noise is a
whole-number downsampling of the input (:func:`refine_volume`; else each tile its own draw,
seeded by the seed and the tile's position): the same seed gives the same tomogram.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from cryoet_forge import progress
from cryoet_forge.contracts import noise_shape, run_generator, takes_noise
from cryoet_forge.data.normalization import normalize_volume
from cryoet_forge.devices import check_device
from cryoet_forge.errors import InputError
from cryoet_forge.generate import density_normalization, load_generator, run_metadata
from cryoet_forge.limits import check_allocation
from cryoet_forge.models.tiling import apply_tiled, check_tiling, tiles_of


def _noise_plan(model: torch.nn.Module, tile: int) -> tuple[int, int] | None:
    """(f, channels) when the generator's noise for a tile^3 input is (1, channels, tile / f, ...)
    for a whole f: then one noise volume at 1/f of the tomogram serves every tile."""
    shape = tuple(noise_shape(model, (1, 1, tile, tile, tile)))
    if len(shape) != 5 or len(set(shape[2:])) != 1 or shape[2] < 1 or tile % shape[2]:
        return None
    return tile // shape[2], int(shape[1])


def _tile_generator(seed: int, start: tuple[int, int, int]) -> torch.Generator:
    state = np.random.SeedSequence([int(seed), *(int(v) for v in start)]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


@torch.no_grad()
def refine_volume(model: torch.nn.Module, volume: np.ndarray, seed: int, tile: int, overlap: int,
                  batch_size: int = 2, device: str | torch.device = "cpu") -> np.ndarray:
    """``model`` (in eval mode) over a normalised (Z, Y, X) ``volume`` by blended tiles.

    For a noise-taking generator whose noise is the input downsampled f times, the volume is
    padded (by reflection) to whole multiples of f, the overlap rounded down to one, and every
    tile cut from one noise volume, so overlapping tiles see the same noise where they overlap.
    """
    check_tiling(tile, overlap)
    original = tuple(int(n) for n in volume.shape)
    plan = _noise_plan(model, tile) if takes_noise(model) else None
    noise = None
    factor = 1
    if plan is not None:
        factor, channels = plan
        overlap -= overlap % factor
        target = [-(-max(n, tile) // factor) * factor for n in original]
        pads = [(0, t - n) for t, n in zip(target, original)]
        if any(p for _, p in pads):
            volume = np.pad(volume, pads, mode="reflect" if min(original) > 1 else "edge")
        generator = torch.Generator().manual_seed(int(seed))
        noise = torch.randn((1, channels, *(t // factor for t in target)), generator=generator)

    def refine(tiles: torch.Tensor, starts: list[tuple[int, int, int]]) -> torch.Tensor:
        z = None
        if noise is not None:
            n = tile // factor
            z = torch.cat([noise[:, :, a // factor:a // factor + n, b // factor:b // factor + n,
                                 c // factor:c // factor + n] for a, b, c in starts]).to(tiles.device)
        elif takes_noise(model):  # noise of another shape: each tile its own draw
            z = torch.cat([torch.randn(noise_shape(model, (1, *tiles.shape[1:])), generator=_tile_generator(seed, s))
                           for s in starts]).to(tiles.device)
        return run_generator(model, tiles, z)

    shape = tuple(max(int(n), tile) for n in volume.shape)
    total = len(tiles_of(shape, tile, overlap))  # type: ignore[arg-type]
    with torch.random.fork_rng(devices=[]), progress.stage("refine tomogram", total, "tiles") as bar:
        torch.manual_seed(int(seed))  # generators that draw their own noise
        out = apply_tiled(refine, volume, tile, overlap, batch_size=batch_size, device=device, advance=bar.advance)
    return np.ascontiguousarray(out[:original[0], :original[1], :original[2]])


def refine_tomogram(run_dir: str | os.PathLike, volume: np.ndarray, seed: int = 0, tile: int | None = None,
                    overlap: int | None = None, batch_size: int = 2, checkpoint: str | os.PathLike | None = None,
                    normalize: str | None = None, device: str = "cpu") -> np.ndarray:
    """A (Z, Y, X) tomogram refined by the run's D -> S generator (see the module docstring).

    ``tile`` defaults to twice the run's box, ``overlap`` to half the box; ``normalize`` to the
    normalisation of the run's domain D.
    """
    array = np.asarray(volume, dtype=np.float32)
    if array.ndim != 3:
        raise InputError(f"a tomogram must be 3-D (Z, Y, X), got shape {array.shape}")
    if not np.isfinite(array).all():
        raise InputError("the tomogram contains NaN or infinite voxels")

    box = int(run_metadata(Path(run_dir))["box"])
    tile = 2 * box if tile is None else int(tile)
    overlap = box // 2 if overlap is None else int(overlap)
    check_tiling(tile, overlap)
    padded = [max(int(n), tile) for n in array.shape]
    # the input, output and weight volumes, and a batch of tiles through a network of ~64 channels
    check_allocation(12 * int(np.prod(padded, dtype=np.float64)) + 256 * tile ** 3 * int(batch_size),
                     f"tile {tile} ({batch_size} per pass) over a {'x'.join(map(str, array.shape))} tomogram",
                     "a smaller --tile or --batch-size")
    target = check_device(device, "refine device")
    model, cfg = load_generator(run_dir, checkpoint=checkpoint)
    model = model.to(target)
    normalised = normalize_volume(torch.from_numpy(array), normalize or density_normalization(cfg)).numpy()
    return refine_volume(model, normalised, seed, tile, overlap, batch_size, target)
