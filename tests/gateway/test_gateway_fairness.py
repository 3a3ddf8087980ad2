"""The gateway's fair re-ranking: the operator's policy, who may turn it off, group floors, and the
exposure ledger kept by internship id across a catalog refresh."""

from __future__ import annotations

import shutil
import sqlite3
from contextlib import closing

import grpc
import numpy as np
import pytest

from gateway.server import Gateway
from pmis.v1 import gateway_pb2
from tests.support.gateway import policy_system, students, system  # noqa: F401 - fixtures
from tests.support.loopback import TIMEOUT, GatewayRunner


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
