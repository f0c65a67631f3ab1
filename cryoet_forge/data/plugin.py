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
    register("copick", _copick_dataset, "subtomograms around the picks of a copick project, cut on access "
             "(needs cryoet-forge[copick])")


def _copick_dataset(config: str, **options):
    from cryoet_forge.data.copick import CopickDataset

    return CopickDataset(config, **options)


@hookimpl
def forge_register_commands(cli):
    from cryoet_forge.data.extract_command import extract_command

    cli.add_command(extract_command)
