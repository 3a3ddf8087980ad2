"""Collaborative service: ALS/EASE candidates and scores, folding in interactions sent with the call.

A student's scores come from, in order of preference: the interactions in the request (folded
in against the served item factors, so history recorded after training counts and replicas stay
stateless), the student's row in the bundle, or item popularity for a student nobody knows.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

from models.collaborative import CollaborativeModel
from pmis.v1 import collaborative_pb2, collaborative_pb2_grpc, common_pb2
from services.common.items import ItemIndex, top_n
from services.common.profiles import EVENT_NAMES
from services.common.server import ModelAdmin, ModelSlot, rpc, run_component
from services.common.validation import Violations

SERVICE = collaborative_pb2.DESCRIPTOR.services_by_name["CollaborativeService"].full_name
MAX_RETRIEVE, MAX_SCORE, MAX_INTERACTIONS = 1000, 1000, 5000


@dataclass
class CollaborativeRuntime:
    model: CollaborativeModel
    index: ItemIndex

    @classmethod
    def from_bundle(cls, bundle) -> "CollaborativeRuntime":
        model = CollaborativeModel.from_bundle(bundle)
        runtime = cls(model, ItemIndex(model.item_ids))
        if len(model.item_ids):
            model.fold_in(np.array([0]), ["view"])  # warm the solver before the first client call
        return runtime

    def item(self, p: int, scores: np.ndarray) -> common_pb2.ScoredItem:
        return common_pb2.ScoredItem(internship_id=str(self.index.ids[p]), score=float(scores[p]),
                                     popularity=float(self.model.popularity[p]))

    def scores(self, student_id: str, interactions) -> tuple[np.ndarray, str]:
        if interactions:
            positions, events = [], []
            for it in interactions:
                p = self.index.position.get(it.internship_id)
                if p is not None:
                    positions.append(p)
                    events.append(EVENT_NAMES[it.event])
            if positions:
                return self.model.fold_in(np.asarray(positions), events), "fold_in"
        row = self.model.user_index.get(student_id) if student_id else None
        if row is not None and self.model.user_items[row].nnz > 0:
            return self.model.score_users(np.array([row]))[0], "history"
        return np.asarray(self.model.popularity, dtype=np.float32), "popularity"


def _validate(request, ids_field: str | None) -> None:
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
    else:
        v.check_range("n", request.n or 100, 1, MAX_RETRIEVE)
    v.raise_if_any()


class CollaborativeServicer(ModelAdmin, collaborative_pb2_grpc.CollaborativeServiceServicer):
    def __init__(self, slot: ModelSlot):
        self.slot = slot

    @rpc
    def Retrieve(self, request, context):
        _validate(request, None)
        loaded = self.slot.get()
        rt: CollaborativeRuntime = loaded.model
        scores, basis = rt.scores(request.student_id, request.interactions)
        excluded = rt.index.mask_of(request.exclude_internship_ids) if request.exclude_internship_ids else None
        best = top_n(scores, request.n or 100, excluded)
        return common_pb2.ScoredItems(
            items=[rt.item(p, scores) for p in best],
            model=loaded.version_message(), basis=basis)

    @rpc
    def Score(self, request, context):
        _validate(request, "internship_ids")
        loaded = self.slot.get()
        rt: CollaborativeRuntime = loaded.model
        scores, basis = rt.scores(request.student_id, request.interactions)
        positions, _ = rt.index.positions(request.internship_ids)
        return common_pb2.ScoredItems(
            items=[rt.item(p, scores) for p in positions],
            model=loaded.version_message(), basis=basis)


def make_servicer(cfg) -> CollaborativeServicer:
    return CollaborativeServicer(ModelSlot("collaborative", CollaborativeRuntime.from_bundle, cfg))


def main(argv=None) -> int:
    return run_component("collaborative", SERVICE, 50052, 9102, make_servicer,
                         collaborative_pb2_grpc.add_CollaborativeServiceServicer_to_server, argv)


if __name__ == "__main__":
    sys.exit(main())
