"""What the fair re-rankers' tests (tests/models/test_fairness_*.py) share: hypothesis settings, the
ranking inputs strategy, and checkers of prefix floors and within-group order."""

from __future__ import annotations

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st

from models.fairness.prefix import min_counts, plain_order

PROPS = settings(max_examples=200, deadline=None)


@st.composite
def ranking_inputs(draw, max_n=30, max_groups=3):
    """scores (with ties), group labels and targets summing to <= 1."""
    n = draw(st.integers(1, max_n))
    g = draw(st.integers(1, max_groups))
    scores = np.array(draw(st.lists(st.integers(0, 20), min_size=n, max_size=n)), dtype=float)
    groups = np.array(draw(st.lists(st.integers(0, g - 1), min_size=n, max_size=n)), dtype=np.int64)
    raw = np.array(draw(st.lists(st.integers(0, 10), min_size=g, max_size=g)), dtype=float)
    total = draw(st.floats(0.0, 1.0))
    targets = raw / raw.sum() * total if raw.sum() > 0 else raw
    return scores, groups, targets


def strict_floors_met(order, groups, targets) -> bool:
    """count_a(t) >= floor(p_a t) for every prefix, no allowance for exhausted pools."""
    targets = np.asarray(targets, dtype=float)
    counts = np.zeros(len(targets), dtype=int)
    for t, i in enumerate(order, start=1):
        if groups[i] < len(targets):
            counts[groups[i]] += 1
        if np.any(counts < min_counts(targets, t)):
            return False
    return True


def group_order_kept(order, scores, groups) -> bool:
    """Inside each group items appear in plain order (score desc, index asc)."""
    plain = plain_order(scores)
    pos = np.empty(len(scores), dtype=int)
    pos[plain] = np.arange(len(scores))
    for a in np.unique(groups):
        ranks = pos[order[groups[order] == a]]
        if np.any(np.diff(ranks) <= 0):
            return False
    return True
