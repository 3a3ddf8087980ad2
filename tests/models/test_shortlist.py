"""Reservation-aware shortlists on constructed pools, feasible and infeasible."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from models.fairness.shortlist import ndcg, shortlist


def test_no_constraints_is_top_by_score():
    scores = np.array([0.1, 0.9, 0.5, 0.7, 0.3])
    order, report = shortlist(scores, np.zeros((5, 0), bool), np.zeros(0), 3)
    assert order.tolist() == [1, 3, 2] and report == []


def test_minimums_met_with_the_best_members_of_each_group():
    # 10 candidates; group 0 (e.g. SC) = items 7, 8, 9 (lowest scores); group 1 = items 5, 6
    scores = np.linspace(1.0, 0.1, 10)
    members = np.zeros((10, 2), bool)
    members[[7, 8, 9], 0] = True
    members[[5, 6], 1] = True
    order, report = shortlist(scores, members, np.array([0.2, 0.2]), 5)
    assert len(order) == 5 and list(order) == sorted(order, key=lambda i: -scores[i])
    assert set(order) == {0, 1, 2, 7, 5}  # each group's best member, the rest by score
    assert all(r["met"] and r["feasible"] for r in report)


def test_infeasible_group_is_reported_and_gets_all_it_has():
    scores = np.linspace(1.0, 0.1, 10)
    members = np.zeros((10, 1), bool)
    members[9, 0] = True  # one member, but 40 % of 5 = 2 seats required
    order, report = shortlist(scores, members, np.array([0.4]), 5)
    assert 9 in order
    assert report[0] == {"required": 2, "available": 1, "achieved": 1, "feasible": False, "met": False}


def test_overlapping_member_counts_for_both_groups():
    scores = np.linspace(1.0, 0.1, 10)
    members = np.zeros((10, 2), bool)
    members[8, :] = True     # e.g. an SC woman
    members[9, 1] = True
    order, report = shortlist(scores, members, np.array([0.2, 0.2]), 5)
    assert 8 in order and 9 not in order  # one student satisfies both minimums
    assert [r["achieved"] for r in report] == [1, 1]


@settings(max_examples=200, deadline=None)
@given(st.integers(5, 60), st.integers(1, 20), st.lists(st.floats(0, 0.3), min_size=1, max_size=4),
       st.integers(0, 10_000))
def test_minimums_met_whenever_the_pool_allows(n, size, shares, seed):
    rng = np.random.default_rng(seed)
    groups = len(shares)
    members = rng.random((n, groups)) < 0.3
    scores = rng.random(n)
    order, report = shortlist(scores, members, np.array(shares), size)
    assert len(order) == min(size, n) == len(set(order.tolist()))
    seats = sum(r["required"] for r in report)
    for r in report:
        assert r["achieved"] >= min(r["required"], r["available"]) or seats > min(size, n)
        assert r["met"] == (r["achieved"] >= r["required"])


def test_ndcg_cost_of_constraints_is_measurable():
    scores = np.linspace(1.0, 0.1, 10)
    members = np.zeros((10, 1), bool)
    members[[8, 9], 0] = True
    plain, _ = shortlist(scores, np.zeros((10, 0), bool), np.zeros(0), 4)
    fair, _ = shortlist(scores, members, np.array([0.5]), 4)
    assert ndcg(scores[plain], scores) == 1.0
    assert 0.5 < ndcg(scores[fair], scores) < 1.0
