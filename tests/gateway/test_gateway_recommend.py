"""The gateway's Recommend (known students, cold starts, filters, modes, bad requests), StreamRecommend
and RecordInteraction, on the loopback system."""

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

from gateway.server import Gateway
from models.components import COMPONENTS
from pmis.v1 import common_pb2, gateway_pb2
from tests.support.gateway import COLD_PROFILE, students, system  # noqa: F401 - fixtures
from tests.support.loopback import TIMEOUT, GatewayRunner

APPLY = common_pb2.EVENT_TYPE_APPLY


def _open_and_not_full(gw: Gateway, ids) -> bool:
    t, now = gw.catalog.internships, gw.now()
    return all(t.deadline[t.position[i]] >= now and not (t.slots[t.position[i]] > 0 and
                                                          t.selected[t.position[i]] >= t.slots[t.position[i]])
               for i in ids)


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
