"""Built-in simulators and the ``forge simulate`` / ``forge fetch-structures`` commands."""

from __future__ import annotations

from cryoet_forge import hookimpl
from cryoet_forge.simulate.fourier import FourierSimulator
from cryoet_forge.simulate.tilt_series import TiltSeriesSimulator


@hookimpl
def forge_register_simulators(register):
    register("fourier", FourierSimulator)
    register("tilt-series", TiltSeriesSimulator)


@hookimpl
def forge_register_commands(cli):
    from cryoet_forge.simulate.commands import density_command, fetch_structures_command, simulate_command

    cli.add_command(simulate_command)
    cli.add_command(fetch_structures_command)
    cli.add_command(density_command)
