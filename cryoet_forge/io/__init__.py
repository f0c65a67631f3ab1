"""File formats cryo-ET people already use: MRC volumes, STAR tables, PDB/mmCIF models."""

from __future__ import annotations

from cryoet_forge.io.mrc import read_mrc, write_mrc
from cryoet_forge.io.star import read_particles, write_particles

__all__ = ["read_mrc", "write_mrc", "read_particles", "write_particles"]
