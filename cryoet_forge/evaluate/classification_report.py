"""Scores of one classifier on one labelled set, written as scores.json + confusion.png."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from cryoet_forge.classify import ClassificationResult, LabelledVolumes, evaluate_cb3d
from cryoet_forge.evaluate.figures import save_confusion_png
from cryoet_forge.io.atomic import write_json_atomic
from cryoet_forge.models.cb3d import CB3D


def score_and_write(model: CB3D, data: LabelledVolumes, class_names: Sequence[str], normalize: str,
                    out_dir: str | Path, device: str = "cpu") -> ClassificationResult:
    out_dir = Path(out_dir)
    result = evaluate_cb3d(model, data, class_names, normalize=normalize, device=device)
    summary = result.summary()
    summary["data"] = str(data.source)
    write_json_atomic(out_dir / "scores.json", summary, allow_nan=False)
    save_confusion_png(out_dir / "confusion.png", result.confusion, result.class_names,
                       title=f"CB3D on {Path(str(data.source)).name}: accuracy {result.accuracy:.3f}")
    return result
