"""The success servicer: Predict, its top factors (per item and packed), the base rate, argument checks."""

from __future__ import annotations

import numpy as np
import pytest

from gateway import explain
from pmis.v1 import common_pb2, success_pb2
from tests.support.servicers import admin_token, bad_fields, catalog_rows, loaded, profile  # noqa: F401 - fixtures


# --------------------------------------------------------------------------- success


def test_success_predict(loaded, catalog_rows):
    h = loaded["success"]
    ids = catalog_rows["internships"][:40]
    p = profile(education="BCA", field="Computer Applications", cgpa=8.1, college_tier=2, district="Pune",
                state="Maharashtra", latitude=18.52, longitude=73.86)
    resp = h.ok("Predict", success_pb2.PredictRequest(profile=p, internship_ids=[*ids, "I999999"], top_factors=2))
    assert resp.model.component == "success"
    assert [pr.internship_id for pr in resp.predictions] == list(resp.internship_ids) == ids  # unknown left out
    probs = np.array([pr.probability for pr in resp.predictions])
    assert list(resp.probabilities) == pytest.approx(probs.tolist(), abs=1e-7)
    assert ((probs > 0) & (probs < 1)).all() and probs.std() > 0
    assert all(1 <= len(pr.top_factors) <= 2 for pr in resp.predictions)
    for pr in resp.predictions:
        assert all(f.name and np.isfinite(f.contribution) for f in pr.top_factors)
        contributions = [abs(f.contribution) for f in pr.top_factors]
        assert contributions == sorted(contributions, reverse=True)
    # the base rate is the bundle's, and that is the training data's selection rate
    bundle_rate = h.servicer.slot.get().model.model.base_rate
    assert resp.base_rate == pytest.approx(bundle_rate, rel=1e-6)
    assert 0 < resp.base_rate < 1
    assert resp.base_rate == pytest.approx(catalog_rows["selection_rate"], abs=0.1)
    # more factors on request, up to 10; probabilities do not depend on it
    # packed, the same factors for every item in a handful of arrays
    flat = h.ok("Predict", success_pb2.PredictRequest(profile=p, internship_ids=ids, top_factors=2, packed_factors=True))
    assert not flat.predictions and list(flat.probabilities) == list(resp.probabilities)
    assert len(flat.factor_counts) == len(ids) and sum(flat.factor_counts) == len(flat.factor_names)
    by_id = explain.factor_rows(flat, ids)
    assert [by_id[pr.internship_id] for pr in resp.predictions] == \
        [[(f.name, f.value, f.contribution) for f in pr.top_factors] for pr in resp.predictions]
    more = h.ok("Predict", success_pb2.PredictRequest(profile=p, internship_ids=ids, top_factors=10))
    assert all(2 <= len(pr.top_factors) <= 10 for pr in more.predictions)
    assert [pr.probability for pr in more.predictions] == pytest.approx(probs.tolist(), abs=1e-6)
    # 0 = no factors (the cheap call the gateway makes for every candidate): packed arrays only
    none = h.ok("Predict", success_pb2.PredictRequest(profile=p, internship_ids=ids, top_factors=0))
    assert not none.predictions and list(none.internship_ids) == ids
    assert list(none.probabilities) == pytest.approx(probs.tolist(), abs=1e-6)


def test_success_profile_matters_and_sparse_profiles_work(loaded, catalog_rows):
    h = loaded["success"]
    ids = catalog_rows["internships"][:40]
    strong = h.ok("Predict", success_pb2.PredictRequest(profile=profile(cgpa=9.5, college_tier=1), internship_ids=ids))
    weak = h.ok("Predict", success_pb2.PredictRequest(profile=profile(cgpa=4.0, college_tier=3), internship_ids=ids))
    assert list(strong.probabilities) != list(weak.probabilities) and len(strong.probabilities) == len(ids)
    # no skills, no optional fields at all: still an answer (success does not require skills)
    bare = h.ok("Predict", success_pb2.PredictRequest(profile=common_pb2.StudentProfile(), internship_ids=ids[:3]))
    assert len(bare.probabilities) == 3 and all(0 < p < 1 for p in bare.probabilities)
    nothing_known = h.ok("Predict", success_pb2.PredictRequest(profile=profile(), internship_ids=["I999999"]))
    assert len(nothing_known.probabilities) == 0 and 0 < nothing_known.base_rate < 1


@pytest.mark.parametrize("request_,fields", [
    (success_pb2.PredictRequest(profile=profile(), internship_ids=["I000001"], top_factors=11), {"top_factors"}),
    (success_pb2.PredictRequest(profile=profile(), internship_ids=["I000001"], top_factors=-1), {"top_factors"}),
    (success_pb2.PredictRequest(profile=profile()), {"internship_ids"}),
    (success_pb2.PredictRequest(profile=profile(cgpa=10.5), internship_ids=["I000001"]), {"profile.cgpa"}),
    (success_pb2.PredictRequest(profile=profile(cgpa=-0.1, longitude=181.0), internship_ids=["I000001"]),
     {"profile.cgpa", "profile.longitude"}),
    (success_pb2.PredictRequest(profile=profile(skills=["s"] * 51), internship_ids=["x y"], top_factors=20),
     {"profile.skills", "internship_ids[0]", "top_factors"}),
])
def test_success_invalid_arguments(loaded, request_, fields):
    assert bad_fields(loaded["success"], "Predict", request_) == fields
