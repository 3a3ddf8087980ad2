"""FA*IR (models/fairness/fa_ir.py): the m-table against exact binomials, the adjusted alpha, the re-ranking."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from models.fairness.fa_ir import adjusted_alpha, fa_ir, fail_probability, fair_mtable, mtable_met
from models.fairness.prefix import plain_order
from tests.support.fairness import PROPS, group_order_kept


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
