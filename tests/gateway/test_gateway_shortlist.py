"""The gateway's Shortlist: applicants or best-matching students, group minimums, one call per component, errors."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from pmis.v1 import gateway_pb2
from tests.support.gateway import internships_by_applicants, system  # noqa: F401 - fixtures
from tests.support.loopback import TIMEOUT


# --------------------------------------------------------------------------- shortlists


def test_shortlist_of_applicants_meets_minimums_the_pool_allows(system):
    busiest, _ = internships_by_applicants(system.catalog)
    resp = system.gateway.stub.Shortlist(gateway_pb2.ShortlistRequest(internship_id=busiest, size=10), timeout=TIMEOUT)
    assert resp.source == "applicants" and resp.pool_size >= 10 and len(resp.candidates) == 10
    assert [c.rank for c in resp.candidates] == list(range(1, 11))
    scores = [c.score for c in resp.candidates]
    assert scores == sorted(scores, reverse=True)
    assert all(0 < c.success_probability < 1 for c in resp.candidates)
    assert {g.group for g in resp.groups} == {"SC", "ST", "OBC", "disability", "female"}
    for g in resp.groups:
        assert g.met == (g.achieved >= g.required)
        if g.feasible and sum(x.required for x in resp.groups) <= 10:
            assert g.met, g
    assert resp.all_met == all(g.met for g in resp.groups)
    assert {m.component for m in resp.models} == {"content", "success"}


def test_shortlist_scores_the_whole_pool_in_one_call_per_component(system):
    busiest, _ = internships_by_applicants(system.catalog)
    resp = system.gateway.stub.Shortlist(gateway_pb2.ShortlistRequest(internship_id=busiest, size=500), timeout=TIMEOUT)
    assert len(resp.candidates) == resp.pool_size >= 10 and not resp.degraded
    for c in resp.candidates:  # every pooled student was scored by both components: no NaN, nothing unset
        assert c.HasField("match") and c.HasField("success_probability")
        assert np.isfinite([c.score, c.match, c.success_probability]).all()


def test_shortlist_without_applicants_uses_best_matching_students(system):
    _, unapplied = internships_by_applicants(system.catalog)
    if unapplied is None:
        pytest.skip("every internship has applicants in this dataset")
    resp = system.gateway.stub.Shortlist(gateway_pb2.ShortlistRequest(internship_id=unapplied, size=4), timeout=TIMEOUT)
    assert resp.source == "best_matching" and len(resp.candidates) == 4


def test_shortlist_errors(system):
    system.gateway.fails("Shortlist", gateway_pb2.ShortlistRequest(internship_id="I999999"), grpc.StatusCode.NOT_FOUND)
    _, violations = system.gateway.fails("Shortlist", gateway_pb2.ShortlistRequest(internship_id="I000001", size=501),
                                         grpc.StatusCode.INVALID_ARGUMENT)
    assert [f for f, _ in violations] == ["size"]
