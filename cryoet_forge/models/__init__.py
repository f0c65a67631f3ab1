"""Networks: the CryoETGAN generator and critics (the CB3D classifier lives in models.cb3d)."""

from cryoet_forge.models.critics import PatchGANCritic, SNWGANCritic
from cryoet_forge.models.generators import CryoETGANGenerator

__all__ = ["CryoETGANGenerator", "SNWGANCritic", "PatchGANCritic"]
