"""Greedy selection's incremental scoring agrees with voting the counts from scratch."""

from __future__ import annotations

import numpy as np
import pytest

from toolkit.ensemble.selection import fast_score, fit_weights, greedy_select
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
