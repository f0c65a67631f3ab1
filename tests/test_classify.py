"""CB3D training and scoring on in-memory labelled volumes; split checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryoet_forge.classify import (
    ClassifierOptions,
    LabelledVolumes,
    check_splits,
    confusion_matrix,
    evaluate_cb3d,
    train_cb3d,
)
from cryoet_forge.errors import ConfigError, InputError

BOX = 16
TOY_OPTIONS = dict(channels=(4, 8, 8, 8), fc_width=32, dropout=0.1, epochs=8, batch_size=8, lr=3e-3)


def toy_shapes(n_per_class: int, seed: int, noise: float = 0.3, box: int = BOX) -> LabelledVolumes:
    """Three shapes that differ the way macromolecules do: a solid ball, a hollow shell, a rod."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:box, :box, :box] - (box - 1) / 2
    volumes, labels = [], []
    for label in range(3):
        for _ in range(n_per_class):
            dz, dy, dx = rng.uniform(-1.5, 1.5, size=3)
            r = np.sqrt((z - dz) ** 2 + (y - dy) ** 2 + (x - dx) ** 2)
            if label == 0:
                v = (r < box * 0.3).astype(np.float32)
            elif label == 1:
                v = ((r < box * 0.35) & (r > box * 0.22)).astype(np.float32)
            else:
                v = ((np.sqrt((z - dz) ** 2 + (y - dy) ** 2) < box * 0.12) & (np.abs(x - dx) < box * 0.4))
                v = v.astype(np.float32)
            volumes.append(v + rng.normal(0, noise, size=v.shape).astype(np.float32))
            labels.append(label)
    return LabelledVolumes(np.stack(volumes), np.array(labels), ["ball", "shell", "rod"], 10.0,
                           source=f"toy-{seed}")


@pytest.fixture(scope="module")
def trained():
    train = toy_shapes(12, seed=0)
    # 12 epochs: per-volume flips make the toy a little slower to learn than 8 epochs allow
    model, history = train_cb3d(train, ClassifierOptions(**{**TOY_OPTIONS, "epochs": 12}), seed=0)
    return train, model, history


def test_training_learns_separable_shapes(trained):
    train, model, history = trained
    assert len(history.loss) == 12
    assert history.loss[-1] < history.loss[0]
    test = toy_shapes(8, seed=1)
    result = evaluate_cb3d(model, test, train.class_names)
    assert result.accuracy >= 0.9
    assert result.features.shape == (24, 32)
    assert result.probabilities.shape == (24, 3)


def test_scores_agree_with_the_predictions(trained):
    train, model, _ = trained
    test = toy_shapes(6, seed=2, noise=1.5)  # noisy enough that some are wrong
    result = evaluate_cb3d(model, test, train.class_names)
    predictions = result.probabilities.argmax(1)
    np.testing.assert_array_equal(result.predictions, predictions)
    assert result.accuracy == pytest.approx(float((predictions == test.labels).mean()))
    expected = np.zeros((3, 3), dtype=int)
    for t, p in zip(test.labels, predictions):
        expected[t, p] += 1
    np.testing.assert_array_equal(result.confusion, expected)
    for i, name in enumerate(train.class_names):
        assert result.per_class_accuracy[name] == pytest.approx(expected[i, i] / expected[i].sum())


def test_evaluation_matches_classes_by_name(trained):
    train, model, _ = trained
    test = toy_shapes(4, seed=3)
    # the same set with the class list in another order: labels follow the names
    order = [2, 0, 1]
    shuffled = LabelledVolumes(test.volumes, np.array([order.index(c) for c in test.labels]),
                               [test.class_names[i] for i in order], 10.0)
    a = evaluate_cb3d(model, test, train.class_names)
    b = evaluate_cb3d(model, shuffled, train.class_names)
    assert a.accuracy == b.accuracy
    np.testing.assert_array_equal(a.confusion, b.confusion)
    unknown = LabelledVolumes(test.volumes, test.labels, ["ball", "shell", "cube"], 10.0, source="odd")
    with pytest.raises(InputError, match="odd: class\\(es\\) cube not among the expected classes"):
        evaluate_cb3d(model, unknown, train.class_names)


def test_training_is_deterministic_for_a_seed():
    data = toy_shapes(4, seed=5)
    options = ClassifierOptions(**{**TOY_OPTIONS, "epochs": 2})
    a, _ = train_cb3d(data, options, seed=3)
    b, _ = train_cb3d(data, options, seed=3)
    c, _ = train_cb3d(data, options, seed=4)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.head.weight, c.head.weight)


def test_confusion_matrix_counts():
    m = confusion_matrix(np.array([0, 0, 1, 2, 2]), np.array([0, 1, 1, 2, 0]), 3)
    np.testing.assert_array_equal(m, [[1, 1, 0], [0, 1, 0], [1, 0, 1]])


def test_split_checks():
    a = toy_shapes(2, seed=0)
    check_splits(a, toy_shapes(2, seed=1))
    two = a.subset(np.where(a.labels < 2)[0])
    with pytest.raises(InputError, match="classes present in one split only: rod only in toy-0"):
        check_splits(a, two)
    small = toy_shapes(2, seed=1, box=12)
    with pytest.raises(InputError, match="volumes of mixed sizes: toy-0 has 16\\^3 voxels, toy-1 has 12\\^3"):
        check_splits(a, small)
    other_voxel = LabelledVolumes(a.volumes, a.labels, a.class_names, 9.4, source="other")
    with pytest.raises(InputError, match="mixed voxel sizes: toy-0 has 10 A, other has 9.4 A"):
        check_splits(a, other_voxel)


def test_bad_labelled_volumes():
    with pytest.raises(InputError, match="3 labels for 2 volumes"):
        LabelledVolumes(np.zeros((2, 8, 8, 8)), np.zeros(3), ["a", "b"], 10.0)
    with pytest.raises(InputError, match="labels must be in 0..1"):
        LabelledVolumes(np.zeros((2, 8, 8, 8)), np.array([0, 2]), ["a", "b"], 10.0)
    with pytest.raises(InputError, match="cubic volumes"):
        LabelledVolumes(np.zeros((2, 8, 8, 9)), np.zeros(2), ["a", "b"], 10.0)
    with pytest.raises(ConfigError, match="normalize"):
        ClassifierOptions(normalize="whiten")


def test_validation_split_is_stratified_and_seeded():
    from cryoet_forge.classify import validation_split

    labels = np.array([0] * 10 + [1] * 5 + [2] * 2)
    fit, val = validation_split(labels, 0.2, seed=0)
    assert sorted(np.concatenate([fit, val]).tolist()) == list(range(17))
    assert np.bincount(labels[val], minlength=3).tolist() == [2, 1, 0]  # a class of 2 stays whole
    _, again_val = validation_split(labels, 0.2, seed=0)
    np.testing.assert_array_equal(val, again_val)
    assert validation_split(labels, 0.0, seed=0)[1].size == 0


def test_augmentation_flips_and_shifts_each_volume_separately():
    from cryoet_forge.classify import augment_batch

    x = torch.randn(6, 1, 5, 5, 5)
    out = augment_batch(x, torch.Generator().manual_seed(0), flips=True, max_shift=0)
    flips = [[d for d in (2, 3, 4) if (mask >> (d - 2)) & 1] for mask in range(8)]
    for i in range(6):
        assert any(torch.equal(out[i:i + 1], torch.flip(x[i:i + 1], dims) if dims else x[i:i + 1])
                   for dims in flips), i
    shifted = augment_batch(x, torch.Generator().manual_seed(1), flips=False, max_shift=1)
    for i in range(6):
        assert any(torch.equal(shifted[i], torch.roll(x[i], (a, b, c), dims=(1, 2, 3)))
                   for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1)), i
    assert not torch.equal(shifted, x)


def test_axis_permutations_reorder_each_volume_separately():
    from cryoet_forge.classify import AXIS_PERMUTATIONS, augment_batch

    x = torch.randn(12, 1, 4, 5, 6)[:, :, :4, :4, :4].contiguous()
    out = augment_batch(x, torch.Generator().manual_seed(3), flips=False, max_shift=0, permute=True)
    seen = set()
    for i in range(12):
        matches = [p for p in AXIS_PERMUTATIONS if torch.equal(out[i:i + 1], x[i:i + 1].permute(0, 1, *p))]
        assert matches, i
        seen.add(matches[0])
    assert len(seen) > 2  # drawn per volume, not once per batch
    # without permute the draws (and so the defaults' training) are unchanged
    a = augment_batch(x, torch.Generator().manual_seed(0), flips=True, max_shift=1)
    b = augment_batch(x, torch.Generator().manual_seed(0), flips=True, max_shift=1, permute=False)
    assert torch.equal(a, b)


def test_early_stopping_keeps_the_best_validation_epoch():
    data = toy_shapes(10, seed=2, noise=1.5)
    options = ClassifierOptions(**{**TOY_OPTIONS, "epochs": 25, "validation_fraction": 0.3, "patience": 3})
    model, history = train_cb3d(data, options, seed=0)
    assert history.n_validation == 9  # 3 of each class's 10
    assert len(history.val_accuracy) == len(history.loss) <= options.epochs
    best = history.best_epoch
    assert history.val_accuracy[best - 1] == max(history.val_accuracy)
    # it stopped `patience` epochs after the best one, or ran out of epochs
    assert len(history.loss) == options.epochs or len(history.loss) == best + options.patience
    # the returned weights are the best epoch's: they score that epoch's validation accuracy again
    from cryoet_forge.classify import validation_split

    _, val = validation_split(data.labels, options.validation_fraction, seed=0)
    again = evaluate_cb3d(model, data.subset(val), data.class_names)
    assert again.accuracy == pytest.approx(history.val_accuracy[best - 1])


def test_classifier_options_refuse_bad_validation_settings():
    with pytest.raises(ConfigError, match="validation_fraction must be in \\[0, 0.9\\), got 0.95"):
        ClassifierOptions(validation_fraction=0.95)
    with pytest.raises(ConfigError, match="patience >= 1 and max_shift >= 0; got 0, 0"):
        ClassifierOptions(patience=0)
