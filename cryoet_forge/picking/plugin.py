"""Built-in picking components: the ``unet-segmentation`` picker and the ``forge pick`` commands."""

from __future__ import annotations

from cryoet_forge import hookimpl
from cryoet_forge.options import check_options
from cryoet_forge.picking.commands import pick_group


def _segmentation_picker(**options):
    """A 3-D U-Net of per-voxel classes, then class peaks (DeepFinder's recipe); options: PickerOptions."""
    # start-up: the picker's module loads scipy.spatial, .sparse and .linalg (about 0.1 s, on every
    # registry load were it imported at the top)
    from cryoet_forge.picking.segmentation import PickerOptions, SegmentationPicker

    check_options("picker", "unet-segmentation", PickerOptions, options)
    return SegmentationPicker(PickerOptions(**options))


_segmentation_picker.options_from = "cryoet_forge.picking.segmentation:PickerOptions"  # type: ignore[attr-defined]


@hookimpl
def forge_register_pickers(register):
    register("unet-segmentation", _segmentation_picker)


@hookimpl
def forge_register_commands(cli):
    cli.add_command(pick_group)
