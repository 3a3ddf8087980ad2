"""The gateway's PredictSuccess and Explain: agreement with Recommend, errors, faithful explanations,
contributions under path attribution and TreeSHAP."""

from __future__ import annotations

import grpc
import pytest

from gateway import explain
from pmis.v1 import gateway_pb2
from tests.support.gateway import COLD_PROFILE, fresh_system, students, system  # noqa: F401 - fixtures
from tests.support.loopback import TIMEOUT


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


def test_explanations_under_treeshap_come_from_a_second_rank_call_for_the_final_items(fresh_system, students):
    """Path attribution comes back with the one Rank call; under TreeSHAP the ranker declines
    (too costly for every candidate) and the gateway asks for its final k: the explanation has
    the ranker's split either way, each summing to the item's ranker score."""
    from services.ranker.runtime import RankerRuntime

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
