"""Quick out-of-fold probabilities: a linear probe on frozen embeddings, the embedding cache, neighbours."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from imagegen import make_imagefolder

from toolkit.clean.quick import near_duplicates, oof_probabilities, outlier_scores, quick_probabilities
from toolkit.data.sources import manifest_from_path
from toolkit.errors import DataError

FLIPPED = [0, 25, 47]
TINY = dict(backbone="test_efficientnet", pretrained=False, image_size=32, batch_size=32, workers=0, progress=False)


@dataclass
class Noisy:
    root: Path
    df: pd.DataFrame
    cache: Path


@pytest.fixture(scope="module")
def noisy(tmp_path_factory, one_thread) -> Noisy:
    """60 colour images, three with a wrong label, and one image copied under a second name."""
    base = tmp_path_factory.mktemp("quick")
    root = make_imagefolder(base / "images", per_class=20, size=24)
    shutil.copy(root / "red" / "003.png", root / "red" / "copy.png")
    df = manifest_from_path(root)
    classes = sorted(df["label"].unique())
    for i in FLIPPED:
        df.loc[i, "label"] = classes[(classes.index(df.loc[i, "label"]) + 1) % len(classes)]
    return Noisy(root, df, base / "embeddings")


@pytest.fixture(scope="module")
def first(noisy, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:  # the decoded cache too stays out of the user's folders
        mp.setenv("CLSCTL_CACHE", str(tmp_path_factory.mktemp("cache")))
        return quick_probabilities(noisy.df, noisy.root, cache_dir=noisy.cache, **TINY)


def test_flipped_labels_get_the_lowest_probability_of_their_given_label(noisy, first):
    n = len(noisy.df)
    assert first.classes == ["blue", "green", "red"]
    assert first.probs.shape == (n, 3) and np.allclose(first.probs.sum(1), 1)
    assert first.embeddings.dtype == np.float32 and np.allclose(np.linalg.norm(first.embeddings, axis=1), 1, atol=1e-5)
    assert sorted(np.unique(first.folds)) == [0, 1, 2, 3, 4] and first.n_folds == 5
    given = first.probs[np.arange(n), first.labels]
    assert sorted(np.argsort(given)[:len(FLIPPED)]) == FLIPPED
    assert given[FLIPPED].max() < 0.3 < 0.6 < np.delete(given, FLIPPED).min()
    assert first.accuracy > 0.9
    assert list(first.outliers.columns) == ["path", "outlier_score", "is_outlier"]
    assert first.outliers["path"].tolist() == noisy.df["path"].tolist()
    assert first.computed == n and first.cached == 0
    assert {"embed", "fit", "neighbors", "total"} <= set(first.seconds)


def test_second_call_reads_the_cache_and_never_builds_the_model(noisy, first, monkeypatch):
    import toolkit.models

    def refuse(*args, **kwargs):
        raise AssertionError("the model was built although every embedding is cached")

    monkeypatch.setattr(toolkit.models, "create_model", refuse)
    again = quick_probabilities(noisy.df, noisy.root, cache_dir=noisy.cache, **TINY)
    assert again.computed == 0 and again.cached == len(noisy.df)
    np.testing.assert_array_equal(again.embeddings, first.embeddings)
    np.testing.assert_array_equal(again.probs, first.probs)


def test_a_changed_image_or_setting_misses_the_cache(noisy, first, tmp_path):
    root = tmp_path / "images"
    shutil.copytree(noisy.root, root)
    cache = tmp_path / "embeddings"
    quick_probabilities(noisy.df, root, cache_dir=cache, **TINY)
    (root / "blue" / "004.png").write_bytes((root / "green" / "004.png").read_bytes())
    after = quick_probabilities(noisy.df, root, cache_dir=cache, **TINY)
    assert after.computed == 1
    other_size = quick_probabilities(noisy.df, root, cache_dir=cache, **{**TINY, "image_size": 48})
    assert other_size.computed == len(noisy.df)


def test_a_copied_image_is_the_closest_near_duplicate_pair(first):
    pairs = first.near_duplicates
    assert list(pairs.columns) == ["a", "b", "distance"]
    assert {pairs.loc[0, "a"], pairs.loc[0, "b"]} == {"red/003.png", "red/copy.png"}
    assert pairs.loc[0, "distance"] < 1e-4
    assert len(pairs) == len(set(map(frozenset, zip(pairs["a"], pairs["b"], strict=True))))  # each pair once


def test_same_seed_gives_the_same_result(noisy, first, tmp_path):
    fresh = quick_probabilities(noisy.df, noisy.root, cache_dir=tmp_path / "embeddings", seed=0, **TINY)
    assert fresh.computed == len(noisy.df)
    np.testing.assert_array_equal(fresh.folds, first.folds)
    np.testing.assert_allclose(fresh.probs, first.probs, atol=1e-6)
    other, folds, _ = oof_probabilities(first.embeddings, first.labels, 3, seed=1)
    assert not np.array_equal(folds, first.folds)


def test_groups_stay_in_one_fold(first):
    groups = np.arange(len(first.labels)) // 3
    _, folds, k = oof_probabilities(first.embeddings, first.labels, 3, folds=4, groups=groups, seed=0)
    assert k == 4
    assert pd.Series(folds).groupby(groups).nunique().max() == 1


def test_small_classes_reduce_the_folds_and_a_single_image_class_is_an_error():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(23, 8)).astype(np.float32)
    labels = np.array([0] * 10 + [1] * 10 + [2] * 3)
    _, folds, k = oof_probabilities(x, labels, 3, folds=5, progress=False)
    assert k == 3 and sorted(np.unique(folds)) == [0, 1, 2]
    with pytest.raises(DataError, match="single image"):
        oof_probabilities(x[:21], labels[:21], 3, folds=5, progress=False)


def test_a_missing_label_is_one_clear_error(noisy, tmp_path):
    df = noisy.df.copy()
    df.loc[[4, 30], "label"] = None
    with pytest.raises(DataError, match=r"2 image\(s\) have no `label`: blue/004.png, green/010.png"):
        quick_probabilities(df, noisy.root, cache_dir=tmp_path, **TINY)


def test_a_missing_weights_file_is_the_factory_error(noisy, tmp_path):
    with pytest.raises(DataError, match="pretrained_file .* does not exist"):
        quick_probabilities(noisy.df, noisy.root, cache_dir=tmp_path, backbone="test_efficientnet",
                            pretrained_file=tmp_path / "missing.safetensors", progress=False)


def test_outliers_and_duplicates_in_embedding_space():
    rng = np.random.default_rng(0)
    centre = rng.normal(size=16)
    x = centre + 0.1 * rng.normal(size=(40, 16))
    x[7] = -centre  # the opposite direction: far from everything
    x[12] = x[3]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    names = [f"{i}.png" for i in range(40)]
    scores = outlier_scores(x, names, neighbors=5)
    assert scores["is_outlier"].tolist() == [i == 7 for i in range(40)]
    assert scores["outlier_score"].idxmax() == 7
    pairs = near_duplicates(x, names, max_distance=0.001)
    assert pairs[["a", "b"]].values.tolist() == [["3.png", "12.png"]]


def test_two_classifiers_and_the_richer_features(noisy, first):
    n = len(noisy.df)
    assert set(first.members) == {"probe", "knn"}
    for probs in first.members.values():
        assert probs.shape == (n, 3) and np.allclose(probs.sum(1), 1)
    assert np.allclose(first.probs, (first.members["probe"] + first.members["knn"]) / 2)
    # head features (mirror-averaged) next to the last two stages' pooled maps
    meta = next(noisy.cache.glob("*/meta.json"))
    head_dims = json.loads(meta.read_text())["head_dims"]
    assert 0 < head_dims < first.embeddings.shape[1]


def test_knn_votes_come_only_from_other_folds():
    from toolkit.clean.quick import knn_probabilities

    # Two tight clusters; row 0 sits in cluster A but is labelled B. With k = 1 its vote comes from the
    # nearest row of another fold, an A row, so its own wrong label cannot vouch for itself.
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 0.01, (10, 4)) + [1, 0, 0, 0], rng.normal(0, 0.01, (10, 4)) + [0, 1, 0, 0]])
    labels = np.array([0] * 10 + [1] * 10)
    labels[0] = 1
    folds = np.arange(20) % 5
    probs = knn_probabilities(x, labels, 2, folds, neighbors=1)
    assert np.allclose(probs.sum(1), 1) and probs[0, 0] > 0.99 and probs[0, 1] < 0.01


def test_a_row_is_an_issue_only_when_every_classifier_flags_it():
    from toolkit.clean.labels import find_label_issues

    labels = np.array([0, 0, 0, 1, 1, 1] * 5)
    right = np.where(labels[:, None] == np.arange(2)[None, :], 0.9, 0.1)
    one, two = right.copy(), right.copy()
    one[[0, 1]] = one[[0, 1]][:, ::-1]  # the first classifier disagrees with rows 0 and 1
    two[[1, 2]] = two[[1, 2]][:, ::-1]  # the second with rows 1 and 2
    ids = [str(i) for i in range(len(labels))]
    issues = find_label_issues(labels, (one + two) / 2, ["a", "b"], ids=ids, paths=ids,
                               filter_by="predicted_neq_given", agree=[one, two])
    assert issues.table["is_label_issue"].to_numpy().nonzero()[0].tolist() == [1]
    assert issues.health["filter_by"] == "predicted_neq_given, agreed by 2 classifiers"
