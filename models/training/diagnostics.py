"""Model diagnostics shared by training, the trainer service and the CLI.

- ROC and precision-recall curve points (downsampled, for plots stored with a run);
- permutation feature importance of the success predictor (ROC-AUC drop);
- the *evaluation window* a version's metrics were measured on, and whether two versions'
  stored metrics are comparable (same window);
- the direction of a metric (higher or lower is better) and the auto-activation decision.

Why "same window" is decided from stored facts: every version's metrics come from its run's
time-split evaluation (components fitted before the test cutoff, scored on the test window).
Two versions' metrics measure the same thing only when the data (``data_version``), the
cutoffs, k, the candidate depth and the evaluated students are identical; the fingerprint
below hashes exactly those. Champion bundles cannot simply be re-scored on a newer dataset's
window: every shipped bundle is refitted on all of its data, so it may have seen that window,
and the collaborative model is keyed to the students table it was trained on.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Callable

import numpy as np
from sklearn.metrics import precision_recall_curve, roc_auc_score, roc_curve

LOWER_IS_BETTER = ("log_loss", "brier", "ece")
NOT_A_SCORE = ("students", "n", "prevalence", "calibration_slope", "calibration_intercept", "train_rows")
WINDOW_KEYS = ("data_version", "train_until", "valid_until", "k", "candidates", "test_students", "sample_seed",
               "split", "split_seed")
# Keys added later, left out of the fingerprint at their old default so that windows recorded
# before them keep their fingerprints (a time split was the only kind).
LATER_KEYS = {"split": ("time", None), "split_seed": (None,)}


def curves(y: np.ndarray, p: np.ndarray, max_points: int = 200) -> dict:
    """ROC and PR curve points, each thinned to at most ``max_points`` (plots, not statistics)."""
    y = np.asarray(y, dtype=int)
    p = np.asarray(p, dtype=np.float64)
    if len(np.unique(y)) < 2:
        return {}
    fpr, tpr, _ = roc_curve(y, p)
    precision, recall, _ = precision_recall_curve(y, p)

    def thin(*arrays):
        keep = np.unique(np.linspace(0, len(arrays[0]) - 1, min(max_points, len(arrays[0]))).astype(int))
        return [np.round(a[keep], 5).tolist() for a in arrays]

    fpr, tpr = thin(fpr, tpr)
    recall, precision = thin(recall, precision)
    return {"roc": {"fpr": fpr, "tpr": tpr}, "pr": {"recall": recall, "precision": precision},
            "prevalence": float(y.mean())}


def permutation_importance(predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray, y: np.ndarray,
                           names: list[str], *, seed: int = 0, max_rows: int = 20_000) -> dict[str, float]:
    """ROC-AUC lost when each feature column is shuffled (one repeat; rows subsampled), best first.

    Model-agnostic, measured on the evaluation rows, so it describes the model as it scores
    unseen applications rather than how it was fitted.
    """
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=int)
    if len(np.unique(y)) < 2 or len(y) == 0:
        return {}
    rng = np.random.default_rng(seed)
    if len(y) > max_rows:
        keep = rng.choice(len(y), max_rows, replace=False)
        x, y = x[keep], y[keep]
        if len(np.unique(y)) < 2:
            return {}
    base = roc_auc_score(y, predict(x))
    out = {}
    for j, name in enumerate(names):
        shuffled = x.copy()
        shuffled[:, j] = rng.permutation(shuffled[:, j])
        out[name] = round(float(base - roc_auc_score(y, predict(shuffled))), 5)
    return dict(sorted(out.items(), key=lambda t: -t[1]))


def window_fingerprint(window: dict | None) -> str:
    if not window:
        return ""
    core = {k: window.get(k) for k in WINDOW_KEYS if window.get(k) not in LATER_KEYS.get(k, ())}
    return hashlib.sha256(json.dumps(core, sort_keys=True, default=str).encode()).hexdigest()[:16]


def window_differences(a: dict | None, b: dict | None) -> list[str]:
    """Human-readable reasons two evaluation windows differ ([] when they are the same)."""
    if not a or not b:
        return ["evaluation window not recorded for " + ("both" if not a and not b else "one") +
                " of the versions (trained before windows were recorded)"]
    return [f"{k}: {a.get(k)} != {b.get(k)}" for k in WINDOW_KEYS if a.get(k) != b.get(k)]


def direction(metric: str) -> int:
    """+1 higher is better, -1 lower is better, 0 not a quality score (counts, rates)."""
    base = metric.rsplit(".", 1)[-1]
    if base in NOT_A_SCORE or metric in NOT_A_SCORE:
        return 0
    if base in LOWER_IS_BETTER:
        return -1
    return 1


def activation_metric(component: str, k: int = 10) -> str:
    """The metric auto-activation compares: calibrated ranking quality for success is ROC-AUC,
    for the three ranking components NDCG@k of that component on the test window."""
    return "roc_auc" if component == "success" else f"ndcg@{k}"


def decide_activation(component: str, version: int, new_metrics: dict, new_window: dict | None,
                      champion: dict | None, champion_window: dict | None, margin: float,
                      k: int = 10) -> dict[str, Any]:
    """Should ``version`` replace the champion? Only on the same evaluation window, and only if
    its metric beats the champion's by at least ``margin`` (absolute, in the metric's units)."""
    metric = activation_metric(component, k)
    new_value = new_metrics.get(metric)
    out: dict[str, Any] = {"component": component, "version": version, "metric": metric, "margin": margin,
                           "new_value": new_value, "champion_version": None, "champion_value": None}
    if new_value is None:
        return {**out, "activate": False, "reason": f"the new version has no {metric}"}
    if champion is None:
        return {**out, "activate": True, "reason": "no champion yet"}
    out["champion_version"] = champion["version"]
    out["champion_value"] = champion.get("metrics", {}).get(metric)
    if out["champion_value"] is None:
        return {**out, "activate": False, "reason": f"the champion has no recorded {metric}; compare and activate by hand"}
    differences = window_differences(new_window, champion_window)
    if differences:
        return {**out, "activate": False, "reason": "not comparable: evaluated on a different window ("
                + "; ".join(differences) + "); compare and activate by hand"}
    gain = direction(metric) * (new_value - out["champion_value"])
    if gain >= margin:
        return {**out, "activate": True,
                "reason": f"{metric} {new_value:.4f} vs champion v{champion['version']} "
                          f"{out['champion_value']:.4f}: gain {gain:+.4f} >= margin {margin}"}
    return {**out, "activate": False,
            "reason": f"{metric} {new_value:.4f} vs champion v{champion['version']} {out['champion_value']:.4f}: "
                      f"gain {gain:.4f} < margin {margin}"}
