"""Built-in simulators and the ``forge simulate`` / ``forge fetch-structures`` commands."""

from __future__ import annotations

from cryoet_forge import hookimpl
from cryoet_forge.simulate.commands import density_command, fetch_structures_command, simulate_command
from cryoet_forge.simulate.fourier import FourierSimulator
from cryoet_forge.simulate.poses import PoseSimulator
from cryoet_forge.simulate.tilt_series import TiltSeriesSimulator
from cryoet_forge.simulate.tomogram_command import simulate_tomogram_command


@hookimpl
def forge_register_simulators(register):
    register("fourier", FourierSimulator)
    register("tilt-series", TiltSeriesSimulator)
    register("posed-map", PoseSimulator, "clean density maps in a random pose, no imaging model "
             "(domain D of CryoETGAN; also accepted as \"none\")")


@hookimpl
def forge_register_commands(cli):
    cli.add_command(simulate_command)
    cli.add_command(fetch_structures_command)
    cli.add_command(density_command)
    cli.add_command(simulate_tomogram_command)
