"""Two gateway processes on one PostgreSQL catalog (the real server, tests/support/postgres.py):
an interaction recorded through one changes the next answer of the other, as two replicas of a
deployment behind one Service."""

from __future__ import annotations

import grpc

from models.components import COMPONENTS
from models.data.postgres import load_dataset
from pmis.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from services.components import SERVICE_NAMES
from tests.support.loopback import Components
from tests.support.processes import spawn_server, stop_process

TIMEOUT = 20


def test_two_gateway_processes_share_what_one_records(small_system, pg_url, tmp_path):
    load_dataset(pg_url, small_system.data, progress=False)
    components = Components(small_system.bundles)
    gateways = []
    try:
        targets = [a for c in COMPONENTS for a in (f"--{c}-target", components.targets[c])]
        for n in range(2):
            gateways.append(spawn_server(
                "gateway.server", SERVICE_NAMES["gateway"],
                [*targets, "--database-url", pg_url, "--fairness-strength", "0"],
                tmp_path / f"gateway{n}.ports", tmp_path / f"gateway{n}.log"))
        one, other = (gateway_pb2_grpc.RecommendationGatewayStub(grpc.insecure_channel(target))
                      for _, target in gateways)
        student = "S0000042"
        before = other.Recommend(gateway_pb2.RecommendRequest(student_id=student, k=5), timeout=TIMEOUT)
        applied = before.items[0].internship_id

        ack = one.RecordInteraction(gateway_pb2.RecordInteractionRequest(
            student_id=student, internship_id=applied, event=common_pb2.EVENT_TYPE_APPLY,
            event_id="e2e-shared-1"), timeout=TIMEOUT)
        after = other.Recommend(gateway_pb2.RecommendRequest(student_id=student, k=5), timeout=TIMEOUT)

        assert ack.recorded and not ack.duplicate
        assert applied not in {it.internship_id for it in after.items} and len(after.items) == 5
        assert not after.degraded
        retried = other.RecordInteraction(gateway_pb2.RecordInteractionRequest(
            student_id=student, internship_id=applied, event=common_pb2.EVENT_TYPE_APPLY,
            event_id="e2e-shared-1"), timeout=TIMEOUT)  # a retry that lands on the other replica
        assert retried.duplicate and retried.interactions_for_student == ack.interactions_for_student
    finally:
        for proc, _ in gateways:
            stop_process(proc)
        components.stop()
