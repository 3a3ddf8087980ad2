"""DetGreedy (floors and ceilings) and rerank(), the entry point over the re-rankers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from models.fairness.constrained import det_greedy, rerank
from models.fairness.prefix import plain_order, prefix_ceilings_met, prefix_constraints_met
from tests.support.fairness import PROPS, group_order_kept, ranking_inputs, strict_floors_met


# --------------------------------------------------------------------------------------------
# DetGreedy: floors and ceilings
# --------------------------------------------------------------------------------------------
@st.composite
def bounded_inputs(draw, max_n=30):
    """Scores, groups 0..2 where group 2 is unbounded, floors <= ceilings for groups 0 and 1."""
    n = draw(st.integers(1, max_n))
    scores = np.array(draw(st.lists(st.integers(0, 15), min_size=n, max_size=n)), dtype=float)
    groups = np.array(draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)), dtype=np.int64)
    hi = np.array(draw(st.lists(st.floats(0.0, 1.0), min_size=2, max_size=2)) + [1.0])
    lo = np.array([draw(st.floats(0.0, float(h))) for h in hi[:2]] + [0.0])
    if lo.sum() > 1:
        lo = lo / lo.sum()
    return scores, groups, lo, hi


@PROPS
@given(bounded_inputs())
def test_det_greedy_permutation_and_group_order(inp):
    scores, groups, lo, hi = inp
    order = det_greedy(scores, groups, lo, hi)
    assert sorted(order.tolist()) == list(range(len(scores)))
    assert group_order_kept(order, scores, groups)


@PROPS
@given(bounded_inputs(), st.integers(1, 30))
def test_det_greedy_ceilings_hold_while_an_unbounded_group_has_items(inp, k):
    scores, groups, lo, hi = inp
    n_free = int((groups == 2).sum())
    k = min(k, n_free)  # within k positions the unbounded group never runs out
    order = det_greedy(scores, groups, np.zeros(3), hi, k=k)
    assert prefix_ceilings_met(order, groups, hi)


@PROPS
@given(bounded_inputs())
def test_det_greedy_single_floor_group_holds_its_floor(inp):
    scores, groups, lo, _ = inp
    floors = np.array([lo[0], 0.0, 0.0])
    order = det_greedy(scores, groups, floors)
    assert prefix_constraints_met(order, groups, floors)


@PROPS
@given(bounded_inputs())
def test_det_greedy_keeps_order_when_bounds_already_met(inp):
    scores, groups, lo, hi = inp
    plain = plain_order(scores)
    if prefix_ceilings_met(plain, groups, hi) and strict_floors_met(plain, groups, lo):
        assert det_greedy(scores, groups, lo, hi).tolist() == plain.tolist()


def test_det_greedy_hand_example_target_proportions():
    # group 0 holds the four best; floor = ceiling = 0.5 for both groups: strict alternation
    scores = np.array([8, 7, 6, 5, 4, 3, 2, 1], dtype=float)
    groups = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    order = det_greedy(scores, groups, [0.5, 0.5], [0.5, 0.5])
    assert order.tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
    # a ceiling alone pushes the surplus of group 0 down; floors alone (DetConstSort) would not
    capped = det_greedy(scores, groups, [0.0, 0.0], [0.25, 1.0], k=4)
    assert groups[capped].tolist() == [0, 1, 1, 1]
    with pytest.raises(ValueError, match="exceeds"):
        det_greedy(scores, groups, [0.6, 0.0], [0.5, 1.0])


def test_rerank_with_ceilings_uses_det_greedy():
    scores = np.array([8, 7, 6, 5, 4, 3], dtype=float)
    groups = np.array([0, 0, 0, 1, 1, 1])
    order, moved = rerank(scores, groups, [0.0, 0.0], strength=1.0, k=4, max_targets=[0.5, 1.0])
    assert groups[order].tolist() == [0, 1, 0, 1] and moved.tolist() == [False, True, False, True]
    # strength 0.5 relaxes the ceiling to 0.75: one more group-0 item fits at the top
    order, _ = rerank(scores, groups, [0.0, 0.0], strength=0.5, k=4, max_targets=[0.5, 1.0])
    assert prefix_ceilings_met(order, groups, [0.75, 1.0])


# --------------------------------------------------------------------------------------------
# rerank
# --------------------------------------------------------------------------------------------
@PROPS
@given(ranking_inputs())
def test_rerank_strength_zero_is_plain(inp):
    scores, groups, targets = inp
    order, moved = rerank(scores, groups, targets, strength=0.0, k=len(scores))
    assert order.tolist() == plain_order(scores).tolist()
    assert not moved.any()


@PROPS
@given(ranking_inputs(), st.floats(0.0, 1.0), st.integers(1, 30))
def test_rerank_moved_marks_promoted(inp, strength, k):
    scores, groups, targets = inp
    order, moved = rerank(scores, groups, targets, strength=strength, k=k)
    assert len(order) == len(moved) == min(k, len(scores))
    plain = plain_order(scores).tolist()
    expected = np.array([plain.index(i) > j for j, i in enumerate(order.tolist())], dtype=bool)
    assert np.array_equal(moved, expected)
    assert prefix_constraints_met(order, groups, np.asarray(targets) * strength)


def test_rerank_hand_example():
    scores = np.array([6, 5, 4, 3, 2, 1], dtype=float)
    groups = np.array([0, 0, 0, 0, 1, 1])
    order, moved = rerank(scores, groups, [0.5, 0.5], strength=1.0, k=6)
    assert order.tolist() == [0, 4, 1, 5, 2, 3]
    assert moved.tolist() == [False, True, False, True, False, False]
    # half strength: targets (0.25, 0.25) -> group 1 needed by position 4 only
    order, moved = rerank(scores, groups, [0.5, 0.5], strength=0.5, k=4)
    assert order.tolist() == [0, 1, 2, 4]
    assert moved.tolist() == [False, False, False, True]
