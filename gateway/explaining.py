"""Explain: one internship for one student, as every component sees the pair.

    score the pair (content with details, collaborative, success with factors; in parallel)
      -> rank it (the ranker's score and its contributions: the same numbers the ranker gives
         it inside any list, since it scores each candidate on its own features) -> answer
"""

from __future__ import annotations

import asyncio

import numpy as np

from gateway import explain
from gateway import recommend as stages
from models.pipeline import COLLABORATIVE, CONTENT, POPULARITY, SCORE_COLUMNS, SUCCESS, collaborative_known
from pmis.v1 import common_pb2, gateway_pb2, ranker_pb2, success_pb2
from services.common.errors import unavailable


async def component_answers(fanout, student, ids: list[str], deadline: float) -> dict:
    """component -> its answer for the pair (None when it did not answer)."""
    calls = {
        "content": fanout.call("content", "Score", common_pb2.ScoreRequest(
            profile=student.profile, internship_ids=ids, details=True), deadline),
        "collaborative": fanout.call("collaborative", "Score", common_pb2.ScoreRequest(
            student_id=student.student_id, internship_ids=ids, interactions=student.interactions), deadline),
        "success": fanout.call("success", "Predict", success_pb2.PredictRequest(
            profile=student.profile, internship_ids=ids, top_factors=3, packed_factors=True), deadline)}
    results = await asyncio.gather(*calls.values())
    return {name: resp for name, (resp, _) in zip(calls, results)}


def read_answers(answers: dict, ids: list[str]) -> tuple[np.ndarray, dict]:
    """The pair's (4,) component scores (NaN where unknown) and its explanation details."""
    c, cf, s = answers["content"], answers["collaborative"], answers["success"]
    component = np.full(4, np.nan, dtype=np.float32)
    details = {"matched": [], "missing": [], "matched_weights": [], "probability": None, "factors": [],
               "base_rate": 0.0, "collab_basis": ""}
    if c is not None and c.scores:
        component[CONTENT] = c.scores[0]
        details["matched"], details["missing"], details["matched_weights"] = \
            explain.skill_rows(c, ids).get(ids[0], ([], [], []))
    if cf is not None and cf.scores:
        details["collab_basis"] = cf.basis
        if collaborative_known(cf.basis):
            component[COLLABORATIVE] = cf.scores[0]
        component[POPULARITY] = cf.popularity[0]
    if s is not None and s.probabilities:
        details.update(probability=s.probabilities[0], factors=explain.factor_rows(s, ids).get(ids[0]),
                       base_rate=s.base_rate)
        component[SUCCESS] = s.probabilities[0]
    return component, details


async def explain_pair(gw, student, internship_id: str, p: int, deadline: float) -> gateway_pb2.ExplainResponse:
    ids = [internship_id]
    answers = await component_answers(gw.fanout, student, ids, deadline)
    degraded = [name for name, resp in answers.items() if resp is None]
    if len(degraded) == 3:
        raise unavailable("no component answered")
    component, details = read_answers(answers, ids)
    scores = gateway_pb2.ComponentScores(**{n: float(x) for n, x in zip(SCORE_COLUMNS, component.tolist()) if x == x})
    ranked, _ = await gw.fanout.call("ranker", "Rank", ranker_pb2.RankRequest(
        profile=student.profile, internship_ids=ids, component_scores=component.tolist(), contributions=True), deadline)
    answers["ranker"] = ranked
    contributions = None
    if ranked is None:
        degraded.append("ranker")
    else:
        scores.ranker = ranked.scores[0]
        contributions = stages.contribution_rows(ranked, np.zeros(1, dtype=np.int64))[0]
    table = gw.catalog.internships
    item = gateway_pb2.Recommendation(
        internship_id=internship_id, title=str(table.title[p]), company_id=str(table.company_id[p]),
        sector=str(table.sector[p]), district=str(table.district[p]), remote=bool(table.remote[p]),
        stipend=float(np.nan_to_num(table.stipend[p])), scores=scores,
        explanation=explain.explanation(student.profile, table, p, promoted=False, contributions=contributions,
                                        **details))
    models, _ = gw.models_and_mixing({n: x.model for n, x in answers.items() if x is not None})
    return gateway_pb2.ExplainResponse(item=item, models=models, degraded=degraded)
