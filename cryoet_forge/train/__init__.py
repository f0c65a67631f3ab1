"""CryoETGAN training: the loop, checkpoints and torchrun support."""

from cryoet_forge.train.loop import resume_config, train

__all__ = ["train", "resume_config"]
