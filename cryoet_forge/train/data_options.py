"""``forge train --real PARTICLES --maps DIR | --structures SPEC``: a user's own particles as domain
S and the clean maps of their classes as domain D, as ``[data]`` overrides of the training config.

- ``--real``: a labelled STAR table, a folder (with one STAR table, or MRC files) or an ``.npz``
  bundle (``volume-folder``), or a copick project file ``.json`` (``copick``; its further
  options through ``--set data.subtomograms.options={...}``).
- Domain D is simulated on the fly from the maps (``simulated``) at the box and voxel size of
  the particles: by default the traditional ``fourier`` simulation of the maps (``--gan-input
  traditional``: refinement, the setting ``forge evaluate`` measured best), or the posed clean
  maps themselves (``--gan-input density``, the paper).
- Both domains get the same normalisation, ``minmax``, as ``forge evaluate`` trains them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryoet_forge import registry
from cryoet_forge.errors import ConfigError

#: the normalisation of both domains (the one forge evaluate trains with)
NORMALIZE = "minmax"
GAN_INPUTS = {"traditional": "fourier", "density": "posed-map"}


def real_data_overrides(real: Path | None, maps: Path | None, structures: tuple[str, ...],
                        gan_input: str = "traditional", length: int | None = None) -> dict[str, Any]:
    """The ``[data]`` overrides for ``--real`` / ``--maps`` / ``--structures`` ({} when none is given)."""
    if real is None:
        if maps is not None or structures:
            raise ConfigError("--maps/--structures give domain D for --real PARTICLES; give --real too "
                              "(or configure [data.density] in the config)")
        return {}
    if (maps is None) == (not structures):
        raise ConfigError("--real PARTICLES needs the clean maps of its classes: --maps DIR or --structures "
                          "SPEC (repeatable), not both")
    if gan_input not in GAN_INPUTS:
        raise ConfigError(f"--gan-input {gan_input!r}; choose from: {', '.join(GAN_INPUTS)}")
    if structures:
        # start-up: forge train --help imports this module; templates imports numpy and scipy
        from cryoet_forge.simulate.templates import check_specs

        check_specs(structures)
    if real.suffix.lower() == ".json":
        dataset, options = "copick", {"config": str(real), "normalize": NORMALIZE}
    else:
        dataset, options = "volume-folder", {"root": str(real), "normalize": NORMALIZE}
    particles = registry.create("dataset", dataset, **options)
    box, voxel = int(particles.box), float(particles.voxel_size)
    classes: Any = str(maps) if maps is not None else list(structures)
    density = {"classes": classes, "simulator": GAN_INPUTS[gan_input], "box": box, "voxel_size": voxel,
               "length": int(length or max(256, len(particles))), "seed": 1, "normalize": NORMALIZE}
    return {"data.subtomograms.dataset": dataset, "data.subtomograms.options": options,
            "data.density.dataset": "simulated", "data.density.options": density}
