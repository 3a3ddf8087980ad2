"""Content service: TF-IDF candidates and scores for a profile, with matched and missing skills."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

from models.content import ContentModel, profile_text
from models.features import FeatureSpace
from pmis.v1 import common_pb2, content_pb2, content_pb2_grpc
from services.common.items import ItemIndex, top_n
from services.common.server import ModelAdmin, ModelSlot, rpc, run_component
from services.common.validation import Violations

SERVICE = content_pb2.DESCRIPTOR.services_by_name["ContentService"].full_name
MAX_RETRIEVE, MAX_SCORE = 1000, 1000


@dataclass
class ContentRuntime:
    model: ContentModel
    space: FeatureSpace
    index: ItemIndex

    @classmethod
    def from_bundle(cls, bundle) -> "ContentRuntime":
        runtime = cls(ContentModel.from_bundle(bundle), FeatureSpace.from_arrays(bundle.arrays),
                      ItemIndex(bundle.arrays["item_ids"]))
        runtime.model.score(["warm up"])  # first call pays the vectoriser's lazy set-up, not a client
        return runtime

    def scored(self, profile, vector, positions: np.ndarray, scores: np.ndarray) -> list[common_pb2.ScoredItem]:
        """Scored items with matched skills (and their terms in the match) and missing skills;
        `vector` is the profile's embedding the scores came from."""
        student_bits = self.space.skills.bitsets([[s.strip().lower() for s in profile.skills]])[0]
        items = self.space.items.skills[positions]
        matched = self.space.skills.decode_many(items & student_bits)
        missing = self.space.skills.decode_many(items & ~student_bits)
        out = []
        for i, p, s, m, x in zip(self.index.ids[positions].tolist(), positions.tolist(), scores.tolist(),
                                 matched, missing):
            # Strongest first: matched skills by their own term in the match, missing ones by what
            # they would add ("skills to learn" takes the first three).
            terms = self.model.skill_terms(vector, p, m)
            out.append(common_pb2.ScoredItem(internship_id=i, score=s, matched_skills=[t[0] for t in terms],
                                             matched_weights=[t[1] for t in terms],
                                             missing_skills=self.model.order_skills(p, x)))
        return out


def _text(profile) -> str:
    # Normalised like the skill vocabulary, so " SQL " meets the internship's "skill_sql" token.
    return profile_text([s.strip().lower() for s in profile.skills], profile.field, list(profile.preferred_sectors))


class ContentServicer(ModelAdmin, content_pb2_grpc.ContentServiceServicer):
    def __init__(self, slot: ModelSlot):
        self.slot = slot

    @rpc
    def Retrieve(self, request, context):
        v = Violations()
        v.check_id("student_id", request.student_id, required=False)
        v.check_profile("profile", request.profile)
        n = request.n or 100
        v.check_range("n", n, 1, MAX_RETRIEVE)
        v.raise_if_any()
        loaded = self.slot.get()
        rt: ContentRuntime = loaded.model
        vector = rt.model.embed([_text(request.profile)])
        scores = rt.model.similarity(vector)[0]
        excluded = rt.index.mask_of(request.exclude_internship_ids) if request.exclude_internship_ids else None
        best = top_n(scores, n, excluded)
        return common_pb2.ScoredItems(items=rt.scored(request.profile, vector, best, scores[best]),
                                      model=loaded.version_message(), basis="profile")

    @rpc
    def Score(self, request, context):
        v = Violations()
        v.check_profile("profile", request.profile)
        v.check_ids("internship_ids", request.internship_ids, 1, MAX_SCORE)
        v.raise_if_any()
        loaded = self.slot.get()
        rt: ContentRuntime = loaded.model
        # Ids this bundle does not know (posted after training) are left out of the answer.
        positions, _ = rt.index.positions(request.internship_ids)
        vector = rt.model.embed([_text(request.profile)])
        scores = rt.model.similarity(vector, positions)[0] if len(positions) else np.zeros(0)
        return common_pb2.ScoredItems(items=rt.scored(request.profile, vector, positions, scores),
                                      model=loaded.version_message(), basis="profile")


def make_servicer(cfg) -> ContentServicer:
    return ContentServicer(ModelSlot("content", ContentRuntime.from_bundle, cfg))


def main(argv=None) -> int:
    return run_component("content", SERVICE, 50051, 9101, make_servicer,
                         content_pb2_grpc.add_ContentServiceServicer_to_server, argv)


if __name__ == "__main__":
    sys.exit(main())
