"""The report names its sets by role and says what its metrics mean: "experimental (simulated by
tilt-series)" and a simulation-against-simulation banner in the embedded mode (neither with real data),
the GAN by its method, one line per metric; ``save_figures`` writes every figure the report shows."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import numpy as np
import pytest

from cryoet_forge.classify import ClassificationResult, LabelledVolumes
from cryoet_forge.config import LossConfig
from cryoet_forge.evaluate.report import (
    METRIC_COLUMNS,
    METRIC_MEANINGS,
    extra_loss_terms,
    method_description,
    render_report,
    set_names,
)

UNET_REFINER = {"generator": "unet3d", "critic": "sn-wgan", "loss": "wgan-clip", "steps": 400, "batch_size": 4,
                "extra_losses": {"identity": 5.0}}
PAPER_GAN = {"generator": "cryoetgan", "critic": "sn-wgan", "loss": "wgan-clip", "steps": 400, "batch_size": 4,
             "extra_losses": {}}


def _config(source: str = "embedded", gan_input: str = "traditional") -> dict:
    return {"data": {"source": source}, "experimental": {"simulator": "tilt-series"},
            "traditional": {"simulator": "fourier"}, "gan": {"input": gan_input}, "origin": "test"}


def _downstream(mean: float) -> dict:
    return {"confidence": 0.95, "seeds": [0, 1, 2], "mean": mean, "ci_low": mean - 0.1, "ci_high": mean + 0.1,
            "n_train": 12, "accuracies": [mean - 0.05, mean, mean + 0.05],
            "per_class_accuracy_mean": {"a": mean, "b": mean}}


def _results(source: str = "embedded", gan: dict | None = None, gan_input: str = "traditional") -> dict:
    """A results dictionary with the keys ``render_report`` reads (as the pipeline writes them)."""
    quality = {"is_mean": 1.5, "is_std": 0.1, "fid": 12.0, "precision": 0.5, "recall": 0.4, "density": 0.8,
               "coverage": 0.6, "reliable": True, "reliability": {}}
    return {
        "title": "test report", "config": _config(source, gan_input),
        "data": {"description": "test data", "class_names": ["a", "b"], "box": 16, "voxel_size": 10.0,
                 "n_real_train": 20, "n_real_test": 10, "n_density_train": 12, "n_traditional": 12,
                 "n_generated": 12},
        "quality": {"traditional": dict(quality), "cryoetgan": dict(quality)},
        "downstream": {"traditional": _downstream(0.6), "cryoetgan": _downstream(0.7)},
        "downstream_difference": 0.1,
        "inception": {"is_mean": 1.8, "is_std": 0.05,
                      "real_test": {"accuracy": 0.9, "per_class_accuracy": {"a": 0.8, "b": 1.0}}},
        "gan": copy.deepcopy(UNET_REFINER if gan is None else gan), "gan_checkpoint": {"rule": "last"},
        "gan_run": "runs/cryoetgan", "ablations": [], "curves": {"steps": []},
        "uncertainty": {"status": "disabled"}, "timings_s": {"total": 1.0},
    }


def test_extra_loss_terms_are_the_non_zero_ones_with_their_weights():
    loss = LossConfig(identity_weight=5.0, semantic_weight=0.0,
                      regularizers={"patchnce": {"weight": 2.0}, "other": {"weight": 0.0}, "plain": {}})
    assert extra_loss_terms(loss) == {"identity": 5.0, "patchnce": 2.0, "plain": 1.0}
    assert extra_loss_terms(LossConfig()) == {}  # the paper: adversarial and cycle terms only


def test_the_gan_is_named_by_its_method():
    assert method_description(UNET_REFINER, "traditional") == "refinement: unet3d + sn-wgan, identity loss"
    assert method_description(PAPER_GAN, "density") == "from density maps: cryoetgan + sn-wgan"
    refiner = set_names(_config(), UNET_REFINER)
    assert refiner.gan == "GAN (refinement: unet3d + sn-wgan, identity loss)"
    assert refiner.gan_input == "traditional (fourier)"
    # CryoETGAN names the paper's setting only: its generator and critic, from density maps, no extra term
    assert set_names(_config(gan_input="density"), PAPER_GAN).gan == "CryoETGAN"
    assert set_names(_config(gan_input="traditional"), PAPER_GAN).gan == "GAN (refinement: cryoetgan + sn-wgan)"
    no_terms_known = {k: v for k, v in PAPER_GAN.items() if k != "extra_losses"}  # a summary from before the field
    assert set_names(_config(gan_input="density"), no_terms_known).gan == "GAN (from density maps: cryoetgan + sn-wgan)"


def test_embedded_report_names_roles_and_opens_with_the_banner():
    text = render_report(_results("embedded"))
    head = text[:text.index("Data:")]
    assert "**Simulation against simulation: no real data.**" in head
    assert "simulated by tilt-series" in head and "traditional set by fourier" in head
    assert "| experimental (simulated by tilt-series) test split (reference) |" in text
    assert "| traditional (fourier) |" in text
    assert "| GAN (refinement: unet3d + sn-wgan, identity loss) |" in text
    assert "CryoETGAN" not in text  # never the name of a unet3d refiner
    assert "real test" not in text and "Real test" not in text
    assert "extra loss terms (weight): identity 5.000" in text


def test_the_default_title_and_the_legend_name_the_gan_that_was_evaluated():
    results = _results()
    results["title"] = "CryoETGAN evaluation"  # the [report] default
    assert render_report(results).startswith("# GAN (refinement: unet3d + sn-wgan, identity loss) evaluation\n")
    results["title"] = "my title"
    assert render_report(results).startswith("# my title\n")
    paper = _results(gan=PAPER_GAN, gan_input="density")
    paper["title"] = "CryoETGAN evaluation"
    text = render_report(paper)
    assert text.startswith("# CryoETGAN evaluation\n")
    assert "- **CryoETGAN** (from density maps: cryoetgan + sn-wgan): " in text
    assert "| CryoETGAN |" in text


def test_report_on_real_data_has_no_banner():
    text = render_report(_results("folders"))
    assert "Simulation against simulation" not in text
    assert "simulated by" not in text
    assert "| experimental test split (reference) |" in text


def test_every_metric_has_one_line_saying_what_it_means_and_which_way_is_better():
    text = render_report(_results())
    section = text[text.index("### What the columns mean"):text.index("### Per-class")]
    lines = [line for line in section.splitlines() if line.startswith("- **")]
    named = [re.match(r"- \*\*(.+?)\*\*", line).group(1) for line in lines]
    assert set(METRIC_COLUMNS) | {"Accuracy", "Per-class accuracy"} <= set(named)
    assert len(lines) == len(METRIC_MEANINGS)
    for line in lines:
        assert re.search(r"(higher|lower) is better|above 0 favours", line), line
    assert "(lower is better, 0 at best)" in next(line for line in lines if line.startswith("- **FID**"))


def test_report_shows_the_new_figures():
    text = render_report(_results())
    for name in ("montage", "particle_pairs", "power_spectra", "intensity_histograms", "per_class_accuracy",
                 "downstream_accuracy"):
        assert f"(figures/{name}.png)" in text, name


@pytest.mark.parametrize("gan_input", ["traditional", "density"])
def test_save_figures_writes_every_figure_of_the_report(tmp_path, gan_input):
    from cryoet_forge.evaluate.config import config_from_dict
    from cryoet_forge.evaluate.datasets import EvaluationData
    from cryoet_forge.evaluate.downstream import DownstreamResult
    from cryoet_forge.evaluate.pipeline import save_figures

    rng = np.random.default_rng(0)
    names = ["a", "b"]

    def labelled(n: int) -> LabelledVolumes:
        return LabelledVolumes(rng.normal(size=(n, 16, 16, 16)), np.arange(n) % 2, names, 10.0)

    real_train, real_test, traditional = labelled(6), labelled(6), labelled(6)
    maps = traditional if gan_input == "traditional" else labelled(6)
    generated = LabelledVolumes(maps.volumes + 0.3 * rng.normal(size=maps.volumes.shape), maps.labels, names, 10.0)
    data = EvaluationData(names, 16, 10.0, {}, real_train, real_test, maps, maps, traditional, Path("r"), Path("d"),
                          "test data")
    confusion = np.array([[2, 1], [0, 3]])
    scored = ClassificationResult(names, 5 / 6, {"a": 2 / 3, "b": 1.0}, confusion, np.zeros(6), np.zeros(6),
                                  np.zeros((6, 2)), np.zeros((6, 4)))
    downstream = {key: DownstreamResult(key, [0, 1, 2], [0.5, 0.6, 0.7],
                                        [{"a": 0.4, "b": 0.6}, {"a": 0.5, "b": 0.7}, {"a": 0.6, "b": None}],
                                        0.6, 0.35, 0.85, 0.95, 6, first=scored) for key in ("traditional", "cryoetgan")}
    config = config_from_dict({"gan": {"input": gan_input}, "uncertainty": {"enabled": False}}, origin="test")
    curves = {"steps": [2, 4], "fid": [3.0, 2.0], "is_mean": [1.2, 1.4], "coverage": [0.3, 0.5],
              "density": [0.6, 0.8]}
    quality = {"traditional": {"fid": 2.5, "is_mean": 1.3, "coverage": 0.4, "density": 0.7}}
    (tmp_path / "figures").mkdir()
    save_figures(config, tmp_path, data, generated, scored, downstream, curves, quality, [0, 1, 2],
                 gan_info=UNET_REFINER)
    text = render_report(_results(gan=UNET_REFINER, gan_input=gan_input))
    shown = set(re.findall(r"\]\(figures/([^)]+\.png)\)", text)) - {"uncertainty.png"}  # the uncertainty stage's
    written = {p.name for p in (tmp_path / "figures").iterdir()}
    assert shown <= written, shown - written
    for name in shown:
        assert (tmp_path / "figures" / name).stat().st_size > 5000, name
