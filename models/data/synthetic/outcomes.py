"""The second pass: selection decisions for every application, once applicants per slot is
known, with the intercept calibrated so the realised selection rate meets the target.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from models.data.synthetic.internships import InternshipArrays
from models.data.synthetic.params import DAY, SEL_CROWD
from models.data.synthetic.sampling import seeded_rng, timestamps
from models.data.synthetic.sinks import Sink


def outcome_pass(sink: Sink, apps: dict, it: InternshipArrays, rate: float, seed: int,
                 chunk_size: int) -> dict:
    """Selection once applicants-per-slot is known; b0 calibrated to the target rate."""
    rng = seeded_rng(seed, 4)
    item = apps["item"]
    per_slot = np.bincount(item, minlength=len(it.slots)) / it.slots
    logit = apps["logit"].astype(np.float64) + SEL_CROWD * np.log(per_slot[item])
    b0 = _solve_intercept(logit, rate) if len(logit) else 0.0
    p = _sigmoid(b0 + logit)
    selected = (rng.random(len(p)) < p).astype(np.int64)
    decided = apps["ts"] + rng.integers(7 * DAY, 30 * DAY + 1, size=len(p))
    step = max(chunk_size, 100_000)
    for lo in range(0, len(p), step):
        sl = slice(lo, lo + step)
        sink.write(pa.table({
            "student_id": _student_ids(apps["student"][sl]),
            "internship_id": it.ids.take(pa.array(item[sl])),
            "selected": pa.array(selected[sl]),
            "decided_at": timestamps(decided[sl]),
        }))
    return {"b0": round(b0, 6), "rate": round(float(selected.mean()), 6) if len(p) else None,
            "auc": None if not len(p) else _round(_oracle_auc(selected, p))}


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _solve_intercept(logit: np.ndarray, rate: float) -> float:
    """b0 such that mean(sigmoid(b0 + logit)) == rate (monotone in b0, so bisection)."""
    lo, hi = -30.0, 30.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if _sigmoid(mid + logit).mean() < rate:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _oracle_auc(selected: np.ndarray, p: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score
    if len(np.unique(selected)) < 2:
        return None
    return float(roc_auc_score(selected, p))


def _round(x, nd=4):
    return None if x is None else round(x, nd)


def _student_ids(index: np.ndarray) -> pa.Array:
    return pa.array([f"S{i + 1:07d}" for i in index.tolist()])
