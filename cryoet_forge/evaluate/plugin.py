"""Built-in evaluation components: the ``cb3d`` feature extractor, the ``cb3d`` and ``radial``
downstream classifiers, and the classify/evaluate/quickstart commands."""

from __future__ import annotations

from cryoet_forge import hookimpl
from cryoet_forge.evaluate.commands import (
    classify_group,
    evaluate_command,
    evaluate_picking_command,
    quickstart_command,
)
from cryoet_forge.options import check_options

# The registry imports every plugin module (`forge list`, every command that builds a component):
# a component's module is imported inside its factory, so that a command loads only the components
# it uses (start-up time).


def _cb3d_extractor(**options):
    """CB3D dense-layer (4096-d) features; option checkpoint=DIR from `forge classify train`."""
    from cryoet_forge.models.cb3d import CB3DFeatureExtractor  # start-up: torch when the component is built

    check_options("feature-extractor", "cb3d", CB3DFeatureExtractor, options)
    return CB3DFeatureExtractor(**options)


@hookimpl
def forge_register_feature_extractors(register):
    register("cb3d", _cb3d_extractor)


def _cb3d_classifier(**options):
    """CB3D, the paper's 3D CNN; options: the [classifier] table (defaults: the validated rule)."""
    from cryoet_forge.evaluate.classifiers import CB3DClassifier, RuleOptions  # start-up: torch, sklearn

    check_options("classifier", "cb3d", RuleOptions, options)
    return CB3DClassifier(**options)


_cb3d_classifier.options_from = "cryoet_forge.evaluate.classifiers:RuleOptions"  # type: ignore[attr-defined]


def _radial_classifier(**options):
    """Rotation-invariant radial profiles + logistic regression (no pose, no GPU; seconds)."""
    from cryoet_forge.evaluate.classifiers import RadialClassifier  # start-up: torch, sklearn

    check_options("classifier", "radial", RadialClassifier, options)
    return RadialClassifier(**options)


_radial_classifier.options_from = "cryoet_forge.evaluate.classifiers:RadialClassifier"  # type: ignore[attr-defined]


@hookimpl
def forge_register_classifiers(register):
    register("cb3d", _cb3d_classifier)
    register("radial", _radial_classifier)


@hookimpl
def forge_register_commands(cli):
    cli.add_command(classify_group)
    cli.add_command(evaluate_command)
    cli.add_command(quickstart_command)
    cli.add_command(evaluate_picking_command)
