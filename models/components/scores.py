"""The four component scores of a candidate, and the static blend over them.

`COMPONENT_SCORES` names the columns of the (…, 4) component score array (models/pipeline.py) and
the blend's weights. No model library is imported here: the gateway blends (when the ranker is
down) without loading LightGBM.
"""

from __future__ import annotations

import warnings

import numpy as np

# The component score array's columns, in order.
COMPONENT_SCORES = ["content_score", "collab_score", "popularity", "success_p"]


def blend_terms(component_scores: np.ndarray, weights: dict[str, float]) -> np.ndarray:
    """Each component's term of the static blend: its weight times its z-score within the list.

    `component_scores` is (m, 4) for one student's list, or (n, m, 4) for n lists padded with NaN;
    z-scores are taken along the list axis, and a NaN (missing component or padding) adds zero.
    """
    s = np.asarray(component_scores, dtype=np.float64)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: a component that is down
        mean = np.nanmean(s, axis=-2, keepdims=True)
        sd = np.nanstd(s, axis=-2, keepdims=True)
    z = np.nan_to_num((s - mean) / np.where(sd > 1e-9, sd, 1.0))
    return z * np.array([weights.get(name, 0.0) for name in COMPONENT_SCORES])


def blend_scores(component_scores: np.ndarray, weights: dict[str, float]) -> np.ndarray:
    """Static blend: weighted sum of z-scored component scores within each candidate list."""
    return blend_terms(component_scores, weights).sum(axis=-1).astype(np.float32)
