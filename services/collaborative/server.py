"""Collaborative service: ALS/EASE candidates and scores, folding in interactions sent with the call.

A student's scores come from, in order of preference: the interactions in the request (folded
in against the served item factors, so history recorded after training counts and replicas stay
stateless), the student's row in the bundle, or item popularity for a student nobody knows.
Retrieve returns the folded-in student (`student_vector`); a Score that passes it back needs no
second fold-in.
"""

from __future__ import annotations

import sys

import numpy as np

from models.pipeline import top_n
from pmis.v1 import collaborative_pb2_grpc, common_pb2
from services.common.batch import RetrieveScoreBatches
from services.common.profiles import EVENT_NAMES
from services.common.server import ModelAdmin, ModelSlot, run_component
from services.common.validation import Violations
from services.components import SERVICE_NAMES
from services.collaborative.runtime import CollaborativeRuntime

SERVICE = SERVICE_NAMES["collaborative"]
MAX_RETRIEVE, MAX_SCORE, MAX_INTERACTIONS = 1000, 1000, 5000


def _validate(request, ids_field: str | None, rt: CollaborativeRuntime | None = None) -> None:
    v = Violations()
    v.check_id("student_id", request.student_id, required=False)
    if len(request.interactions) > MAX_INTERACTIONS:
        v.add("interactions", f"at most {MAX_INTERACTIONS} interactions")
    for i, it in enumerate(request.interactions):
        if it.event not in EVENT_NAMES:
            v.add(f"interactions[{i}].event", "must be VIEW, SAVE or APPLY")
            break
        if not it.internship_id:
            v.add(f"interactions[{i}].internship_id", "is required")
            break
    if ids_field:
        v.check_ids(ids_field, request.internship_ids, 1, MAX_SCORE)
        given = request.student_vector
        if rt is not None and given.content_hash == rt.content_hash and given.values:
            width = None if rt.model.item_factors is None else rt.model.item_factors.shape[1]
            if len(given.values) != width or not np.isfinite(np.asarray(given.values)).all():
                v.add("student_vector.values", f"must be {width} finite factors")
    else:
        v.check_range("n", request.n or 100, 1, MAX_RETRIEVE)
        v.check_range("open_at", request.open_at, 0, 2**62)
    v.raise_if_any()


class CollaborativeServicer(ModelAdmin, RetrieveScoreBatches, collaborative_pb2_grpc.CollaborativeServiceServicer):
    def __init__(self, slot: ModelSlot):
        self.slot = slot

    def Retrieve(self, request, context):
        _validate(request, None)
        loaded = self.slot.get()
        rt: CollaborativeRuntime = loaded.model
        student = rt.student(request.student_id, request.interactions, common_pb2.StudentVector())
        scores = rt.scores(student)
        best = top_n(scores, request.n or 100, rt.excluded(request.exclude_internship_ids, request.open_at))
        return common_pb2.ScoredItems(internship_ids=rt.index.names[best].tolist(), scores=scores[best].tolist(),
                                      popularity=rt.model.popularity[best].tolist(),
                                      student_vector=rt.vector_message(student), model=loaded.version_message(),
                                      basis=student.basis)

    def Score(self, request, context):
        loaded = self.slot.get()
        rt: CollaborativeRuntime = loaded.model
        _validate(request, "internship_ids", rt)
        student = rt.student(request.student_id, request.interactions, request.student_vector)
        positions, _ = rt.index.positions(request.internship_ids)
        return common_pb2.ScoredItems(internship_ids=rt.index.names[positions].tolist(),
                                      scores=rt.scores(student, positions).tolist(),
                                      popularity=rt.model.popularity[positions].tolist(),
                                      model=loaded.version_message(), basis=student.basis)


def make_servicer(cfg) -> CollaborativeServicer:
    return CollaborativeServicer(ModelSlot("collaborative", CollaborativeRuntime.from_bundle, cfg))


def main(argv=None) -> int:
    return run_component("collaborative", SERVICE, 50052, 9102, make_servicer,
                         collaborative_pb2_grpc.add_CollaborativeServiceServicer_to_server, argv)


if __name__ == "__main__":
    sys.exit(main())
