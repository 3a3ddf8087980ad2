"""Fairness re-ranking seam. The fairness issue fills this in (DetConstSort, FA*IR, exposure).

Until then the re-ranker keeps the relevance order and moves nothing, whatever the options say;
the gateway already calls it at the right place in the flow and reports moved items.
"""

from __future__ import annotations

import numpy as np


def rerank(scores: np.ndarray, positions: np.ndarray, options) -> tuple[np.ndarray, np.ndarray]:
    """Order of the candidates (indices into `positions`) and a mask of the ones the re-ranker moved."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    return order, np.zeros(len(order), dtype=bool)
