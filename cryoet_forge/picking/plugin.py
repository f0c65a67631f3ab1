"""Built-in picking components: the ``unet-segmentation`` picker."""

from __future__ import annotations

from cryoet_forge import hookimpl
from cryoet_forge.options import check_options

# The registry imports every plugin module (`forge list`, every command that builds a component):
# a component's module is imported inside its factory, so that a command loads only the components
# it uses (start-up time).


def _segmentation_picker(**options):
    """A 3-D U-Net of per-voxel classes, then class peaks (DeepFinder's recipe); options: PickerOptions."""
    from cryoet_forge.picking.segmentation import PickerOptions, SegmentationPicker

    check_options("picker", "unet-segmentation", PickerOptions, options)
    return SegmentationPicker(PickerOptions(**options))


_segmentation_picker.options_from = "cryoet_forge.picking.segmentation:PickerOptions"  # type: ignore[attr-defined]


@hookimpl
def forge_register_pickers(register):
    register("unet-segmentation", _segmentation_picker)
