"""The ``classifier`` plugin kind: built-in cb3d and radial, a third party's, per-kind downstream scores and verdicts."""

from __future__ import annotations

import numpy as np
import pytest
from test_classify import toy_shapes
from test_registry import make_distribution

from cryoet_forge import contracts, registry
from cryoet_forge.errors import ConfigError

#: a plugin classifier: the nearest class mean of the raw voxels (a third party's kind)
NEAREST_MEAN_PLUGIN = '''
import numpy as np
from cryoet_forge import hookimpl


class NearestMean:
    """Nearest class mean of the voxels (a throwaway test classifier)."""

    def __init__(self, scale=1.0):
        self.scale = scale

    def fit(self, train, seed):
        self.means = np.stack([train.volumes[train.labels == c].mean(0) if (train.labels == c).any()
                               else np.full(train.volumes.shape[1:], np.inf)
                               for c in range(len(train.class_names))])

    def probabilities(self, volumes):
        d = ((np.asarray(volumes)[:, None] - self.means[None]) ** 2).reshape(len(volumes), len(self.means), -1)
        logits = -self.scale * np.nan_to_num(d.mean(-1), posinf=1e30)
        p = np.exp(logits - logits.max(1, keepdims=True))
        return p / p.sum(1, keepdims=True)


@hookimpl
def forge_register_classifiers(register):
    register("nearest-mean", NearestMean)
'''


def test_builtin_classifiers_are_registered_with_their_protocol():
    assert {"cb3d", "radial"} <= set(registry.names("classifier"))
    for name in ("cb3d", "radial"):
        assert isinstance(registry.create("classifier", name), contracts.Classifier)
    # cb3d's defaults are the validated rule, not the paper's 64-512 channels
    from cryoet_forge.options import VALIDATED_RULE

    cb3d = registry.create("classifier", "cb3d")
    assert cb3d.options.channels == VALIDATED_RULE["channels"] and cb3d.options.fc_width == VALIDATED_RULE["fc_width"]


def test_radial_classifier_learns_toy_shapes_and_seeds_resample_the_training_set():
    train, test = toy_shapes(8, seed=0), toy_shapes(6, seed=1)
    radial = registry.create("classifier", "radial")
    radial.fit(train, seed=0)
    p0 = radial.probabilities(test.volumes)
    assert p0.shape == (len(test), 3)
    assert np.allclose(p0.sum(1), 1.0)
    assert (p0.argmax(1) == test.labels).mean() >= 0.8  # chance 1/3: ball, shell and rod differ radially
    radial.fit(train, seed=0)
    assert np.array_equal(radial.probabilities(test.volumes), p0)  # same seed, same model
    radial.fit(train, seed=1)
    assert not np.allclose(radial.probabilities(test.volumes), p0)  # another bootstrap resample
    plain = registry.create("classifier", "radial", bootstrap=False)
    plain.fit(train, seed=0)
    q0 = plain.probabilities(test.volumes)
    plain.fit(train, seed=5)
    assert np.array_equal(plain.probabilities(test.volumes), q0)


def test_radial_classifier_gives_absent_classes_probability_zero():
    train = toy_shapes(5, seed=0)
    only_two = train.subset(np.flatnonzero(train.labels < 2))
    radial = registry.create("classifier", "radial", bootstrap=False)
    radial.fit(only_two, seed=0)
    p = radial.probabilities(train.volumes)
    assert p.shape == (len(train), 3) and np.all(p[:, 2] == 0) and np.allclose(p.sum(1), 1.0)


def test_stratified_bootstrap_keeps_each_class_count():
    from cryoet_forge.evaluate.classifiers import stratified_bootstrap

    labels = np.array([0] * 5 + [1] * 3 + [2] * 7)
    index = stratified_bootstrap(labels, seed=3)
    assert np.bincount(labels[index]).tolist() == [5, 3, 7]
    assert not np.array_equal(index, stratified_bootstrap(labels, seed=4))


@pytest.mark.parametrize(("options", "message"), [
    ({"sigma": -1.0}, "classifier 'radial': needs sigma >= 0 and C > 0, got sigma=-1.0, C=1.0"),
    ({"C": 0}, "classifier 'radial': needs sigma >= 0 and C > 0, got sigma=1.0, C=0"),
    ({"sigma": float("nan")}, "classifier 'radial': sigma must be a number, got nan"),
])
def test_radial_classifier_refuses_bad_options(options, message):
    with pytest.raises(ConfigError) as info:
        registry.create("classifier", "radial", **options)
    assert str(info.value) == message


@pytest.mark.parametrize(("classifiers", "options", "message"), [
    (["cb3d", "svm"], {}, "downstream.classifiers: unknown classifier(s) 'svm'; choose from: cb3d, radial"),
    (["radial"], {}, "downstream.classifiers must name cb3d (the inception network) and each kind once, "
                     "got ['radial']"),
    (["cb3d", "radial", "radial"], {}, "downstream.classifiers must name cb3d (the inception network) and each "
                                      "kind once, got ['cb3d', 'radial', 'radial']"),
    (["cb3d", "radial"], {"radial": {"sigma": -2.0}},
     "downstream.classifier_options.radial: classifier 'radial': needs sigma >= 0 and C > 0, got sigma=-2.0, C=1.0"),
    (["cb3d", "radial"], {"cb3d": {"epochs": 2}},
     "downstream.classifier_options.cb3d: not a classifier of downstream.classifiers other than cb3d (cb3d "
     "takes the [classifier] table)"),
])
def test_evaluation_config_checks_the_classifier_kinds(classifiers, options, message):
    from cryoet_forge.evaluate.config import config_from_dict

    with pytest.raises(ConfigError) as info:
        config_from_dict({"downstream": {"classifiers": classifiers, "classifier_options": options}})
    assert message in str(info.value)


def test_score_sources_runs_any_classifier_kind_and_caches_it_apart(tmp_path):
    from cryoet_forge.classify import ClassifierOptions
    from cryoet_forge.evaluate import downstream

    train, other, test = toy_shapes(6, seed=0), toy_shapes(6, seed=2), toy_shapes(5, seed=1)
    scores = downstream.score_sources({"a": train, "b": other}, test, test.class_names, ClassifierOptions(),
                                      [0, 1, 2], cache_dir=tmp_path, workers=0, kind="radial")
    assert set(scores) == {"a", "b"}
    assert scores["a"].classifier == "radial" and scores["a"].to_dict()["classifier"] == "radial"
    assert len(scores["a"].accuracies) == 3 and scores["a"].mean >= 0.7
    assert len(set(scores["a"].accuracies + scores["b"].accuracies)) > 1  # the seeds resample
    assert len(list(tmp_path.glob("downstream-*.json"))) == 6
    # other options of the same kind: another cache key, so they are trained again
    downstream.score_sources({"a": train}, test, test.class_names, ClassifierOptions(), [0], cache_dir=tmp_path,
                             workers=0, kind="radial", kind_options={"sigma": 0.0})
    assert len(list(tmp_path.glob("downstream-*.json"))) == 7


def test_a_third_party_classifier_is_trained_downstream(plugin_path):
    from cryoet_forge.classify import ClassifierOptions
    from cryoet_forge.evaluate import downstream
    from cryoet_forge.evaluate.config import config_from_dict

    make_distribution(plugin_path, "forge-nearest", "forge_nearest", NEAREST_MEAN_PLUGIN)
    assert registry.get("classifier", "nearest-mean").origin == "forge-nearest"
    train, test = toy_shapes(6, seed=0), toy_shapes(5, seed=1)
    scores = downstream.score_sources({"a": train}, test, test.class_names, ClassifierOptions(), [0],
                                      workers=0, kind="nearest-mean", kind_options={"scale": 2.0})
    assert scores["a"].classifier == "nearest-mean" and scores["a"].mean >= 0.7
    config = config_from_dict({"downstream": {"classifiers": ["cb3d", "nearest-mean"],
                                              "classifier_options": {"nearest-mean": {"scale": 3.0}}}})
    assert config.downstream.classifiers == ["cb3d", "nearest-mean"]
    with pytest.raises(ConfigError, match="downstream.classifier_options.nearest-mean: .*unknown option 'scal'"):
        config_from_dict({"downstream": {"classifiers": ["cb3d", "nearest-mean"],
                                         "classifier_options": {"nearest-mean": {"scal": 3.0}}}})


def test_a_classifier_with_the_wrong_probability_shape_is_one_line():
    from cryoet_forge.classify import score_probabilities

    test = toy_shapes(2, seed=1)
    with pytest.raises(ConfigError) as info:
        score_probabilities(np.ones((len(test), 2)) / 2, test, test.class_names)
    assert str(info.value) == ("classifier gave probabilities of shape (6, 2); expected (6, 3): one row per "
                               "volume, one column per class")


def _paired(low: float, high: float, n: int = 3) -> dict:
    return {"n": n, "ci_low": low, "ci_high": high, "mean": (low + high) / 2, "confidence": 0.95}


@pytest.mark.parametrize(("real", "paired", "outcome"), [
    (0.30, _paired(0.1, 0.2), "does-not-learn"),  # chance 0.25, margin 0.1: 0.30 is near chance
    (0.60, _paired(0.01, 0.2), "gan-ahead"),
    (0.60, _paired(-0.2, -0.01), "traditional-ahead"),
    (0.60, _paired(-0.1, 0.1), "no-clear-difference"),
    (0.60, _paired(0.1, 0.1, n=1), "inconclusive"),
])
def test_each_classifier_kind_gets_its_own_verdict(real, paired, outcome):
    from cryoet_forge.evaluate.verdict import assess_classifier

    answer = assess_classifier("radial", real, 0.25, 0.1, paired, baseline_accuracy=0.5, synthetic=(0.5, 0.55))
    assert answer["outcome"] == outcome
    assert answer["sentence"].startswith("radial")
    assert answer["learns"] is (outcome != "does-not-learn")
    assert answer["beats_baseline"] is (real > 0.5)


def test_a_gain_between_two_synthetic_sets_at_chance_is_not_a_win():
    """Measured on parakeet_dev: radial learnt the real split (0.468) but trained on traditional
    (0.234) or GAN data (0.255) it stayed at chance (0.268); a paired interval above zero there is
    a difference between two failures."""
    from cryoet_forge.evaluate.verdict import assess_classifier

    answer = assess_classifier("radial", 0.468, 0.268, 0.1, _paired(0.001, 0.041, n=5), 0.47, synthetic=(0.234, 0.255))
    assert answer["outcome"] == "neither-transfers" and answer["transfers"] is False and answer["learns"] is True
    assert "a difference between two failures" in answer["sentence"]
    # one synthetic set clear of chance: the interval is an answer again
    answer = assess_classifier("radial", 0.468, 0.268, 0.1, _paired(0.001, 0.041, n=5), 0.47, synthetic=(0.30, 0.40))
    assert answer["outcome"] == "gan-ahead"


def test_metrics_inception_names_best_or_a_listed_kind():
    from cryoet_forge.evaluate.config import config_from_dict

    assert config_from_dict({}).metrics.inception == "best"
    assert config_from_dict({"metrics": {"inception": "radial"}}).metrics.inception == "radial"
    with pytest.raises(ConfigError) as info:
        config_from_dict({"metrics": {"inception": "svm"}})
    assert str(info.value).startswith('metrics.inception \'svm\': expected "best" or one of downstream.classifiers '
                                      "(cb3d, radial)")


def test_radial_features_are_its_standardised_profiles():
    from cryoet_forge.evaluate.baseline import radial_profiles

    train, test = toy_shapes(6, seed=0), toy_shapes(3, seed=1)
    radial = registry.create("classifier", "radial", bootstrap=False)
    radial.fit(train, 0)
    features = radial.features(train.volumes)
    assert features.shape == radial_profiles(train.volumes).shape
    np.testing.assert_allclose(features.mean(0), 0, atol=1e-9)  # standardised on the training set
    assert radial.features(test.volumes).shape == (len(test), features.shape[1])


def test_metric_reliability_follows_the_network_the_metrics_use():
    from cryoet_forge.evaluate.verdict import assess

    paired = _paired(-0.1, 0.1)
    # CB3D near chance, radial chosen for the metrics and clear of chance: metrics reliable,
    # the headline (CB3D's downstream) still inconclusive, and a note says why
    verdict = assess(0.27, 0.25, 0.1, paired, 0.47, metrics_accuracy=0.47, metrics_network="radial")
    assert verdict["metrics_reliable"] is True and verdict["outcome"] == "inconclusive"
    assert any("FID, PRDC and IS use radial" in note for note in verdict["notes"])
    verdict = assess(0.27, 0.25, 0.1, paired, 0.47, metrics_accuracy=0.30, metrics_network="radial")
    assert verdict["metrics_reliable"] is False
    assert verdict["notes"][0].startswith("near chance: the inception network (radial trained on the real")
