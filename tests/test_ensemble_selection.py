"""Greedy selection's incremental scoring agrees with voting the counts from scratch."""

from __future__ import annotations

import numpy as np
import pytest

from toolkit.ensemble.selection import crossfit_labels, fast_score, fit_weights, greedy_select
from toolkit.ensemble.voting import combine


def _members(rng, n=300, classes=7, count=5):
    y = rng.integers(0, classes, n)
    members = []
    for k in range(count):
        logits = rng.normal(size=(n, classes)).astype(np.float32)
        logits[np.arange(n), y] += 0.4 + 0.3 * k  # members of different strength, so the path is not flat
        p = np.exp(logits)
        members.append((p / p.sum(axis=1, keepdims=True)).astype(np.float32))
    return members, y


@pytest.mark.parametrize("vote", ["soft", "hard", "rank"])
@pytest.mark.parametrize("metric", ["macro_f1", "accuracy"])
def test_every_greedy_step_scores_what_its_vote_scores(vote, metric):
    members, y = _members(np.random.default_rng(3))
    counts, path, best = greedy_select(members, y, 7, vote=vote, metric=metric)
    so_far = np.zeros(len(members))
    for step in path:
        so_far[step["member"]] += 1
        labels = combine(vote, members, so_far, 7)[1]
        assert step["score"] == pytest.approx(fast_score(y, labels, 7, metric), abs=1e-12)
    assert best == max(step["score"] for step in path)
    assert best == pytest.approx(fast_score(y, combine(vote, members, counts, 7)[1], 7, metric), abs=1e-12)


def test_hard_vote_with_a_label_member_and_fitted_weights_agree_with_combine():
    rng = np.random.default_rng(5)
    members, y = _members(rng, n=200, classes=4, count=3)
    members.append(rng.integers(0, 4, 200))  # a submission: labels only, so ties are broken by the others
    counts, path, best = greedy_select(members, y, 4, vote="hard")
    assert best == pytest.approx(fast_score(y, combine("hard", members, counts, 4)[1], 4, "macro_f1"), abs=1e-12)
    weights = fit_weights(members[:3], y, 4)
    assert fast_score(y, combine("soft", members[:3], weights, 4)[1], 4, "macro_f1") >= max(
        fast_score(y, m.argmax(axis=1), 4, "macro_f1") for m in members[:3]) - 1e-12


@pytest.mark.parametrize("vote", ["soft", "hard", "rank"])
def test_float32_members_vote_exactly_as_their_float64_widenings(vote):
    """Members stay float32 (the store's precision): every rule must give what the widened copies give."""
    rng = np.random.default_rng(11)
    narrow, y = _members(rng, n=240, classes=6, count=4)
    wide = [m.astype(np.float64) for m in narrow]
    weights = [0.1, 0.35, 0.2, 0.35]
    for a, b in zip(combine(vote, narrow, weights, 6), combine(vote, wide, weights, 6), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(fit_weights(narrow, y, 6, vote=vote), fit_weights(wide, y, 6, vote=vote))
    picked, wide_picked = greedy_select(narrow, y, 6, vote=vote), greedy_select(wide, y, 6, vote=vote)
    np.testing.assert_array_equal(picked[0], wide_picked[0])
    assert picked[1] == wide_picked[1]
    folds = np.arange(len(y)) % 3

    def choose(xs, ys):
        return fit_weights(xs, ys, 6, vote=vote)

    np.testing.assert_array_equal(crossfit_labels(choose, narrow, y, folds, vote, 6),
                                  crossfit_labels(choose, wide, y, folds, vote, 6))
