"""Atomic model -> density map with electron scattering factors (gemmi), as MRC.

Atoms are placed with gemmi's ``DensityCalculatorE`` (electron form factors of International
Tables C 4.3.2.2) in a cubic P1 cell of ``box * voxel_size`` Angstrom, after translating
the model so its centre of mass sits on the box centre (index ``box // 2``). The map is
low-passed to ``resolution`` by a Gaussian blur added to every atom, with the same width
rule as UCSF Chimera's molmap: sigma = 0.225 * resolution, i.e. B = 8 pi^2 sigma^2.
Atomic B-factors are ignored (the map should describe the model, not its disorder).

A model that does not fit (atoms closer than one voxel to the box faces, or outside) is an
InputError naming the box it needs; with ``crop=True`` it is computed in a larger box and the
central ``box``^3 is kept, with a warning. The periodic cell of the calculation would
otherwise wrap cut-off density onto the opposite face.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import gemmi
import numpy as np

from cryoet_forge.errors import InputError
from cryoet_forge.io.mrc import check_voxel_size, write_mrc
from cryoet_forge.io.structures import read_structure
from cryoet_forge.limits import check_allocation

MOLMAP_SIGMA_FACTOR = 0.225


def resolution_bfactor(resolution: float) -> float:
    """Isotropic B (A^2) of a Gaussian low-pass with molmap's width for ``resolution`` (A)."""
    sigma = MOLMAP_SIGMA_FACTOR * resolution
    return 8.0 * math.pi**2 * sigma**2


def density_from_structure(path: str | os.PathLike | gemmi.Structure, voxel_size: float, box: int,
                           resolution: float | None = None, crop: bool = False,
                           assembly: int | None = None) -> np.ndarray:
    """A (box, box, box) float32 (z, y, x) density map of an atomic model.

    ``resolution`` defaults to twice the voxel size (Nyquist). Values are in gemmi's units
    (electron scattering potential per voxel volume), >= 0 up to ripples of the blur.
    """
    voxel_size = check_voxel_size(voxel_size)
    if int(box) != box or box < 4:
        raise InputError(f"box {box!r}: expected an integer >= 4 voxels")
    box = int(box)
    resolution = 2.0 * voxel_size if resolution is None else float(resolution)
    if not math.isfinite(resolution) or resolution <= 0:
        raise InputError(f"resolution {resolution!r}: expected Angstrom > 0")
    if isinstance(path, gemmi.Structure):
        structure, source = path, path.name or "structure"
    else:
        structure, source = read_structure(path, assembly=assembly), str(path)
    model = structure[0]
    com = model.calculate_center_of_mass()
    positions = np.array([[cra.atom.pos.x, cra.atom.pos.y, cra.atom.pos.z] for cra in model.all()])
    extent = float(np.abs(positions - np.array([com.x, com.y, com.z])).max())  # Angstrom, per axis
    # the box holds [-box//2, box - box//2 - 1] voxels around the centre index
    reach = (min(box // 2, box - box // 2 - 1) - 1) * voxel_size
    calc_box = box
    if extent > reach:
        needed = 2 * (int(math.ceil(extent / voxel_size)) + 2)
        if not crop:
            raise InputError(f"{source}: atoms reach {extent:.0f} A from the centre of mass but a box of "
                             f"{box} x {voxel_size:g} A holds +-{reach:.0f} A; use a box >= {needed} or crop")
        warnings.warn(f"{source}: the model reaches {extent:.0f} A from its centre of mass; "
                      f"the {box}^3 box at {voxel_size:g} A crops it", stacklevel=2)
        calc_box = needed + (needed - box) % 2  # same parity keeps the centre index aligned
    # an extra blur-width margin so the periodic cell does not wrap the map's tails
    margin = int(math.ceil(2.0 * MOLMAP_SIGMA_FACTOR * resolution / voxel_size)) + 2
    n = calc_box + 2 * margin
    # gemmi's grid, its NumPy copy and the cut-out box, float32
    check_allocation(12 * n**3, f"{source}: a density grid of {n}^3 voxels (box {box} at {voxel_size:g} A)",
                     "a smaller box")
    length = n * voxel_size
    centre = (n // 2) * voxel_size
    shift = gemmi.Position(centre - com.x, centre - com.y, centre - com.z)
    placed = model.clone()
    for cra in placed.all():
        cra.atom.pos = cra.atom.pos + shift
        cra.atom.b_iso = 0.0
        cra.atom.aniso = gemmi.SMat33f(0, 0, 0, 0, 0, 0)
    calc = gemmi.DensityCalculatorE()
    calc.d_min = 2.0 * voxel_size
    calc.blur = resolution_bfactor(resolution)
    calc.cutoff = 1e-5
    calc.grid.unit_cell = gemmi.UnitCell(length, length, length, 90, 90, 90)
    calc.grid.spacegroup = gemmi.find_spacegroup_by_name("P1")
    calc.grid.set_size(n, n, n)
    calc.add_model_density_to_grid(placed)
    calc.grid.symmetrize_sum()
    # gemmi's grid is indexed (x, y, z); the project's volumes are (z, y, x)
    full = np.array(calc.grid, copy=True).transpose(2, 1, 0)
    start = n // 2 - box // 2
    density = full[start:start + box, start:start + box, start:start + box]
    return np.ascontiguousarray(density, dtype=np.float32)


def write_structure_map(path: str | os.PathLike, structure_path: str | os.PathLike, voxel_size: float,
                        box: int, resolution: float | None = None, crop: bool = False,
                        assembly: int | None = None) -> Path:
    """Compute ``density_from_structure`` and write it as MRC with the voxel size in the header."""
    density = density_from_structure(structure_path, voxel_size, box, resolution, crop, assembly)
    return write_mrc(path, density, voxel_size)
