"""The gateway as components go down: blend ranking, degraded answers, UNAVAILABLE when nothing can
retrieve; and a component server without a bundle, which never serves."""

from __future__ import annotations

import grpc
import numpy as np

from pmis.v1 import gateway_pb2
from services.common.server import ComponentServer
from services.content import server as content_server
from tests.support.gateway import fresh_system, internships_by_applicants, students  # noqa: F401 - fixtures
from tests.support.loopback import SERVERS, TIMEOUT, component_config


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
    busiest, _ = internships_by_applicants(fresh_system.catalog)
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
