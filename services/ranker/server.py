"""Ranker service: one relevance score per candidate from component scores and pair features."""

from __future__ import annotations

import sys

import numpy as np

from models.components.scores import COMPONENT_SCORES
from pmis.v1 import common_pb2, ranker_pb2, ranker_pb2_grpc
from services.common.batch import answer_each
from services.common.packed import extend_floats
from services.common.profiles import profile_columns
from services.common.config import env
from services.common.server import ModelAdmin, ModelSlot, run_component
from services.common.validation import Violations
from services.components import SERVICE_NAMES
from services.ranker.runtime import RankerRuntime

SERVICE = SERVICE_NAMES["ranker"]
MAX_CANDIDATES = 2000
# Candidate message field per ranker component score, in COMPONENT_SCORES order.
CANDIDATE_FIELDS = dict(zip(COMPONENT_SCORES, ["content_score", "collab_score", "popularity", "success_probability"]))


def candidate_arrays(request, v: Violations) -> tuple[list[str], np.ndarray]:
    """Ids and the (n, 4) component scores (NaN = unavailable) from either request form."""
    if request.candidates:
        candidates = list(request.candidates)
        ids = [c.internship_id for c in candidates]
        fields = [CANDIDATE_FIELDS[name] for name in COMPONENT_SCORES]
        scores = np.array([[getattr(c, f) if c.HasField(f) else np.nan for f in fields] for c in candidates],
                          dtype=np.float32).reshape(len(ids), len(COMPONENT_SCORES))
        v.check_ids("candidates", ids, 1, MAX_CANDIDATES)
    else:
        ids = list(request.internship_ids)
        v.check_ids("internship_ids", ids, 1, MAX_CANDIDATES)
        scores = np.asarray(request.component_scores, dtype=np.float32)
        if len(scores) != len(COMPONENT_SCORES) * len(ids):
            v.add("component_scores", f"must hold {len(COMPONENT_SCORES)} scores per internship id "
                                      f"({len(COMPONENT_SCORES) * len(ids)}), got {len(scores)}")
            scores = np.full((len(ids), len(COMPONENT_SCORES)), np.nan, dtype=np.float32)
        scores = scores.reshape(len(ids), len(COMPONENT_SCORES))
    if np.isinf(scores).any():
        v.add("component_scores", "must be finite, or NaN for a component that did not answer")
    return ids, scores


class RankerServicer(ModelAdmin, ranker_pb2_grpc.RankerServiceServicer):
    def __init__(self, slot: ModelSlot):
        self.slot = slot

    def RankBatch(self, request, context):
        return answer_each(self.Rank, request, context, ranker_pb2.RankBatchResponse())

    def Rank(self, request, context):
        v = Violations()
        v.check_profile("profile", request.profile, require_skills=False)
        ids, component = candidate_arrays(request, v)
        v.raise_if_any()
        loaded = self.slot.get()
        rt: RankerRuntime = loaded.model
        explain = request.contributions or (request.contributions_if_cheap and rt.cheap_to_explain)
        scores, contrib = rt.rank(profile_columns(request.profile), ids, component, explain)
        names = rt.model.split_names
        response = ranker_pb2.RankResponse(model=loaded.version_message(), ranking=rt.model.ranking)
        extend_floats(response, "scores", scores)
        if request.candidates:
            response.items.extend(common_pb2.ScoredItem(internship_id=i, score=s) for i, s in zip(ids, scores.tolist()))
        if explain:
            if request.candidates:
                for row in contrib.tolist():
                    response.contributions.add(
                        by_feature=[common_pb2.Contribution(name=f, value=v) for f, v in zip(names, row)],
                        bias=row[-1])
            else:
                response.contribution_features.extend(names)
                extend_floats(response, "contribution_values", contrib.ravel())
        return response


def make_servicer(cfg) -> RankerServicer:
    method = env("CONTRIBUTIONS", "path")  # PMIS_CONTRIBUTIONS: how explanations split a score
    if method not in ("shap", "path"):
        raise SystemExit(f"PMIS_CONTRIBUTIONS must be 'shap' or 'path', not {method!r}")
    return RankerServicer(ModelSlot("ranker", lambda bundle: RankerRuntime.from_bundle(bundle, method), cfg))


def main(argv=None) -> int:
    return run_component("ranker", SERVICE, 50054, 9104, make_servicer,
                         ranker_pb2_grpc.add_RankerServiceServicer_to_server, argv)


if __name__ == "__main__":
    sys.exit(main())
