"""The success predictor's stage of a training run: model search, calibration, and an evaluation
on later applications against the base rate (the bundle serves the base rate when the model does
not beat it beyond noise)."""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from models.components.features import pair_features
from models.components.success import FEATURES as SUCCESS_FEATURES
from models.components.success import SuccessModel, search
from models.training import metrics as M
from models.training import selection
from models.training.diagnostics import curves, permutation_importance

STAGE = "success predictor: search, calibration, evaluation"


def fit_and_evaluate(tr, phase: int):
    cfg = tr.cfg
    space = tr.space(None)  # competition as known when the company decides
    x, y = tr.success_rows(phase, space)
    xs, ys = tr.subsample(x, y, cfg.max_success_rows)
    def searched(name, result):
        if cfg.progress:
            tqdm.write(f"  {name}: cv log-loss {result['cv_log_loss']:.4f}")
        tr.emit("metrics", STAGE, f"searched {name}",
                   {f"success.search.{name}.cv_log_loss": result["cv_log_loss"]})

    best, params, results = search(xs, ys, folds=cfg.cv_folds, budget=cfg.search_budget, seed=cfg.seed,
                                   progress=searched, algorithms=cfg.success_algorithms)
    xf, yf = tr.subsample(x, y, 4 * cfg.max_success_rows)
    model = SuccessModel.fit(xf, yf, best, params, folds=cfg.cv_folds, seed=cfg.seed)
    idx = tr.idx
    later = tr.split.out_phase >= phase
    x_eval = pair_features(tr.students, idx.out_s[later], space.items, idx.out_i[later])
    p = model.predict(x_eval)
    report = M.classification_report(idx.out_y[later], p)
    report["against_base_rate"] = against = against_base_rate(idx.out_y[later], p, model.base_rate, cfg.seed)
    tr.success_serves_base_rate = model.serves_base_rate = not against["model_wins"]
    report["serves"] = "the base rate" if model.serves_base_rate else "the model"
    if model.serves_base_rate:
        message = ("the success predictor does not beat the base rate beyond noise (log-loss difference "
                   f"{against['difference']:+.4f}, 95 % interval [{against['interval'][0]:+.4f}, "
                   f"{against['interval'][1]:+.4f}]): the bundle serves the base rate")
        tqdm.write(f"  warning: {message}")
        tr.emit("message", STAGE, message)
    report["curves"] = curves(idx.out_y[later], p)
    report["feature_importance"] = permutation_importance(model.predict, x_eval, idx.out_y[later],
                                                          SUCCESS_FEATURES, seed=cfg.seed)
    report.update({"algorithm": best, "params": {k: str(v) for k, v in params.items()}, "search": {
        k: {"cv_log_loss": v["cv_log_loss"], "params": {a: str(b) for a, b in v["params"].items()}}
        for k, v in results.items()}, "evaluated_on": "applications made on or after the first cutoff",
        "train_rows": int(len(y)), "features": SUCCESS_FEATURES})
    tr.report["success"] = report
    tr.emit("metrics", STAGE, f"chose {best}", {f"success.{m}": report[m] for m in
                                                ("roc_auc", "pr_auc", "log_loss", "brier", "ece")})
    return best, params, model


def against_base_rate(y: np.ndarray, p: np.ndarray, base_rate: float, seed: int) -> dict:
    """The success model's log-loss against the training base rate's on the same applications,
    with the paired bootstrap interval of the difference (positive: the model is better)."""
    y = np.asarray(y, dtype=np.float64)
    eps = 1e-7
    def loss(q):  # noqa: E306
        q = np.clip(np.asarray(q, dtype=np.float64), eps, 1 - eps)
        return -(y * np.log(q) + (1 - y) * np.log(1 - q))
    out = selection.compare(loss(np.full(len(y), base_rate)), loss(p), seed=seed)
    out["model_wins"] = out["beyond_noise"] and out["difference"] > 0
    return out
