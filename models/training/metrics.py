"""Ranking and calibration metrics, vectorised over students.

Ranking: relevant items are a student's future saves/applies (binary). Recall@k = hits / |relevant|;
NDCG@k with binary gains and the ideal DCG of min(|relevant|, k) hits; MAP@k averages precision
at each hit over min(|relevant|, k); coverage = share of rankable items in anybody's top k.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the k highest scores per row, best first (-inf never wins ties with real scores)."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def gather(m: sp.csr_matrix, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Dense m[rows[i], items[i, j]] for an (n, width) item matrix."""
    flat = m[np.repeat(np.asarray(rows), items.shape[1]), items.ravel()]
    return np.asarray(flat).reshape(items.shape)


def ranking_metrics(topk: np.ndarray, relevant: sp.csr_matrix, n_rankable: int, valid: np.ndarray | None = None) -> dict:
    """Mean Recall/NDCG/MAP@k over students (rows) and catalogue coverage.

    `valid` marks which entries of topk are real recommendations (False where a list is shorter).
    """
    n, k = topk.shape
    valid = np.ones_like(topk, dtype=bool) if valid is None else valid
    hits = gather(relevant, np.arange(n), np.where(valid, topk, 0)).astype(bool) & valid
    n_rel = np.asarray(relevant.sum(axis=1)).ravel().astype(np.float64)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (hits * discounts).sum(axis=1)
    ideal = np.cumsum(discounts)[np.clip(np.minimum(n_rel, k).astype(int) - 1, 0, k - 1)]
    precision_at = np.cumsum(hits, axis=1) / np.arange(1, k + 1)
    ap = (precision_at * hits).sum(axis=1) / np.maximum(np.minimum(n_rel, k), 1)
    per_student = {
        "recall": hits.sum(axis=1) / np.maximum(n_rel, 1),
        "ndcg": dcg / ideal,
        "map": ap,
    }
    return {
        **{f"{m}@{k}": float(np.mean(v)) for m, v in per_student.items()},
        "coverage": float(len(np.unique(topk[valid])) / max(n_rankable, 1)),
        "students": int(n),
        "_per_student": per_student,
    }


def group_breakdown(per_student: dict[str, np.ndarray], groups: dict[str, np.ndarray], k: int,
                    min_size: int = 20, permutations: int = 300, seed: int = 0) -> dict:
    """Metric means per value of each student attribute, with the min/max ratio across values.

    `ratio_null_p`: the share of random relabellings (students shuffled across the same group
    sizes) whose min/max ratio is as low as the observed one. A large value says the gap is what
    groups of these sizes show by chance; a small one (< 0.05) says the model serves a group worse.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for attr, values in groups.items():
        values = np.asarray(values).astype(str)
        table = {}
        names, codes = np.unique(values, return_inverse=True)
        sizes = np.bincount(codes, minlength=len(names))
        kept = sizes >= min_size  # too few students to say anything: reported, not compared
        for j, v in enumerate(names.tolist()):
            mask = codes == j
            table[v] = {"students": int(sizes[j])}
            if kept[j]:
                table[v].update({f"{m}@{k}": float(np.mean(a[mask])) for m, a in per_student.items()})
        ratios, null_p = {}, {}
        for m, a in per_student.items():
            a = np.asarray(a, dtype=np.float64)
            ratio = _min_max_ratio(a, codes, sizes, kept)
            ratios[f"{m}@{k}"] = ratio
            if ratio is not None and permutations:
                null = np.array([_min_max_ratio(a, rng.permutation(codes), sizes, kept) or 1.0
                                 for _ in range(permutations)])
                null_p[f"{m}@{k}"] = float((null <= ratio + 1e-12).mean())
        out[attr] = {"groups": table, "min_max_ratio": ratios, "ratio_null_p": null_p}
    return out


def _min_max_ratio(a: np.ndarray, codes: np.ndarray, sizes: np.ndarray, kept: np.ndarray) -> float | None:
    if kept.sum() < 2:
        return None
    means = np.bincount(codes, weights=a, minlength=len(sizes))[kept] / sizes[kept]
    return float(means.min() / means.max()) if means.max() > 0 else None


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> tuple[float, list[dict]]:
    """ECE over equal-mass bins (each bin holds ~n/bins predictions), and the bins for a plot."""
    order = np.argsort(p, kind="stable")
    chunks = np.array_split(order, bins)
    ece, table = 0.0, []
    for idx in chunks:
        if len(idx) == 0:
            continue
        mean_p, mean_y = float(p[idx].mean()), float(y[idx].mean())
        ece += len(idx) / len(p) * abs(mean_p - mean_y)
        table.append({"mean_predicted": mean_p, "observed_rate": mean_y, "count": int(len(idx))})
    return float(ece), table


def calibration_slope_intercept(y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    """Logistic recalibration fit y ~ a + b * logit(p): perfect calibration is slope 1, intercept 0."""
    eps = 1e-6
    logit = np.log(np.clip(p, eps, 1 - eps) / np.clip(1 - p, eps, 1 - eps))
    fit = LogisticRegression(C=np.inf, max_iter=1000).fit(logit[:, None], y)
    return float(fit.coef_[0, 0]), float(fit.intercept_[0])


def classification_report(y: np.ndarray, p: np.ndarray, bins: int = 10) -> dict:
    y = np.asarray(y, dtype=int)
    p = np.asarray(p, dtype=np.float64)
    prevalence = float(y.mean())
    brier = float(brier_score_loss(y, p))
    ece, table = expected_calibration_error(y, p, bins)
    slope, intercept = calibration_slope_intercept(y, p)
    return {
        "n": int(len(y)), "prevalence": prevalence,
        "roc_auc": float(roc_auc_score(y, p)), "pr_auc": float(average_precision_score(y, p)),
        "pr_auc_lift": float(average_precision_score(y, p) / max(prevalence, 1e-9)),
        "log_loss": float(log_loss(y, p)), "brier": brier,
        "brier_skill_score": float(1 - brier / max(prevalence * (1 - prevalence), 1e-12)),
        "ece": ece, "calibration_slope": slope, "calibration_intercept": intercept,
        "reliability": table,
    }
