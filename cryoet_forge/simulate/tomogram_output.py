"""What ``forge simulate-tomogram`` writes: MRC (and OME-Zarr) volumes, RELION 5 STAR tables, a copick project.

In the output folder, per tomogram ``NAME``:

- ``tomograms/NAME.mrc``: the reconstruction, float32, voxel size in the header (protein dark);
  with ``--zarr`` also ``tomograms/NAME.zarr`` (OME-Zarr 0.4, one scale level, axes in Angstrom);
- ``labels/NAME.mrc``: the label map (MRC mode 0, int8; mode 1, int16, when a label exceeds 127): 0 background,
  class number (``rlnClassNumber``) where a particle is, the membrane label after the classes;
- ``tilt_series/NAME.star``: the tilts (``rlnTomoNominalStageTiltAngle``, ``rlnMicrographPreExposure``
  in dose-symmetric order, ``rlnDefocusU/V`` underfocus in Angstrom); with ``--tilt-series`` the
  aligned tilt images too, ``tilt_series/NAME.mrcs`` (``rlnMicrographName`` ``N@...``);

and for all tomograms together ``particles.star`` (block ``particles``: ``rlnTomoName``,
``rlnCoordinateX/Y/Z`` in voxels of the tomogram, voxel ``i`` centred at ``i``,
``rlnAngleRot/Tilt/Psi`` in degrees, ``rlnClassNumber`` from 1, ``forgeClassName``,
``forgeRadiusAngst``), ``tomograms.star`` (block ``global``: RELION 5 tomogram columns with
``rlnTomoReconstructedTomogram`` and ``rlnTomoTiltSeriesStarFile``, so it serves as
``forge simulate --acquisition``), ``simulation.json``, and with ``--copick`` a copick project
``copick/copick.json`` (one run per tomogram: the tomogram as ``wbp`` at the voxel size, the picks
of each class with their orientation, the label map as a multilabel segmentation ``labels``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import mrcfile
import numpy as np
import pandas as pd
import starfile

from cryoet_forge.errors import ConfigError
from cryoet_forge.io.atomic import atomic_path, write_json_atomic
from cryoet_forge.io.mrc import write_mrc
from cryoet_forge.simulate.tomogram import TomogramPhysics, TomogramResult

OUTPUT_NAMES = ("tomograms", "labels", "tilt_series", "particles.star", "tomograms.star", "copick",
                "simulation.json")
MEMBRANE = "membrane"
COPICK_USER, COPICK_SESSION = "forge", "0"


def write_labels(path: Path, labels: np.ndarray, voxel_size: float) -> Path:
    """An integer label map as MRC (int8, mode 0; int16, mode 1, when a label exceeds 127), atomically."""
    dtype = np.int8 if int(labels.max(initial=0)) <= 127 else np.int16
    with atomic_path(path) as tmp:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(np.ascontiguousarray(labels, dtype=dtype))
            mrc.voxel_size = voxel_size
            mrc.update_header_stats()
    return path


def write_ome_zarr(path: Path, volume: np.ndarray, voxel_size: float, name: str) -> Path:
    """One-level OME-Zarr 0.4 image (z, y, x) with the voxel size in Angstrom (what forge reads)."""
    try:
        import zarr  # optional dependency (the copick extra)
    except ImportError:
        raise ConfigError("--zarr needs the zarr library: pip install 'cryoet-forge[copick]'") from None
    group = zarr.open_group(str(path), mode="w")
    chunk = tuple(min(64, int(n)) for n in volume.shape)
    group.create_dataset("0", data=np.ascontiguousarray(volume, dtype=np.float32), chunks=chunk)
    group.attrs["multiscales"] = [{
        "version": "0.4", "name": name,
        "axes": [{"name": axis, "type": "space", "unit": "angstrom"} for axis in "zyx"],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale",
                                                                  "scale": [voxel_size] * 3}]}],
    }]
    return path


def write_star(path: Path, blocks: dict[str, pd.DataFrame]) -> Path:
    with atomic_path(path, suffix=".star") as tmp:
        starfile.write(blocks, tmp, overwrite=True, float_format="%.6f")
    return path


def particles_table(results: Sequence[TomogramResult], class_names: Sequence[str], radii_A: Sequence[float]
                    ) -> pd.DataFrame:
    """The picks of every tomogram, RELION columns (coordinates in voxels, x y z)."""
    rows = []
    for result in results:
        layout = result.layout
        for i in range(len(layout.classes)):
            c = int(layout.classes[i])
            z, y, x = (float(v) for v in layout.centres[i])
            rot, tilt, psi = (float(v) for v in result.angles[i])
            rows.append({"rlnTomoName": result.name, "rlnCoordinateX": x, "rlnCoordinateY": y, "rlnCoordinateZ": z,
                         "rlnAngleRot": rot, "rlnAngleTilt": tilt, "rlnAnglePsi": psi, "rlnClassNumber": c + 1,
                         "forgeClassName": class_names[c], "forgeRadiusAngst": float(radii_A[c])})
    columns = ["rlnTomoName", "rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ", "rlnAngleRot", "rlnAngleTilt",
               "rlnAnglePsi", "rlnClassNumber", "forgeClassName", "forgeRadiusAngst"]
    return pd.DataFrame(rows, columns=columns)


def tilt_series_table(result: TomogramResult, images: str | None) -> pd.DataFrame:
    """One row per tilt, in acquisition-angle order (RELION 5 tilt-series STAR columns)."""
    order = sorted(range(len(result.tilts)), key=lambda t: result.tilts[t]["angle"])
    rows = []
    for t in order:
        tilt = result.tilts[t]
        row: dict[str, Any] = {}
        if images is not None:
            row["rlnMicrographName"] = f"{t + 1}@{images}"
        row.update({"rlnTomoNominalStageTiltAngle": tilt["angle"], "rlnTomoXTilt": 0.0, "rlnTomoYTilt": tilt["angle"],
                    "rlnTomoZRot": 0.0, "rlnTomoXShiftAngst": 0.0, "rlnTomoYShiftAngst": 0.0,
                    "rlnMicrographPreExposure": tilt["pre_exposure"], "rlnDefocusU": tilt["underfocus_A"],
                    "rlnDefocusV": tilt["underfocus_A"], "rlnDefocusAngle": 0.0})
        rows.append(row)
    return pd.DataFrame(rows)


def tomograms_table(tomograms: Sequence[tuple[str, tuple[int, int, int]]], physics: TomogramPhysics,
                    voxel_size: float) -> pd.DataFrame:
    """One row per tomogram (name, (z, y, x) size): RELION 5 tomograms STAR columns."""
    rows = []
    for name, (nz, ny, nx) in tomograms:
        rows.append({"rlnTomoName": name, "rlnVoltage": physics.voltage_kv,
                     "rlnSphericalAberration": physics.cs_mm, "rlnAmplitudeContrast": physics.amplitude_contrast,
                     "rlnMicrographOriginalPixelSize": voxel_size,
                     "rlnTomoTiltSeriesPixelSize": voxel_size, "rlnTomoTomogramBinning": 1.0,
                     "rlnTomoSizeX": nx, "rlnTomoSizeY": ny, "rlnTomoSizeZ": nz,
                     "rlnTomoTiltSeriesStarFile": f"tilt_series/{name}.star",
                     "rlnTomoReconstructedTomogram": f"tomograms/{name}.mrc"})
    return pd.DataFrame(rows)


def copick_name(name: str) -> str:
    """A class name as copick accepts it (no underscores, spaces or path characters)."""
    from copick.util.escape import sanitize_name  # optional dependency (the copick extra)

    return sanitize_name(name, suppress_warnings=True)


class CopickWriter:
    """A copick project written into ``folder`` one run (tomogram) at a time, to be read from ``final``
    (copick's roots are absolute paths): the configuration is pointed there by ``finish``."""

    def __init__(self, folder: Path, final: Path, class_names: Sequence[str], radii_A: Sequence[float],
                 voxel_size: float, membranes: bool):
        try:
            import copick  # optional dependency (the copick extra)
            from copick.models import PickableObject  # optional dependency (the copick extra)
        except ImportError:
            raise ConfigError("--copick needs the copick library: pip install 'cryoet-forge[copick]'") from None
        self.names = {name: copick_name(name) for name in class_names}
        if len(set(self.names.values())) != len(self.names):
            raise ConfigError(f"the class names {', '.join(class_names)} are not distinct as copick object names "
                              f"({', '.join(self.names.values())}); rename the maps")
        objects = [PickableObject(name=self.names[n], is_particle=True, label=i + 1, radius=float(r))
                   for i, (n, r) in enumerate(zip(class_names, radii_A))]
        if membranes:
            taken = set(self.names.values())
            objects.append(PickableObject(name=MEMBRANE if MEMBRANE not in taken else f"{MEMBRANE}-shell",
                                          is_particle=False, label=len(class_names) + 1))
        self.folder, self.final, self.voxel_size = folder, final, voxel_size
        self.class_names = list(class_names)
        self.config = folder / "copick.json"
        self.project = copick.ops.open.new_config(str(self.config), str(folder / "overlay"),
                                                  proj_name="forge simulate-tomogram", pickable_objects=objects)

    def add(self, result: TomogramResult) -> None:
        """A run named after the tomogram: the tomogram (``wbp``), each class's picks with their
        orientation (copick transforms: rotation in the upper left 3 x 3), the label map."""
        run = self.project.new_run(result.name)
        run.new_voxel_spacing(self.voxel_size).new_tomogram("wbp").from_numpy(result.tomogram, levels=1)
        for c, name in enumerate(self.class_names):
            members = np.flatnonzero(result.layout.classes == c)
            if not len(members):
                continue
            positions = result.layout.centres[members][:, ::-1] * self.voxel_size  # (x, y, z) Angstrom
            transforms = np.repeat(np.eye(4)[None], len(members), axis=0)
            transforms[:, :3, :3] = result.rotations[members]
            picks = run.new_picks(object_name=self.names[name], session_id=COPICK_SESSION, user_id=COPICK_USER)
            picks.from_numpy(np.ascontiguousarray(positions), transforms)
            picks.store()
        segmentation = run.new_segmentation(self.voxel_size, "labels", COPICK_SESSION, is_multilabel=True,
                                            user_id=COPICK_USER)
        segmentation.from_numpy(result.labels)  # copick picks the smallest unsigned type

    def finish(self) -> None:
        data = json.loads(self.config.read_text())
        data["overlay_root"] = "local://" + os.path.abspath(self.final / "overlay")
        write_json_atomic(self.config, data, indent=4)


def write_result(work: Path, result: TomogramResult, voxel_size: float, zarr: bool, tilt_series: bool) -> None:
    """The files of one tomogram (volumes, labels, tilt-series table and images) into ``work``."""
    name = result.name
    write_mrc(work / "tomograms" / f"{name}.mrc", result.tomogram, voxel_size)
    if zarr:
        write_ome_zarr(work / "tomograms" / f"{name}.zarr", result.tomogram, voxel_size, name)
    write_labels(work / "labels" / f"{name}.mrc", result.labels, voxel_size)
    images = None
    if tilt_series and result.images is not None:
        images = f"tilt_series/{name}.mrcs"
        with atomic_path(work / images) as tmp:
            with mrcfile.new(tmp, overwrite=True) as mrc:
                mrc.set_data(np.ascontiguousarray(result.images, dtype=np.float32))
                mrc.set_image_stack()
                mrc.voxel_size = voxel_size
                mrc.update_header_stats()
    write_star(work / "tilt_series" / f"{name}.star", {name: tilt_series_table(result, images)})
