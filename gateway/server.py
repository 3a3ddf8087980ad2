"""RecommendationGateway: resolve the student, fan out, filter, score, rank, re-rank, explain.

The RPCs are coroutines on one event loop; the front door (gateway/front.py) runs them, the
fan-out (gateway/fanout.py) calls the components, gateway/recommend.py holds one Recommend's
stages. A component that is down, slow or NOT_SERVING is skipped and named in `degraded`; only
when nothing useful is left is the answer UNAVAILABLE.
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

from gateway import explaining, fairness, filters, shortlisting
from gateway.fanout import Fanout
from gateway.front import Front
from gateway import recommend as stages
from gateway.catalog import CatalogUnavailable
from gateway.catalog_backend import open_catalog
from models.data.postgres import is_database_url
from models.fairness import shortlist as shortlists
from models.components import COMPONENTS
from pmis.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc, success_pb2
from services.common import admission, listening, telemetry, tls
from services.common.auth import check_admin
from services.common.batch import MAX_BATCH
from services.common.errors import RpcError, not_found, unavailable
from services.common.profiles import EVENT_NAMES, EVENT_TYPES, profile_message
from services.common.config import add_admission_flags, add_listen_flags, add_shutdown_flags, flag
from services.common.tls import ClientTLS, ServerTLS
from services.common.validation import Violations

log = logging.getLogger("pmis.gateway")
DEFAULT_BLEND = {"content_score": 1.0, "collab_score": 1.0, "popularity": 0.5, "success_p": 0.5}


@dataclass
class GatewayConfig:
    host: str = "127.0.0.1"
    port: int = 50050
    metrics_port: int = 9100
    catalog: Path = Path("var/data/catalog.db")
    database_url: str = ""            # postgresql://...: the shared catalog on PostgreSQL instead of `catalog`
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
    fairness_strength: float = 1.0          # the policy every Recommend gets; 0 = off unless a request asks
    max_in_flight: int = admission.GATEWAY_MAX_IN_FLIGHT      # more: RESOURCE_EXHAUSTED at once; 0 = unlimited
    min_deadline_ms: int = admission.GATEWAY_MIN_DEADLINE_MS  # less time left: refused before any work
    ports_file: Path | None = None          # listening.write_ports: where the bound ports are reported
    tls: ServerTLS = field(default_factory=ServerTLS)         # plaintext unless configured
    client_tls: ClientTLS = field(default_factory=ClientTLS)  # how the components are dialled
    # Batching of the hot component calls (gateway/batching.py): batch RPCs in flight per component
    # method before calls wait for the next batch (0 = no batching: one RPC per call), and the
    # most requests per batch.
    batch_outstanding: int = 1
    max_batch: int = 32
    # Undegraded Recommends keep their p90 under this: the in-flight limit moves below
    # max_in_flight while they do not (admission.LatencyTarget). 0 = a fixed limit.
    target_latency_ms: int = admission.GATEWAY_TARGET_LATENCY_MS



@dataclass
class Student:
    student_id: str
    profile: common_pb2.StudentProfile
    interactions: list          # common_pb2.Interaction, oldest first
    seen: list                  # every internship the student has interacted with: not recommended again
    cold_start: bool
    catalog_down: bool = False  # the catalog was unreachable: answered from the request's profile alone


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
        try:
            row, history = self.lookup(request.student_id) if request.student_id else (None, [])
        except CatalogUnavailable as e:
            if not has_profile:
                raise CatalogUnavailable(f"{e.message}: student {request.student_id} cannot be looked up "
                                         f"(a request with a profile is still answered)") from e
            return Student(request.student_id, request.profile, [], [], cold_start=True, catalog_down=True)
        if row is None and not has_profile:
            raise not_found(f"student {request.student_id} is not in the catalog; send a profile for a new student")
        interactions = []
        for iid, event, ts in history:
            it = common_pb2.Interaction(internship_id=iid, event=EVENT_TYPES.get(event, 0))
            it.timestamp.seconds = int(ts)
            interactions.append(it)
        profile = request.profile if has_profile else profile_message(row)
        seen = sorted({it.internship_id for it in interactions})
        return Student(request.student_id, profile, interactions, seen, cold_start=row is None)

    def lookup(self, student_id: str) -> tuple[dict | None, list]:
        """The student's catalog row and interactions (none for a student the catalog lacks)."""
        row = self.catalog.student(student_id)
        return row, (self.catalog.interactions(student_id) if row is not None else [])

    def models_and_mixing(self, versions: dict) -> tuple[list, bool]:
        models = [v for v in versions.values() if v is not None]
        data_versions = {m.data_version for m in models if m.data_version}
        return models, len(data_versions) > 1

    # ------------------------------------------------------------------ Recommend
    async def Recommend(self, request, context):
        return await self.recommend(request, self.deadline(context), context)

    def fairness_strength(self, request, context) -> tuple[float | None, str]:
        """The operator's policy, tightened by a request; off only for an admin caller."""
        policy = self.cfg.fairness_strength
        asked = request.fairness
        if asked.off:
            if context is None:
                raise RpcError(grpc.StatusCode.PERMISSION_DENIED, "fairness.off needs an admin caller")
            check_admin(context, "Recommend with fairness.off")
            return None, "off (admin)"
        if policy <= 0:
            return (asked.strength, "tightened") if asked.strength > 0 else (None, "off (policy)")
        if asked.strength > policy:
            return float(asked.strength), "tightened"
        return policy, "policy"

    @staticmethod
    def check_recommend(request, v: Violations) -> int:
        """The request's own fields (the student is resolved after); its k."""
        k = request.k or 10
        v.check_range("k", k, 1, 100)
        if request.mode not in gateway_pb2.Mode.values():
            v.add("mode", "must be HYBRID, CONTENT or COLLABORATIVE")
        if request.fairness.strength and not 0 <= request.fairness.strength <= 1:
            v.add("fairness.strength", "must be in 0..1")
        if request.HasField("filters"):
            filters.check(request.filters, v)
        return k

    async def recommend(self, request, deadline: float, context=None) -> gateway_pb2.RecommendResponse:
        v = Violations()
        k = self.check_recommend(request, v)
        student = self.resolve(request, v)
        strength, fairness_note = self.fairness_strength(request, context)
        mode = stages.MODE_NAMES[request.mode or gateway_pb2.MODE_HYBRID]
        want_explain = request.explain if request.HasField("explain") else True
        r = stages.InFlight(student, self.catalog.internships, k, mode, deadline, explain=want_explain)
        if student.catalog_down:
            r.degraded.append("catalog")
        await stages.retrieve(self, r, request)
        response = gateway_pb2.RecommendResponse(student_id=student.student_id, cold_start=student.cold_start,
                                                 fairness=fairness_note)
        if len(r.positions):
            await stages.score(self, r)
            await stages.rank_candidates(self, r)
            response.ranking = r.ranking
            order, moved = stages.fair_order(self, r, strength)
            details = await stages.finish(self, r, order) if want_explain else None
            stages.answer(r, order, moved, details, response)
        models, mixed = self.models_and_mixing(r.versions)
        response.models.extend(models)
        response.mixed_data_versions = mixed
        response.degraded.extend(dict.fromkeys(r.degraded))
        for d in response.degraded:
            telemetry.DEGRADED.labels(d).inc()
        return response

    async def recommend_in_stream(self, request, context) -> gateway_pb2.RecommendResponse:
        """One request of a StreamRecommend: a bad one gets its error in its answer and does not
        end the stream."""
        try:
            return await self.recommend(request, self.deadline(context), context)
        except RpcError as e:
            return gateway_pb2.RecommendResponse(student_id=request.student_id, error=f"{e.code.name}: {e.message}")

    # ------------------------------------------------------------------ other RPCs
    async def PredictSuccess(self, request, context):
        v = Violations()
        v.check_ids("internship_ids", request.internship_ids, 1, 1000)
        student = self.resolve(request, v)
        resp, err = await self.fanout.call("success", "Predict", success_pb2.PredictRequest(
            profile=student.profile, internship_ids=request.internship_ids, top_factors=3), self.deadline(context))
        if resp is None:
            raise unavailable(f"success predictor unavailable ({err})")
        return gateway_pb2.PredictSuccessResponse(predictions=resp.predictions, base_rate=resp.base_rate,
                                                  model=resp.model)

    async def Explain(self, request, context):
        v = Violations()
        v.check_id("internship_id", request.internship_id)
        student = self.resolve(request, v)
        p = self.catalog.internships.position.get(request.internship_id)
        if p is None:
            raise not_found(f"internship {request.internship_id} is not in the catalog")
        return await explaining.explain_pair(self, student, request.internship_id, p, self.deadline(context))

    async def RecordInteraction(self, request, context):
        v = Violations()
        v.check_id("student_id", request.student_id)
        v.check_id("internship_id", request.internship_id)
        v.check_id("event_id", request.event_id, required=False)
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
        # Committed before the answer: an acknowledged interaction is never lost; never stored twice
        # for one event_id. An unreachable database is UNAVAILABLE (CatalogUnavailable), not a drop.
        stored, count = await asyncio.to_thread(self.catalog.record_interaction, request.student_id,
                                                request.internship_id, EVENT_NAMES[request.event], ts,
                                                request.event_id or None)
        return gateway_pb2.RecordInteractionResponse(recorded=True, interactions_for_student=count,
                                                     duplicate=not stored)


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
        return await shortlisting.shortlist(self, request.internship_id, p, size, self.deadline(context))


def parse_config(argv=None) -> GatewayConfig:
    d = GatewayConfig()
    p = argparse.ArgumentParser(prog="pmis-gateway", description="PMIS recommendation gateway")
    add_listen_flags(p, d.port, d.metrics_port)
    tls.add_server_args(p)
    tls.add_client_args(p)
    flag(p, "--catalog", "CATALOG", str(d.catalog), type=Path, help="catalog SQLite (when no --database-url)")
    flag(p, "--database-url", "DATABASE_URL", d.database_url,
         help="postgresql://... : the shared catalog on PostgreSQL (pmis db migrate / load) instead of --catalog")
    for c in COMPONENTS:
        flag(p, f"--{c}-target", f"{c.upper()}_TARGET", d.targets[c],
             help=f"gRPC target of the {c} service, e.g. dns:///{c}:50051")
        flag(p, f"--{c}-budget-ms", f"{c.upper()}_BUDGET_MS", d.budgets_ms[c], type=int,
             help=f"deadline of a call to the {c} service")
    flag(p, "--default-deadline-ms", "DEFAULT_DEADLINE_MS", d.default_deadline_ms, type=int,
         help="a request's deadline when its client sets none")
    flag(p, "--candidates", "CANDIDATES", d.candidates, type=int, help="candidates per retriever")
    flag(p, "--blend-weights", "BLEND_WEIGHTS", json.dumps(d.blend_weights), type=json.loads,
         help="JSON weights of the static blend used when the ranker is down")
    flag(p, "--as-of", "AS_OF", d.as_of, help="clock for closing internships: latest (newest interaction), now, "
                                             "or epoch seconds")
    flag(p, "--shortlist-groups", "SHORTLIST_GROUPS", json.dumps(shortlists.DEFAULT_GROUPS), type=json.loads,
         help=f"JSON minimum shares of reserved groups; groups: {', '.join(shortlists.MEMBERSHIP)}")
    flag(p, "--catalog-refresh-seconds", "CATALOG_REFRESH_SECONDS", d.catalog_refresh_seconds, type=float,
         help="re-read internships, application counts and slots this often; 0 = never")
    flag(p, "--fairness-strength", "FAIRNESS_STRENGTH", d.fairness_strength, type=float,
         help="the fairness policy every Recommend gets (0..1; 0 = off unless a request asks); a request may raise "
              "it, only an admin caller may turn it off")
    flag(p, "--fairness", "FAIRNESS", help='JSON, e.g. {"min_shares": {"msme": 0.1, "local": 0.3}, "exposure_targets": '
                                          '{"msme": 0.12}, "exposure_strength": 0.55, "temperature": 2.5, "half_life": 500}')
    add_shutdown_flags(p, grace=d.grace, max_connection_age_ms=d.max_connection_age_ms, drain=False)
    add_admission_flags(p, max_in_flight=d.max_in_flight, min_deadline_ms=d.min_deadline_ms)
    flag(p, "--target-latency-ms", "TARGET_LATENCY_MS", d.target_latency_ms, type=int,
         help="keep the p90 latency of answers under this by lowering the in-flight limit (never above "
              "--max-in-flight) while calls are being refused; 0 = a fixed limit")
    flag(p, "--batch-outstanding", "BATCH_OUTSTANDING", d.batch_outstanding, type=int,
         help="batch RPCs in flight per component method; calls made meanwhile wait and go in the next batch; "
              "0 = no batching")
    flag(p, "--max-batch", "MAX_BATCH", d.max_batch, type=int, help=f"most calls per batch RPC, 1..{MAX_BATCH}")
    a = p.parse_args(argv)
    if a.target_latency_ms < 0:
        p.error("--target-latency-ms must be >= 0 (0 = a fixed limit)")
    if a.batch_outstanding < 0 or not 1 <= a.max_batch <= MAX_BATCH:
        p.error(f"--batch-outstanding must be >= 0 and --max-batch in 1..{MAX_BATCH}")
    if a.database_url and not is_database_url(a.database_url):
        p.error("--database-url must be a postgresql:// URL (a SQLite catalog is --catalog)")
    return GatewayConfig(a.host, a.port, a.metrics_port, a.catalog, a.database_url,
                         {c: getattr(a, f"{c}_target") for c in COMPONENTS},
                         {c: getattr(a, f"{c}_budget_ms") for c in COMPONENTS}, a.default_deadline_ms, a.candidates,
                         a.blend_weights, a.as_of, a.grace, fairness.FairnessConfig.from_json(a.fairness),
                         a.shortlist_groups, a.catalog_refresh_seconds, a.max_connection_age_ms,
                         a.fairness_strength, a.max_in_flight, a.min_deadline_ms, a.ports_file,
                         tls.server_tls(a, p), tls.client_tls(a, p), a.batch_outstanding, a.max_batch,
                         a.target_latency_ms)


async def serve(cfg: GatewayConfig, ready: asyncio.Event | None = None) -> None:
    catalog = await asyncio.to_thread(open_catalog, cfg.database_url or cfg.catalog)
    gateway = Gateway(cfg, catalog)
    loop = asyncio.get_running_loop()
    front = Front(gateway, loop, cfg)
    front.start()
    port = front.port
    metrics_port = telemetry.start_metrics_server(cfg.metrics_port, cfg.host) if cfg.metrics_port else 0
    listening.write_ports(cfg.ports_file, port, metrics_port)
    log.info("gateway serving", extra={"fields": {"port": port, "metrics_port": metrics_port,
                                                  "internships": len(catalog.internships.ids)}})
    refresher = asyncio.create_task(gateway.refresh_periodically()) if cfg.catalog_refresh_seconds > 0 else None
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    await stop.wait()
    if refresher is not None:
        refresher.cancel()
    await front.stop(cfg.grace)
    await gateway.fanout.close()
    catalog.close()


# How long the event loop's thread may hold the GIL before the front's polling and admission
# threads get it (Python's default is 5 ms). Under overload a refusal waits for the GIL a few
# times; a shorter slice answers it sooner at no measured cost to throughput (README, load shedding).
GIL_SWITCH_INTERVAL_S = 0.0001


def main(argv=None) -> int:
    from services.common.logs import setup_logging

    setup_logging("gateway")
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    asyncio.run(serve(parse_config(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
