"""The content servicer: Retrieve and Score by profile, explanation details, argument checks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from gateway import explain
from pmis.v1 import common_pb2
from tests.support.servicers import (admin_token, bad_fields, catalog_rows, loaded, packed,  # noqa: F401 - fixtures
                                     profile)


@dataclass
class Detail:
    internship_id: str
    score: float
    matched_skills: list
    missing_skills: list
    matched_weights: list


def detailed(h, profile_, ids) -> list[Detail]:
    """Content Score with explanation details (matched/missing skills) for these ids, unpacked."""
    resp = h.ok("Score", common_pb2.ScoreRequest(profile=profile_, internship_ids=ids, details=True))
    assert not resp.items  # packed arrays only
    rows = explain.skill_rows(resp, list(resp.internship_ids))
    assert len(resp.matched_counts) == len(resp.missing_counts) == len(resp.internship_ids)
    return [Detail(i, s, *rows[i]) for i, s in zip(resp.internship_ids, resp.scores)]


# --------------------------------------------------------------------------- content


def test_content_retrieve_ranks_by_score(loaded, catalog_rows):
    h = loaded["content"]
    skills = ["python", "sql"]
    resp = h.ok("Retrieve", common_pb2.RetrieveRequest(profile=profile(skills=skills), n=25))
    assert len(resp.internship_ids) == 25 and not resp.items  # ids and scores only: no per-item details
    assert resp.basis == "profile" and resp.model.component == "content"
    scores = list(resp.scores)
    assert scores == sorted(scores, reverse=True)
    assert scores[0] > 0 and all(0 <= s <= 1 + 1e-5 for s in scores)  # cosine of non-negative tf-idf
    ids = list(resp.internship_ids)
    assert len(set(ids)) == 25 and set(ids) <= set(catalog_rows["internships"])
    details = detailed(h, profile(skills=skills), ids)
    assert [it.internship_id for it in details] == ids
    assert [it.score for it in details] == pytest.approx(scores, abs=1e-6)
    assert any(it.matched_skills for it in details)
    for it in details:
        assert set(it.matched_skills) <= set(skills)
        assert not set(it.missing_skills) & set(skills)
    # the best matches share a skill with the profile
    assert details[0].matched_skills


def test_content_retrieve_default_n_and_exclusions(loaded):
    h = loaded["content"]
    full = h.ok("Retrieve", common_pb2.RetrieveRequest(profile=profile()))  # n unset -> 100
    assert len(full.internship_ids) == 100
    top = list(full.internship_ids[:3])
    resp = h.ok("Retrieve", common_pb2.RetrieveRequest(profile=profile(), n=10,
                                                       exclude_internship_ids=top + ["I999999"]))
    ids = list(resp.internship_ids)
    assert len(ids) == 10 and not set(ids) & set(top)
    assert ids == list(full.internship_ids[3:13])
    # open_at leaves out internships whose deadline has passed, and nothing else
    deadline = h.servicer.slot.get().model.space.items.deadline
    cutoff = int(np.sort(deadline[deadline < np.iinfo(np.int64).max])[len(deadline) // 2])
    open_now = h.ok("Retrieve", common_pb2.RetrieveRequest(profile=profile(), n=1000, open_at=cutoff))
    index = h.servicer.slot.get().model.index
    assert all(deadline[index.position[i]] >= cutoff for i in open_now.internship_ids)
    assert len(open_now.internship_ids) == int((deadline >= cutoff).sum())
    # the student's vector comes back, and a Score that passes it gets the same scores
    again = h.ok("Score", common_pb2.ScoreRequest(profile=profile(), internship_ids=ids,
                                                  student_vector=resp.student_vector))
    assert list(again.scores) == list(resp.scores)


def test_content_case_and_unknown_skills(loaded):
    h = loaded["content"]
    lower = h.ok("Retrieve", common_pb2.RetrieveRequest(profile=profile(skills=["python", "sql"]), n=5))
    upper = h.ok("Retrieve", common_pb2.RetrieveRequest(profile=profile(skills=["Python", " SQL "]), n=5))
    assert list(upper.internship_ids) == list(lower.internship_ids)
    ids = list(lower.internship_ids)
    assert [list(it.matched_skills) for it in detailed(h, profile(skills=["Python", " SQL "]), ids)] == \
        [list(it.matched_skills) for it in detailed(h, profile(skills=["python", "sql"]), ids)]
    # words the vectoriser never saw: zero scores, no error
    weird = profile(skills=["quantum basket weaving"])
    odd = h.ok("Retrieve", common_pb2.RetrieveRequest(profile=weird, n=3))
    assert all(s == pytest.approx(0.0, abs=1e-6) for s in odd.scores)
    assert not any(it.matched_skills for it in detailed(h, weird, list(odd.internship_ids)))


def test_content_score_known_ids_only(loaded, catalog_rows):
    h = loaded["content"]
    retrieved = h.ok("Retrieve", common_pb2.RetrieveRequest(profile=profile(), n=300))
    by_id = {it.internship_id: it for it in packed(retrieved)}
    wanted = [catalog_rows["internships"][i] for i in (5, 0, 42)]
    asked = [wanted[0], "I999999", *wanted[1:]]
    resp = h.ok("Score", common_pb2.ScoreRequest(profile=profile(), internship_ids=asked))
    assert list(resp.internship_ids) == wanted and not resp.items  # request order, unknown id left out
    for it in packed(resp):
        assert it.score == by_id[it.internship_id].score  # the same arithmetic as retrieval, to the bit
    details = detailed(h, profile(), asked)
    assert [it.internship_id for it in details] == wanted
    assert [it.score for it in details] == list(resp.scores)
    only_unknown = h.ok("Score", common_pb2.ScoreRequest(profile=profile(), internship_ids=["I999999"]))
    assert len(only_unknown.internship_ids) == 0 and only_unknown.model.component == "content"


@pytest.mark.parametrize("method,request_,fields", [
    ("Retrieve", common_pb2.RetrieveRequest(profile=profile(), n=1001), {"n"}),
    ("Retrieve", common_pb2.RetrieveRequest(profile=profile(), n=-1), {"n"}),
    ("Retrieve", common_pb2.RetrieveRequest(profile=common_pb2.StudentProfile(), n=5), {"profile.skills"}),
    ("Retrieve", common_pb2.RetrieveRequest(profile=profile(skills=["x"] * 51)), {"profile.skills"}),
    ("Retrieve", common_pb2.RetrieveRequest(profile=profile(skills=["python", "  "])), {"profile.skills"}),
    ("Retrieve", common_pb2.RetrieveRequest(profile=profile(cgpa=11.0, college_tier=4), n=0),
     {"profile.cgpa", "profile.college_tier"}),
    ("Retrieve", common_pb2.RetrieveRequest(student_id="bad id!", profile=profile(latitude=91.0)),
     {"student_id", "profile.latitude"}),
    ("Retrieve", common_pb2.RetrieveRequest(profile=profile(district="x" * 101)), {"profile.district"}),
    ("Score", common_pb2.ScoreRequest(profile=profile()), {"internship_ids"}),
    ("Score", common_pb2.ScoreRequest(profile=profile(), internship_ids=["I000001", "no spaces please"]),
     {"internship_ids[1]"}),
    ("Score", common_pb2.ScoreRequest(profile=profile(), internship_ids=["I000001"] * 1001), {"internship_ids"}),
    ("Score", common_pb2.ScoreRequest(internship_ids=["I000001"]), {"profile.skills"}),
])
def test_content_invalid_arguments(loaded, method, request_, fields):
    assert bad_fields(loaded["content"], method, request_) == fields


def test_content_skills_are_ordered_by_their_weight_in_the_internship(small_system):
    from models.bundle.reading import load_bundle
    from models.bundle.registry import Registry
    from services.content.runtime import ContentRuntime

    rt = ContentRuntime.from_bundle(load_bundle(Registry(small_system.bundles / "registry.db").resolve("content")["path"]))
    profile = common_pb2.StudentProfile(skills=["python", "sql", "excel", "communication", "teamwork"])
    positions = np.arange(min(50, len(rt.index.ids)))
    checked = 0
    from services.content.runtime import text_of

    vector = rt.model.embed([text_of(profile)])
    for p, (terms, missing) in zip(positions.tolist(), rt.skills.table(vector, profile.skills, positions).rows()):
        for skills in ([t for t, _ in terms], missing):
            weights = [rt.skills.weights[p, rt.skills.skills.index[s]] for s in skills]
            assert weights == sorted(weights, reverse=True)
            assert all(w > 0 for w in weights)  # every listed skill is really in the internship's vector
            checked += len(skills) > 1
    assert checked > 10
