"""Built-in evaluation components: the ``cb3d`` feature extractor and the classify/evaluate/quickstart commands."""

from __future__ import annotations

from cryoet_forge import hookimpl


def _cb3d_extractor(**options):
    """CB3D dense-layer (4096-d) features; option checkpoint=DIR from `forge classify train`."""
    from cryoet_forge.models.cb3d import CB3DFeatureExtractor
    from cryoet_forge.options import check_options

    check_options("feature-extractor", "cb3d", CB3DFeatureExtractor, options)
    return CB3DFeatureExtractor(**options)


@hookimpl
def forge_register_feature_extractors(register):
    register("cb3d", _cb3d_extractor)


@hookimpl
def forge_register_commands(cli):
    from cryoet_forge.evaluate.commands import classify_group, evaluate_command, quickstart_command

    cli.add_command(classify_group)
    cli.add_command(evaluate_command)
    cli.add_command(quickstart_command)
