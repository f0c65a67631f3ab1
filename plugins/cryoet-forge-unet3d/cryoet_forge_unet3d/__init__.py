"""A 3D U-Net generator plugin for cryoet-forge."""

from cryoet_forge_unet3d.model import UNet3D

__all__ = ["UNet3D"]
__version__ = "0.1.0"
