"""Networks: the CryoETGAN generator and the critics."""

from cryoet_forge.models.critics import PatchGANCritic, SNWGANCritic
from cryoet_forge.models.generators import CryoETGANGenerator

__all__ = ["CryoETGANGenerator", "SNWGANCritic", "PatchGANCritic"]
