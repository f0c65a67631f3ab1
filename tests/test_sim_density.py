"""Atoms -> density: centring, voxel size, box checks, and agreement with independent maps."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from cryoet_forge.errors import InputError
from cryoet_forge.io.mrc import read_mrc
from cryoet_forge.simulate.density import density_from_structure, write_structure_map
from cryoet_forge.simulate.templates import fit_map

ATOM = "ATOM  {i:5d}  {name:<3s} ALA A{i:4d}    {x:8.3f}{y:8.3f}{z:8.3f}  1.00 20.00           {el}"


def write_pdb(path, atoms):
    path.write_text("\n".join(ATOM.format(i=i + 1, name=el, x=x, y=y, z=z, el=el)
                              for i, (el, x, y, z) in enumerate(atoms)) + "\nEND\n")
    return path


def test_density_is_centred_on_the_centre_of_mass(tmp_path):
    # two carbons and one heavy sulfur: the centre of mass sits near the sulfur
    pdb = write_pdb(tmp_path / "m.pdb", [("C", 0, 0, 0), ("C", 30, 0, 0), ("S", 30, 20, 10)])
    volume = density_from_structure(pdb, voxel_size=2.0, box=48, resolution=6.0)
    assert volume.shape == (48, 48, 48) and volume.dtype == np.float32
    com = np.array(ndimage.center_of_mass(np.clip(volume, 0, None)))  # (z, y, x)
    masses = np.array([12.011, 12.011, 32.06])
    coords = np.array([[0, 0, 0], [30, 0, 0], [30, 20, 10]], float)
    expected_xyz = (masses[:, None] * coords).sum(0) / masses.sum()
    # the sulfur sits at +(x, y, z) offset from the centre of mass
    peak = np.array(np.unravel_index(np.argmax(volume), volume.shape)) - 24
    np.testing.assert_allclose(peak[::-1] * 2.0, coords[2] - expected_xyz, atol=2.0)
    np.testing.assert_allclose(com, 24, atol=1.0)  # scattering-weighted ~ mass-weighted


def test_resolution_blurs_and_map_file_has_voxel_size(tmp_path):
    pdb = write_pdb(tmp_path / "m.pdb", [("C", 0, 0, 0), ("N", 3, 0, 0)])
    sharp = density_from_structure(pdb, 2.0, 32, resolution=4.0)
    soft = density_from_structure(pdb, 2.0, 32, resolution=12.0)
    assert sharp.max() > 3 * soft.max()
    assert sharp.sum() == pytest.approx(soft.sum(), rel=0.05)  # blurring keeps the total (up to the cutoff radius)
    path = write_structure_map(tmp_path / "m.mrc", pdb, 2.0, 32)
    volume, voxel = read_mrc(path)
    assert voxel == pytest.approx(2.0) and volume.shape == (32, 32, 32)


def test_box_too_small_is_an_error_or_a_warned_crop(tmp_path):
    pdb = write_pdb(tmp_path / "long.pdb", [("C", -100, 0, 0), ("C", 100, 0, 0)])
    with pytest.raises(InputError, match=r"long.pdb: atoms reach 100 A .* use a box >= 24 or crop"):
        density_from_structure(pdb, 10.0, 16)
    with pytest.warns(UserWarning, match="crops it"):
        cropped = density_from_structure(pdb, 10.0, 16, crop=True)
    assert cropped.shape == (16, 16, 16)
    with pytest.raises(InputError, match="voxel size 0"):
        density_from_structure(pdb, 0, 16)


def reference_pairs(shared_data, folder):
    names = []
    for ref in sorted((shared_data / folder).glob("*.mrc")):
        structure = shared_data / "structures" / f"{ref.stem}.pdb.gz"
        if structure.exists():
            names.append((structure, ref))
    if not names:
        pytest.skip(f"no structure/map pairs in {shared_data / folder}")
    return names


@pytest.mark.parametrize(("folder", "names"), [("maps_10A", ("1s3x", "3j9i")), ("maps_5A", ("1s3x",))])
def test_density_matches_independent_reference_maps(shared_data, folder, names):
    pairs = {s.name.split(".")[0]: (s, r) for s, r in reference_pairs(shared_data, folder)}
    for name in names:
        structure, ref_path = pairs[name]
        reference, voxel = read_mrc(ref_path)
        box = reference.shape[0]
        # match centring (centre of mass at the box centre), voxel size and resolution
        reference = fit_map(reference, voxel, voxel, box)
        ours = density_from_structure(structure, voxel, box, resolution=20.0)
        corr = np.corrcoef(ours.ravel(), reference.ravel())[0, 1]
        assert corr >= 0.9, (name, corr)
        # a different molecule in the same box does not reach the bar
        other = density_from_structure(shared_data / "structures" / "1s3x.pdb.gz" if name != "1s3x"
                                       else shared_data / "structures" / "3gl1.pdb.gz", voxel, box, 20.0)
        assert np.corrcoef(other.ravel(), reference.ravel())[0, 1] < corr - 0.1


@pytest.mark.slow
def test_every_shared_structure_matches_its_reference(shared_data):
    for folder in ("maps_10A", "maps_5A"):
        for structure, ref_path in reference_pairs(shared_data, folder):
            reference, voxel = read_mrc(ref_path)
            reference = fit_map(reference, voxel, voxel, reference.shape[0])
            ours = density_from_structure(structure, voxel, reference.shape[0], resolution=20.0)
            assert np.corrcoef(ours.ravel(), reference.ravel())[0, 1] >= 0.9, structure.name
