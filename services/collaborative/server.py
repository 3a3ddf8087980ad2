"""Collaborative service: ALS/EASE candidates and scores, folding in interactions sent with the call.

A student's scores come from, in order of preference: the interactions in the request (folded
in against the served item factors, so history recorded after training counts and replicas stay
stateless), the student's row in the bundle, or item popularity for a student nobody knows.
Retrieve returns the folded-in student (`student_vector`); a Score that passes it back needs no
second fold-in.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from models.components.collaborative import CollaborativeModel
from models.pipeline import open_items, top_n
from pmis.v1 import collaborative_pb2_grpc, common_pb2
from services.common.batch import RetrieveScoreBatches
from services.common.items import ItemIndex
from services.common.profiles import EVENT_NAMES
from services.common.server import ModelAdmin, ModelSlot, run_component
from services.common.validation import Violations
from services.components import SERVICE_NAMES

SERVICE = SERVICE_NAMES["collaborative"]
MAX_RETRIEVE, MAX_SCORE, MAX_INTERACTIONS = 1000, 1000, 5000


@dataclass
class Student:
    """One student as the model scores them: an interaction row (EASE) and factors (ALS)."""
    row: sp.csr_matrix | None
    vector: np.ndarray | None
    basis: str  # "fold_in", "history" or "popularity"


@dataclass
class CollaborativeRuntime:
    model: CollaborativeModel
    index: ItemIndex
    content_hash: str = ""

    @classmethod
    def from_bundle(cls, bundle) -> "CollaborativeRuntime":
        model = CollaborativeModel.from_bundle(bundle)
        runtime = cls(model, ItemIndex(model.item_ids), bundle.ref.content_hash)
        if len(model.item_ids):
            model.fold_in(np.array([0]), ["view"])  # warm the solver before the first client call
        return runtime

    def student(self, student_id: str, interactions, given: common_pb2.StudentVector) -> Student:
        m = self.model
        if given.content_hash == self.content_hash and given.values and m.kind == "als":
            return Student(None, np.asarray(given.values, dtype=np.float32)[None, :], "fold_in")
        if interactions:
            positions, events = [], []
            for it in interactions:
                p = self.index.position.get(it.internship_id)
                if p is not None:
                    positions.append(p)
                    events.append(EVENT_NAMES[it.event])
            if positions:
                row = m.history_row(np.asarray(positions), events)
                return Student(row, m.fold_in_rows(row), "fold_in")
        r = m.user_index.get(student_id) if student_id else None
        if r is not None and m.user_items[r].nnz > 0:
            vector = None if m.user_factors is None else m.user_factors[r][None, :]
            return Student(m.user_items[r], vector, "history")
        return Student(None, None, "popularity")

    def scores(self, s: Student, positions: np.ndarray | None = None) -> np.ndarray:
        if s.basis == "popularity":
            return np.asarray(self.model.popularity if positions is None else self.model.popularity[positions],
                              dtype=np.float32)
        return self.model.scores_of(s.row, s.vector, positions)[0]

    def vector_message(self, s: Student) -> common_pb2.StudentVector | None:
        if s.vector is None or s.basis == "popularity":
            return None
        return common_pb2.StudentVector(content_hash=self.content_hash, values=s.vector[0].tolist())

    def excluded(self, ids, open_at: int) -> np.ndarray | None:
        mask = self.index.mask_of(ids) if ids else None
        if open_at and self.model.item_deadline is not None:
            closed = ~open_items(self.model.item_deadline, open_at)
            mask = closed if mask is None else mask | closed
        return mask


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
        return common_pb2.ScoredItems(internship_ids=rt.index.ids[best].tolist(), scores=scores[best].tolist(),
                                      popularity=rt.model.popularity[best].tolist(),
                                      student_vector=rt.vector_message(student), model=loaded.version_message(),
                                      basis=student.basis)

    def Score(self, request, context):
        loaded = self.slot.get()
        rt: CollaborativeRuntime = loaded.model
        _validate(request, "internship_ids", rt)
        student = rt.student(request.student_id, request.interactions, request.student_vector)
        positions, _ = rt.index.positions(request.internship_ids)
        return common_pb2.ScoredItems(internship_ids=rt.index.ids[positions].tolist(),
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
