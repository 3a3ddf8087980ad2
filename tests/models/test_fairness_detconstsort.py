"""DetConstSort (models/fairness/constrained.py): group floors at every prefix, by hand and by property."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from models.fairness.constrained import det_const_sort
from models.fairness.prefix import max_counts, min_counts, plain_order, prefix_constraints_met
from tests.support.fairness import PROPS, group_order_kept, ranking_inputs, strict_floors_met


# --------------------------------------------------------------------------------------------
# DetConstSort
# --------------------------------------------------------------------------------------------
def test_min_max_counts():
    assert min_counts([0.5, 0.3, 0.2], 10).tolist() == [5, 3, 2]
    assert min_counts([0.5, 0.3, 0.2], 3).tolist() == [1, 0, 0]
    assert max_counts([0.5, 0.3, 0.2], 3).tolist() == [2, 1, 1]
    # 0.29 * 100 is 28.999999999999996 in floating point; the floor must still be 29
    assert min_counts([0.29], 100).tolist() == [29]


def test_det_const_sort_hand_example_two_groups():
    # 6 items in score order, group 0 holds the 4 best, p = (0.5, 0.5).
    scores = np.array([6, 5, 4, 3, 2, 1], dtype=float)
    groups = np.array([0, 0, 0, 0, 1, 1])
    order = det_const_sort(scores, groups, [0.5, 0.5])
    # t=2 needs one of each -> 0, 4; t=4 -> 1, 5; then the rest in score order.
    assert order.tolist() == [0, 4, 1, 5, 2, 3]
    # The paper's literal swap test (maxIndices[start-1] >= start, 0-based) would give
    # [0, 1, 4, ...], leaving group 1 empty at prefix 2; we must not.
    assert strict_floors_met(order[:5], groups, [0.5, 0.5])
    # prefix 6 would need 3 items of group 1, which only has 2: satisfied as far as possible
    assert prefix_constraints_met(order, groups, [0.5, 0.5])


def test_det_const_sort_hand_example_shuffled_input():
    # Same as above but the input is not sorted: the output indexes the input.
    scores = np.array([2, 6, 1, 4, 5, 3], dtype=float)
    groups = np.array([1, 0, 1, 0, 0, 0])
    order = det_const_sort(scores, groups, [0.5, 0.5])
    assert scores[order].tolist() == [6, 2, 5, 1, 4, 3]


def test_det_const_sort_three_groups_hand_example():
    scores = np.arange(9, 0, -1, dtype=float)  # items 0..8 in score order
    groups = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    order = det_const_sort(scores, groups, [1 / 3, 1 / 3, 1 / 3])
    assert order.tolist() == [0, 3, 6, 1, 4, 7, 2, 5, 8]


def test_det_const_sort_one_constrained_group_rest_fills():
    # Only group 1 has a target (0.25); group 0 is unconstrained fill.
    scores = np.arange(8, 0, -1, dtype=float)
    groups = np.array([0, 0, 0, 0, 0, 0, 1, 1])
    order = det_const_sort(scores, groups, [0.0, 0.25])
    # group 1 must appear by position 4 and again by position 8
    assert order.tolist() == [0, 1, 2, 6, 3, 4, 5, 7]


def test_det_const_sort_infeasible_does_not_crash():
    scores = np.arange(6, 0, -1, dtype=float)
    groups = np.array([0, 0, 0, 0, 0, 1])  # group 1 has a single item but wants half
    order = det_const_sort(scores, groups, [0.0, 0.5])
    assert sorted(order.tolist()) == list(range(6))
    assert order.tolist() == [0, 5, 1, 2, 3, 4]
    assert prefix_constraints_met(order, groups, [0.0, 0.5])
    # a group label without any items, and a label with no target entry
    order = det_const_sort(scores, np.array([0, 0, 3, 3, 0, 0]), [0.0, 0.5, 0.2])
    assert sorted(order.tolist()) == list(range(6))


def test_det_const_sort_edge_cases():
    assert det_const_sort([], [], [0.5]).tolist() == []
    assert det_const_sort([1.0], [0], [1.0]).tolist() == [0]
    assert det_const_sort([1.0, 2.0], [0, 1], [0.5, 0.5], k=0).tolist() == []
    with pytest.raises(ValueError):
        det_const_sort([1.0, 2.0], [0, 1], [0.8, 0.8])


def test_prefix_constraints_checker():
    groups = np.array([0, 0, 1, 1])
    assert prefix_constraints_met([0, 2, 1, 3], groups, [0.5, 0.5])
    assert not prefix_constraints_met([0, 1, 2, 3], groups, [0.5, 0.5])
    # exhausted pool: group 1 has one item, so its requirement caps at 1
    assert prefix_constraints_met([2, 0, 1], np.array([0, 0, 1]), [0.0, 0.9])


@PROPS
@given(ranking_inputs())
def test_det_const_sort_permutation_group_order_and_floors(inp):
    scores, groups, targets = inp
    order = det_const_sort(scores, groups, targets)
    assert sorted(order.tolist()) == list(range(len(scores)))
    assert group_order_kept(order, scores, groups)
    # constraints hold at every prefix, as far as each group's pool allows
    assert prefix_constraints_met(order, groups, targets)


@PROPS
@given(ranking_inputs(), st.integers(0, 30))
def test_det_const_sort_top_k_subset(inp, k):
    scores, groups, targets = inp
    order = det_const_sort(scores, groups, targets, k=k)
    assert len(order) == min(k, len(scores))
    assert len(set(order.tolist())) == len(order)
    assert group_order_kept(order, scores, groups)
    assert prefix_constraints_met(order, groups, targets)
    # the top-k is the head of the full re-ranking
    assert order.tolist() == det_const_sort(scores, groups, targets).tolist()[: len(order)]


@st.composite
def feasible_inputs(draw):
    """Pools with enough items of every group for its floor at every prefix length <= n."""
    g = draw(st.integers(2, 3))
    raw = np.array(draw(st.lists(st.integers(1, 10), min_size=g, max_size=g)), dtype=float)
    targets = raw / raw.sum() * draw(st.sampled_from([1.0, 0.9, 0.6]))
    n = draw(st.integers(1, 30))
    need = np.floor(targets * n + 1e-9).astype(int)
    n_extra = int(n - need.sum())
    extra = draw(st.lists(st.integers(0, g - 1), min_size=n_extra, max_size=n_extra))
    groups = np.concatenate([np.repeat(np.arange(g), need), np.array(extra, dtype=int)]).astype(np.int64)
    perm = np.array(draw(st.permutations(list(range(n)))))
    groups = groups[perm]
    scores = np.array(draw(st.lists(st.floats(0, 1, allow_nan=False), min_size=n, max_size=n)))
    return scores, groups, targets


@PROPS
@given(feasible_inputs())
def test_det_const_sort_strict_floors_when_feasible(inp):
    scores, groups, targets = inp
    order = det_const_sort(scores, groups, targets)
    assert strict_floors_met(order, groups, targets)
    assert group_order_kept(order, scores, groups)


@st.composite
def already_fair_inputs(draw):
    """Inputs whose plain order already satisfies the floors (targets just below the binding level)."""
    n = draw(st.integers(1, 30))
    g = draw(st.integers(1, 3))
    scores = np.array(draw(st.lists(st.integers(0, 20), min_size=n, max_size=n)), dtype=float)
    groups = np.array(draw(st.lists(st.integers(0, g - 1), min_size=n, max_size=n)), dtype=np.int64)
    plain = plain_order(scores)
    t = np.arange(1, n + 1)
    cap = np.zeros(g)
    for a in range(g):
        cnt = np.cumsum(groups[plain] == a)
        cap[a] = np.min((cnt + 1) / t) * (1 - 1e-6)  # any p_a < cap keeps floor(p_a t) <= cnt(t)
    u = np.array(draw(st.lists(st.floats(0, 1), min_size=g, max_size=g)))
    targets = u * cap
    if targets.sum() > 1:
        targets = targets / targets.sum()  # scaling down keeps the floors satisfied
    return scores, groups, targets


@PROPS
@given(already_fair_inputs())
def test_det_const_sort_keeps_order_when_constraints_already_met(inp):
    scores, groups, targets = inp
    plain = plain_order(scores)
    assert strict_floors_met(plain, groups, targets)  # generator sanity
    assert det_const_sort(scores, groups, targets).tolist() == plain.tolist()


@PROPS
@given(st.integers(1, 40), st.integers(1, 3))
def test_det_const_sort_alternating_groups_unchanged(n, g):
    scores = np.linspace(1, 0, n)
    groups = np.arange(n) % g
    order = det_const_sort(scores, groups, np.full(g, 1.0 / g))
    assert order.tolist() == list(range(n))


@PROPS
@given(ranking_inputs())
def test_det_const_sort_zero_targets_is_plain_order(inp):
    scores, groups, _ = inp
    assert det_const_sort(scores, groups, np.zeros(3)).tolist() == plain_order(scores).tolist()
