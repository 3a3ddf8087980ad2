"""Tests for the fair re-rankers (models/fairness/): DetConstSort, FA*IR, the exposure ledger and rerank()."""

from __future__ import annotations

import math
import threading
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.fairness.constrained import det_const_sort, det_greedy, rerank
from models.fairness.exposure import ExposureLedger, GroupExposureController, gini, position_weights
from models.fairness.fa_ir import adjusted_alpha, fa_ir, fail_probability, fair_mtable, mtable_met
from models.fairness.prefix import max_counts, min_counts, plain_order, prefix_ceilings_met, prefix_constraints_met

PROPS = settings(max_examples=200, deadline=None)


# --------------------------------------------------------------------------------------------
# strategies
# --------------------------------------------------------------------------------------------
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
# FA*IR
# --------------------------------------------------------------------------------------------
def exact_mtable(k, p, alpha):
    """Smallest x with Binom(t, p).cdf(x) >= alpha, in exact rational arithmetic."""
    p, alpha = Fraction(p), Fraction(alpha)
    out = []
    for t in range(1, k + 1):
        cdf = Fraction(0)
        for x in range(t + 1):
            cdf += math.comb(t, x) * p**x * (1 - p) ** (t - x)
            if cdf >= alpha:
                out.append(x)
                break
    return out


def test_fair_mtable_hand_values():
    # k=10, p=0.5, alpha=0.1: e.g. t=4: P(X<=0)=1/16<0.1<=P(X<=1)=5/16 -> 1;
    # t=9: P(X<=2)=46/512<0.1<=P(X<=3) -> 3.
    assert fair_mtable(10, 0.5, 0.1).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 3, 3]


@pytest.mark.parametrize("p", [0.2, 0.5, 0.7])
@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.15])
def test_fair_mtable_matches_exact_binomial(p, alpha):
    assert fair_mtable(30, p, alpha).tolist() == exact_mtable(30, p, alpha)


@PROPS
@given(st.integers(1, 200), st.floats(0.01, 0.99), st.floats(0.001, 0.5))
def test_fair_mtable_non_decreasing(k, p, alpha):
    m = fair_mtable(k, p, alpha)
    assert len(m) == k
    assert np.all(np.diff(m) >= 0)
    assert np.all(m >= 0) and np.all(m <= np.arange(1, k + 1))


def test_fail_probability_small_exact():
    # mtable [0, 1]: fail iff the first two items are both non-protected -> (1-p)^2
    assert fail_probability([0, 1], 0.3) == pytest.approx(0.49)
    assert fail_probability([0, 0, 0], 0.3) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("k,p,alpha", [(10, 0.5, 0.1), (50, 0.5, 0.1), (100, 0.5, 0.1), (100, 0.3, 0.05)])
def test_adjusted_alpha_controls_familywise_failure(k, p, alpha):
    a_c = adjusted_alpha(k, p, alpha)
    assert 0 < a_c <= alpha
    unadjusted = fail_probability(fair_mtable(k, p, alpha), p)
    exact = fail_probability(fair_mtable(k, p, a_c), p)
    assert unadjusted > alpha  # the multiple-testing problem being corrected
    assert exact <= alpha + 1e-12
    if k >= 50:  # the step function is fine enough to get close to alpha
        assert exact >= 0.8 * alpha
    # Monte-Carlo check of the exact DP with a fixed seed
    rng = np.random.default_rng(0)
    sims = 20_000
    prot = rng.random((sims, k)) < p
    m = fair_mtable(k, p, a_c)
    failed = np.any(np.cumsum(prot, axis=1) < m[None, :], axis=1).mean()
    assert abs(failed - exact) < 4 * math.sqrt(exact * (1 - exact) / sims) + 1e-3


@st.composite
def fair_inputs(draw):
    n = draw(st.integers(1, 40))
    scores = np.array(draw(st.lists(st.integers(0, 30), min_size=n, max_size=n)), dtype=float)
    protected = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    p = draw(st.sampled_from([0.2, 0.5, 0.7]))
    alpha = draw(st.sampled_from([0.05, 0.1]))
    return scores, protected, p, alpha


@PROPS
@given(fair_inputs(), st.booleans())
def test_fa_ir_properties(inp, adjust):
    scores, protected, p, alpha = inp
    n = len(scores)
    order = fa_ir(scores, protected, n, p, alpha, adjust=adjust)
    assert sorted(order.tolist()) == list(range(n))  # permutation, never crashes
    a = adjusted_alpha(n, p, alpha) if adjust else alpha
    m = fair_mtable(n, p, a)
    if protected.sum() >= m[-1]:
        assert mtable_met(order, protected, m)
    # each queue keeps its own score order
    groups = protected.astype(int)
    assert group_order_kept(order, scores, groups)
    if mtable_met(plain_order(scores), protected, m):
        assert order.tolist() == plain_order(scores).tolist()


@PROPS
@given(fair_inputs(), st.integers(0, 40))
def test_fa_ir_top_k(inp, k):
    scores, protected, p, alpha = inp
    order = fa_ir(scores, protected, k, p, alpha)
    assert len(order) == min(k, len(scores))
    assert len(set(order.tolist())) == len(order)
    m = fair_mtable(len(order), p, adjusted_alpha(len(order), p, alpha))
    if protected.sum() >= (m[-1] if len(m) else 0):
        assert mtable_met(order, protected, m)


def test_fa_ir_protected_already_high_is_score_order():
    scores = np.arange(20, 0, -1, dtype=float)
    protected = np.arange(20) % 2 == 0  # every other item, starting at the top
    assert fa_ir(scores, protected, 20, 0.5, 0.1).tolist() == list(range(20))


def test_fa_ir_hand_example():
    # 10 items, protected ones are the 3 worst; unadjusted mtable(10, .5, .1) = [0,0,0,1,1,1,2,2,3,3]
    scores = np.arange(10, 0, -1, dtype=float)
    protected = np.array([False] * 7 + [True] * 3)
    order = fa_ir(scores, protected, 10, 0.5, 0.1, adjust=False)
    assert order.tolist() == [0, 1, 2, 7, 3, 4, 8, 5, 9, 6]


def test_fa_ir_infeasible_fills():
    scores = np.linspace(1, 0, 12)
    order = fa_ir(scores, np.zeros(12, dtype=bool), 12, 0.9, 0.1)
    assert order.tolist() == list(range(12))
    order = fa_ir(scores, np.ones(12, dtype=bool), 5, 0.1, 0.1)
    assert order.tolist() == [0, 1, 2, 3, 4]
    protected = np.zeros(12, dtype=bool)
    protected[[10, 11]] = True
    order = fa_ir(scores, protected, 12, 0.9, 0.1)
    assert sorted(order.tolist()) == list(range(12))
    m = fair_mtable(12, 0.9, adjusted_alpha(12, 0.9, 0.1))
    assert m[:3].tolist() == [0, 1, 2]
    # both protected items are pulled up as early as the table asks, then the table is unmeetable
    assert order.tolist() == [0, 10, 11, 1, 2, 3, 4, 5, 6, 7, 8, 9]


# --------------------------------------------------------------------------------------------
# Exposure ledger
# --------------------------------------------------------------------------------------------
def test_gini():
    assert gini([1, 1, 1, 1]) == pytest.approx(0.0)
    assert gini([0, 0, 0, 4]) == pytest.approx(0.75)  # (n-1)/n for one holder
    assert gini([]) == 0.0 and gini([0, 0]) == 0.0
    assert gini([1, 2, 3, 4]) == pytest.approx(0.25)


def test_ledger_cold_start_and_zero_strength():
    led = ExposureLedger(np.array([1, 2, 3, 0]))
    assert np.allclose(led.boost([0, 1, 2], 1.0), 0.0)  # no traffic yet -> parity
    led.record([0, 1])
    assert np.all(led.boost([0, 1, 2, 3], 0.0) == 0.0)
    assert led.boost([3], 1.0)[0] < -0.99  # closed item (no slots): most negative
    assert np.all(np.abs(led.boost([0, 1, 2, 3], 0.5)) <= 0.5)  # bounded by strength


def test_ledger_exposure_weights():
    led = ExposureLedger(np.ones(5))
    led.record([3, 1, 4])
    assert np.allclose(led.exposure, [0, 1 / math.log2(3), 0, 1.0, 0.5])
    assert led.requests == 1


def test_ledger_pushes_underexposed_high_slot_items():
    n = 50
    slots = np.ones(n)
    slots[40:] = 10  # big employers with many open slots
    led = ExposureLedger(slots)
    for _ in range(300):
        led.record(np.arange(10))  # every list shows the same popular items
    b = led.boost(np.arange(n), 1.0)
    assert np.all(b[40:] > 0.5)  # high-slot, never shown: strongly up
    assert np.all(b[:10] < -0.5)  # shown every time with one slot: down
    assert b[40:].min() > b[10:40].max() > b[:10].max()  # more slots, bigger push
    # with close relevance scores, the boosted list now leads with the high-slot items
    scores = np.linspace(1.0, 0.8, n)
    top = np.argsort(-(scores + 0.5 * b), kind="stable")[:10]
    assert set(top.tolist()) == set(range(40, 50))


def test_ledger_boost_follows_slot_share():
    slots = np.array([1.0, 1.0, 4.0, 4.0])
    led = ExposureLedger(slots)
    for r in range(400):  # every item shown equally often, rotating through ranks
        led.record(np.roll(np.arange(4), r))
    b = led.boost(np.arange(4), 1.0)
    assert b[2] > 0 and b[3] > 0 and b[0] < 0 and b[1] < 0
    # deficit: share 0.4 vs actual 0.25 over mean share 0.25 -> tanh(0.6); 0.1 -> tanh(-0.6)
    assert b[2] == pytest.approx(np.tanh(0.6), abs=0.02)
    assert b[0] == pytest.approx(np.tanh(-0.6), abs=0.02)
    led2 = ExposureLedger(slots, kind="log_ratio")
    for r in range(400):
        led2.record(np.roll(np.arange(4), r))
    b2 = led2.boost(np.arange(4), 1.0)
    # log-ratio: share 0.4 vs 0.25 -> tanh(log 1.6); 0.1 vs 0.25 -> tanh(log 0.4)
    assert b2[2] == pytest.approx(np.tanh(np.log(1.6)), abs=0.02)
    assert b2[0] == pytest.approx(np.tanh(np.log(0.4)), abs=0.02)


def simulate_gini(strength, n_items=200, k=10, n_requests=3000, seed=7):
    rng = np.random.default_rng(seed)
    base = 1.0 / (1.0 + np.arange(n_items)) ** 0.7  # skewed popularity in (0, 1]
    led = ExposureLedger(np.ones(n_items))
    for _ in range(n_requests):
        cand = rng.choice(n_items, size=60, replace=False)
        s = base[cand] + rng.normal(0, 0.02, size=cand.size)
        s = s + led.boost(cand, strength)
        led.record(cand[np.argsort(-s, kind="stable")[:k]])
    return led.gini()


def test_ledger_reduces_exposure_gini():
    g0 = simulate_gini(0.0)
    g1 = simulate_gini(1.0)
    assert g0 > 0.5
    assert g1 <= 0.7 * g0, (g0, g1)  # >= 30 % reduction


def test_ledger_decay_half_life():
    led = ExposureLedger(np.ones(3), half_life=10)
    for _ in range(10):
        led.record([0])
    for _ in range(10):
        led.record([1])
    e = led.exposure
    # item 0's 10 unit exposures are all 10..19 requests old, item 1's are 0..9 requests old
    d = 0.5 ** (1 / 10)
    assert e[1] == pytest.approx(sum(d**h for h in range(10)))
    assert e[0] == pytest.approx(sum(d**h for h in range(10, 20)))
    assert led.boost([1], 1.0)[0] < led.boost([0], 1.0)[0] < led.boost([2], 1.0)[0]


def test_ledger_decay_renormalises_without_overflow():
    led = ExposureLedger(np.ones(4), half_life=1.0)
    for i in range(200):  # 2**200 would overflow the lazy scale without renormalising
        led.record([i % 4])
    e = led.exposure
    assert np.all(np.isfinite(e)) and e.sum() == pytest.approx(2.0, rel=1e-6)  # sum of 0.5**h
    assert np.all(np.isfinite(led.boost(np.arange(4), 1.0)))


def test_ledger_set_slots_grows_catalogue():
    led = ExposureLedger(np.ones(3))
    led.record([0, 1, 2])
    led.set_slots(np.ones(5))
    assert led.n_items == 5
    assert led.boost([3, 4], 1.0).min() > 0  # new, unseen items are under-exposed


def test_ledger_thread_safety_smoke():
    led = ExposureLedger(np.ones(100))
    w = 1.0 / np.log2(np.arange(2, 12))

    def worker(seed):
        rng = np.random.default_rng(seed)
        for _ in range(300):
            cand = rng.choice(100, size=10, replace=False)
            led.boost(cand, 1.0)
            led.record(cand)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert led.requests == 8 * 300
    assert led.exposure.sum() == pytest.approx(8 * 300 * w.sum())


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


# --------------------------------------------------------------------------------------------
# group exposure controller and the fair re-ranker built on it
# --------------------------------------------------------------------------------------------
def _serve(reranker, n_requests: int, *, enabled: bool, seed: int = 3):
    """Lists where group 0 is 10 % of the candidates and scores a little lower than the rest."""

    rng = np.random.default_rng(seed)
    exposure = np.zeros(3)
    for _ in range(n_requests):
        cand = rng.choice(300, size=80, replace=False)
        groups = np.where(cand < 30, 0, np.where(cand < 150, 1, 2))
        scores = rng.normal(0, 1, size=cand.size) - 0.5 * (groups == 0)
        order, _ = reranker.rerank(scores, cand, groups, enabled=enabled, strength=1.0, k=10)
        np.add.at(exposure, groups[order], position_weights(len(order)))
    return exposure / exposure.sum()


def test_group_controller_holds_an_exposure_target_two_sided():
    from models.fairness.reranker import FairnessConfig, FairReranker

    for target in (0.25, 0.03):  # above and below the group's unaided share (about 0.07)
        cfg = FairnessConfig(min_shares={}, exposure_targets={"msme": target}, exposure_strength=0.0)
        share = _serve(FairReranker(np.ones(300), cfg), 3000, enabled=True)
        assert abs(share[0] - target) <= 0.1 * target, (target, share)
    unaided = _serve(FairReranker(np.ones(300), FairnessConfig()), 3000, enabled=False)
    assert 0.04 < unaided[0] < 0.1


def test_group_controller_ignores_groups_without_target():
    c = GroupExposureController([0.2, np.nan, np.nan])
    for _ in range(100):
        c.record(np.array([1] * 10))
    assert c.offsets[0] > 0 and c.offsets[1] == c.offsets[2] == 0


def test_fair_reranker_off_is_relevance_order_and_still_recorded():
    from models.fairness.reranker import FairnessConfig, FairReranker

    rr = FairReranker(np.ones(5), FairnessConfig())
    order, moved = rr.rerank(np.array([0.1, 0.9, 0.5, 0.3, 0.7]), np.arange(5), np.array([0, 1, 2, 2, 1]),
                             enabled=False, strength=1.0, k=3)
    assert order.tolist() == [1, 4, 2] and not moved.any()
    assert rr.ledger.requests == 1


def test_fairness_config_is_validated():
    from models.fairness.reranker import FairnessConfig

    with pytest.raises(ValueError, match="unknown groups"):
        FairnessConfig(min_shares={"big": 0.1})
    with pytest.raises(ValueError, match="within"):
        FairnessConfig(exposure_targets={"msme": 1.5})
    with pytest.raises(ValueError, match="sum"):
        FairnessConfig(min_shares={"msme": 0.6, "local": 0.6})
    assert FairnessConfig.from_json('{"exposure_targets": {"msme": 0.2}}').target_array()[0] == 0.2


def test_item_groups_from_configuration_first_match_wins():
    from models.fairness.reranker import item_groups

    groups = [{"name": "msme", "msme": True}, {"name": "local", "local": True},
              {"name": "agri", "sectors": ["Agriculture"]}, {"name": "aspirational", "districts": ["nuh"]}]
    g = item_groups(groups, item_district=np.array(["Pune", "Pune", "Nuh", "Nuh", "Delhi"]),
                    item_lat=np.full(5, np.nan), item_lon=np.full(5, np.nan), item_remote=np.zeros(5, bool),
                    item_msme=np.array([True, False, False, False, False]),
                    item_sector=np.array(["IT", "IT", "agriculture", "IT", "IT"]),
                    student_district="pune", student_lat=np.nan, student_lon=np.nan)
    assert g.tolist() == [0, 1, 2, 3, 4]  # msme beats local; 4 = other
    both = item_groups([{"name": "local_msme", "msme": True, "local": True}], item_district=np.array(["Pune", "Delhi"]),
                       item_lat=np.full(2, np.nan), item_lon=np.full(2, np.nan), item_remote=np.zeros(2, bool),
                       item_msme=np.array([True, True]), item_sector=np.array(["IT", "IT"]),
                       student_district="Pune", student_lat=np.nan, student_lon=np.nan)
    assert both.tolist() == [0, 1]  # predicates combine with AND


def test_fairness_config_groups_are_validated():
    from models.fairness.reranker import FairnessConfig

    cfg = FairnessConfig(groups=[{"name": "agri", "sectors": ["agriculture"]}], min_shares={"agri": 0.2},
                         exposure_targets={})
    assert cfg.floor_array().tolist() == [0.2, 0.0] and cfg.group_names == ["agri"]
    with pytest.raises(ValueError, match="one or more"):
        FairnessConfig(groups=[{"name": "x", "colour": "red"}], min_shares={}, exposure_targets={})
    with pytest.raises(ValueError, match="distinct"):
        FairnessConfig(groups=[{"name": "other", "msme": True}], min_shares={}, exposure_targets={})
    with pytest.raises(ValueError, match="unknown groups"):
        FairnessConfig(groups=[{"name": "agri", "sectors": ["a"]}])  # default shares name msme and local


def test_shortlist_evaluation_samples_pools_beyond_its_cap_and_says_so():
    """At a million students every internship's applicant pool would be scored; beyond `max_pools`
    a seeded sample is, and the result says how many pools there were."""
    from types import SimpleNamespace

    import pandas as pd

    from models.fairness.evaluation import evaluate_shortlists

    class Content:  # the match score: a fixed number per (profile text, internship)
        def score(self, texts, items):
            return np.array([[(sum(map(ord, t)) + 7 * int(items[0])) % 13] for t in texts], dtype=np.float32)

    n_students, n_items = 300, 40
    rng = np.random.default_rng(1)
    out_s = rng.integers(0, n_students, 600)
    out_i = np.repeat(np.arange(n_items), 15)
    out_y = rng.integers(0, 2, 600)
    c = SimpleNamespace(content=Content(), success=None, profile_texts=[f"student {s}" for s in range(n_students)],
                        space=SimpleNamespace(items=SimpleNamespace(slots=np.full(n_items, 2.0))))
    attrs = pd.DataFrame({"gender": rng.choice(["female", "male"], n_students),
                          "social_category": rng.choice(["SC", "ST", "OBC", "GEN"], n_students),
                          "disability": rng.choice([True, False], n_students), "rural": False})
    whole = evaluate_shortlists(c, out_s, out_i, out_y, attrs)
    assert (whole["shortlists"], whole["internships_with_a_pool"], whole["sample_seed"]) == (40, 40, None)
    sampled = evaluate_shortlists(c, out_s, out_i, out_y, attrs, max_pools=10, seed=3)
    assert (sampled["shortlists"], sampled["internships_with_a_pool"], sampled["sample_seed"]) == (10, 40, 3)
    assert sampled == evaluate_shortlists(c, out_s, out_i, out_y, attrs, max_pools=10, seed=3)  # reproducible
    assert sampled != evaluate_shortlists(c, out_s, out_i, out_y, attrs, max_pools=10, seed=4)
