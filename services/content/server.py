"""Content service: TF-IDF candidates and scores for a profile; matched and missing skills of the
items asked about, packed."""

from __future__ import annotations

import sys

import numpy as np

from models.pipeline import top_n
from pmis.v1 import common_pb2, content_pb2_grpc
from services.common.batch import RetrieveScoreBatches
from services.common.server import ModelAdmin, ModelSlot, run_component
from services.common.validation import Violations
from services.components import SERVICE_NAMES
from services.content.runtime import ContentRuntime, text_of

SERVICE = SERVICE_NAMES["content"]
MAX_RETRIEVE, MAX_SCORE, MAX_PAIRS = 1000, 1000, 1000


class ContentServicer(ModelAdmin, RetrieveScoreBatches, content_pb2_grpc.ContentServiceServicer):
    def __init__(self, slot: ModelSlot):
        self.slot = slot

    def Retrieve(self, request, context):
        v = Violations()
        v.check_id("student_id", request.student_id, required=False)
        v.check_profile("profile", request.profile)
        n = request.n or 100
        v.check_range("n", n, 1, MAX_RETRIEVE)
        v.check_range("open_at", request.open_at, 0, 2**62)
        v.raise_if_any()
        loaded = self.slot.get()
        rt: ContentRuntime = loaded.model
        vector = rt.model.embed_rows([text_of(request.profile)])
        scores = rt.model.similarity(vector)[0]
        best = top_n(scores, n, rt.excluded(request.exclude_internship_ids, request.open_at))
        return common_pb2.ScoredItems(internship_ids=rt.index.names[best].tolist(), scores=scores[best].tolist(),
                                      student_vector=rt.vector_message(vector), model=loaded.version_message(),
                                      basis="profile")

    def Score(self, request, context):
        v = Violations()
        v.check_profile("profile", request.profile)
        v.check_ids("internship_ids", request.internship_ids, 1, MAX_SCORE)
        v.raise_if_any()
        loaded = self.slot.get()
        rt: ContentRuntime = loaded.model
        # Ids this bundle does not know (posted after training) are left out of the answer.
        positions, _ = rt.index.positions(request.internship_ids)
        vector = rt.vector(request.profile, request.student_vector, v)
        scores = rt.model.similarity(vector, positions)[0] if len(positions) else np.zeros(0, dtype=np.float32)
        response = common_pb2.ScoredItems(internship_ids=rt.index.names[positions].tolist(), scores=scores.tolist(),
                                          model=loaded.version_message(), basis="profile")
        if request.details:
            t = rt.skills.table(vector, request.profile.skills, positions)
            response.matched_counts.extend(t.matched_counts.tolist())
            response.matched_skills.extend(t.matched_skills.tolist())
            response.matched_weights.extend(t.matched_weights.tolist())
            response.missing_counts.extend(t.missing_counts.tolist())
            response.missing_skills.extend(t.missing_skills.tolist())
        return response

    def ScorePairs(self, request, context):
        Violations().check_pairs(request, MAX_PAIRS)
        loaded = self.slot.get()
        rt: ContentRuntime = loaded.model
        p = rt.index.position.get(request.internship_id)
        scores = np.full(len(request.profiles), np.nan, dtype=np.float32)
        if p is not None:
            scores = rt.model.score([text_of(pr) for pr in request.profiles], np.array([p]))[:, 0]
        return common_pb2.PairScores(scores=scores.tolist(), model=loaded.version_message())


def make_servicer(cfg) -> ContentServicer:
    return ContentServicer(ModelSlot("content", ContentRuntime.from_bundle, cfg))


def main(argv=None) -> int:
    return run_component("content", SERVICE, 50051, 9101, make_servicer,
                         content_pb2_grpc.add_ContentServiceServicer_to_server, argv)


if __name__ == "__main__":
    sys.exit(main())
