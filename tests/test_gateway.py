"""The gateway: pure helpers (filters, explanations, profile parsing) and a loopback integration.

The integration starts the four component servers in-process (real `ComponentServer`s on free
ports) and serves the asyncio gateway on a grpc.aio server in an event loop on a background
thread; the tests talk to it over a plain synchronous channel, as a client would. Tests that stop
components get a fresh set of servers of their own; the others share one module-scoped set.
"""

from __future__ import annotations

import shutil
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf import timestamp_pb2

from gateway import explain, filters
from gateway.catalog import InternshipTable
from gateway.server import Gateway
from models.components import COMPONENTS
from pmis.v1 import common_pb2, gateway_pb2
from services.client import parse_profile
from services.common.server import ComponentServer
from services.content import server as content_server
from tests.support.loopback import SERVERS, TIMEOUT, GatewayRunner, component_config, running_system

APPLY = common_pb2.EVENT_TYPE_APPLY


# =========================================================================== pure units


def _table() -> InternshipTable:
    big = np.iinfo(np.int64).max
    # I2 is full, I3 closed at 500, I4 remote, I5 has unknown slots and stipend, I6 no coordinates,
    # I6 and I7 close at exactly 1000 (the default "now" below)
    rows = [  # id, sector, district, state, lat, lon, remote, stipend, slots, deadline, selected
        ("I1", "Information Technology", "Pune", "Maharashtra", 18.52, 73.86, False, 5000.0, 2.0, 2_000, 0),
        ("I2", "Information Technology", "Mumbai", "Maharashtra", 19.08, 72.88, False, 8000.0, 2.0, 2_000, 2),
        ("I3", "Manufacturing", "Nagpur", "Maharashtra", 21.15, 79.09, False, 6000.0, 3.0, 500, 0),
        ("I4", "Banking and Finance", "Bengaluru", "Karnataka", 12.97, 77.59, True, 7000.0, 1.0, big, 0),
        ("I5", "Manufacturing", "Mumbai", "Maharashtra", 19.08, 72.88, False, np.nan, np.nan, 2_000, 5),
        ("I6", "Retail and FMCG", "Pune", "Maharashtra", np.nan, np.nan, False, 12000.0, 0.0, 1_000, 0),
        ("I7", "Information Technology", "Delhi", "Delhi", 28.61, 77.21, False, 9000.0, 4.0, 1_000, 3),
    ]
    col = lambda j: [r[j] for r in rows]  # noqa: E731
    ids = np.array(col(0))
    return InternshipTable(
        ids=ids, position={i: p for p, i in enumerate(ids.tolist())}, title=np.array([f"title {i}" for i in ids]),
        company_id=np.array(["C1"] * len(ids)), sector=np.array(col(1)), district=np.array(col(2)),
        state=np.array(col(3)), latitude=np.array(col(4), dtype=float), longitude=np.array(col(5), dtype=float),
        remote=np.array(col(6), dtype=bool), stipend=np.array(col(7), dtype=float), slots=np.array(col(8), dtype=float),
        deadline=np.array(col(9), dtype=np.int64), applicants=np.zeros(len(ids), dtype=np.int64),
        selected=np.array(col(10), dtype=np.int64), msme=np.zeros(len(ids), dtype=bool))


def _kept(table, f=None, *, applied=(), now=1_000, lat=None, lon=None, positions=None) -> list[str]:
    p = np.arange(len(table.ids)) if positions is None else np.asarray(positions)
    mask = filters.allowed(table, p, now=now, applied=set(applied), filters=f, student_lat=lat, student_lon=lon)
    assert mask.dtype == bool and mask.shape == p.shape
    return [str(table.ids[i]) for i in p[mask]]


def test_filters_open_not_full_not_applied():
    t = _table()
    # I2 is full (selected >= slots); I3 closed at now=1000; I7 closes exactly now: still open
    assert _kept(t) == ["I1", "I4", "I5", "I6", "I7"]
    assert _kept(t, now=1_001) == ["I1", "I4", "I5"]   # I6 and I7 closed at 1000
    assert _kept(t, now=400) == ["I1", "I3", "I4", "I5", "I6", "I7"]
    assert _kept(t, applied={"I1", "I6", "I999"}) == ["I4", "I5", "I7"]
    # the mask follows the order (and repeats) of the positions it is given
    assert _kept(t, positions=[6, 0, 1, 0]) == ["I7", "I1", "I1"]
    assert _kept(t, positions=np.zeros(0, dtype=np.int64)) == []


def test_filters_districts_and_remote():
    t = _table()
    f = gateway_pb2.Filters(districts=["pune", " MUMBAI "])
    assert _kept(t, f) == ["I1", "I4", "I5", "I6"]            # remote I4 is reachable from anywhere
    f = gateway_pb2.Filters(districts=["Pune"], remote=False)
    assert _kept(t, f) == ["I1", "I6"]
    f = gateway_pb2.Filters(districts=["Pune"], remote=True)
    assert _kept(t, f) == ["I4"]
    assert _kept(t, gateway_pb2.Filters(remote=True)) == ["I4"]
    assert _kept(t, gateway_pb2.Filters(remote=False)) == ["I1", "I5", "I6", "I7"]
    assert _kept(t, gateway_pb2.Filters()) == _kept(t)         # an empty filter keeps what is open


def test_filters_radius():
    t = _table()
    pune = dict(lat=18.52, lon=73.86)
    # Mumbai is ~120 km from Pune, Delhi ~1170 km; remote passes; no coordinates (I6) fails
    assert _kept(t, gateway_pb2.Filters(radius_km=10), **pune) == ["I1", "I4"]
    assert _kept(t, gateway_pb2.Filters(radius_km=200), **pune) == ["I1", "I4", "I5"]
    assert _kept(t, gateway_pb2.Filters(radius_km=2000), **pune) == ["I1", "I4", "I5", "I7"]
    assert _kept(t, gateway_pb2.Filters(radius_km=200, remote=False), **pune) == ["I1", "I5"]
    # a student without coordinates: the radius cannot apply and is ignored
    assert _kept(t, gateway_pb2.Filters(radius_km=10)) == _kept(t)


def test_filters_sectors_and_stipend():
    t = _table()
    assert _kept(t, gateway_pb2.Filters(sectors=["information technology"])) == ["I1", "I7"]
    assert _kept(t, gateway_pb2.Filters(sectors=["Manufacturing", "Retail and FMCG"])) == ["I5", "I6"]
    assert _kept(t, gateway_pb2.Filters(min_stipend=7000)) == ["I4", "I6", "I7"]   # unknown stipend counts as 0
    assert _kept(t, gateway_pb2.Filters(min_stipend=0)) == _kept(t)
    both = gateway_pb2.Filters(sectors=["Information Technology", "Banking and Finance"], min_stipend=6000,
                               remote=False)
    assert _kept(t, both) == ["I7"]


def test_success_band():
    assert explain.success_band(None, 0.13) == ""
    assert explain.success_band(0.3, 0.0) == ""
    assert explain.success_band(0.2, 0.1) == "higher than average"
    assert explain.success_band(0.625, 0.5) == "higher than average"   # ratio exactly 1.25
    assert explain.success_band(0.62, 0.5) == "about average"
    assert explain.success_band(0.5, 0.5) == "about average"
    assert explain.success_band(0.41, 0.5) == "about average"
    assert explain.success_band(0.4, 0.5) == "lower than average"      # ratio exactly 0.8
    assert explain.success_band(0.0, 0.13) == "lower than average"


def test_location_fit():
    t = _table()
    pos = t.position
    pune = common_pb2.StudentProfile(district="Pune", state="Maharashtra", latitude=18.52, longitude=73.86)
    assert explain.location_fit(pune, t, pos["I1"]) == "same district"
    assert explain.location_fit(pune, t, pos["I6"]) == "same district"       # by name, without coordinates
    assert explain.location_fit(pune, t, pos["I2"]) == "neighbouring district"  # Mumbai, ~120 km
    assert explain.location_fit(pune, t, pos["I3"]) == "same state"          # Nagpur, ~600 km
    assert explain.location_fit(pune, t, pos["I7"]) == "elsewhere"
    assert explain.location_fit(pune, t, pos["I4"]) == "remote"
    lower = common_pb2.StudentProfile(district="pune", state="maharashtra")
    assert explain.location_fit(lower, t, pos["I1"]) == "same district"
    assert explain.location_fit(lower, t, pos["I2"]) == "same state"        # no coordinates: no distance
    assert explain.location_fit(common_pb2.StudentProfile(), t, pos["I7"]) == "elsewhere"


def test_explanation_reasons():
    t = _table()
    p = common_pb2.StudentProfile(skills=["python"], district="Pune", state="Maharashtra",
                                  preferred_sectors=["information technology"])
    e = explain.explanation(p, t, t.position["I1"], matched=["python"], missing=["sql", "excel", "git", "java"],
                            probability=0.3, base_rate=0.13, factors=[], collab_basis="popularity", promoted=False)
    assert list(e.skills_to_learn) == ["sql", "excel", "git"]
    assert e.preferred_sector and e.location_fit == "same district" and e.success_band == "higher than average"
    assert e.collaborative_evidence == ""  # popularity is not evidence about students like this one
    assert any("python" in r for r in e.reasons) and any("30%" in r for r in e.reasons)


def test_percent_never_says_about_zero():
    assert explain.percent(0.004) == "under 1%" and explain.percent(0.14) == "about 14%"
    assert explain.percent(0.005) == "under 1%" and explain.percent(0.0051) == "about 1%"


def test_parse_profile():
    p = parse_profile(["skills=python, sql,,Data Analysis", "education=BCA", "field=Computer Applications",
                       "district=Pune", "state=Maharashtra", "latitude=18.52", "longitude=73.86", "cgpa=8.2",
                       "college_tier=2", "preferred_sectors=Information Technology,Banking and Finance",
                       "preferred_districts=Pune"])
    assert list(p.skills) == ["python", "sql", "Data Analysis"]
    assert (p.education, p.field, p.district, p.state) == ("BCA", "Computer Applications", "Pune", "Maharashtra")
    assert p.latitude == pytest.approx(18.52) and p.longitude == pytest.approx(73.86)
    assert p.cgpa == pytest.approx(8.2) and p.college_tier == 2
    assert list(p.preferred_sectors) == ["Information Technology", "Banking and Finance"]
    assert list(p.preferred_districts) == ["Pune"]
    empty = parse_profile([])
    assert not empty.skills and not empty.HasField("cgpa") and not empty.HasField("college_tier")
    assert list(parse_profile(["skills=a", "skills=b"]).skills) == ["a", "b"]   # repeated keys add up
    with pytest.raises(ValueError, match="unknown profile field"):
        parse_profile(["gender=F"])           # protected attributes are not profile fields
    with pytest.raises(ValueError):
        parse_profile(["cgpa=high"])
    with pytest.raises(ValueError):
        parse_profile(["college_tier=2.5"])


# Most tests here check relevance order, explanations and degradation: the operator's fairness
# policy is set to 0 for them (a request may still ask for fairness). The policy itself is tested
# on `policy_system`, a gateway with the default configuration.
PLAIN = {"fairness_strength": 0.0}


@pytest.fixture(scope="module")
def system(small_system):
    with running_system(small_system, **PLAIN) as running:
        yield running


@pytest.fixture()
def fresh_system(small_system):
    """Servers of this test's own, which it may stop."""
    with running_system(small_system, **PLAIN) as running:
        yield running


@pytest.fixture()
def policy_system(small_system):
    """The default configuration: the fairness policy applies to every Recommend."""
    with running_system(small_system) as running:
        yield running


@pytest.fixture(scope="module")
def students(small_system) -> dict:
    """Known students: the one with the most applications, and a few others with history."""
    with closing(sqlite3.connect(small_system.catalog)) as c:
        ranked = [r[0] for r in c.execute(
            "SELECT student_id, COUNT(*) AS n FROM interactions WHERE event = 'apply' GROUP BY student_id "
            "ORDER BY n DESC, student_id")]
        applied = {sid: {r[0] for r in c.execute(
            "SELECT internship_id FROM interactions WHERE student_id = ? AND event = 'apply'", (sid,))}
            for sid in ranked[:5]}
    return {"top": ranked[0], "others": ranked[1:5], "applied": applied}


def _open_and_not_full(gw: Gateway, ids) -> bool:
    t, now = gw.catalog.internships, gw.now()
    return all(t.deadline[t.position[i]] >= now and not (t.slots[t.position[i]] > 0 and
                                                          t.selected[t.position[i]] >= t.slots[t.position[i]])
               for i in ids)


COLD_PROFILE = common_pb2.StudentProfile(
    skills=["python", "sql", "data analysis", "excel"], education="BCA", field="Computer Applications",
    district="Pune", state="Maharashtra", latitude=18.52, longitude=73.86,
    preferred_sectors=["Information Technology"], cgpa=8.2, college_tier=2)


def test_recommend_known_student(system, students):
    gw = system.gateway
    sid = students["top"]
    resp = gw.recommend(student_id=sid, k=7)
    assert resp.student_id == sid and not resp.cold_start and not resp.error
    assert len(resp.items) == 7
    assert resp.ranking == "ranker" and list(resp.degraded) == []
    assert sorted(m.component for m in resp.models) == sorted(COMPONENTS)
    assert all(m.version >= 1 and len(m.content_hash) == 64 for m in resp.models)
    assert not resp.mixed_data_versions
    ids = [it.internship_id for it in resp.items]
    assert len(set(ids)) == 7
    assert not set(ids) & students["applied"][sid], "recommended an internship the student already applied to"
    assert _open_and_not_full(gw.gateway, ids)
    # not vacuous: some of what the student applied to is still open, so it had to be filtered out
    assert any(_open_and_not_full(gw.gateway, [i]) for i in students["applied"][sid])
    assert [it.rank for it in resp.items] == list(range(1, 8))
    assert [it.score for it in resp.items] == sorted((it.score for it in resp.items), reverse=True)
    table = gw.gateway.catalog.internships
    for it in resp.items:
        p = table.position[it.internship_id]
        assert it.title == table.title[p] and it.sector == table.sector[p] and it.district == table.district[p]
        assert it.scores.HasField("ranker") and it.score == pytest.approx(it.scores.ranker)
        assert it.scores.HasField("success_probability") and 0 < it.scores.success_probability < 1
        assert it.scores.HasField("content") or it.scores.HasField("collaborative")
        assert it.explanation.location_fit and it.explanation.reasons and it.explanation.success_band
        assert len(it.explanation.success_factors) <= 3
    assert any(it.explanation.success_factors for it in resp.items)
    # the student's own history is folded in, so there is collaborative evidence to show
    assert any(it.explanation.collaborative_evidence for it in resp.items)
    # explain=false drops explanations, not scores or order
    bare = gw.recommend(student_id=sid, k=7, explain=False)
    assert [it.internship_id for it in bare.items] == ids
    assert all(not it.HasField("explanation") for it in bare.items)


def test_recommend_cold_start(system):
    gw = system.gateway
    resp = gw.recommend(profile=COLD_PROFILE, k=5)
    assert resp.cold_start and resp.student_id == "" and len(resp.items) == 5
    assert resp.ranking == "ranker" and list(resp.degraded) == []
    assert sorted(m.component for m in resp.models) == sorted(COMPONENTS)
    assert _open_and_not_full(gw.gateway, [it.internship_id for it in resp.items])
    # nobody's history to go on: no collaborative evidence is claimed
    assert not any(it.explanation.collaborative_evidence for it in resp.items)
    # the profile's skills show up in the explanations
    skills = set(COLD_PROFILE.skills)
    assert any(set(it.explanation.matched_skills) & skills for it in resp.items)
    for it in resp.items:
        assert set(it.explanation.matched_skills) <= skills
        assert not set(it.explanation.skills_to_learn) & skills
    # an unknown id with a profile is a cold start too
    new = gw.recommend(student_id="S9999999", profile=COLD_PROFILE, k=5)
    assert new.cold_start and new.student_id == "S9999999" and len(new.items) == 5


def test_recommend_filters(system, students):
    gw = system.gateway
    sid = students["top"]
    table = gw.gateway.catalog.internships

    resp = gw.recommend(student_id=sid, k=10, filters=gateway_pb2.Filters(sectors=["information technology"]))
    assert resp.items and all(it.sector == "Information Technology" for it in resp.items)

    resp = gw.recommend(student_id=sid, k=20, filters=gateway_pb2.Filters(remote=False))
    assert resp.items and not any(it.remote for it in resp.items)

    remote_only = gw.recommend(profile=COLD_PROFILE, k=20, filters=gateway_pb2.Filters(remote=True))
    assert remote_only.items and all(it.remote for it in remote_only.items)
    assert all(it.explanation.location_fit == "remote" for it in remote_only.items)

    stipends = sorted({float(s) for s in table.stipend if np.isfinite(s)})
    floor = stipends[len(stipends) // 2]
    resp = gw.recommend(student_id=sid, k=20, filters=gateway_pb2.Filters(min_stipend=floor))
    assert resp.items and all(it.stipend >= floor for it in resp.items)

    resp = gw.recommend(profile=COLD_PROFILE, k=20, filters=gateway_pb2.Filters(districts=["Pune"], remote=False))
    assert all(it.district == "Pune" and not it.remote for it in resp.items)

    resp = gw.recommend(student_id=sid, k=20, filters=gateway_pb2.Filters(
        sectors=["Information Technology", "Banking and Finance"], remote=False, min_stipend=floor))
    assert all(it.sector in ("Information Technology", "Banking and Finance") and not it.remote
               and it.stipend >= floor for it in resp.items)

    # a filter nothing passes: an empty answer, not an error
    resp = gw.recommend(student_id=sid, k=5, filters=gateway_pb2.Filters(sectors=["Space Tourism"]))
    assert list(resp.items) == [] and resp.student_id == sid


def test_recommend_modes_and_default_k(system, students):
    gw = system.gateway
    sid = students["top"]
    default = gw.recommend(student_id=sid)     # k unset -> 10
    assert len(default.items) == 10

    content = gw.recommend(student_id=sid, k=10, mode=gateway_pb2.MODE_CONTENT)
    assert content.ranking == "content" and len(content.items) == 10
    assert [it.score for it in content.items] == [it.scores.content for it in content.items]
    assert [it.score for it in content.items] == sorted((it.score for it in content.items), reverse=True)
    assert {m.component for m in content.models} == {"content", "success"}
    assert all(not it.scores.HasField("ranker") and not it.scores.HasField("collaborative") for it in content.items)
    assert "collaborative" not in content.degraded

    collab = gw.recommend(student_id=sid, k=10, mode=gateway_pb2.MODE_COLLABORATIVE)
    assert collab.ranking == "collaborative" and len(collab.items) == 10
    assert [it.score for it in collab.items] == [it.scores.collaborative for it in collab.items]
    assert [it.score for it in collab.items] == sorted((it.score for it in collab.items), reverse=True)
    assert {m.component for m in collab.models} == {"collaborative", "success"}

    hybrid = gw.recommend(student_id=sid, k=10, mode=gateway_pb2.MODE_HYBRID)
    assert hybrid.ranking == "ranker"
    assert [it.internship_id for it in hybrid.items] == [it.internship_id for it in default.items]


def test_recommend_invalid_requests(system):
    gw = system.gateway
    R = gateway_pb2.RecommendRequest
    _, v = gw.fails("Recommend", R(student_id="S0000001", k=101), grpc.StatusCode.INVALID_ARGUMENT)
    assert [f for f, _ in v] == ["k"]
    _, v = gw.fails("Recommend", R(student_id="S0000001", k=-1), grpc.StatusCode.INVALID_ARGUMENT)
    assert [f for f, _ in v] == ["k"]
    _, v = gw.fails("Recommend", R(k=5), grpc.StatusCode.INVALID_ARGUMENT)
    assert [f for f, _ in v] == ["student_id"]
    _, v = gw.fails("Recommend", R(student_id="not a valid id!"), grpc.StatusCode.INVALID_ARGUMENT)
    assert [f for f, _ in v] == ["student_id"]
    details, v = gw.fails("Recommend", R(student_id="S9999999"), grpc.StatusCode.NOT_FOUND)
    assert "S9999999" in details and v == []
    many = common_pb2.StudentProfile(skills=[f"skill {i}" for i in range(51)])
    _, v = gw.fails("Recommend", R(profile=many), grpc.StatusCode.INVALID_ARGUMENT)
    assert [f for f, _ in v] == ["profile.skills"]
    _, v = gw.fails("Recommend", R(profile=common_pb2.StudentProfile(), k=500), grpc.StatusCode.INVALID_ARGUMENT)
    assert {f for f, _ in v} == {"k", "profile.skills"}   # every violation at once
    _, v = gw.fails("Recommend", R(profile=common_pb2.StudentProfile(skills=["python"], cgpa=12)),
                    grpc.StatusCode.INVALID_ARGUMENT)
    assert [f for f, _ in v] == ["profile.cgpa"]
    _, v = gw.fails("Recommend", R(student_id="S0000001", mode=7), grpc.StatusCode.INVALID_ARGUMENT)
    assert [f for f, _ in v] == ["mode"]
    _, v = gw.fails("Recommend", R(student_id="S0000001", fairness=gateway_pb2.FairnessOptions(strength=1.5)),
                    grpc.StatusCode.INVALID_ARGUMENT)
    assert [f for f, _ in v] == ["fairness.strength"]


def test_predict_success_and_explain_agree_with_recommend(system, students):
    gw = system.gateway
    sid = students["top"]
    rec = gw.recommend(student_id=sid, k=5)
    ids = [it.internship_id for it in rec.items]
    pred = gw.stub.PredictSuccess(gateway_pb2.PredictSuccessRequest(student_id=sid, internship_ids=ids),
                                  timeout=TIMEOUT)
    assert [p.internship_id for p in pred.predictions] == ids
    assert pred.model.component == "success" and 0 < pred.base_rate < 1
    for it, p in zip(rec.items, pred.predictions):
        assert p.probability == pytest.approx(it.scores.success_probability, abs=1e-6)
        assert [f.name for f in p.top_factors] == [f.name for f in it.explanation.success_factors]

    for it in rec.items[:3]:
        ex = gw.stub.Explain(gateway_pb2.ExplainRequest(student_id=sid, internship_id=it.internship_id),
                             timeout=TIMEOUT)
        assert list(ex.degraded) == []
        assert {m.component for m in ex.models} == {"content", "collaborative", "success", "ranker"}
        assert ex.item.internship_id == it.internship_id and ex.item.title == it.title
        s = ex.item.scores
        assert s.success_probability == pytest.approx(it.scores.success_probability, abs=1e-6)
        if it.scores.HasField("content"):
            assert s.content == pytest.approx(it.scores.content, abs=1e-5)
        if it.scores.HasField("collaborative"):
            assert s.collaborative == pytest.approx(it.scores.collaborative, abs=1e-5)
            assert s.popularity == pytest.approx(it.scores.popularity, abs=1e-6)
        assert s.ranker == pytest.approx(it.scores.ranker, abs=1e-4)
        # The same explanation as inside the list: same reasons, same order, same numbers.
        e, listed = ex.item.explanation, it.explanation
        assert list(e.reasons) == list(listed.reasons)
        assert [c.name for c in e.contributions] == [c.name for c in listed.contributions]
        assert [c.value for c in e.contributions] == pytest.approx([c.value for c in listed.contributions], abs=1e-4)
        assert (e.success_band, e.location_fit, e.preferred_sector, e.collaborative_evidence) == (
            listed.success_band, listed.location_fit, listed.preferred_sector, listed.collaborative_evidence)
        assert list(e.matched_skills) == list(listed.matched_skills)
        assert list(e.skills_to_learn) == list(listed.skills_to_learn)
        assert [f.name for f in e.success_factors] == [f.name for f in listed.success_factors]

    # a cold-start profile works the same way for both
    cold = gw.recommend(profile=COLD_PROFILE, k=3)
    pred = gw.stub.PredictSuccess(gateway_pb2.PredictSuccessRequest(
        profile=COLD_PROFILE, internship_ids=[it.internship_id for it in cold.items]), timeout=TIMEOUT)
    assert [p.probability for p in pred.predictions] == pytest.approx(
        [it.scores.success_probability for it in cold.items], abs=1e-6)


def test_predict_success_and_explain_errors(system):
    gw = system.gateway
    _, v = gw.fails("PredictSuccess", gateway_pb2.PredictSuccessRequest(student_id="S0000001"),
                    grpc.StatusCode.INVALID_ARGUMENT)
    assert [f for f, _ in v] == ["internship_ids"]
    gw.fails("PredictSuccess", gateway_pb2.PredictSuccessRequest(student_id="S9999999", internship_ids=["I000001"]),
             grpc.StatusCode.NOT_FOUND)
    _, v = gw.fails("Explain", gateway_pb2.ExplainRequest(student_id="S0000001"), grpc.StatusCode.INVALID_ARGUMENT)
    assert [f for f, _ in v] == ["internship_id"]
    gw.fails("Explain", gateway_pb2.ExplainRequest(student_id="S0000001", internship_id="I999999"),
             grpc.StatusCode.NOT_FOUND)
    _, v = gw.fails("Explain", gateway_pb2.ExplainRequest(internship_id="I000001"), grpc.StatusCode.INVALID_ARGUMENT)
    assert [f for f, _ in v] == ["student_id"]


def test_stream_recommend_in_order_and_survives_a_bad_request(system, students):
    gw = system.gateway
    a, b = students["top"], students["others"][0]
    requests = [gateway_pb2.RecommendRequest(student_id=a, k=3),
                gateway_pb2.RecommendRequest(student_id="S0000001", k=101),
                gateway_pb2.RecommendRequest(student_id=b, k=4),
                gateway_pb2.RecommendRequest(student_id="S9999999")]
    answers = list(gw.stub.StreamRecommend(iter(requests), timeout=TIMEOUT))
    assert len(answers) == 4
    assert [r.student_id for r in answers] == [a, "S0000001", b, "S9999999"]
    assert answers[0].error == "" and len(answers[0].items) == 3 and answers[0].ranking == "ranker"
    assert answers[1].error.startswith("INVALID_ARGUMENT") and "k: must be in 1..100, got 101" in answers[1].error and not answers[1].items
    assert answers[2].error == "" and len(answers[2].items) == 4
    assert answers[3].error.startswith("NOT_FOUND") and not answers[3].items
    # the same answers as one Recommend each
    single = gw.recommend(student_id=b, k=4)
    assert [it.internship_id for it in answers[2].items] == [it.internship_id for it in single.items]


def test_record_interaction_excludes_what_was_just_applied_to(system, students, tmp_path):
    before_rows = _count_interactions(system.catalog)
    catalog = tmp_path / "catalog.db"
    shutil.copyfile(system.catalog, catalog)
    runner = GatewayRunner(system.components.targets, catalog)
    try:
        sid = students["others"][1]
        first = runner.recommend(student_id=sid, k=5)
        x = first.items[0].internship_id
        n_before = len(runner.gateway.catalog.interactions(sid))
        resp = runner.stub.RecordInteraction(gateway_pb2.RecordInteractionRequest(
            student_id=sid, internship_id=x, event=APPLY), timeout=TIMEOUT)
        assert resp.recorded and resp.interactions_for_student == n_before + 1
        with closing(sqlite3.connect(catalog)) as c:
            rows = c.execute("SELECT event, timestamp FROM interactions WHERE student_id = ? AND internship_id = ?",
                             (sid, x)).fetchall()
        assert ("apply", rows[-1][1]) == rows[-1] and abs(rows[-1][1] - time.time()) < 120
        after = runner.recommend(student_id=sid, k=5)
        assert x not in {it.internship_id for it in after.items}
        assert len(after.items) == 5

        # a view with an explicit timestamp is recorded as given; it changes the folded-in history
        ts = timestamp_pb2.Timestamp(seconds=1_700_000_000)
        y = after.items[0].internship_id
        resp = runner.stub.RecordInteraction(gateway_pb2.RecordInteractionRequest(
            student_id=sid, internship_id=y, event=common_pb2.EVENT_TYPE_VIEW, timestamp=ts), timeout=TIMEOUT)
        assert resp.interactions_for_student == n_before + 2
        with closing(sqlite3.connect(catalog)) as c:
            assert c.execute("SELECT timestamp FROM interactions WHERE student_id = ? AND internship_id = ? AND "
                             "event = 'view'", (sid, y)).fetchall()[-1][0] == 1_700_000_000

        R = gateway_pb2.RecordInteractionRequest
        runner.fails("RecordInteraction", R(student_id="S9999999", internship_id=x, event=APPLY),
                     grpc.StatusCode.NOT_FOUND)
        runner.fails("RecordInteraction", R(student_id=sid, internship_id="I999999", event=APPLY),
                     grpc.StatusCode.NOT_FOUND)
        _, v = runner.fails("RecordInteraction", R(student_id=sid, internship_id=x), grpc.StatusCode.INVALID_ARGUMENT)
        assert [f for f, _ in v] == ["event"]
        _, v = runner.fails("RecordInteraction", R(event=APPLY), grpc.StatusCode.INVALID_ARGUMENT)
        assert {f for f, _ in v} == {"student_id", "internship_id"}
    finally:
        runner.close()
    assert _count_interactions(system.catalog) == before_rows  # the shared catalog was not touched


def _count_interactions(path: Path) -> int:
    with closing(sqlite3.connect(path)) as c:
        return c.execute("SELECT COUNT(*) FROM interactions").fetchone()[0]


def test_recommend_degrades_as_components_go_down(fresh_system, students):
    gw, comps = fresh_system.gateway, fresh_system.components
    sid = students["top"]
    healthy = gw.recommend(student_id=sid, k=5)
    assert healthy.ranking == "ranker" and not healthy.degraded

    comps.stop("ranker")
    resp = gw.recommend(student_id=sid, k=5)
    assert resp.ranking == "blend" and list(resp.degraded) == ["ranker"] and len(resp.items) == 5
    assert {m.component for m in resp.models} == {"content", "collaborative", "success"}
    assert all(not it.scores.HasField("ranker") for it in resp.items)
    # the blend weighs every candidate's success probability, so it was predicted for all of them
    assert all(it.scores.HasField("success_probability") for it in resp.items)
    assert any(c.value and c.name == "success" for it in resp.items for c in it.explanation.contributions)
    assert not set(it.internship_id for it in resp.items) & students["applied"][sid]

    comps.stop("collaborative")
    resp = gw.recommend(student_id=sid, k=5)
    assert resp.items and resp.ranking == "blend"
    assert set(resp.degraded) == {"collaborative", "ranker"}
    assert all(not it.scores.HasField("collaborative") and it.scores.HasField("content") for it in resp.items)
    ex = gw.stub.Explain(gateway_pb2.ExplainRequest(student_id=sid, internship_id=resp.items[0].internship_id),
                         timeout=TIMEOUT)
    assert list(ex.degraded) == ["collaborative", "ranker"] and ex.item.scores.HasField("content")
    assert ex.item.explanation.reasons and not ex.item.explanation.contributions  # nothing ranked it: no numbers
    # With the ranker down the blend ranked the list, and its terms order the reasons.
    for it in resp.items:
        values = [c.value for c in it.explanation.contributions]
        assert values and values == sorted(values, reverse=True)

    comps.stop("success")
    resp = gw.recommend(student_id=sid, k=5)
    assert resp.items and set(resp.degraded) == {"collaborative", "ranker", "success"}
    busiest, _ = _internships_by_applicants(fresh_system.catalog)
    short = gw.stub.Shortlist(gateway_pb2.ShortlistRequest(internship_id=busiest, size=8), timeout=TIMEOUT)
    assert list(short.degraded) == ["success"] and len(short.candidates) == 8
    assert all(c.HasField("match") and not c.HasField("success_probability") and np.isfinite(c.score)
               for c in short.candidates)
    assert all(not it.scores.HasField("success_probability") for it in resp.items)
    details, _ = gw.fails("PredictSuccess", gateway_pb2.PredictSuccessRequest(
        student_id=sid, internship_ids=[resp.items[0].internship_id]), grpc.StatusCode.UNAVAILABLE)
    assert "success" in details

    comps.stop("content")
    details, _ = gw.fails("Recommend", gateway_pb2.RecommendRequest(student_id=sid), grpc.StatusCode.UNAVAILABLE)
    assert "content" in details and "collaborative" in details
    gw.fails("Explain", gateway_pb2.ExplainRequest(student_id=sid, internship_id=resp.items[0].internship_id),
             grpc.StatusCode.UNAVAILABLE)


def test_recommend_without_collaborative_only(fresh_system, students):
    gw, comps = fresh_system.gateway, fresh_system.components
    comps.stop("collaborative")
    sid = students["top"]
    resp = gw.recommend(student_id=sid, k=5)
    assert len(resp.items) == 5 and list(resp.degraded) == ["collaborative"] and resp.ranking == "ranker"
    assert {m.component for m in resp.models} == {"content", "success", "ranker"}
    assert not set(it.internship_id for it in resp.items) & students["applied"][sid]
    # the collaborative-only mode has nothing left to retrieve with
    gw.fails("Recommend", gateway_pb2.RecommendRequest(student_id=sid, mode=gateway_pb2.MODE_COLLABORATIVE),
             grpc.StatusCode.UNAVAILABLE)
    # the content-only mode does not need it and is not degraded
    content = gw.recommend(student_id=sid, k=5, mode=gateway_pb2.MODE_CONTENT)
    assert content.items and list(content.degraded) == []


def test_component_without_a_bundle_never_serves(tmp_path):
    """A server whose bundle cannot be loaded stops instead of pretending to be healthy."""
    cfg = component_config("content", tmp_path)  # no registry.db here
    server = ComponentServer(cfg, content_server.SERVICE, content_server.make_servicer(cfg),
                             SERVERS["content"][1]).start()
    try:
        assert server.stopped.wait(30), "server kept running without a model"
        assert server.wait() == 1
        assert getattr(server.load_error, "code", None) == grpc.StatusCode.FAILED_PRECONDITION
        assert "registry" in str(server.load_error)
    finally:
        server.stop()


# --------------------------------------------------------------------------- fair re-ranking


def _groups_of(gw: Gateway, items, profile) -> np.ndarray:
    from gateway.fairness import candidate_groups

    table = gw.catalog.internships
    return candidate_groups(table, np.array([table.position[it.internship_id] for it in items]), profile,
                            gw.cfg.fairness)


def test_fairness_off_keeps_relevance_order_and_moves_nothing(system, students):
    gw = system.gateway
    resp = gw.recommend(student_id=students["top"], k=10)
    assert resp.fairness == "off (policy)"
    scores = [it.score for it in resp.items]
    assert scores == sorted(scores, reverse=True)
    assert not any(it.explanation.promoted_by_fairness for it in resp.items)


def test_fairness_is_the_operators_policy(policy_system, students, monkeypatch):
    """Every Recommend gets the configured policy; a request may tighten it; only an admin caller
    may turn it off, and the answer says which applied."""
    from services.common.auth import bearer_metadata

    gw = policy_system.gateway
    sid = students["top"]
    lists = [gw.recommend(student_id=sid, k=10, explain=False) for _ in range(3)]
    assert all(r.fairness == "policy" for r in lists)
    assert gw.recommend(student_id=sid, k=10, fairness=gateway_pb2.FairnessOptions(strength=0.2)).fairness == "policy"
    # exposure is recorded, so the same student's list moves as the ledger fills
    shown = {it.internship_id for r in lists for it in r.items}
    assert len(shown) >= 10
    # a stranger may not turn it off; without a token configured nobody may
    monkeypatch.delenv("PMIS_ADMIN_TOKEN", raising=False)
    gw.fails("Recommend", gateway_pb2.RecommendRequest(student_id=sid, fairness=gateway_pb2.FairnessOptions(off=True)),
             grpc.StatusCode.PERMISSION_DENIED)
    monkeypatch.setenv("PMIS_ADMIN_TOKEN", "s3cret-token")
    gw.fails("Recommend", gateway_pb2.RecommendRequest(student_id=sid, fairness=gateway_pb2.FairnessOptions(off=True)),
             grpc.StatusCode.UNAUTHENTICATED)
    with pytest.raises(grpc.RpcError) as info:
        gw.recommend(student_id=sid, fairness=gateway_pb2.FairnessOptions(off=True),
                     metadata=bearer_metadata("wrong"))
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    off = gw.recommend(student_id=sid, k=10, fairness=gateway_pb2.FairnessOptions(off=True),
                       metadata=bearer_metadata("s3cret-token"))
    assert off.fairness == "off (admin)"
    assert [it.score for it in off.items] == sorted((it.score for it in off.items), reverse=True)
    assert not any(it.explanation.promoted_by_fairness for it in off.items)


def test_fairness_on_meets_group_floors_and_marks_promotions(system, students):
    from models.fairness.prefix import min_counts

    gw = system.gateway
    targets = gw.gateway.cfg.fairness.floor_array()
    checked = 0
    for sid in [students["top"], *students["others"]]:
        plain = gw.recommend(student_id=sid, k=10)
        fair = gw.recommend(student_id=sid, k=10, fairness=gateway_pb2.FairnessOptions(enabled=True, strength=1.0))
        assert len(fair.items) == len(plain.items) == 10
        profile = gw.gateway.catalog.student(sid)
        from services.common.profiles import profile_message

        groups = _groups_of(gw.gateway, fair.items, profile_message(profile))
        # What the pool offers: k=33 retrieves the same candidates as k=10 (max(100, 3k) per retriever).
        pool = np.bincount(_groups_of(gw.gateway, gw.recommend(student_id=sid, k=33, explain=False).items,
                                      profile_message(profile)), minlength=3)
        for t in range(1, 11):
            need = np.minimum(min_counts(targets, t), pool)
            assert (np.bincount(groups[:t], minlength=3) >= need).all(), (sid, t, groups, pool)
        promoted = [it for it in fair.items if it.explanation.promoted_by_fairness]
        assert all("fairly" in " ".join(it.explanation.reasons) for it in promoted)
        checked += 1
    assert checked == 5


def test_fairness_strength_is_validated(system, students):
    _, violations = system.gateway.fails("Recommend", gateway_pb2.RecommendRequest(
        student_id=students["top"], fairness=gateway_pb2.FairnessOptions(enabled=True, strength=1.5)),
        grpc.StatusCode.INVALID_ARGUMENT)
    assert [f for f, _ in violations] == ["fairness.strength"]


# --------------------------------------------------------------------------- shortlists


def _internships_by_applicants(catalog: Path):
    with closing(sqlite3.connect(catalog)) as c:
        busiest = c.execute("SELECT internship_id, COUNT(*) n FROM interactions WHERE event='apply' "
                            "GROUP BY internship_id ORDER BY n DESC, internship_id LIMIT 1").fetchone()[0]
        unapplied = c.execute("SELECT internship_id FROM internships WHERE internship_id NOT IN "
                              "(SELECT internship_id FROM interactions WHERE event='apply') "
                              "ORDER BY internship_id LIMIT 1").fetchone()
    return busiest, unapplied[0] if unapplied else None


def test_shortlist_of_applicants_meets_minimums_the_pool_allows(system):
    busiest, _ = _internships_by_applicants(system.catalog)
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
    busiest, _ = _internships_by_applicants(system.catalog)
    resp = system.gateway.stub.Shortlist(gateway_pb2.ShortlistRequest(internship_id=busiest, size=500), timeout=TIMEOUT)
    assert len(resp.candidates) == resp.pool_size >= 10 and not resp.degraded
    for c in resp.candidates:  # every pooled student was scored by both components: no NaN, nothing unset
        assert c.HasField("match") and c.HasField("success_probability")
        assert np.isfinite([c.score, c.match, c.success_probability]).all()


def test_shortlist_without_applicants_uses_best_matching_students(system):
    _, unapplied = _internships_by_applicants(system.catalog)
    if unapplied is None:
        pytest.skip("every internship has applicants in this dataset")
    resp = system.gateway.stub.Shortlist(gateway_pb2.ShortlistRequest(internship_id=unapplied, size=4), timeout=TIMEOUT)
    assert resp.source == "best_matching" and len(resp.candidates) == 4


def test_shortlist_errors(system):
    system.gateway.fails("Shortlist", gateway_pb2.ShortlistRequest(internship_id="I999999"), grpc.StatusCode.NOT_FOUND)
    _, violations = system.gateway.fails("Shortlist", gateway_pb2.ShortlistRequest(internship_id="I000001", size=501),
                                         grpc.StatusCode.INVALID_ARGUMENT)
    assert [f for f, _ in violations] == ["size"]


# --------------------------------------------------------------------------- explanations


def _check_faithful(e, profile_skills: set, internship_skills: set, probability: float, base_rate: float):
    matched, learn = list(e.matched_skills), list(e.skills_to_learn)
    assert set(matched) <= profile_skills & internship_skills          # in both profile and internship
    assert set(learn) <= internship_skills - profile_skills            # required and absent
    assert len(learn) == min(3, len(internship_skills - profile_skills))
    weights = list(e.matched_skill_weights)
    assert len(weights) == len(matched) and weights == sorted(weights, reverse=True) and min(weights, default=0) >= 0
    values = [c.value for c in e.contributions]
    assert values == sorted(values, reverse=True)                      # reasons ordered by contribution
    assert len(e.reasons) == len(values) + (1 if e.promoted_by_fairness else 0)
    assert e.promoted_by_fairness == ("fairly" in e.reasons[-1])
    ratio = probability / base_rate                                    # the band agrees with the probability
    want = "higher than average" if ratio >= 1.25 else ("lower than average" if ratio <= 0.8 else "about average")
    assert e.success_band == want
    assert explain.percent(probability) in " ".join(e.reasons)


def test_explanations_are_faithful_for_recommended_and_any_internship(system, students):
    gw = system.gateway
    catalog = gw.gateway.catalog
    checked, outside = 0, 0
    for sid in [students["top"], *students["others"]]:
        rec = gw.recommend(student_id=sid, k=10, fairness=gateway_pb2.FairnessOptions(enabled=True, strength=1.0))
        base_rate = gw.stub.PredictSuccess(gateway_pb2.PredictSuccessRequest(
            student_id=sid, internship_ids=[rec.items[0].internship_id]), timeout=TIMEOUT).base_rate
        profile_skills = set(catalog.student(sid)["skills"])
        for it in rec.items:
            _check_faithful(it.explanation, profile_skills, set(catalog.internship_skills(it.internship_id)),
                            it.scores.success_probability, base_rate)
            checked += 1
        # Explain answers for an internship that was not recommended, with the same guarantees.
        shown = {it.internship_id for it in rec.items}
        other = next(i for i in catalog.internships.ids.tolist() if i not in shown)
        ex = gw.stub.Explain(gateway_pb2.ExplainRequest(student_id=sid, internship_id=other), timeout=TIMEOUT)
        assert ex.item.explanation.contributions and not ex.item.explanation.promoted_by_fairness
        _check_faithful(ex.item.explanation, profile_skills, set(catalog.internship_skills(other)),
                        ex.item.scores.success_probability, base_rate)
        outside += 1
    assert checked == 50 and outside == 5


def test_catalog_refresh_adds_internships_and_keeps_exposure_by_id(system, students, tmp_path):
    catalog = tmp_path / "catalog.db"
    shutil.copyfile(system.catalog, catalog)
    runner = GatewayRunner(system.components.targets, catalog)
    try:
        gw = runner.gateway
        for sid in students["others"]:
            runner.recommend(student_id=sid, k=10, fairness=gateway_pb2.FairnessOptions(enabled=True))
        old = gw.catalog.internships
        exposure_by_id = dict(zip(old.ids.tolist(), gw.fair.ledger.exposure.tolist()))
        assert sum(exposure_by_id.values()) > 0
        # A new internship whose id sorts first: every existing internship moves one position.
        with closing(sqlite3.connect(catalog)) as c:
            cols = [r[1] for r in c.execute("PRAGMA table_info(internships)")]
            row = dict(zip(cols, c.execute("SELECT * FROM internships WHERE internship_id = ?",
                                           (str(old.ids[0]),)).fetchone()))
            row.update(internship_id="I000000", slots=7)
            c.execute(f"INSERT INTO internships ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                      [row[k] for k in cols])
            c.commit()
        runner.run(gw.refresh_catalog())
        new = gw.catalog.internships
        assert len(new.ids) == len(old.ids) + 1 and new.position["I000000"] == 0 and new.slots[0] == 7
        moved = dict(zip(new.ids.tolist(), gw.fair.ledger.exposure.tolist()))
        assert moved["I000000"] == 0
        assert all(moved[i] == pytest.approx(e) for i, e in exposure_by_id.items())
        # the new internship is served and explained like any other
        ex = runner.stub.Explain(gateway_pb2.ExplainRequest(student_id=students["top"], internship_id="I000000"),
                                 timeout=TIMEOUT)
        assert ex.item.internship_id == "I000000"
        assert len(runner.recommend(student_id=students["top"], k=10).items) == 10
    finally:
        runner.close()


def test_gateway_config_from_environment_and_flags(monkeypatch):
    from gateway.server import parse_config

    monkeypatch.setenv("PMIS_MAX_CONNECTION_AGE_MS", "5000")
    monkeypatch.setenv("PMIS_FAIRNESS", '{"exposure_targets": {"msme": 0.15}}')
    cfg = parse_config(["--catalog-refresh-seconds", "0", "--content-target", "dns:///content.pmis:50051"])
    assert cfg.max_connection_age_ms == 5000 and cfg.catalog_refresh_seconds == 0
    assert cfg.targets["content"] == "dns:///content.pmis:50051"
    assert cfg.fairness.exposure_targets == {"msme": 0.15} and cfg.fairness.min_shares == {"msme": 0.1, "local": 0.3}
    with pytest.raises(ValueError, match="unknown groups"):
        parse_config(["--fairness", '{"min_shares": {"big_firms": 0.2}}'])


def test_explanations_under_treeshap_come_from_a_second_rank_call_for_the_final_items(fresh_system, students):
    """Path attribution comes back with the one Rank call; under TreeSHAP the ranker declines
    (too costly for every candidate) and the gateway asks for its final k: the explanation has
    the ranker's split either way, each summing to the item's ranker score."""
    from services.ranker.server import RankerRuntime

    runtime = fresh_system.components.servers["ranker"].servicer.slot.get().model
    answers = {}
    try:
        for method in ("path", "shap"):
            runtime.contributions = method
            answers[method] = fresh_system.gateway.recommend(student_id=students["top"], k=5)
    finally:
        runtime.contributions = RankerRuntime.contributions
    path, shap = answers["path"], answers["shap"]
    assert [it.internship_id for it in path.items] == [it.internship_id for it in shap.items]
    for a, b in zip(path.items, shap.items):
        assert a.explanation.contributions and b.explanation.contributions
        assert {c.name for c in a.explanation.contributions} == {c.name for c in b.explanation.contributions}
        assert a.scores.ranker == pytest.approx(b.scores.ranker, abs=1e-6)
    assert not path.degraded and not shap.degraded
