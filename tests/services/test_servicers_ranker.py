"""The ranker servicer: Rank over candidate messages, per-feature contributions, argument checks."""

from __future__ import annotations

import numpy as np
import pytest

from pmis.v1 import ranker_pb2
from tests.support.servicers import admin_token, bad_fields, catalog_rows, loaded, profile  # noqa: F401 - fixtures


# --------------------------------------------------------------------------- ranker


def test_ranker_rank(loaded, catalog_rows):
    h = loaded["ranker"]
    ids = catalog_rows["internships"][10:30]
    rng = np.random.default_rng(3)
    candidates = []
    for j, i in enumerate(ids):
        c = ranker_pb2.Candidate(internship_id=i)
        if j % 4 != 0:  # unset = the component was unavailable; every fourth candidate has nothing
            c.content_score = float(rng.uniform(0, 0.6))
            c.success_probability = float(rng.uniform(0.05, 0.4))
        if j % 2:
            c.collab_score, c.popularity = float(rng.uniform(0, 1)), float(rng.uniform(0, 1))
        candidates.append(c)
    candidates.insert(7, ranker_pb2.Candidate(internship_id="I999999", content_score=0.9, collab_score=1.0,
                                              popularity=1.0, success_probability=0.9))
    candidates.append(ranker_pb2.Candidate(internship_id="ZZ-unknown"))
    resp = h.ok("Rank", ranker_pb2.RankRequest(profile=profile(cgpa=7.5, district="Pune"), candidates=candidates))
    assert resp.model.component == "ranker"
    assert [it.internship_id for it in resp.items] == [c.internship_id for c in candidates]  # request order
    scores = {it.internship_id: it.score for it in resp.items}
    assert np.isfinite(list(scores.values())).all()
    known = [scores[i] for i in ids]
    assert len(set(known)) > 1
    # internships the bundle never saw rank below every known one, however good their scores look
    assert scores["I999999"] < min(known) and scores["ZZ-unknown"] < min(known)
    # deterministic, and the component scores matter
    again = h.ok("Rank", ranker_pb2.RankRequest(profile=profile(cgpa=7.5, district="Pune"), candidates=candidates))
    assert [it.score for it in again.items] == [it.score for it in resp.items]
    boosted = [ranker_pb2.Candidate(internship_id=c.internship_id, content_score=0.95, collab_score=1.0,
                                    popularity=1.0, success_probability=0.6) for c in candidates]
    changed = h.ok("Rank", ranker_pb2.RankRequest(profile=profile(cgpa=7.5, district="Pune"), candidates=boosted))
    assert [it.score for it in changed.items] != [it.score for it in resp.items]


@pytest.mark.parametrize("method", ["shap", "path"])
def test_ranker_contributions_sum_to_each_score(loaded, catalog_rows, method):
    from services.ranker.runtime import RankerRuntime

    h = loaded["ranker"]
    h.servicer.slot.get().model.contributions = method  # what PMIS_CONTRIBUTIONS selects at start-up
    try:
        candidates = [ranker_pb2.Candidate(internship_id=i, content_score=0.1 * j, success_probability=0.2)
                      for j, i in enumerate(catalog_rows["internships"][:8])]
        candidates.append(ranker_pb2.Candidate(internship_id="I999999"))  # unknown: bias only
        resp = h.ok("Rank", ranker_pb2.RankRequest(profile=profile(), candidates=candidates, contributions=True))
        assert len(resp.contributions) == len(resp.items)
        for it, ic in zip(resp.items, resp.contributions):
            assert ic.bias + sum(c.value for c in ic.by_feature) == pytest.approx(it.score, abs=1e-4)
        assert [c.name for c in resp.contributions[0].by_feature][:2] == ["content_score", "collab_score"]
        plain = h.ok("Rank", ranker_pb2.RankRequest(profile=profile(), candidates=candidates))
        assert not plain.contributions  # only when asked: it costs per item
    finally:
        h.servicer.slot.get().model.contributions = RankerRuntime.contributions


def test_ranker_only_unknown_and_empty_profile(loaded):
    h = loaded["ranker"]
    resp = h.ok("Rank", ranker_pb2.RankRequest(candidates=[ranker_pb2.Candidate(internship_id="I999998"),
                                                           ranker_pb2.Candidate(internship_id="I999999")]))
    assert [it.internship_id for it in resp.items] == ["I999998", "I999999"]
    assert all(np.isfinite(it.score) for it in resp.items)


@pytest.mark.parametrize("request_,fields", [
    (ranker_pb2.RankRequest(profile=profile()), {"internship_ids"}),
    (ranker_pb2.RankRequest(internship_ids=["I000001", "I000002"], component_scores=[0.1] * 7), {"component_scores"}),
    (ranker_pb2.RankRequest(internship_ids=["I000001"], component_scores=[0.1, float("inf"), 0.2, 0.3]),
     {"component_scores"}),
    (ranker_pb2.RankRequest(candidates=[ranker_pb2.Candidate(internship_id="I000001")] * 2001), {"candidates"}),
    (ranker_pb2.RankRequest(candidates=[ranker_pb2.Candidate(internship_id="")]), {"candidates[0]"}),
    (ranker_pb2.RankRequest(profile=profile(college_tier=0), candidates=[ranker_pb2.Candidate(internship_id="I1")]),
     {"profile.college_tier"}),
])
def test_ranker_invalid_arguments(loaded, request_, fields):
    assert bad_fields(loaded["ranker"], "Rank", request_) == fields
