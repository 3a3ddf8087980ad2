"""One Recommend, as the named stages of models.pipeline over one in-flight container.

    retrieve (content and collaborative in parallel: ids and scores only)
      -> union and filter (applied/seen, closed, full, the student's hard filters)
      -> score (in parallel: what each retriever did not find; every candidate's success
         probability and, when explaining, its skills and success factors, packed)
      -> rank (the ranker service: its learned ranker, or the blend when training found the
         ranker did not beat it; each candidate's score split when cheap; blend when it is down)
      -> fair re-rank (the operator's policy) -> finish (the final k's details) -> answer

Six calls in three rounds; a seventh (Rank for the final k) only under TreeSHAP attribution.

Every component answers in packed arrays; the (n, 4) score array is filled by catalogue position.
A component that does not answer leaves its column NaN and is named in `degraded`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import numpy as np

from gateway import explain, fairness, filters
from models.pipeline import (COLLABORATIVE, CONTENT, POPULARITY, SCORE_COLUMNS, SUCCESS, Candidates,
                             collaborative_known, rank)
from models.components.scores import COMPONENT_SCORES, blend_terms
from pmis.v1 import common_pb2, gateway_pb2, ranker_pb2, success_pb2
from services.common.errors import unavailable
from services.common.items import look_up

MODE_NAMES = {gateway_pb2.MODE_HYBRID: "hybrid", gateway_pb2.MODE_CONTENT: "content",
              gateway_pb2.MODE_COLLABORATIVE: "collaborative"}


@dataclass
class InFlight:
    """Everything one Recommend has learned so far."""
    student: object                 # gateway.server.Student
    table: object                   # the catalog's InternshipTable this request started on
    k: int
    mode: str
    deadline: float
    explain: bool = True
    candidates: Candidates | None = None
    versions: dict = field(default_factory=dict)
    degraded: list = field(default_factory=list)
    vectors: dict = field(default_factory=dict)    # component -> StudentVector from its Retrieve
    collab_basis: str = ""
    base_rate: float = 0.0
    content_details: object = None  # content's Score answer with every candidate's skills (when explaining)
    success_answer: object = None   # success's answer: every candidate's probability (and factors)
    final: np.ndarray | None = None
    ranking: str = ""
    ranker_answer: object = None    # the Rank answer, with every candidate's contributions when cheap
    row_of: dict = field(default_factory=dict)  # internship id -> candidate row (index_rows)

    @property
    def positions(self) -> np.ndarray:
        return self.candidates.items[0]

    def ids(self, rows=None) -> list[str]:
        p = self.positions if rows is None else self.positions[rows]
        return self.table.ids[p].tolist()

    def answered(self, name: str, resp) -> bool:
        if resp is None:
            self.degraded.append(name)
            return False
        self.versions[name] = resp.model
        return True

    def index_rows(self) -> None:
        """Map each candidate's id to its row, once the candidate list is final (after filtering)."""
        self.row_of = {i: row for row, i in enumerate(self.ids())}

    def rows(self, ids) -> np.ndarray:
        """The candidate row of each of `ids` (-1 for an id that is not a candidate)."""
        return look_up(self.row_of, ids)

    def rows_at(self, positions: np.ndarray) -> np.ndarray:
        """The candidate row of each catalogue position (-1 for one that is not a candidate);
        the candidates are sorted by position."""
        items = self.positions
        if not len(items):
            return np.full(len(positions), -1, dtype=np.int64)
        at = np.minimum(np.searchsorted(items, positions), len(items) - 1)
        return np.where(items[at] == positions, at, -1)

    def fill(self, rows: np.ndarray, columns: dict) -> None:
        """Put a component's answer into the score array: the candidate row of each value
        (`rows`/`rows_at`, -1 = not a candidate), {column: values}."""
        hit = rows >= 0
        for column, values in columns.items():
            self.candidates.scores[0, rows[hit], column] = np.asarray(values, dtype=np.float32)[hit]

    def missing(self, column: int) -> list[str]:
        return self.ids(np.isnan(self.candidates.scores[0, :, column]))


def table_positions(table, ids) -> np.ndarray:
    """Catalogue positions of `ids` (-1 for ids the catalog does not hold)."""
    return look_up(table.position, ids)


async def retrieve(gw, r: InFlight, request) -> None:
    """Candidates from content and collaborative, in parallel; their union, filtered."""
    f, s = gw.fanout, r.student
    n = max(gw.cfg.candidates, 3 * r.k)
    now = gw.now()
    calls = {}
    if r.mode in ("hybrid", "content"):
        calls["content"] = f.call("content", "Retrieve", common_pb2.RetrieveRequest(
            profile=s.profile, n=n, open_at=now, exclude_internship_ids=s.seen), r.deadline)
    if r.mode in ("hybrid", "collaborative"):
        calls["collaborative"] = f.call("collaborative", "Retrieve", common_pb2.RetrieveRequest(
            student_id=s.student_id, n=n, open_at=now, exclude_internship_ids=s.seen, interactions=s.interactions),
            r.deadline)
    answers = await gather(calls)
    found = {name: resp for name, resp in answers.items() if r.answered(name, resp)}
    if not found:
        raise unavailable("no retrieval component answered: " + ", ".join(r.degraded))
    positions = {name: table_positions(r.table, resp.internship_ids) for name, resp in found.items()}
    r.candidates = Candidates.union(*(p[None, :] for p in positions.values()))
    keep = filters.allowed(r.table, r.candidates.items[0], now=now, applied=set(s.seen),
                           filters=request.filters if request.HasField("filters") else None,
                           student_lat=s.profile.latitude if s.profile.HasField("latitude") else None,
                           student_lon=s.profile.longitude if s.profile.HasField("longitude") else None)
    r.candidates.valid[0] &= keep
    r.candidates = r.candidates.compact()
    r.index_rows()
    for name, resp in found.items():
        r.vectors[name] = resp.student_vector
        rows = r.rows_at(positions[name])
        if name == "content":
            r.fill(rows, {CONTENT: resp.scores})
        else:
            absorb_collaborative(r, resp, rows)


def absorb_collaborative(r: InFlight, resp, rows: np.ndarray) -> None:
    r.collab_basis = resp.basis
    known = {COLLABORATIVE: resp.scores} if collaborative_known(resp.basis) else {}
    r.fill(rows, {**known, POPULARITY: resp.popularity})


async def score(gw, r: InFlight) -> None:
    """In parallel: the scores the retrievers did not give, and for every candidate its success
    probability and, when explaining, its details (matched/missing skills, success factors), so
    that whatever the final k turn out to be needs no further round."""
    f, s, explain_ = gw.fanout, r.student, r.explain
    calls = {}
    missing = r.ids() if explain_ else r.missing(CONTENT)
    if "content" in r.versions and missing:
        calls["content"] = f.call("content", "Score", common_pb2.ScoreRequest(
            profile=s.profile, internship_ids=missing, student_vector=r.vectors.get("content"), details=explain_),
            r.deadline)
    missing = r.missing(POPULARITY)
    if "collaborative" in r.versions and missing:
        vector = r.vectors.get("collaborative")
        # The folded-in student from Retrieve; the history itself only when there is none to reuse.
        history = () if vector is not None and vector.values else s.interactions
        calls["collaborative"] = f.call("collaborative", "Score", common_pb2.ScoreRequest(
            student_id=s.student_id, internship_ids=missing, interactions=history, student_vector=vector),
            r.deadline)
    calls["success"] = f.call("success", "Predict", success_pb2.PredictRequest(
        profile=s.profile, internship_ids=r.ids(), top_factors=3 if explain_ else 0, packed_factors=True), r.deadline)
    answers = await gather(calls)
    for name, resp in answers.items():
        if not r.answered(name, resp):
            continue
        if name == "content":
            r.fill(r.rows(resp.internship_ids), {CONTENT: resp.scores})
            r.content_details = resp if explain_ else None
        elif name == "success":
            r.success_answer = resp
            r.base_rate = resp.base_rate
            r.fill(r.rows(resp.internship_ids), {SUCCESS: resp.probabilities})
        else:
            absorb_collaborative(r, resp, r.rows(resp.internship_ids))


async def rank_candidates(gw, r: InFlight) -> None:
    """The learned ranker; the static blend when it is down; one component when the mode asks."""
    ranker_scores = None
    f = gw.fanout
    if r.mode == "hybrid":
        request = rank_request(r, slice(None))
        request.contributions_if_cheap = r.explain  # then finishing needs no second Rank
        resp, _ = await f.call("ranker", "Rank", request, r.deadline)
        if r.answered("ranker", resp):
            r.ranker_answer = resp
            ranker_scores = np.asarray(resp.scores, dtype=np.float32)[None, :]
    r.final, r.ranking = rank(r.candidates, ranker_scores=ranker_scores,
                              ranking=(r.ranker_answer.ranking or "ranker") if r.ranker_answer else "ranker",
                              blend_weights=gw.cfg.blend_weights, mode=r.mode)


def rank_request(r: InFlight, rows, contributions: bool = False) -> ranker_pb2.RankRequest:
    return ranker_pb2.RankRequest(profile=r.student.profile, internship_ids=r.ids(rows),
                                  component_scores=r.candidates.scores[0, rows].ravel().tolist(),
                                  contributions=contributions)


async def finish(gw, r: InFlight, rows: np.ndarray) -> dict:
    """The final k rows' explanation details: matched/missing skills and success factors (they came
    with the scoring round) and the ranking score's split (with the Rank answer when it was cheap,
    else one more Rank call for these rows only)."""
    f, ids = gw.fanout, r.ids(rows)
    ranked_by_service = r.ranker_answer is not None and r.mode == "hybrid"
    contributions = {}
    if ranked_by_service and len(r.ranker_answer.contribution_features) > 0:
        contributions = contribution_rows(r.ranker_answer, rows, every_candidate=True)
    elif ranked_by_service:
        resp, _ = await f.call("ranker", "Rank", rank_request(r, rows, contributions=True), r.deadline)
        if resp is not None:
            contributions = contribution_rows(resp, rows)
    elif r.ranking == "blend":  # the ranker was down: the gateway's own blend
        terms = blend_terms(r.candidates.scores[0, rows], gw.cfg.blend_weights)
        contributions = {int(row): dict(zip(COMPONENT_SCORES, t)) for row, t in zip(rows.tolist(), terms.tolist())}
    elif r.ranking in ("content", "collaborative"):
        name = "content_score" if r.ranking == "content" else "collab_score"
        contributions = {int(row): {name: float(r.final[0, row])} for row in rows.tolist()}
    return {"skills": explain.skill_rows(r.content_details, ids), "factors": explain.factor_rows(r.success_answer, ids),
            "contributions": contributions}


def contribution_rows(resp, rows: np.ndarray, every_candidate: bool = False) -> dict:
    """Candidate row -> feature -> its share of the ranker's score, from the packed answer: an
    answer for exactly `rows`, or one for every candidate."""
    names = list(resp.contribution_features)
    values = np.asarray(resp.contribution_values, dtype=np.float64).reshape(-1, len(names) + 1)
    if every_candidate:
        values = values[rows]
    return {int(row): dict(zip(names, v[:-1])) for row, v in zip(rows.tolist(), values.tolist())}


def answer(r: InFlight, order: np.ndarray, moved: np.ndarray, details: dict | None,
           response: gateway_pb2.RecommendResponse) -> None:
    table, profile = r.table, r.student.profile
    p = r.positions[order]
    scores = r.candidates.scores[0, order].tolist()
    final = r.final[0, order].tolist()
    columns = zip(r.ids(order), table.title[p].tolist(), table.company_id[p].tolist(), table.sector[p].tolist(),
                  table.district[p].tolist(), table.remote[p].tolist(), np.nan_to_num(table.stipend[p]).tolist())
    locations = explain.location_fits(profile, table, p) if details is not None else ()
    preferred = explain.preferred_sectors(profile)
    for at, (i, title, company, sector, district, remote, stipend) in enumerate(columns):
        component = {name: v for name, v in zip(SCORE_COLUMNS, scores[at]) if v == v}
        if r.ranking == "ranker":
            component["ranker"] = final[at]
        item = response.items.add(rank=at + 1, internship_id=i, title=title, company_id=company, sector=sector,
                                  district=district, remote=remote, stipend=stipend, score=final[at],
                                  scores=gateway_pb2.ComponentScores(**component))
        if details is not None:
            matched, missing, weights = details["skills"].get(i, ([], [], []))
            explain.explanation(
                profile, table, int(p[at]), matched=matched, missing=missing,
                probability=component.get("success_probability"), base_rate=r.base_rate,
                factors=details["factors"].get(i), collab_basis=r.collab_basis, promoted=bool(moved[at]),
                matched_weights=weights, contributions=details["contributions"].get(int(order[at])),
                location=locations[at], preferred=preferred, into=item.explanation)


def fair_order(gw, r: InFlight, strength: float | None) -> tuple[np.ndarray, np.ndarray]:
    """The final k rows: the operator's fairness policy at `strength` (None = off), exposure
    recorded either way."""
    return gw.fair.rerank(r.final[0], gw.ledger_positions(r.table, r.positions),
                          fairness.candidate_groups(r.table, r.positions, r.student.profile, gw.cfg.fairness),
                          enabled=strength is not None, strength=strength or 0.0, k=r.k)


async def gather(calls: dict) -> dict:
    """name -> response (None when the component did not answer)."""
    results = await asyncio.gather(*calls.values())
    return {name: resp for name, (resp, _) in zip(calls, results)}
