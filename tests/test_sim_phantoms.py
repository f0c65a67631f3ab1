"""Procedural phantoms: shapes, seeds and class differences."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from cryoet_forge.errors import InputError
from cryoet_forge.simulate.phantoms import PHANTOM_CLASSES, make_phantom


def test_at_least_four_classes_with_expected_names():
    assert len(PHANTOM_CLASSES) >= 4
    assert {"barrel", "two-lobe", "ring", "globule", "membrane"} <= set(PHANTOM_CLASSES)


@pytest.mark.parametrize("box", [16, 17, 24])
def test_phantoms_fit_any_box_and_are_normalised(box):
    for name in PHANTOM_CLASSES:
        volume = make_phantom(name, box, voxel_size=10.0, seed=3)
        assert volume.shape == (box, box, box) and volume.dtype == np.float32
        assert volume.min() >= 0 and volume.max() == pytest.approx(1.0)
        # the particle is inside the box: the outer shell carries little density
        shell = volume.copy()
        shell[1:-1, 1:-1, 1:-1] = 0
        assert shell.sum() < 0.05 * volume.sum(), name


def test_seed_is_reproducible_and_changes_the_instance():
    a = make_phantom("two-lobe", 20, seed=1)
    np.testing.assert_array_equal(a, make_phantom("two-lobe", 20, seed=1))
    assert np.abs(a - make_phantom("two-lobe", 20, seed=2)).max() > 0.05


def test_classes_differ_more_than_seeds_of_one_class():
    volumes = {n: make_phantom(n, 24, voxel_size=9.4, seed=0) for n in PHANTOM_CLASSES}
    for a, b in itertools.combinations(PHANTOM_CLASSES, 2):
        corr = np.corrcoef(volumes[a].ravel(), volumes[b].ravel())[0, 1]
        assert corr < 0.9, (a, b, corr)
    same = np.corrcoef(volumes["ring"].ravel(), make_phantom("ring", 24, 9.4, seed=5).ravel())[0, 1]
    assert same > 0.8


def test_ring_is_hollow_and_globule_is_solid():
    ring = make_phantom("ring", 24, voxel_size=10.0)
    globule = make_phantom("globule", 24, voxel_size=10.0)
    c = 12
    assert ring[c, c, c] < 0.1 and globule[c, c, c] > 0.8


def test_bad_phantom_arguments():
    with pytest.raises(InputError, match="unknown phantom class 'cube'; choose from: barrel"):
        make_phantom("cube", 16)
    with pytest.raises(InputError, match="voxel size 0"):
        make_phantom("ring", 16, voxel_size=0)
