"""Shortlist: the students an internship should consider first, with reserved-group minimums.

    pool (the internship's applicants, else the best-matching students of its state)
      -> score the pool (content ScorePairs and success PredictPairs, one call each, in parallel)
      -> shortlist (models/fairness/shortlist.py: z-scored match and success, group minimums) -> answer
"""

from __future__ import annotations

import asyncio

import numpy as np

from gateway import fairness
from models.fairness import shortlist as shortlists
from pmis.v1 import common_pb2, gateway_pb2
from services.common.errors import unavailable
from services.common.profiles import profile_message

MAX_POOL = 300
NEARBY_STUDENTS = 20_000  # students of the internship's state read when nobody applied


def pool_of(catalog, internship_id: str, p: int, size: int) -> tuple[list[str], str]:
    """(student ids, source): the applicants, or else the state's students with the most of the
    internship's skills (three per place), at most MAX_POOL."""
    pool = catalog.applicants(internship_id)
    if pool:
        return pool[:MAX_POOL], "applicants"
    wanted = set(catalog.internship_skills(internship_id))
    nearby = catalog.students_in_state(str(catalog.internships.state[p]), NEARBY_STUDENTS)
    nearby.sort(key=lambda row: -len(wanted & set(row[1])))
    return [sid for sid, _ in nearby[:3 * size]][:MAX_POOL], "best_matching"


async def score_pool(fanout, catalog, internship_id: str, pool: list[str], deadline: float):
    """(match, success probability, degraded components, answers) for every student of the pool;
    NaN where a component did not answer."""
    pairs = common_pb2.PairsRequest(internship_id=internship_id,
                                    profiles=[profile_message(catalog.student(sid)) for sid in pool])
    (content, _), (success, _) = await asyncio.gather(fanout.call("content", "ScorePairs", pairs, deadline),
                                                      fanout.call("success", "PredictPairs", pairs, deadline))
    match, prob = (np.asarray(r.scores, dtype=np.float64) if r is not None else np.full(len(pool), np.nan)
                   for r in (content, success))
    degraded = [name for name, r, col in (("content", content, match), ("success", success, prob))
                if r is None or np.isnan(col).all()]
    if len(degraded) == 2:
        raise unavailable("neither the content nor the success service answered")
    return match, prob, degraded, [r for r in (content, success) if r is not None]


async def shortlist(gw, internship_id: str, p: int, size: int, deadline: float) -> gateway_pb2.ShortlistResponse:
    pool, source = pool_of(gw.catalog, internship_id, p, size)
    if not pool:
        return gateway_pb2.ShortlistResponse(internship_id=internship_id, source=source)
    match, prob, degraded, answers = await score_pool(gw.fanout, gw.catalog, internship_id, pool, deadline)
    score = np.nanmean(np.vstack([fairness.zscore(match), fairness.zscore(prob)]), axis=0)
    minimums = gw.cfg.shortlist_groups
    groups = list(minimums)
    members = shortlists.membership([gw.catalog.protected(sid) for sid in pool], groups)
    order, report = shortlists.shortlist(score, members, np.array([minimums[g] for g in groups]), size)
    response = gateway_pb2.ShortlistResponse(internship_id=internship_id, source=source, pool_size=len(pool),
                                             degraded=degraded, all_met=all(r["met"] for r in report))
    for rank, i in enumerate(order.tolist(), start=1):
        c = response.candidates.add(rank=rank, student_id=pool[i], score=float(score[i]))
        if not np.isnan(match[i]):
            c.match = float(match[i])
        if not np.isnan(prob[i]):
            c.success_probability = float(prob[i])
    for g, r in zip(groups, report):
        response.groups.add(group=g, min_share=minimums[g], **r)
    response.models.extend(r.model for r in answers)
    return response
