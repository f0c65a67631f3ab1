"""What ``forge extract`` writes: the boxes of an extraction plan as a labelled folder or a bundle."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cryoet_forge import progress
from cryoet_forge.data.bundle import save_bundle
from cryoet_forge.extract import ExtractPlan, iter_boxes
from cryoet_forge.io.atomic import atomic_folder, write_json_atomic
from cryoet_forge.io.mrc import write_mrc
from cryoet_forge.io.star import write_particles


def write_plan(plan: ExtractPlan, out, bundle: bool = False, quiet: bool = True, threads: int | None = None):
    """Cut and write every box of ``plan``: a labelled folder (volumes/*.mrc + particles.star +
    summary.json, each MRC written as its box is cut, so memory stays small) or an .npz bundle
    (all boxes in memory); atomically either way. Returns the STAR table or the bundle path."""
    out = Path(out)
    table = plan.table.copy()
    table["rlnImagePixelSize"] = plan.voxel_size
    box = plan.extractors[0].opt.box
    summary = {"classes": plan.class_names, "voxel_size": plan.voxel_size, "box": box,
               "counts": plan.counts, "notes": plan.notes}
    label = f"extract {box}^3"
    if bundle:
        volumes = np.empty((len(plan.items),) + (box,) * 3, dtype=np.float32)
        with progress.stage(label, len(plan.items), "particles", enabled=not quiet) as bar:
            for i, volume in iter_boxes(plan, threads):
                volumes[i] = volume
                bar.advance(1)
        save_bundle(out, volumes, (table["rlnClassNumber"] - 1).to_numpy(), plan.class_names, plan.voxel_size, table)
        return out
    # forge extract refuses an earlier result unless --overwrite (checked before any work)
    with atomic_folder(out, stale=("volumes", "particles.star", "summary.json")) as work:
        names = [f"volumes/{i + 1:06d}.mrc" for i in range(len(table))]
        with progress.stage(label, len(plan.items), "particles", enabled=not quiet) as bar:
            for i, volume in iter_boxes(plan, threads):
                write_mrc(work / names[i], volume, plan.voxel_size)
                bar.advance(1)
        table.insert(0, "rlnImageName", names)
        write_particles(work / "particles.star", table)
        write_json_atomic(work / "summary.json", summary, indent=1)
    return out / "particles.star"
