"""Hook implementations: the entry point ``cryoet_forge_unet3d.plugin`` names this module."""

from cryoet_forge import hookimpl
from cryoet_forge_unet3d.model import UNet3D


@hookimpl
def forge_register_generators(register):
    register("unet3d", UNet3D, "3D U-Net: stride-2 conv encoder, skip connections, tanh output")
