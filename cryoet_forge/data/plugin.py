"""Built-in dataset kinds, registered through the same hook as any plugin."""

from __future__ import annotations

from cryoet_forge import hookimpl
from cryoet_forge.data.folders import LabelledFolderDataset, VolumeFolderDataset
from cryoet_forge.data.simulated import SimulatedDataset


@hookimpl
def forge_register_datasets(register):
    register("volume-folder", VolumeFolderDataset)
    register("labelled-folder", LabelledFolderDataset)
    register("simulated", SimulatedDataset)
