"""The success predictor: calibration, model search, bundles and tampering, served arithmetic and factors."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from models.bundle.format import BundleError
from models.bundle.reading import load_bundle
from models.components.features import PAIR_FEATURES
from models.components.success import FEATURES as SUCCESS_FEATURES
from models.components.success import SuccessModel, search
from tests.support.bundles import no_signing_key  # noqa: F401 - autouse fixture
from tests.support.components import one_thread  # noqa: F401 - autouse fixture


# --------------------------------------------------------------------------- success predictor

F = {name: i for i, name in enumerate(PAIR_FEATURES)}


def _success_data(n: int, seed: int):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(SUCCESS_FEATURES))).astype(np.float32)
    x[:, F["skill_overlap"]] = rng.uniform(0, 1, n)
    x[:, F["cgpa"]] = rng.uniform(5, 10, n)
    x[:, F["distance_class"]] = rng.integers(0, 5, n)
    x[rng.random(n) < 0.05, F["cgpa"]] = np.nan  # some missing CGPAs are imputed
    cgpa = np.nan_to_num(x[:, F["cgpa"]], nan=7.5)
    p = 1 / (1 + np.exp(-(-2.6 + 3.0 * x[:, F["skill_overlap"]] + 0.6 * (cgpa - 7.5))))
    y = (rng.random(n) < p).astype(int)
    return x, y, p


@pytest.fixture(scope="module")
def success_model():
    x, y, _ = _success_data(4000, seed=1)
    return SuccessModel.fit(x, y, "logistic_regression", {"clf__C": 1.0}, folds=3, seed=0)


def test_success_model_is_discriminative_and_calibrated(success_model):
    x, y, p_true = _success_data(8000, seed=2)
    pred = success_model.predict(x)
    assert pred.shape == (8000,) and pred.dtype == np.float32
    assert ((pred > 0) & (pred < 1)).all()
    assert roc_auc_score(y, pred) > 0.7
    assert abs(pred.mean() - y.mean()) < 0.02
    assert abs(pred.mean() - p_true.mean()) < 0.02
    # higher skill overlap -> higher predicted chance, all else equal
    a, b = x[:1].copy(), x[:1].copy()
    a[0, F["skill_overlap"]], b[0, F["skill_overlap"]] = 0.0, 1.0
    assert success_model.predict(b)[0] > success_model.predict(a)[0] + 0.1


def test_success_search_compares_all_candidates():
    x, y, _ = _success_data(600, seed=3)
    best, params, results = search(x, y, folds=2, budget=1, seed=0)
    assert set(results) == {"logistic_regression", "hist_gradient_boosting", "random_forest"}
    assert best == min(results, key=lambda k: results[k]["cv_log_loss"])
    assert params == results[best]["params"]
    assert all(0 < r["cv_log_loss"] < 0.7 for r in results.values())


def test_success_bundle_round_trip_and_tamper(success_model, tmp_path):
    x, _, _ = _success_data(500, seed=4)
    ref = success_model.save(tmp_path, {"data_version": "t"}, {})
    loaded = SuccessModel.from_bundle(load_bundle(ref.path))
    np.testing.assert_array_equal(loaded.predict(x), success_model.predict(x))
    assert loaded.algorithm == "logistic_regression"

    target = ref.path / "model.joblib"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"model\.joblib"):
        load_bundle(ref.path)


# --------------------------------------------------------------------------- serving arithmetic
# What the servers compute directly from a bundle must equal what the libraries compute.


def test_logistic_success_is_served_as_arithmetic_equal_to_the_library(success_model):
    from models.components.success import design_matrix

    assert success_model.linear is not None  # a logistic regression: served as a dot product
    x, _, _ = _success_data(3000, seed=5)
    x[::17, F["distance_class"]] = np.nan  # missing values go through the imputer's medians
    library = success_model.model.predict_proba(design_matrix(x))[:, 1]
    assert np.abs(success_model.predict(x) - library).max() <= 1e-6
    # and the factors are measured on the same log-odds
    counts = success_model.factor_table(x[:5], 3)[0]
    assert ((1 <= counts) & (counts <= 3)).all()


def test_a_success_model_that_serves_the_base_rate(success_model, tmp_path):
    """Training found it no better than the base rate: the bundle serves the base rate to every
    pair, with no factors, and keeps saying so after a round trip."""
    x, _, _ = _success_data(50, seed=9)
    success_model.serves_base_rate = True
    try:
        loaded = SuccessModel.from_bundle(load_bundle(success_model.save(tmp_path, {}, {}).path))
    finally:
        success_model.serves_base_rate = False
    assert loaded.serves_base_rate
    np.testing.assert_array_equal(loaded.predict(x), np.float32(loaded.base_rate))
    assert loaded.factor_table(x, 3)[0].sum() == 0


def test_success_factor_table_equals_one_swap_at_a_time(success_model):
    """The vectorised table against its definition, one row and one feature at a time: the change
    in log-odds when the feature is set to the typical pair's value, strongest three first."""
    x, _, _ = _success_data(60, seed=8)
    x[::7, F["distance_class"]] = np.nan
    counts, features, values, contributions = success_model.factor_table(x, 3)
    assert counts.sum() == len(features) == len(values) == len(contributions)
    at = 0
    for r in range(len(x)):
        base = success_model._log_odds(x[r:r + 1])[0]
        change = []
        for j in range(x.shape[1]):
            swapped = x[r:r + 1].copy()
            swapped[0, j] = success_model.reference[j]
            change.append(base - success_model._log_odds(swapped)[0])
        expected = [j for j in np.argsort(-np.abs(change), kind="stable")[:3] if abs(change[j]) > 1e-6]
        n = counts[r]
        assert features[at:at + n].tolist() == expected
        np.testing.assert_allclose(contributions[at:at + n], [change[j] for j in expected], rtol=1e-9, atol=1e-12)
        np.testing.assert_array_equal(values[at:at + n], x[r, expected].astype(np.float64))
        at += n


def test_non_linear_success_models_go_through_the_library():
    from models.components.success import design_matrix

    x, y, _ = _success_data(1500, seed=6)
    model = SuccessModel.fit(x, y, "hist_gradient_boosting", {"clf__max_leaf_nodes": 7}, folds=3, seed=0)
    assert model.linear is None
    np.testing.assert_array_equal(model.predict(x[:50]),
                                  model.model.predict_proba(design_matrix(x[:50]))[:, 1].astype(np.float32))
