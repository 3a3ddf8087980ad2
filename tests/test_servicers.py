"""Unit tests of the four component servicers, each on an in-process loopback server.

Each servicer is built with its own `make_servicer(cfg)` over the session's trained bundles and
served behind the servers' own guard interceptor (services/common/guard.py), so the real request
handling, validation and status mapping run.
Errors are checked down to the google.rpc BadRequest field names a client would see.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from concurrent import futures
from contextlib import closing
from dataclasses import dataclass

import grpc
import numpy as np
import pytest

from gateway import explain
from models.bundle.registry import Registry
from pmis.v1 import collaborative_pb2, common_pb2, content_pb2, ranker_pb2, success_pb2
from services.collaborative import server as collaborative_server
from services.common.errors import field_violations
from services.common.guard import ServerGuard
from services.common.profiles import EVENT_TYPES
from services.common.server import ServerConfig
from services.content import server as content_server
from services.ranker import server as ranker_server
from services.success import server as success_server
from tests.support.loopback import SERVERS

COMPONENTS = {
    "content": (content_server, content_pb2, "ContentService"),
    "collaborative": (collaborative_server, collaborative_pb2, "CollaborativeService"),
    "success": (success_server, success_pb2, "SuccessService"),
    "ranker": (ranker_server, ranker_pb2, "RankerService"),
}
TIMEOUT = 30.0
ADMIN_TOKEN = "servicer-tests-admin-token"
# Reload is an admin RPC (services/common/auth.py): every call of the harness carries the token
# (read-only RPCs ignore it); the token-less and wrong-token cases are in tests/test_trainer.py.
ADMIN_METADATA = (("authorization", f"Bearer {ADMIN_TOKEN}"),)
APPLY, VIEW = common_pb2.EVENT_TYPE_APPLY, common_pb2.EVENT_TYPE_VIEW


# --------------------------------------------------------------------------- plumbing


@pytest.fixture(autouse=True)
def _admin_token(monkeypatch):
    monkeypatch.setenv("PMIS_ADMIN_TOKEN", ADMIN_TOKEN)


def _config(component: str, bundles) -> ServerConfig:
    return ServerConfig(component=component, host="127.0.0.1", port=0, metrics_port=0, bundles=bundles,
                        alias="champion", version=None, path=None, grace=0.5, drain=0.0, workers=2,
                        max_connection_age_ms=60_000)


class Harness:
    """One component servicer on a loopback server (port 0) behind the servers' own guard
    interceptor (status codes, safe decoding), called through a real channel."""

    def __init__(self, component: str, servicer):
        module, pb2, service_name = COMPONENTS[component]
        self.component, self.servicer = component, servicer
        self.service = pb2.DESCRIPTOR.services_by_name[service_name]
        self.server = grpc.server(futures.ThreadPoolExecutor(4), interceptors=[ServerGuard(component)])
        SERVERS[component][1](servicer, self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")

    def call(self, method: str, request):
        """(response, trailing_metadata, code, details), as grpc_testing's termination()."""
        m = self.service.methods_by_name[method]
        call = self.channel.unary_unary(f"/{self.service.full_name}/{method}",
                                        request_serializer=lambda r: r.SerializeToString(),
                                        response_deserializer=m.output_type._concrete_class.FromString)
        try:
            response, rpc = call.with_call(request, timeout=TIMEOUT, metadata=ADMIN_METADATA)
            return response, rpc.trailing_metadata(), rpc.code(), rpc.details()
        except grpc.RpcError as e:
            return None, e.trailing_metadata(), e.code(), e.details()

    def ok(self, method: str, request):
        response, _, code, details = self.call(method, request)
        assert code == grpc.StatusCode.OK, details
        return response

    def close(self) -> None:
        self.channel.close()
        self.server.stop(None)


class _FailedCall(grpc.RpcError):
    """What a real stub raises, rebuilt from grpc_testing's termination, for errors.field_violations."""

    def __init__(self, trailing_metadata, code, details):
        self._md, self._code, self._details = trailing_metadata, code, details

    def trailing_metadata(self):
        return self._md

    def code(self):
        return self._code

    def details(self):
        return self._details


def fails(harness: Harness, method: str, request, code: grpc.StatusCode) -> tuple[str, list[tuple[str, str]]]:
    """Call, assert the status code, return (details, field violations)."""
    response, trailing, got, details = harness.call(method, request)
    assert got == code, f"{method}: expected {code.name}, got {got} ({details})"
    assert response is None
    return details, field_violations(_FailedCall(trailing, got, details))


def bad_fields(harness: Harness, method: str, request) -> set[str]:
    details, violations = fails(harness, method, request, grpc.StatusCode.INVALID_ARGUMENT)
    assert violations, f"INVALID_ARGUMENT without BadRequest details: {details}"
    for field, description in violations:
        assert field in details and description  # the message summarises the violations
    return {f for f, _ in violations}


@pytest.fixture()
def fresh(small_system):
    """A harness of a servicer not loaded yet (this test's own), closed after the test."""
    made = []

    def make(component: str) -> Harness:
        module, _, _ = COMPONENTS[component]
        made.append(Harness(component, module.make_servicer(_config(component, small_system.bundles))))
        return made[-1]
    yield make
    for harness in made:
        harness.close()


@pytest.fixture(scope="module")
def loaded(small_system) -> dict[str, Harness]:
    out = {}
    for component, (module, _, _) in COMPONENTS.items():
        servicer = module.make_servicer(_config(component, small_system.bundles))
        servicer.slot.load()
        out[component] = Harness(component, servicer)
    yield out
    for harness in out.values():
        harness.close()


@pytest.fixture(scope="module")
def registry(small_system) -> Registry:
    return Registry(small_system.bundles / "registry.db")


@pytest.fixture(scope="module")
def catalog_rows(small_system):
    with closing(sqlite3.connect(small_system.catalog)) as c:
        internships = [r[0] for r in c.execute("SELECT internship_id FROM internships ORDER BY internship_id")]
        interactions = c.execute("SELECT student_id, internship_id, event FROM interactions "
                                 "ORDER BY timestamp").fetchall()
        outcomes = c.execute("SELECT AVG(selected) FROM outcomes").fetchone()[0]
    return {"internships": internships, "interactions": interactions, "selection_rate": outcomes}


@dataclass
class Item:
    internship_id: str
    score: float
    popularity: float | None = None


def packed(resp) -> list[Item]:
    """A Retrieve/Score answer's packed arrays as one item per internship."""
    pops = list(resp.popularity) or [None] * len(resp.internship_ids)
    assert len(resp.scores) == len(resp.internship_ids) == len(pops)
    return [Item(i, s, p) for i, s, p in zip(resp.internship_ids, resp.scores, pops)]


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


def profile(**kw) -> common_pb2.StudentProfile:
    kw.setdefault("skills", ["python", "sql"])
    return common_pb2.StudentProfile(**kw)


# --------------------------------------------------------------------------- before load


@pytest.mark.parametrize("component", list(COMPONENTS))
def test_unavailable_until_loaded(fresh, component):
    h = fresh(component)
    request = {
        "content": ("Retrieve", common_pb2.RetrieveRequest(profile=profile(), n=5)),
        "collaborative": ("Retrieve", common_pb2.RetrieveRequest(student_id="S0000001", n=5)),
        "success": ("Predict", success_pb2.PredictRequest(profile=profile(), internship_ids=["I000001"])),
        "ranker": ("Rank", ranker_pb2.RankRequest(profile=profile(), candidates=[ranker_pb2.Candidate(
            internship_id="I000001")])),
    }[component]
    details, violations = fails(h, *request, grpc.StatusCode.UNAVAILABLE)
    assert "not loaded" in details and violations == []
    # ...and a load makes the same servicer answer
    h.servicer.slot.load()
    assert h.ok(*request).model.component == component


# ModelAdmin (ModelInfo, Reload) comes after the generated base class in every servicer's bases,
# so the generated "Method not implemented!" stubs shadow it: both RPCs answer UNIMPLEMENTED.

@pytest.mark.parametrize("component", list(COMPONENTS))
def test_model_info_unavailable_until_loaded(fresh, component):
    h = fresh(component)
    details, _ = fails(h, "ModelInfo", common_pb2.ModelInfoRequest(), grpc.StatusCode.UNAVAILABLE)
    assert "not loaded" in details
    h.servicer.slot.load()
    assert h.ok("ModelInfo", common_pb2.ModelInfoRequest()).component == component


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


# --------------------------------------------------------------------------- collaborative


@pytest.fixture(scope="module")
def known_student(loaded, catalog_rows) -> str:
    """A catalog student with interactions that the collaborative bundle holds a history row for."""
    model = loaded["collaborative"].servicer.slot.get().model.model
    with_interactions = dict.fromkeys(s for s, _, _ in catalog_rows["interactions"])
    for sid in with_interactions:
        row = model.user_index.get(sid)
        if row is not None and model.user_items[row].nnz > 0:
            return sid
    pytest.fail("no catalog student with a collaborative history row")


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


# --------------------------------------------------------------------------- success


def test_success_predict(loaded, catalog_rows):
    h = loaded["success"]
    ids = catalog_rows["internships"][:40]
    p = profile(education="BCA", field="Computer Applications", cgpa=8.1, college_tier=2, district="Pune",
                state="Maharashtra", latitude=18.52, longitude=73.86)
    resp = h.ok("Predict", success_pb2.PredictRequest(profile=p, internship_ids=[*ids, "I999999"], top_factors=2))
    assert resp.model.component == "success"
    assert [pr.internship_id for pr in resp.predictions] == list(resp.internship_ids) == ids  # unknown left out
    probs = np.array([pr.probability for pr in resp.predictions])
    assert list(resp.probabilities) == pytest.approx(probs.tolist(), abs=1e-7)
    assert ((probs > 0) & (probs < 1)).all() and probs.std() > 0
    assert all(1 <= len(pr.top_factors) <= 2 for pr in resp.predictions)
    for pr in resp.predictions:
        assert all(f.name and np.isfinite(f.contribution) for f in pr.top_factors)
        contributions = [abs(f.contribution) for f in pr.top_factors]
        assert contributions == sorted(contributions, reverse=True)
    # the base rate is the bundle's, and that is the training data's selection rate
    bundle_rate = h.servicer.slot.get().model.model.base_rate
    assert resp.base_rate == pytest.approx(bundle_rate, rel=1e-6)
    assert 0 < resp.base_rate < 1
    assert resp.base_rate == pytest.approx(catalog_rows["selection_rate"], abs=0.1)
    # more factors on request, up to 10; probabilities do not depend on it
    # packed, the same factors for every item in a handful of arrays
    flat = h.ok("Predict", success_pb2.PredictRequest(profile=p, internship_ids=ids, top_factors=2, packed_factors=True))
    assert not flat.predictions and list(flat.probabilities) == list(resp.probabilities)
    assert len(flat.factor_counts) == len(ids) and sum(flat.factor_counts) == len(flat.factor_names)
    by_id = explain.factor_rows(flat, ids)
    assert [[(f.name, f.value, f.contribution) for f in by_id[pr.internship_id]] for pr in resp.predictions] == \
        [[(f.name, f.value, f.contribution) for f in pr.top_factors] for pr in resp.predictions]
    more = h.ok("Predict", success_pb2.PredictRequest(profile=p, internship_ids=ids, top_factors=10))
    assert all(2 <= len(pr.top_factors) <= 10 for pr in more.predictions)
    assert [pr.probability for pr in more.predictions] == pytest.approx(probs.tolist(), abs=1e-6)
    # 0 = no factors (the cheap call the gateway makes for every candidate): packed arrays only
    none = h.ok("Predict", success_pb2.PredictRequest(profile=p, internship_ids=ids, top_factors=0))
    assert not none.predictions and list(none.internship_ids) == ids
    assert list(none.probabilities) == pytest.approx(probs.tolist(), abs=1e-6)


def test_success_profile_matters_and_sparse_profiles_work(loaded, catalog_rows):
    h = loaded["success"]
    ids = catalog_rows["internships"][:40]
    strong = h.ok("Predict", success_pb2.PredictRequest(profile=profile(cgpa=9.5, college_tier=1), internship_ids=ids))
    weak = h.ok("Predict", success_pb2.PredictRequest(profile=profile(cgpa=4.0, college_tier=3), internship_ids=ids))
    assert list(strong.probabilities) != list(weak.probabilities) and len(strong.probabilities) == len(ids)
    # no skills, no optional fields at all: still an answer (success does not require skills)
    bare = h.ok("Predict", success_pb2.PredictRequest(profile=common_pb2.StudentProfile(), internship_ids=ids[:3]))
    assert len(bare.probabilities) == 3 and all(0 < p < 1 for p in bare.probabilities)
    nothing_known = h.ok("Predict", success_pb2.PredictRequest(profile=profile(), internship_ids=["I999999"]))
    assert len(nothing_known.probabilities) == 0 and 0 < nothing_known.base_rate < 1


@pytest.mark.parametrize("request_,fields", [
    (success_pb2.PredictRequest(profile=profile(), internship_ids=["I000001"], top_factors=11), {"top_factors"}),
    (success_pb2.PredictRequest(profile=profile(), internship_ids=["I000001"], top_factors=-1), {"top_factors"}),
    (success_pb2.PredictRequest(profile=profile()), {"internship_ids"}),
    (success_pb2.PredictRequest(profile=profile(cgpa=10.5), internship_ids=["I000001"]), {"profile.cgpa"}),
    (success_pb2.PredictRequest(profile=profile(cgpa=-0.1, longitude=181.0), internship_ids=["I000001"]),
     {"profile.cgpa", "profile.longitude"}),
    (success_pb2.PredictRequest(profile=profile(skills=["s"] * 51), internship_ids=["x y"], top_factors=20),
     {"profile.skills", "internship_ids[0]", "top_factors"}),
])
def test_success_invalid_arguments(loaded, request_, fields):
    assert bad_fields(loaded["success"], "Predict", request_) == fields


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
    from services.ranker.server import RankerRuntime

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


# --------------------------------------------------------------------------- ModelInfo and Reload


@pytest.mark.parametrize("component", list(COMPONENTS))
def test_model_info_matches_registry(loaded, registry, component):
    info = loaded[component].ok("ModelInfo", common_pb2.ModelInfoRequest())
    row = registry.resolve(component, "champion")
    assert info.component == component
    assert info.version == row["version"]
    assert info.content_hash == row["content_hash"] and len(info.content_hash) == 64
    assert info.data_version == (row["data_version"] or "")
    assert info.run_id == (row["run_id"] or "")
    assert info.loaded_at.seconds > 0


@pytest.mark.parametrize("component", list(COMPONENTS))
def test_reload(loaded, registry, small_system, component, tmp_path):
    h = loaded[component]
    before = h.ok("ModelInfo", common_pb2.ModelInfoRequest())
    resp = h.ok("Reload", common_pb2.ReloadRequest(version=1))
    row = registry.get(component, 1)
    assert resp.previous.content_hash == before.content_hash and resp.previous.version == before.version
    assert resp.current.component == component and resp.current.version == 1
    assert resp.current.content_hash == row["content_hash"]
    assert resp.current.loaded_at.ToNanoseconds() >= resp.previous.loaded_at.ToNanoseconds()
    assert h.ok("ModelInfo", common_pb2.ModelInfoRequest()).loaded_at == resp.current.loaded_at

    # by alias, and by folder
    assert h.ok("Reload", common_pb2.ReloadRequest(alias="champion")).current.version == row["version"]
    assert h.ok("Reload", common_pb2.ReloadRequest(path=str(row["path"]))).current.content_hash == row["content_hash"]

    # a version, alias or folder that does not exist: FAILED_PRECONDITION, and the old model keeps serving
    for bad in (common_pb2.ReloadRequest(version=9999), common_pb2.ReloadRequest(alias="no-such-alias"),
                common_pb2.ReloadRequest(path=str(small_system.root / "no-such-bundle"))):
        fails(h, "Reload", bad, grpc.StatusCode.FAILED_PRECONDITION)
    assert h.ok("ModelInfo", common_pb2.ModelInfoRequest()).content_hash == row["content_hash"]

    # a copy whose payload was changed and whose manifest hash was rewritten to match: the
    # signature no longer checks, the copy is refused naming why, the old model keeps serving
    tampered = tmp_path / "tampered"
    shutil.copytree(row["path"], tampered)
    victim = next(f for f in sorted(tampered.iterdir()) if f.name != "manifest.json")
    victim.write_bytes(victim.read_bytes() + b"\0")
    manifest = json.loads((tampered / "manifest.json").read_text())
    manifest["files"][victim.name].update(sha256=hashlib.sha256(victim.read_bytes()).hexdigest(),
                                          bytes=victim.stat().st_size)
    (tampered / "manifest.json").write_text(json.dumps(manifest))
    details, _ = fails(h, "Reload", common_pb2.ReloadRequest(path=str(tampered)), grpc.StatusCode.FAILED_PRECONDITION)
    assert "bundle refused" in details and "signature mismatch" in details
    assert h.ok("ModelInfo", common_pb2.ModelInfoRequest()).content_hash == row["content_hash"]

    # another component's bundle is refused
    other = next(c for c in COMPONENTS if c != component)
    details, _ = fails(h, "Reload", common_pb2.ReloadRequest(path=str(registry.get(other, 1)["path"])),
                       grpc.StatusCode.FAILED_PRECONDITION)
    assert other in details

    # no target / a version below 1: INVALID_ARGUMENT naming the field
    assert bad_fields(h, "Reload", common_pb2.ReloadRequest()) == {"target"}
    assert bad_fields(h, "Reload", common_pb2.ReloadRequest(version=0)) == {"version"}


def test_content_skills_are_ordered_by_their_weight_in_the_internship(small_system):
    from models.bundle.format import load_bundle
    from models.bundle.registry import Registry
    from services.content.server import ContentRuntime

    rt = ContentRuntime.from_bundle(load_bundle(Registry(small_system.bundles / "registry.db").resolve("content")["path"]))
    profile = common_pb2.StudentProfile(skills=["python", "sql", "excel", "communication", "teamwork"])
    positions = np.arange(min(50, len(rt.index.ids)))
    checked = 0
    from services.content.server import _text

    vector = rt.model.embed([_text(profile)])
    for p, (terms, missing) in zip(positions.tolist(), rt.skills.table(vector, profile.skills, positions).rows()):
        for skills in ([t for t, _ in terms], missing):
            weights = [rt.skills.weights[p, rt.skills.skills.index[s]] for s in skills]
            assert weights == sorted(weights, reverse=True)
            assert all(w > 0 for w in weights)  # every listed skill is really in the internship's vector
            checked += len(skills) > 1
    assert checked > 10


# --------------------------------------------------------------------------- packed answers


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
    from services.ranker.server import RankerRuntime

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
