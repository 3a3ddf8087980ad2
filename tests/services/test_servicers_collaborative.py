"""The collaborative servicer: history, fold-in and popularity bases, Score against Retrieve, argument checks."""

from __future__ import annotations

import numpy as np
import pytest

from pmis.v1 import common_pb2
from services.common.profiles import EVENT_TYPES
from tests.support.servicers import (APPLY, VIEW, admin_token, bad_fields, catalog_rows,  # noqa: F401 - fixtures
                                     known_student, loaded, packed)


# --------------------------------------------------------------------------- collaborative


def test_collaborative_bases(loaded, known_student, catalog_rows):
    h = loaded["collaborative"]
    history = h.ok("Retrieve", common_pb2.RetrieveRequest(student_id=known_student, n=20))
    assert history.basis == "history" and len(packed(history)) == 20 and history.model.component == "collaborative"
    scores = [it.score for it in packed(history)]
    assert scores == sorted(scores, reverse=True) and np.isfinite(scores).all()
    assert all(it.popularity is not None and 0 <= it.popularity <= 1 for it in packed(history))

    stranger = h.ok("Retrieve", common_pb2.RetrieveRequest(student_id="S9999999", n=20))
    no_id = h.ok("Retrieve", common_pb2.RetrieveRequest(n=20))
    assert stranger.basis == no_id.basis == "popularity"
    # for a stranger the score is the popularity itself, most popular first
    assert [it.score for it in packed(stranger)] == pytest.approx([it.popularity for it in packed(stranger)])
    assert [it.internship_id for it in packed(stranger)] == [it.internship_id for it in packed(no_id)]
    assert [it.internship_id for it in packed(history)] != [it.internship_id for it in packed(stranger)]

    x = catalog_rows["internships"][0]
    folded = h.ok("Retrieve", common_pb2.RetrieveRequest(student_id="S9999999", n=20, interactions=[
        common_pb2.Interaction(internship_id=x, event=APPLY)]))
    assert folded.basis == "fold_in"
    # interactions on internships the bundle does not know are ignored (falls back to history/popularity)
    ignored = h.ok("Retrieve", common_pb2.RetrieveRequest(student_id=known_student, n=5, interactions=[
        common_pb2.Interaction(internship_id="I999999", event=APPLY)]))
    assert ignored.basis == "history"


def test_collaborative_fold_in_apply_changes_scores(loaded, known_student, catalog_rows):
    h = loaded["collaborative"]
    all_ids = catalog_rows["internships"]
    history = [common_pb2.Interaction(internship_id=i, event=EVENT_TYPES[e])
               for s, i, e in catalog_rows["interactions"] if s == known_student]
    seen = {it.internship_id for it in history}
    before = h.ok("Score", common_pb2.ScoreRequest(student_id=known_student, internship_ids=all_ids,
                                                   interactions=history))
    assert before.basis == "fold_in" and len(packed(before)) == len(all_ids)
    b = {it.internship_id: it.score for it in packed(before)}
    # the item the student is least drawn to so far, among those they have not touched
    x = min((i for i in all_ids if i not in seen), key=b.get)
    after = h.ok("Score", common_pb2.ScoreRequest(student_id=known_student, internship_ids=all_ids,
                                                  interactions=[*history, common_pb2.Interaction(
                                                      internship_id=x, event=APPLY)]))
    a = {it.internship_id: it.score for it in packed(after)}
    assert after.basis == "fold_in"
    assert a[x] > b[x] + 1e-3
    diff = np.abs(np.array([a[i] - b[i] for i in all_ids]))
    assert (diff > 1e-4).sum() > len(all_ids) // 2  # the whole user vector moved, not one score
    # popularity is a property of the item, not of the student
    assert {it.internship_id: it.popularity for it in packed(after)} == {it.internship_id: it.popularity
                                                                       for it in packed(before)}
    # Retrieve folds in the same way, and honours exclusions
    top = h.ok("Retrieve", common_pb2.RetrieveRequest(student_id=known_student, n=10, exclude_internship_ids=[x],
                                                      interactions=[*history, common_pb2.Interaction(
                                                          internship_id=x, event=APPLY)]))
    assert top.basis == "fold_in" and x not in {it.internship_id for it in packed(top)}
    for it in packed(top):
        assert it.score == pytest.approx(a[it.internship_id], abs=1e-5)


def test_collaborative_score_history_matches_retrieve(loaded, known_student, catalog_rows):
    h = loaded["collaborative"]
    top = h.ok("Retrieve", common_pb2.RetrieveRequest(student_id=known_student, n=10))
    ids = [it.internship_id for it in packed(top)]
    scored = h.ok("Score", common_pb2.ScoreRequest(student_id=known_student,
                                                   internship_ids=[*reversed(ids), "I999999"]))
    assert scored.basis == "history"
    assert [it.internship_id for it in packed(scored)] == list(reversed(ids))
    assert [it.score for it in packed(scored)] == pytest.approx([it.score for it in reversed(packed(top))], abs=1e-5)


@pytest.mark.parametrize("method,request_,fields", [
    ("Retrieve", common_pb2.RetrieveRequest(n=1001), {"n"}),
    ("Retrieve", common_pb2.RetrieveRequest(n=-3), {"n"}),
    ("Retrieve", common_pb2.RetrieveRequest(student_id="S 1"), {"student_id"}),
    ("Retrieve", common_pb2.RetrieveRequest(interactions=[common_pb2.Interaction(internship_id="I000001")]),
     {"interactions[0].event"}),
    ("Retrieve", common_pb2.RetrieveRequest(interactions=[common_pb2.Interaction(internship_id="I000001", event=APPLY),
                                                          common_pb2.Interaction(event=VIEW)]),
     {"interactions[1].internship_id"}),
    ("Retrieve", common_pb2.RetrieveRequest(interactions=[common_pb2.Interaction(internship_id="I000001",
                                                                                 event=VIEW)] * 5001),
     {"interactions"}),
    ("Score", common_pb2.ScoreRequest(student_id="S0000001"), {"internship_ids"}),
    ("Score", common_pb2.ScoreRequest(internship_ids=["I000001"] * 1001), {"internship_ids"}),
])
def test_collaborative_invalid_arguments(loaded, method, request_, fields):
    assert bad_fields(loaded["collaborative"], method, request_) == fields


def test_event_confidence_is_the_event_weights():
    from models.components.collaborative import event_weights
    from services.collaborative.runtime import EVENT_CONFIDENCE
    from services.common.profiles import EVENT_NAMES

    np.testing.assert_array_equal(EVENT_CONFIDENCE[list(EVENT_NAMES)], event_weights(list(EVENT_NAMES.values())))
