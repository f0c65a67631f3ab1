"""Built-in networks, losses and the train/generate/uncertainty commands, registered as a plugin."""

from __future__ import annotations

from cryoet_forge import hookimpl
from cryoet_forge.contrastive import PatchNCELoss, RadialSpectrumLoss
from cryoet_forge.losses import LSGANLoss, WGANClipLoss, WGANGPLoss
from cryoet_forge.models.critics import PatchGANCritic, SNWGANCritic
from cryoet_forge.models.generators import CryoETGANGenerator
from cryoet_forge.train.commands import generate_command, refine_tomogram_command, train_command, uncertainty_command


@hookimpl
def forge_register_generators(register):
    register("cryoetgan", CryoETGANGenerator)


@hookimpl
def forge_register_critics(register):
    register("sn-wgan", SNWGANCritic)
    register("patchgan", PatchGANCritic)


@hookimpl
def forge_register_losses(register):
    register("wgan-clip", WGANClipLoss)
    register("wgan-gp", WGANGPLoss)
    register("lsgan", LSGANLoss)
    register("patchnce", PatchNCELoss, "CUT's PatchNCE (Park et al. 2020), a generator regulariser: "
             "[loss.regularizers.patchnce]")
    register("radial-spectrum", RadialSpectrumLoss, "G(d)'s radially averaged log power spectrum matched to the "
             "real batch's, a generator regulariser: [loss.regularizers.radial-spectrum]")


@hookimpl
def forge_register_commands(cli):
    cli.add_command(train_command)
    cli.add_command(generate_command)
    cli.add_command(uncertainty_command)
    cli.add_command(refine_tomogram_command)
