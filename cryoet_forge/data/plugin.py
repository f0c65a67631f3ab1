"""Built-in dataset kinds, registered through the same hook as any plugin."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cryoet_forge import hookimpl
from cryoet_forge.data.extract_command import extract_command
from cryoet_forge.data.folders import LabelledFolderDataset, VolumeFolderDataset
from cryoet_forge.data.simulated import SimulatedDataset
from cryoet_forge.data.tomogram_crops import TomogramCropDataset


@hookimpl
def forge_register_datasets(register):
    register("volume-folder", VolumeFolderDataset)
    register("labelled-folder", LabelledFolderDataset)
    register("simulated", SimulatedDataset)
    register("tomogram-crops", _tomogram_crops, "random crops of unlabelled tomograms (MRC, OME-Zarr, a folder of "
             "them): a GAN domain without picks")
    register("copick", _copick_dataset, "subtomograms around the picks of a copick project, cut on access "
             "(needs cryoet-forge[copick])")


def _tomogram_crops(root: str, **options):
    return TomogramCropDataset(root, **options)


def _tomogram_crops_example(folder: Path) -> dict:
    return TomogramCropDataset.contract_example(folder)


_tomogram_crops.options_from = "cryoet_forge.data.tomogram_crops:TomogramCropDataset"  # type: ignore[attr-defined]
_tomogram_crops.contract_example = _tomogram_crops_example  # type: ignore[attr-defined]


def _copick_dataset(config: str, **options):
    # start-up: the copick dataset's module loads scipy.spatial, .sparse and .linalg (about 0.1 s,
    # on every registry load were it imported at the top); copick itself, optional, loads on use
    from cryoet_forge.data.copick import CopickDataset

    return CopickDataset(config, **options)


#: ``forge list --options`` reads the options from the class this factory builds
_copick_dataset.options_from = "cryoet_forge.data.copick:CopickDataset"  # type: ignore[attr-defined]


def _copick_example(folder: Path) -> dict:
    """Options of a tiny instance for the contract tests: a copick project (copick's own API) with
    one run, a 40^3 tomogram and four picks of one object. Needs copick (ImportError otherwise)."""
    # optional dependency (the copick extra)
    import copick
    from copick.models import PickableObject

    config = Path(folder) / "copick.json"
    project = copick.ops.open.new_config(str(config), str(Path(folder) / "overlay"), pickable_objects=[
        PickableObject(name="particle", is_particle=True, label=1)])
    run = project.new_run("TS_01")
    tomogram = np.random.default_rng(0).normal(size=(40, 40, 40)).astype(np.float32)
    run.new_voxel_spacing(10.0).new_tomogram("wbp").from_numpy(tomogram, levels=1)
    picks = run.new_picks(object_name="particle", session_id="0", user_id="contract")
    picks.from_numpy(np.array([[12, 12, 12], [28, 12, 20], [12, 28, 28], [28, 28, 12]], float) * 10.0)
    picks.store()
    return {"config": str(config), "box": 16}


_copick_dataset.contract_example = _copick_example  # type: ignore[attr-defined]


@hookimpl
def forge_register_commands(cli):
    cli.add_command(extract_command)
