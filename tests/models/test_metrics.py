"""Ranking and calibration metrics against hand-computed values and reference implementations."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.metrics import ndcg_score

from models.training.metrics import (
    calibration_slope_intercept,
    classification_report,
    expected_calibration_error,
    gather,
    group_breakdown,
    ranking_metrics,
    top_k,
)


def _relevant(rows: list[set[int]], n_items: int) -> sp.csr_matrix:
    m = np.zeros((len(rows), n_items), dtype=np.float32)
    for r, items in enumerate(rows):
        m[r, list(items)] = 1
    return sp.csr_matrix(m)


# --------------------------------------------------------------------------- ranking


def test_ranking_metrics_hand_computed():
    topk = np.array([[0, 1, 2], [3, 4, 0]])
    rel = _relevant([{1, 5}, {3}], 6)
    out = ranking_metrics(topk, rel, n_rankable=6)
    d = 1 / np.log2(3)  # discount at rank 2
    # student 0: one hit at rank 2 of 2 relevant; student 1: hit at rank 1 of 1 relevant
    assert out["recall@3"] == pytest.approx((0.5 + 1.0) / 2)
    assert out["ndcg@3"] == pytest.approx((d / (1 + d) + 1.0) / 2)
    assert out["map@3"] == pytest.approx(((1 / 2) / 2 + 1.0) / 2)
    assert out["coverage"] == pytest.approx(5 / 6)
    assert out["students"] == 2
    np.testing.assert_allclose(out["_per_student"]["recall"], [0.5, 1.0])
    np.testing.assert_allclose(out["_per_student"]["ndcg"], [d / (1 + d), 1.0])
    np.testing.assert_allclose(out["_per_student"]["map"], [0.25, 1.0])


def test_ranking_metrics_ideal_dcg_is_capped_at_k():
    # 5 relevant items, k = 2, both hits: NDCG = MAP = 1 but recall = 2/5.
    out = ranking_metrics(np.array([[0, 1]]), _relevant([{0, 1, 2, 3, 4}], 8), n_rankable=8)
    assert out["ndcg@2"] == pytest.approx(1.0)
    assert out["map@2"] == pytest.approx(1.0)
    assert out["recall@2"] == pytest.approx(0.4)
    assert out["coverage"] == pytest.approx(2 / 8)


def test_ranking_metrics_valid_mask_for_short_lists():
    topk = np.array([[0, 1, 2], [3, 0, 0]])       # student 1 has only one real recommendation
    valid = np.array([[True, True, True], [True, False, False]])
    rel = _relevant([{1, 5}, {3, 0}], 6)          # item 0 is relevant to student 1 but only padding
    out = ranking_metrics(topk, rel, n_rankable=6, valid=valid)
    d = 1 / np.log2(3)
    np.testing.assert_allclose(out["_per_student"]["recall"], [0.5, 0.5])
    np.testing.assert_allclose(out["_per_student"]["ndcg"], [d / (1 + d), 1 / (1 + d)])
    np.testing.assert_allclose(out["_per_student"]["map"], [0.25, 0.5])
    assert out["coverage"] == pytest.approx(4 / 6)  # padding does not count as covered
    unmasked = ranking_metrics(topk, rel, n_rankable=6)
    assert unmasked["recall@3"] > out["recall@3"]  # without the mask padding would score


def test_ndcg_matches_sklearn_on_random_data():
    rng = np.random.default_rng(0)
    n, m, k = 200, 80, 10
    scores = rng.normal(size=(n, m))
    rel = (rng.random((n, m)) < 0.06).astype(np.float32)
    rel[np.arange(n), rng.integers(0, m, n)] = 1  # everyone has at least one relevant item
    out = ranking_metrics(top_k(scores, k), sp.csr_matrix(rel), n_rankable=m)
    ours = out["_per_student"]["ndcg"]
    theirs = np.array([ndcg_score(rel[i:i + 1], scores[i:i + 1], k=k) for i in range(n)])
    np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-12)
    assert out[f"ndcg@{k}"] == pytest.approx(ndcg_score(rel, scores, k=k))
    # recall cross-check by brute force
    order = np.argsort(-scores, axis=1)[:, :k]
    recall = np.take_along_axis(rel, order, axis=1).sum(axis=1) / rel.sum(axis=1)
    np.testing.assert_allclose(out["_per_student"]["recall"], recall)
    assert 0 < out["coverage"] <= 1


def test_top_k_orders_best_first():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(30, 50))
    np.testing.assert_array_equal(top_k(scores, 7), np.argsort(-scores, axis=1)[:, :7])
    assert top_k(scores, 500).shape == (30, 50)  # k larger than the catalogue is clamped


def test_top_k_never_ranks_minus_inf_above_finite():
    rng = np.random.default_rng(2)
    scores = rng.normal(size=(40, 30)) * 1e6 - 1e7  # very negative but finite
    scores[rng.random(scores.shape) < 0.8] = -np.inf
    scores[:, 0] = -np.inf
    scores[0, :] = -np.inf
    scores[0, 5] = -1e30
    k = 10
    top = top_k(scores, k)
    picked = np.take_along_axis(scores, top, axis=1)
    for r in range(len(scores)):
        n_finite = int(np.isfinite(scores[r]).sum())
        assert np.isfinite(picked[r, :min(n_finite, k)]).all()
        assert np.isneginf(picked[r, min(n_finite, k):]).all()
        assert (np.diff(picked[r, :min(n_finite, k)]) <= 0).all()
    assert top[0, 0] == 5
    assert len(set(top[0].tolist())) == k  # still k distinct items


def test_gather():
    m = sp.csr_matrix(np.arange(12, dtype=np.float32).reshape(3, 4))
    out = gather(m, np.array([2, 0]), np.array([[3, 0], [1, 1]]))
    np.testing.assert_array_equal(out, [[11, 8], [1, 1]])


def test_group_breakdown_min_max_ratio():
    per = {"recall": np.r_[np.full(30, 0.8), np.full(40, 0.4), np.full(5, 0.0)],
           "ndcg": np.r_[np.full(30, 0.5), np.full(40, 0.5), np.full(5, 1.0)]}
    groups = {"gender": np.array(["F"] * 30 + ["M"] * 40 + ["X"] * 5),
              "rural": np.array([True, False] * 37 + [True])}
    out = group_breakdown(per, groups, k=10, min_size=20)
    g = out["gender"]
    assert g["groups"]["F"] == {"students": 30, "recall@10": pytest.approx(0.8), "ndcg@10": pytest.approx(0.5)}
    assert g["groups"]["M"]["recall@10"] == pytest.approx(0.4)
    assert g["groups"]["X"] == {"students": 5}  # too small to report a metric
    assert g["min_max_ratio"]["recall@10"] == pytest.approx(0.5)
    assert g["min_max_ratio"]["ndcg@10"] == pytest.approx(1.0)
    assert set(out["rural"]["groups"]) == {"True", "False"}
    assert out["rural"]["groups"]["True"]["students"] == 38
    zero = group_breakdown({"recall": np.zeros(50)}, {"g": np.array(["a", "b"] * 25)}, k=5)
    assert zero["g"]["min_max_ratio"]["recall@5"] is None
    assert g["ratio_null_p"]["recall@10"] < 0.01  # a real gap: no relabelling is that uneven


def test_group_ratio_null_p_tells_noise_from_a_gap():
    rng = np.random.default_rng(1)
    metric = rng.binomial(1, 0.3, size=2000).astype(float)
    labels = np.array(["big"] * 1975 + ["tiny"] * 25)
    noise = group_breakdown({"ndcg": metric}, {"g": labels}, k=10)["g"]
    assert noise["ratio_null_p"]["ndcg@10"] > 0.05   # whatever the tiny group's mean, it is chance
    served_worse = metric.copy()
    served_worse[:600] = 0  # the first 600 "big" students get nothing
    gap = group_breakdown({"ndcg": served_worse}, {"g": np.array(["a"] * 1000 + ["b"] * 1000)}, k=10)["g"]
    assert gap["min_max_ratio"]["ndcg@10"] < 0.5 and gap["ratio_null_p"]["ndcg@10"] < 0.01


# --------------------------------------------------------------------------- calibration


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def test_ece_near_zero_when_calibrated_and_large_when_shifted():
    rng = np.random.default_rng(3)
    n = 200_000
    p = rng.uniform(0.02, 0.75, n)
    y = (rng.random(n) < p).astype(int)
    ece, table = expected_calibration_error(y, p, bins=10)
    assert ece < 0.01
    assert len(table) == 10 and sum(b["count"] for b in table) == n
    assert all(abs(b["count"] - n / 10) <= 1 for b in table)  # equal-mass bins
    assert [b["mean_predicted"] for b in table] == sorted(b["mean_predicted"] for b in table)
    shifted, _ = expected_calibration_error(y, p + 0.2, bins=10)
    assert shifted == pytest.approx(0.2, abs=0.01)


def test_calibration_slope_intercept():
    rng = np.random.default_rng(4)
    n = 100_000
    logit = rng.normal(-1.0, 1.5, n)
    y = (rng.random(n) < _sigmoid(logit)).astype(int)
    slope, intercept = calibration_slope_intercept(y, _sigmoid(logit))
    assert slope == pytest.approx(1.0, abs=0.05)
    assert intercept == pytest.approx(0.0, abs=0.05)
    over_slope, _ = calibration_slope_intercept(y, _sigmoid(2 * logit))  # over-confident
    assert over_slope == pytest.approx(0.5, abs=0.05)
    under_slope, _ = calibration_slope_intercept(y, _sigmoid(0.5 * logit))  # under-confident
    assert under_slope == pytest.approx(2.0, abs=0.1)


def test_classification_report_numbers():
    rng = np.random.default_rng(5)
    n = 20_000
    logit = rng.normal(-1.5, 1.0, n)
    p = _sigmoid(logit)
    y = (rng.random(n) < p).astype(int)
    r = classification_report(y, p)
    assert r["n"] == n and r["prevalence"] == pytest.approx(y.mean())
    assert 0.6 < r["roc_auc"] < 0.9
    assert r["pr_auc_lift"] == pytest.approx(r["pr_auc"] / r["prevalence"])
    assert r["brier_skill_score"] == pytest.approx(1 - r["brier"] / (y.mean() * (1 - y.mean())))
    assert r["brier_skill_score"] > 0 and r["ece"] < 0.02
    constant = classification_report(y, np.full(n, y.mean()))
    assert constant["roc_auc"] == pytest.approx(0.5)
    assert constant["brier_skill_score"] == pytest.approx(0.0, abs=1e-9)
