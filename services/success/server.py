"""Success service: calibrated P(selected | applies) per internship, with its top factors."""

from __future__ import annotations

import sys

import numpy as np

from models.components.features import pair_features
from models.components.success import FEATURES
from pmis.v1 import common_pb2, success_pb2, success_pb2_grpc
from services.common.batch import answer_each
from services.common.packed import extend_floats
from services.common.profiles import profile_columns, profiles_columns
from services.common.server import ModelAdmin, ModelSlot, run_component
from services.common.validation import Violations
from services.components import SERVICE_NAMES
from services.success.runtime import SuccessRuntime

FEATURE_NAMES = np.asarray(FEATURES)
SERVICE = SERVICE_NAMES["success"]
MAX_ITEMS, MAX_PAIRS = 1000, 1000


class SuccessServicer(ModelAdmin, success_pb2_grpc.SuccessServiceServicer):
    def __init__(self, slot: ModelSlot):
        self.slot = slot

    def PredictBatch(self, request, context):
        return answer_each(self.Predict, request, context, success_pb2.PredictBatchResponse())

    def Predict(self, request, context):
        requested = list(request.internship_ids)  # read twice: a list is cheaper to walk than the field
        v = Violations()
        v.check_profile("profile", request.profile, require_skills=False)
        v.check_ids("internship_ids", requested, 1, MAX_ITEMS)
        v.check_range("top_factors", request.top_factors, 0, 10)
        v.raise_if_any()
        loaded = self.slot.get()
        rt: SuccessRuntime = loaded.model
        positions, _ = rt.index.positions(requested)
        response = success_pb2.PredictResponse(base_rate=rt.model.base_rate, model=loaded.version_message())
        if not len(positions):
            return response
        student = rt.space.students(profile_columns(request.profile))
        x = pair_features(student, np.zeros(len(positions), dtype=np.int64), rt.space.items, positions)
        probabilities = rt.model.predict(x)
        ids = rt.index.names[positions].tolist()
        response.internship_ids.extend(ids)
        extend_floats(response, "probabilities", probabilities)
        if request.top_factors:
            counts, features, values, contributions = rt.model.factor_table(x, request.top_factors)
            if request.packed_factors:
                response.factor_counts.extend(counts.tolist())
                response.factor_names.extend(FEATURE_NAMES[features].tolist())
                extend_floats(response, "factor_values", values)
                extend_floats(response, "factor_contributions", contributions)
            else:  # one message per item and factor: for callers that ask about a few items
                response.predictions.extend(predictions(ids, probabilities, counts, features, values, contributions))
        return response

    def PredictPairs(self, request, context):
        Violations().check_pairs(request, MAX_PAIRS)
        loaded = self.slot.get()
        rt: SuccessRuntime = loaded.model
        p = rt.index.position.get(request.internship_id)
        n = len(request.profiles)
        probabilities = np.full(n, np.nan, dtype=np.float32)
        if p is not None:
            students = rt.space.students(profiles_columns(request.profiles))
            x = pair_features(students, np.arange(n), rt.space.items, np.full(n, p, dtype=np.int64))
            probabilities = rt.model.predict(x)
        return common_pb2.PairScores(scores=probabilities.tolist(), model=loaded.version_message())


def predictions(ids, probabilities, counts, features, values, contributions) -> list[success_pb2.Prediction]:
    out, at = [], 0
    for i, prob, n in zip(ids, probabilities.tolist(), counts.tolist()):
        out.append(success_pb2.Prediction(internship_id=i, probability=prob, top_factors=[
            success_pb2.Factor(name=FEATURES[f], value=v, contribution=c)
            for f, v, c in zip(features[at:at + n].tolist(), values[at:at + n].tolist(),
                               contributions[at:at + n].tolist())]))
        at += n
    return out


def make_servicer(cfg) -> SuccessServicer:
    return SuccessServicer(ModelSlot("success", SuccessRuntime.from_bundle, cfg))


def main(argv=None) -> int:
    return run_component("success", SERVICE, 50053, 9103, make_servicer,
                         success_pb2_grpc.add_SuccessServiceServicer_to_server, argv)


if __name__ == "__main__":
    sys.exit(main())
