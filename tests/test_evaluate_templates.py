"""The evaluation's clean class maps: MRC maps, atomic models (with a biological assembly), phantoms."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from test_io_structures import PDB_TEXT

from cryoet_forge.errors import ConfigError
from cryoet_forge.evaluate.config import config_from_dict
from cryoet_forge.evaluate.datasets import class_templates
from cryoet_forge.io.mrc import write_mrc
from cryoet_forge.simulate.density import density_from_structure


def test_models_in_maps_dir_become_maps_of_the_chosen_assembly(tmp_path):
    (tmp_path / "dimer.pdb.gz").write_bytes(gzip.compress(PDB_TEXT.encode()))
    write_mrc(tmp_path / "blob.mrc", np.ones((8, 8, 8), np.float32), 10.0)
    deposited = class_templates(["dimer", "blob", "ring"], tmp_path, 16, 10.0)
    assembled = class_templates(["dimer"], tmp_path, 16, 10.0, assembly=1)["dimer"]
    assert set(deposited) == {"dimer", "blob", "ring"} and all(v.shape == (16,) * 3 for v in deposited.values())
    expected = density_from_structure(tmp_path / "dimer.pdb.gz", 10.0, 16, crop=True, assembly=1)
    np.testing.assert_array_equal(assembled, expected)
    # the assembly holds two copies of the chain: about twice the deposited model's scattering (a
    # few atoms at 10 A lose some of it to the density cutoff)
    assert 1.7 < assembled.sum() / deposited["dimer"].sum() < 2.1
    with pytest.raises(ConfigError, match=r"class 'nosuch' is not a phantom .* nosuch.pdb / .cif there"):
        class_templates(["nosuch"], tmp_path, 16, 10.0)


def test_data_assembly_is_checked():
    with pytest.raises(ConfigError, match="data.assembly must be 0 .* got -1"):
        config_from_dict({"data": {"assembly": -1}})
    assert config_from_dict({"data": {"assembly": 1}}).data.assembly == 1
