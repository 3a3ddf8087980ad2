"""RecommendationGateway: resolve the student, fan out, filter, score, rank, re-rank, explain.

asyncio (grpc.aio) end to end: one channel and stub per component created at start-up, every
outbound call with a deadline derived from the caller's remaining time and capped by the
component's budget, reads retried once on UNAVAILABLE by gRPC's own retry policy. A component
that is down, slow or NOT_SERVING is skipped and named in `degraded`; only when nothing useful
is left is the answer UNAVAILABLE.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from gateway import explain, fairness, filters
from gateway.catalog import SqliteCatalog
from models.ranker import COMPONENT_SCORES, blend_scores, blend_terms
from models import shortlist as shortlists
from pmis.v1 import (collaborative_pb2_grpc, common_pb2, content_pb2_grpc, gateway_pb2, gateway_pb2_grpc, ranker_pb2,
                     ranker_pb2_grpc, success_pb2, success_pb2_grpc)
from services.common import telemetry
from services.common.errors import RpcError, not_found, unavailable
from services.common.profiles import EVENT_NAMES, EVENT_TYPES, profile_message
from services.common.server import env
from services.common.validation import Violations

log = logging.getLogger("pmis.gateway")
SERVICE = gateway_pb2.DESCRIPTOR.services_by_name["RecommendationGateway"].full_name
COMPONENTS = ("content", "collaborative", "success", "ranker")
SERVICE_NAMES = {"content": "pmis.v1.ContentService", "collaborative": "pmis.v1.CollaborativeService",
                 "success": "pmis.v1.SuccessService", "ranker": "pmis.v1.RankerService"}
DEFAULT_BLEND = {"content_score": 1.0, "collab_score": 1.0, "popularity": 0.5, "success_p": 0.5}
MAX_SHORTLIST_POOL = 300


@dataclass
class GatewayConfig:
    host: str = "127.0.0.1"
    port: int = 50050
    metrics_port: int = 9100
    catalog: Path = Path("var/data/catalog.db")
    targets: dict = field(default_factory=lambda: {c: f"127.0.0.1:{p}" for c, p in
                                                   zip(COMPONENTS, (50051, 50052, 50053, 50054))})
    budgets_ms: dict = field(default_factory=lambda: {"content": 300, "collaborative": 300, "success": 400,
                                                      "ranker": 300})
    default_deadline_ms: int = 2000   # when the client sent none
    candidates: int = 100             # per retriever
    blend_weights: dict = field(default_factory=lambda: dict(DEFAULT_BLEND))
    as_of: str = "latest"             # "latest" (newest interaction in the catalog), "now", or epoch seconds
    grace: float = 5.0
    fairness: fairness.FairnessConfig = field(default_factory=fairness.FairnessConfig)
    shortlist_groups: dict = field(default_factory=lambda: dict(shortlists.DEFAULT_GROUPS))
    catalog_refresh_seconds: float = 300.0  # re-read internships, counts and slots; 0 = never
    max_connection_age_ms: int = 60_000     # clients reconnect (and re-balance over gateway pods) this often


def _channel_options(component: str) -> list:
    # round_robin + dns:/// targets spread calls over every replica; reads are retried once on
    # UNAVAILABLE (a replica that just went away); nothing mutating is retried. healthCheckConfig:
    # client-side grpc.health.v1 watch, so a replica that is still loading its bundle or draining
    # after SIGTERM (NOT_SERVING) gets no calls, even before DNS or the address list drops it.
    service_config = {"loadBalancingConfig": [{"round_robin": {}}],
                      "healthCheckConfig": {"serviceName": SERVICE_NAMES[component]}, "methodConfig": [{
        "name": [{"service": SERVICE_NAMES[component], "method": m} for m in ("Retrieve", "Score", "Predict", "Rank")],
        "retryPolicy": {"maxAttempts": 2, "initialBackoff": "0.01s", "maxBackoff": "0.05s",
                        "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}]}
    # Reconnect to a replica that came back on the same address (a restarted container keeps its
    # pod IP) within 2 s, not gRPC's default back-off of up to 120 s.
    return [("grpc.service_config", json.dumps(service_config)), ("grpc.enable_retries", 1),
            ("grpc.so_reuseport", 0), ("grpc.max_reconnect_backoff_ms", 2000)]


class Fanout:
    """Channels and stubs, created once; `call` applies deadlines and turns failures into None."""

    def __init__(self, cfg: GatewayConfig):
        self.cfg = cfg
        self.channels = {c: grpc.aio.insecure_channel(cfg.targets[c], options=_channel_options(c)) for c in COMPONENTS}
        self.content = content_pb2_grpc.ContentServiceStub(self.channels["content"])
        self.collaborative = collaborative_pb2_grpc.CollaborativeServiceStub(self.channels["collaborative"])
        self.success = success_pb2_grpc.SuccessServiceStub(self.channels["success"])
        self.ranker = ranker_pb2_grpc.RankerServiceStub(self.channels["ranker"])

    async def call(self, component: str, method, request, deadline: float):
        """(response, None) or (None, reason). Never raises for a component's failure."""
        remaining = deadline - time.monotonic()
        timeout = min(self.cfg.budgets_ms[component] / 1000.0, remaining - 0.005)
        if timeout <= 0:
            return None, "DEADLINE_EXCEEDED"
        try:
            return await method(request, timeout=timeout), None
        except grpc.aio.AioRpcError as e:
            log.warning("component call failed", extra={"fields": {"component": component, "code": e.code().name}})
            return None, e.code().name

    async def close(self) -> None:
        for ch in self.channels.values():
            await ch.close()


@dataclass
class Student:
    student_id: str
    profile: common_pb2.StudentProfile
    interactions: list          # common_pb2.Interaction, oldest first
    applied: set
    cold_start: bool


@dataclass
class Gathered:
    """Scores collected from the content and collaborative answers, by internship id."""
    content: dict = field(default_factory=dict)
    collaborative: dict = field(default_factory=dict)
    popularity: dict = field(default_factory=dict)
    skills: dict = field(default_factory=dict)     # id -> (matched, missing, matched weights)
    collab_basis: str = ""

    def absorb(self, component: str, resp: common_pb2.ScoredItems) -> None:
        for it in resp.items:
            if component == "content":
                self.content[it.internship_id] = it.score
                self.skills[it.internship_id] = (list(it.matched_skills), list(it.missing_skills),
                                                 list(it.matched_weights))
            else:
                self.collaborative[it.internship_id] = it.score
                self.popularity[it.internship_id] = it.popularity
        if component == "collaborative":
            self.collab_basis = resp.basis


def aio_rpc(method):
    async def wrapper(self, request, context):
        try:
            return await method(self, request, context)
        except RpcError as e:
            status = e.to_status()
            await context.abort(status.code, status.details, status.trailing_metadata)
        except grpc.aio.AbortError:
            raise
        except Exception:  # a bug of ours: logged here, never a stack trace to the client
            log.exception("unhandled error", extra={"fields": {"method": method.__name__}})
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")
    wrapper.__name__ = method.__name__
    return wrapper


class Gateway(gateway_pb2_grpc.RecommendationGatewayServicer):
    def __init__(self, cfg: GatewayConfig, catalog, fanout: Fanout | None = None):
        self.cfg, self.catalog = cfg, catalog
        self.fanout = fanout or Fanout(cfg)
        self.fair = fairness.reranker_for(catalog.internships, cfg.fairness)
        self.fair_table = catalog.internships  # the table the exposure ledger is indexed by

    async def refresh_catalog(self) -> None:
        """Re-read the catalog off the event loop, then move the exposure ledger to the new positions.

        Requests that started on the old table finish on it (each holds its own reference); their
        exposure is translated to the new positions in `ledger_positions`.
        """
        old = self.catalog.internships
        await asyncio.to_thread(self.catalog.refresh)
        new = self.catalog.internships
        self.fair.follow_catalog(old.ids, new.ids, new.slots)
        self.fair_table = new
        log.info("catalog refreshed", extra={"fields": {"internships": len(new.ids), "before": len(old.ids)}})

    async def refresh_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.catalog_refresh_seconds)
            try:
                await self.refresh_catalog()
            except Exception:  # a failed refresh keeps serving the last good table
                log.exception("catalog refresh failed")

    def ledger_positions(self, table, positions: np.ndarray) -> np.ndarray:
        current = self.fair_table
        if table is current:
            return positions
        return np.array([current.position.get(str(table.ids[p]), -1) for p in positions.tolist()], dtype=np.int64)

    # ------------------------------------------------------------------ shared steps
    def now(self) -> int:
        if self.cfg.as_of == "now":
            return int(time.time())
        if self.cfg.as_of == "latest":
            return self.catalog.latest_timestamp()
        return int(self.cfg.as_of)

    def deadline(self, context) -> float:
        remaining = context.time_remaining() if context is not None else None
        if remaining is None or remaining > 3600:
            remaining = self.cfg.default_deadline_ms / 1000.0
        return time.monotonic() + remaining

    def resolve(self, request, v: Violations) -> Student:
        v.check_id("student_id", request.student_id, required=False)
        has_profile = request.HasField("profile")
        if not request.student_id and not has_profile:
            v.add("student_id", "set student_id for a known student or profile for a new one")
        if has_profile:
            v.check_profile("profile", request.profile)
        v.raise_if_any()
        row = self.catalog.student(request.student_id) if request.student_id else None
        if row is None and not has_profile:
            raise not_found(f"student {request.student_id} is not in the catalog; send a profile for a new student")
        interactions, applied = [], set()
        if row is not None:
            for iid, event, ts in self.catalog.interactions(request.student_id):
                it = common_pb2.Interaction(internship_id=iid, event=EVENT_TYPES.get(event, 0))
                it.timestamp.seconds = int(ts)
                interactions.append(it)
                if event == "apply":
                    applied.add(iid)
        profile = request.profile if has_profile else profile_message(row)
        return Student(request.student_id, profile, interactions, applied, cold_start=row is None)

    def models_and_mixing(self, versions: dict) -> tuple[list, bool]:
        models = [v for v in versions.values() if v is not None]
        data_versions = {m.data_version for m in models if m.data_version}
        return models, len(data_versions) > 1

    # ------------------------------------------------------------------ Recommend
    @aio_rpc
    async def Recommend(self, request, context):
        return await self.recommend(request, self.deadline(context))

    async def recommend(self, request, deadline: float) -> gateway_pb2.RecommendResponse:
        v = Violations()
        k = request.k or 10
        v.check_range("k", k, 1, 100)
        if request.mode not in gateway_pb2.Mode.values():
            v.add("mode", "must be HYBRID, CONTENT or COLLABORATIVE")
        if request.fairness.strength and not 0 <= request.fairness.strength <= 1:
            v.add("fairness.strength", "must be in 0..1")
        student = self.resolve(request, v)
        mode = request.mode or gateway_pb2.MODE_HYBRID
        use_content = mode in (gateway_pb2.MODE_HYBRID, gateway_pb2.MODE_CONTENT)
        use_collab = mode in (gateway_pb2.MODE_HYBRID, gateway_pb2.MODE_COLLABORATIVE)
        f = self.fanout
        degraded, versions = [], {}

        # 1. retrieve candidates in parallel
        n = max(self.cfg.candidates, 3 * k)
        retrieve = common_pb2.RetrieveRequest(student_id=student.student_id, profile=student.profile, n=n,
                                              exclude_internship_ids=sorted(student.applied),
                                              interactions=student.interactions)
        tasks = {}
        if use_content:
            tasks["content"] = f.call("content", f.content.Retrieve, retrieve, deadline)
        if use_collab:
            tasks["collaborative"] = f.call("collaborative", f.collaborative.Retrieve, retrieve, deadline)
        answers = dict(zip(tasks, await asyncio.gather(*tasks.values())))
        got = Gathered()
        for name, (resp, err) in answers.items():
            if resp is None:
                degraded.append(name)
                continue
            versions[name] = resp.model
            got.absorb(name, resp)
        content_scores, collab_scores, popularity, skills = got.content, got.collaborative, got.popularity, got.skills
        if not versions:
            raise unavailable("no retrieval component answered: " + ", ".join(degraded))

        # 2. union, then drop applied, closed, full and filtered-out internships
        table = self.catalog.internships
        union = [i for i in dict.fromkeys([*content_scores, *collab_scores]) if i in table.position]
        positions = np.array([table.position[i] for i in union], dtype=np.int64)
        keep = filters.allowed(table, positions, now=self.now(), applied=student.applied,
                               filters=request.filters if request.HasField("filters") else None,
                               student_lat=student.profile.latitude if student.profile.HasField("latitude") else None,
                               student_lon=student.profile.longitude if student.profile.HasField("longitude") else None)
        positions = positions[keep]
        ids = [str(table.ids[p]) for p in positions]
        response = gateway_pb2.RecommendResponse(student_id=student.student_id, cold_start=student.cold_start)
        if not ids:
            response.degraded.extend(degraded)
            response.models.extend(versions.values())
            return response

        # 3. score every candidate with every component, in parallel
        tasks = {}
        missing_content = [i for i in ids if i not in content_scores]
        if "content" in versions and missing_content:
            tasks["content"] = f.call("content", f.content.Score, common_pb2.ScoreRequest(
                profile=student.profile, internship_ids=missing_content), deadline)
        missing_collab = [i for i in ids if i not in collab_scores]
        if "collaborative" in versions and missing_collab:
            tasks["collaborative"] = f.call("collaborative", f.collaborative.Score, common_pb2.ScoreRequest(
                student_id=student.student_id, internship_ids=missing_collab, interactions=student.interactions),
                deadline)
        # Probabilities for every candidate; the factors (costlier) only for the final k, below.
        tasks["success"] = f.call("success", f.success.Predict, success_pb2.PredictRequest(
            profile=student.profile, internship_ids=ids, top_factors=0), deadline)
        answers = dict(zip(tasks, await asyncio.gather(*tasks.values())))
        for name in ("content", "collaborative"):
            resp, err = answers.get(name, (None, None))
            if resp is not None:
                got.absorb(name, resp)
            elif name in answers:
                degraded.append(name)
        success_resp, _ = answers["success"]
        probability, factors, base_rate = {}, {}, 0.0
        if success_resp is None:
            degraded.append("success")
        else:
            versions["success"] = success_resp.model
            base_rate = success_resp.base_rate
            for pr in success_resp.predictions:
                probability[pr.internship_id] = pr.probability
                factors[pr.internship_id] = list(pr.top_factors)

        component = np.full((len(ids), 4), np.nan, dtype=np.float32)
        for r, i in enumerate(ids):
            for j, source in enumerate((content_scores, collab_scores, popularity, probability)):
                if i in source:
                    component[r, j] = source[i]

        # 4. rank: the learned ranker, or the static blend, or the one component the mode asks for
        ranker_scores = None
        if mode == gateway_pb2.MODE_HYBRID:
            candidates = []
            for r, i in enumerate(ids):
                c = ranker_pb2.Candidate(internship_id=i)
                for j, fld in enumerate(("content_score", "collab_score", "popularity", "success_probability")):
                    if not np.isnan(component[r, j]):
                        setattr(c, fld, float(component[r, j]))
                candidates.append(c)
            resp, _ = await f.call("ranker", f.ranker.Rank, ranker_pb2.RankRequest(
                profile=student.profile, candidates=candidates), deadline)
            if resp is None:
                degraded.append("ranker")
            else:
                versions["ranker"] = resp.model
                ranker_scores = np.array([it.score for it in resp.items], dtype=np.float32)
        if ranker_scores is not None:
            final, response.ranking = ranker_scores, "ranker"
        elif mode == gateway_pb2.MODE_CONTENT:
            final, response.ranking = np.nan_to_num(component[:, 0], nan=-np.inf), "content"
        elif mode == gateway_pb2.MODE_COLLABORATIVE:
            final, response.ranking = np.nan_to_num(component[:, 1], nan=-np.inf), "collaborative"
        else:
            final, response.ranking = blend_scores(component, self.cfg.blend_weights), "blend"

        # 5. fair re-rank (per request; exposure is recorded either way), 6. explanations, 7. answer
        enabled = request.HasField("fairness") and request.fairness.enabled
        order, moved = self.fair.rerank(
            final, self.ledger_positions(table, positions),
            fairness.candidate_groups(table, positions, student.profile, self.cfg.fairness),  # counted either way
            enabled=enabled, strength=request.fairness.strength, k=k)
        want_explain = request.explain if request.HasField("explain") else True
        contributions: dict[int, dict[str, float]] = {}  # candidate row -> feature -> share of its score
        if want_explain:
            # Success factors and the ranker's feature contributions, for the final k only (both
            # cost per item), in parallel.
            extra = {}
            if "success" in versions:
                extra["success"] = f.call("success", f.success.Predict, success_pb2.PredictRequest(
                    profile=student.profile, internship_ids=[ids[r] for r in order.tolist()], top_factors=3), deadline)
            if response.ranking == "ranker":
                extra["ranker"] = f.call("ranker", f.ranker.Rank, ranker_pb2.RankRequest(
                    profile=student.profile, candidates=[candidates[r] for r in order.tolist()], contributions=True),
                    deadline)
            done = dict(zip(extra, await asyncio.gather(*extra.values())))
            resp = done.get("success", (None, None))[0]
            if resp is not None:
                factors = {pr.internship_id: list(pr.top_factors) for pr in resp.predictions}
            resp = done.get("ranker", (None, None))[0]
            if resp is not None:
                contributions = {r: {c.name: c.value for c in ic.by_feature}
                                 for r, ic in zip(order.tolist(), resp.contributions)}
            elif response.ranking == "blend":
                terms = blend_terms(component, self.cfg.blend_weights)
                contributions = {r: dict(zip(COMPONENT_SCORES, terms[r].tolist())) for r in order.tolist()}
            elif response.ranking in ("content", "collaborative"):
                name = "content_score" if response.ranking == "content" else "collab_score"
                contributions = {r: {name: float(final[r])} for r in order.tolist()}
        for rank, (r, was_moved) in enumerate(zip(order.tolist(), moved.tolist()), start=1):
            p = int(positions[r])
            i = ids[r]
            scores = gateway_pb2.ComponentScores()
            for j, fld in enumerate(("content", "collaborative", "popularity", "success_probability")):
                if not np.isnan(component[r, j]):
                    setattr(scores, fld, float(component[r, j]))
            if ranker_scores is not None:
                scores.ranker = float(ranker_scores[r])
            item = response.items.add(rank=rank, internship_id=i, title=str(table.title[p]),
                                      company_id=str(table.company_id[p]), sector=str(table.sector[p]),
                                      district=str(table.district[p]), remote=bool(table.remote[p]),
                                      stipend=float(np.nan_to_num(table.stipend[p])), score=float(final[r]),
                                      scores=scores)
            if want_explain:
                matched, missing, weights = skills.get(i, ([], [], []))
                item.explanation.CopyFrom(explain.explanation(
                    student.profile, table, p, matched=matched, missing=missing, probability=probability.get(i),
                    base_rate=base_rate, factors=factors.get(i), collab_basis=got.collab_basis, promoted=was_moved,
                    matched_weights=weights, contributions=contributions.get(r)))
        models, mixed = self.models_and_mixing(versions)
        response.models.extend(models)
        response.mixed_data_versions = mixed
        response.degraded.extend(dict.fromkeys(degraded))
        for d in response.degraded:
            telemetry.DEGRADED.labels(d).inc()
        return response

    async def StreamRecommend(self, request_iterator, context):
        async for request in request_iterator:
            try:
                yield await self.recommend(request, self.deadline(None))
            except RpcError as e:  # one bad request in a batch does not end the batch
                yield gateway_pb2.RecommendResponse(student_id=request.student_id, error=f"{e.code.name}: {e.message}")

    # ------------------------------------------------------------------ other RPCs
    @aio_rpc
    async def PredictSuccess(self, request, context):
        v = Violations()
        v.check_ids("internship_ids", request.internship_ids, 1, 1000)
        student = self.resolve(request, v)
        resp, err = await self.fanout.call("success", self.fanout.success.Predict, success_pb2.PredictRequest(
            profile=student.profile, internship_ids=request.internship_ids, top_factors=3), self.deadline(context))
        if resp is None:
            raise unavailable(f"success predictor unavailable ({err})")
        return gateway_pb2.PredictSuccessResponse(predictions=resp.predictions, base_rate=resp.base_rate,
                                                  model=resp.model)

    @aio_rpc
    async def Explain(self, request, context):
        v = Violations()
        v.check_id("internship_id", request.internship_id)
        student = self.resolve(request, v)
        table = self.catalog.internships
        p = table.position.get(request.internship_id)
        if p is None:
            raise not_found(f"internship {request.internship_id} is not in the catalog")
        deadline = self.deadline(context)
        f = self.fanout
        ids = [request.internship_id]
        (c, _), (cf, _), (s, _) = await asyncio.gather(
            f.call("content", f.content.Score, common_pb2.ScoreRequest(profile=student.profile, internship_ids=ids),
                   deadline),
            f.call("collaborative", f.collaborative.Score, common_pb2.ScoreRequest(
                student_id=student.student_id, internship_ids=ids, interactions=student.interactions), deadline),
            f.call("success", f.success.Predict, success_pb2.PredictRequest(profile=student.profile,
                                                                            internship_ids=ids, top_factors=3), deadline))
        degraded = [name for name, r in (("content", c), ("collaborative", cf), ("success", s)) if r is None]
        if len(degraded) == 3:
            raise unavailable("no component answered")
        scores = gateway_pb2.ComponentScores()
        candidate = ranker_pb2.Candidate(internship_id=request.internship_id)
        matched, missing, weights, prob, factors, base_rate, basis = [], [], [], None, [], 0.0, ""
        if c is not None and c.items:
            scores.content = candidate.content_score = c.items[0].score
            matched, missing = list(c.items[0].matched_skills), list(c.items[0].missing_skills)
            weights = list(c.items[0].matched_weights)
        if cf is not None and cf.items:
            scores.collaborative, scores.popularity, basis = cf.items[0].score, cf.items[0].popularity, cf.basis
            candidate.collab_score, candidate.popularity = cf.items[0].score, cf.items[0].popularity
        if s is not None and s.predictions:
            prob, factors, base_rate = s.predictions[0].probability, list(s.predictions[0].top_factors), s.base_rate
            scores.success_probability = candidate.success_probability = prob
        # The ranker's score and its feature contributions for this one item: the same numbers it
        # gets inside any list (the ranker scores each candidate on its own features).
        contributions = None
        r, _ = await f.call("ranker", f.ranker.Rank, ranker_pb2.RankRequest(
            profile=student.profile, candidates=[candidate], contributions=True), deadline)
        if r is None:
            degraded.append("ranker")
        else:
            scores.ranker = r.items[0].score
            contributions = {x.name: x.value for x in r.contributions[0].by_feature}
        item = gateway_pb2.Recommendation(
            internship_id=request.internship_id, title=str(table.title[p]), company_id=str(table.company_id[p]),
            sector=str(table.sector[p]), district=str(table.district[p]), remote=bool(table.remote[p]),
            stipend=float(np.nan_to_num(table.stipend[p])), scores=scores,
            explanation=explain.explanation(student.profile, table, p, matched=matched, missing=missing,
                                            probability=prob, base_rate=base_rate, factors=factors,
                                            collab_basis=basis, promoted=False, matched_weights=weights,
                                            contributions=contributions))
        models, _ = self.models_and_mixing({n: x.model for n, x in (("content", c), ("collaborative", cf),
                                                                    ("success", s), ("ranker", r)) if x is not None})
        return gateway_pb2.ExplainResponse(item=item, models=models, degraded=degraded)

    @aio_rpc
    async def RecordInteraction(self, request, context):
        v = Violations()
        v.check_id("student_id", request.student_id)
        v.check_id("internship_id", request.internship_id)
        if request.event not in EVENT_NAMES:
            v.add("event", "must be EVENT_TYPE_VIEW, EVENT_TYPE_SAVE or EVENT_TYPE_APPLY")
        v.raise_if_any()
        if self.catalog.student(request.student_id) is None:
            raise not_found(f"student {request.student_id} is not in the catalog")
        if request.internship_id not in self.catalog.internships.position:
            raise not_found(f"internship {request.internship_id} is not in the catalog")
        ts = request.timestamp.seconds if request.HasField("timestamp") else int(time.time())
        # Written to the catalog; the next Recommend sends the student's interactions with its
        # collaborative calls, which fold them in (stateless across collaborative replicas).
        count = await asyncio.to_thread(self.catalog.record_interaction, request.student_id, request.internship_id,
                                        EVENT_NAMES[request.event], ts)
        return gateway_pb2.RecordInteractionResponse(recorded=True, interactions_for_student=count)


    @aio_rpc
    async def Shortlist(self, request, context):
        v = Violations()
        v.check_id("internship_id", request.internship_id)
        v.check_range("size", request.size, 0, 500)
        v.raise_if_any()
        table = self.catalog.internships
        p = table.position.get(request.internship_id)
        if p is None:
            raise not_found(f"internship {request.internship_id} is not in the catalog")
        size = request.size or shortlists.default_size(table.slots[p])
        pool, source = self.catalog.applicants(request.internship_id), "applicants"
        if not pool:  # nobody applied: the best-matching students of the internship's state
            wanted = set(self.catalog.internship_skills(request.internship_id))
            nearby = self.catalog.students_in_state(str(table.state[p]), 20_000)
            nearby.sort(key=lambda row: -len(wanted & set(row[1])))
            pool, source = [sid for sid, _ in nearby[:3 * size]], "best_matching"
        pool = pool[:MAX_SHORTLIST_POOL]
        if not pool:
            return gateway_pb2.ShortlistResponse(internship_id=request.internship_id, source=source)
        deadline, f, ids = self.deadline(context), self.fanout, [request.internship_id]
        profiles = [profile_message(self.catalog.student(sid)) for sid in pool]
        calls = [f.call("content", f.content.Score, common_pb2.ScoreRequest(profile=pr, internship_ids=ids), deadline)
                 for pr in profiles]
        calls += [f.call("success", f.success.Predict, success_pb2.PredictRequest(profile=pr, internship_ids=ids),
                         deadline) for pr in profiles]
        answers = await asyncio.gather(*calls)
        content, success = answers[:len(pool)], answers[len(pool):]
        match = np.array([r.items[0].score if r is not None and r.items else np.nan for r, _ in content])
        prob = np.array([r.predictions[0].probability if r is not None and r.predictions else np.nan
                         for r, _ in success])
        degraded = [name for name, col in (("content", match), ("success", prob)) if np.isnan(col).all()]
        if len(degraded) == 2:
            raise unavailable("neither the content nor the success service answered")
        score = np.nanmean(np.vstack([fairness.zscore(match), fairness.zscore(prob)]), axis=0)
        groups = list(self.cfg.shortlist_groups)
        members = shortlists.membership([self.catalog.protected(sid) for sid in pool], groups)
        order, report = shortlists.shortlist(score, members, np.array([self.cfg.shortlist_groups[g] for g in groups]), size)
        response = gateway_pb2.ShortlistResponse(internship_id=request.internship_id, source=source,
                                                 pool_size=len(pool), degraded=degraded,
                                                 all_met=all(r["met"] for r in report))
        for rank, i in enumerate(order.tolist(), start=1):
            c = response.candidates.add(rank=rank, student_id=pool[i], score=float(score[i]))
            if not np.isnan(match[i]):
                c.match = float(match[i])
            if not np.isnan(prob[i]):
                c.success_probability = float(prob[i])
        for g, r in zip(groups, report):
            response.groups.add(group=g, min_share=self.cfg.shortlist_groups[g], **r)
        versions = {}
        for r, _ in (*content, *success):
            if r is not None:
                versions[r.model.component] = r.model
        response.models.extend(versions.values())
        return response


class AioMetricsInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method.rsplit("/", 1)[-1]
        inner = handler.unary_unary

        async def timed(request, context):
            start = time.perf_counter()
            try:
                return await inner(request, context)
            finally:
                code = context.code()
                telemetry.observe("gateway", method, "OK" if code is None else getattr(code, "name", str(code)),
                                  time.perf_counter() - start)

        return grpc.unary_unary_rpc_method_handler(timed, request_deserializer=handler.request_deserializer,
                                                   response_serializer=handler.response_serializer)


def parse_config(argv=None) -> GatewayConfig:
    d = GatewayConfig()
    p = argparse.ArgumentParser(prog="pmis-gateway", description="PMIS recommendation gateway")
    p.add_argument("--host", default=env("HOST", d.host))
    p.add_argument("--port", type=int, default=int(env("PORT", d.port)))
    p.add_argument("--metrics-port", type=int, default=int(env("METRICS_PORT", d.metrics_port)))
    p.add_argument("--catalog", type=Path, default=Path(env("CATALOG", d.catalog)), help="catalog SQLite (env PMIS_CATALOG)")
    for c in COMPONENTS:
        p.add_argument(f"--{c}-target", default=env(f"{c.upper()}_TARGET", d.targets[c]),
                       help=f"gRPC target of the {c} service, e.g. dns:///{c}:50051 (env PMIS_{c.upper()}_TARGET)")
        p.add_argument(f"--{c}-budget-ms", type=int, default=int(env(f"{c.upper()}_BUDGET_MS", d.budgets_ms[c])))
    p.add_argument("--default-deadline-ms", type=int, default=int(env("DEFAULT_DEADLINE_MS", d.default_deadline_ms)))
    p.add_argument("--candidates", type=int, default=int(env("CANDIDATES", d.candidates)))
    p.add_argument("--blend-weights", default=env("BLEND_WEIGHTS", json.dumps(d.blend_weights)),
                   help="JSON weights of the static blend used when the ranker is down")
    p.add_argument("--as-of", default=env("AS_OF", d.as_of),
                   help="clock for closing internships: latest (newest interaction), now, or epoch seconds")
    p.add_argument("--grace", type=float, default=float(env("GRACE_SECONDS", d.grace)))
    p.add_argument("--shortlist-groups", default=env("SHORTLIST_GROUPS", json.dumps(shortlists.DEFAULT_GROUPS)),
                   help=f"JSON minimum shares of reserved groups; groups: {', '.join(shortlists.MEMBERSHIP)}")
    p.add_argument("--catalog-refresh-seconds", type=float,
                   default=float(env("CATALOG_REFRESH_SECONDS", d.catalog_refresh_seconds)),
                   help="re-read internships, application counts and slots this often; 0 = never")
    p.add_argument("--max-connection-age-ms", type=int,
                   default=int(env("MAX_CONNECTION_AGE_MS", d.max_connection_age_ms)),
                   help="clients reconnect at least this often, spreading over gateway replicas")
    p.add_argument("--fairness", default=env("FAIRNESS"),
                   help='JSON, e.g. {"min_shares": {"msme": 0.1, "local": 0.3}, "exposure_targets": {"msme": 0.12}, '
                        '"exposure_strength": 0.55, "temperature": 2.5, "half_life": 500} (env PMIS_FAIRNESS)')
    a = p.parse_args(argv)
    return GatewayConfig(a.host, a.port, a.metrics_port, a.catalog,
                         {c: getattr(a, f"{c}_target") for c in COMPONENTS},
                         {c: getattr(a, f"{c}_budget_ms") for c in COMPONENTS}, a.default_deadline_ms, a.candidates,
                         json.loads(a.blend_weights), a.as_of, a.grace, fairness.FairnessConfig.from_json(a.fairness),
                         json.loads(a.shortlist_groups), a.catalog_refresh_seconds, a.max_connection_age_ms)


async def serve(cfg: GatewayConfig, ready: asyncio.Event | None = None) -> None:
    catalog = await asyncio.to_thread(SqliteCatalog, cfg.catalog)
    gateway = Gateway(cfg, catalog)
    # A client's long-lived channel would otherwise stay on one gateway pod forever: a maximum
    # connection age makes it reconnect, and land on any pod, at least this often.
    server = grpc.aio.server(interceptors=[AioMetricsInterceptor()], options=[
        ("grpc.so_reuseport", 0), ("grpc.max_connection_age_ms", cfg.max_connection_age_ms),
        ("grpc.max_connection_age_grace_ms", int(cfg.grace * 1000) + 1000)])
    gateway_pb2_grpc.add_RecommendationGatewayServicer_to_server(gateway, server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection((SERVICE, "grpc.health.v1.Health", reflection.SERVICE_NAME), server)
    server.add_insecure_port(f"{cfg.host}:{cfg.port}")
    await server.start()
    if cfg.metrics_port:
        telemetry.start_metrics_server(cfg.metrics_port, cfg.host)
    # The gateway itself is ready once its catalog is loaded: missing components degrade answers.
    for name in ("", SERVICE):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("gateway serving", extra={"fields": {"port": cfg.port, "internships": len(catalog.internships.ids)}})
    refresher = asyncio.create_task(gateway.refresh_periodically()) if cfg.catalog_refresh_seconds > 0 else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    await stop.wait()
    if refresher is not None:
        refresher.cancel()
    await health.enter_graceful_shutdown()
    await server.stop(cfg.grace)
    await gateway.fanout.close()


def main(argv=None) -> int:
    from services.common.logs import setup_logging

    setup_logging("gateway")
    asyncio.run(serve(parse_config(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
