"""Packed answers: packed Rank requests and contributions, student vectors reused, pair scoring, id-list checks."""

from __future__ import annotations

import numpy as np
import pytest

from pmis.v1 import common_pb2, ranker_pb2, success_pb2
from services.common.packed import extend_floats
from services.common.profiles import EVENT_TYPES
from tests.support.servicers import (admin_token, bad_fields, catalog_rows, known_student, loaded,  # noqa: F401
                                     profile)


# --------------------------------------------------------------------------- packed answers


def test_extend_floats_gives_the_message_extend_gives():
    for n in (0, 1, 40, 5000):  # 5000 floats: a three-byte length
        values = np.random.default_rng(n).normal(size=n) * 1e3
        slow, fast = ranker_pb2.RankResponse(ranking="ranker"), ranker_pb2.RankResponse(ranking="ranker")
        slow.scores.append(0.5)
        fast.scores.append(0.5)  # appended after what the field holds
        slow.scores.extend(values.tolist())
        extend_floats(fast, "scores", values)
        assert fast == slow and fast.SerializeToString() == slow.SerializeToString()


def test_ranker_packed_request_equals_candidate_messages(loaded, catalog_rows):
    h = loaded["ranker"]
    ids = catalog_rows["internships"][:12] + ["I999999"]
    rng = np.random.default_rng(1)
    scores = rng.random((len(ids), 4)).astype(np.float32)
    scores[::3, 1] = np.nan  # a component that did not answer
    legacy = [ranker_pb2.Candidate(internship_id=i, content_score=s[0], popularity=s[2], success_probability=s[3],
                                   **({} if np.isnan(s[1]) else {"collab_score": s[1]})) for i, s in zip(ids, scores)]
    old = h.ok("Rank", ranker_pb2.RankRequest(profile=profile(), candidates=legacy, contributions=True))
    new = h.ok("Rank", ranker_pb2.RankRequest(profile=profile(), internship_ids=ids,
                                              component_scores=scores.ravel().tolist(), contributions=True))
    assert list(new.scores) == list(old.scores) == [it.score for it in old.items] and not new.items
    values = np.asarray(new.contribution_values).reshape(len(ids), len(new.contribution_features) + 1)
    for row, ic in zip(values, old.contributions):
        assert list(new.contribution_features) == [c.name for c in ic.by_feature]
        np.testing.assert_allclose(row, [*(c.value for c in ic.by_feature), ic.bias], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(values.sum(axis=1), new.scores, atol=1e-4)  # exact additive, bias included


def test_collaborative_score_reuses_the_retrieved_student(loaded, known_student, catalog_rows):
    h = loaded["collaborative"]
    history = [common_pb2.Interaction(internship_id=i, event=EVENT_TYPES[e])
               for s, i, e in catalog_rows["interactions"] if s == known_student]
    top = h.ok("Retrieve", common_pb2.RetrieveRequest(student_id=known_student, n=10, interactions=history))
    assert top.basis == "fold_in" and top.student_vector.values and top.student_vector.content_hash
    ids = catalog_rows["internships"][:30]
    by_history = h.ok("Score", common_pb2.ScoreRequest(student_id=known_student, internship_ids=ids,
                                                       interactions=history))
    by_vector = h.ok("Score", common_pb2.ScoreRequest(internship_ids=ids, student_vector=top.student_vector))
    assert by_vector.basis == "fold_in"
    assert list(by_vector.scores) == pytest.approx(list(by_history.scores), abs=1e-6)
    # a vector from another bundle is ignored (fold in again); a malformed one is refused
    stale = common_pb2.StudentVector(content_hash="other", values=top.student_vector.values)
    assert h.ok("Score", common_pb2.ScoreRequest(internship_ids=ids, student_vector=stale)).basis == "popularity"
    bad = common_pb2.StudentVector(content_hash=top.student_vector.content_hash, values=[1.0, 2.0])
    assert bad_fields(h, "Score", common_pb2.ScoreRequest(internship_ids=ids, student_vector=bad)) == \
        {"student_vector.values"}


def test_pairs_score_a_whole_pool_against_one_internship(loaded, catalog_rows):
    iid = catalog_rows["internships"][3]
    pool = [profile(skills=["python", "sql"], cgpa=8.0), profile(skills=["welding"], cgpa=6.0),
            common_pb2.StudentProfile(), profile(skills=["excel"], college_tier=1)]
    content = loaded["content"].ok("ScorePairs", common_pb2.PairsRequest(internship_id=iid, profiles=pool))
    success = loaded["success"].ok("PredictPairs",
                                   common_pb2.PairsRequest(internship_id=iid, profiles=pool))
    assert len(content.scores) == len(success.scores) == len(pool)
    for j, p in enumerate(pool):  # each equals the one-student call
        if p.skills:
            one = loaded["content"].ok("Score", common_pb2.ScoreRequest(profile=p, internship_ids=[iid]))
            assert content.scores[j] == pytest.approx(one.scores[0], abs=1e-6)
        one = loaded["success"].ok("Predict", success_pb2.PredictRequest(profile=p, internship_ids=[iid]))
        assert success.scores[j] == pytest.approx(one.probabilities[0], abs=1e-6)
    unknown = loaded["content"].ok("ScorePairs", common_pb2.PairsRequest(internship_id="I999999", profiles=pool))
    assert np.isnan(unknown.scores).all()
    assert bad_fields(loaded["success"], "PredictPairs", common_pb2.PairsRequest(internship_id=iid)) == {"profiles"}


def test_id_lists_are_checked_in_one_pass_and_name_the_bad_one():
    from services.common.validation import Violations

    def bad(values):
        v = Violations()
        v.check_ids("ids", values, 0, 1000)
        return v.items

    assert bad([f"I{i:06d}" for i in range(500)]) == []
    assert bad(["I1", "two words", "I3"]) == [("ids[1]", "is not a valid id")]
    assert bad(["I1", "I2\nI3"]) == [("ids[1]", "is not a valid id")]   # a newline cannot smuggle two ids
    assert bad(["I1\n"]) == [("ids[0]", "is not a valid id")]           # nor trail an id
    assert bad(["I1", ""]) == [("ids[1]", "is not a valid id")]
    assert bad(["x" * 65]) == [("ids[0]", "is not a valid id")]


@pytest.mark.parametrize("method, answered", [("path", True), ("shap", False)])
def test_ranker_contributions_if_cheap_only_under_path_attribution(loaded, catalog_rows, method, answered):
    """The gateway asks for every candidate's contributions in its one Rank call when they are
    cheap; under TreeSHAP (many times the cost per row) none come back and it asks for its final
    few in a second call."""
    from services.ranker.runtime import RankerRuntime

    h = loaded["ranker"]
    h.servicer.slot.get().model.contributions = method
    try:
        ids = catalog_rows["internships"][:30]
        scores = np.random.default_rng(2).random((len(ids), 4)).astype(np.float32)
        resp = h.ok("Rank", ranker_pb2.RankRequest(profile=profile(), internship_ids=ids,
                                                   component_scores=scores.ravel().tolist(),
                                                   contributions_if_cheap=True))
        assert bool(resp.contribution_values) is answered
        if answered:
            values = np.asarray(resp.contribution_values).reshape(len(ids), len(resp.contribution_features) + 1)
            np.testing.assert_allclose(values.sum(axis=1), resp.scores, atol=1e-4)
    finally:
        h.servicer.slot.get().model.contributions = RankerRuntime.contributions
