"""Helpers for servers that answer over a bundle's internship ids."""

from __future__ import annotations

import numpy as np


class ItemIndex:
    """internship id <-> position in a bundle's arrays."""

    def __init__(self, ids: np.ndarray):
        self.ids = np.asarray(ids)
        self.position = {str(i): p for p, i in enumerate(self.ids.tolist())}

    def positions(self, ids) -> tuple[np.ndarray, list[str]]:
        """Positions of the known ids (in request order) and the ids this bundle does not know."""
        known, unknown = [], []
        for i in ids:
            p = self.position.get(i)
            if p is None:
                unknown.append(i)
            else:
                known.append(p)
        return np.asarray(known, dtype=np.int64), unknown

    def mask_of(self, ids) -> np.ndarray:
        mask = np.zeros(len(self.ids), dtype=bool)
        pos, _ = self.positions(ids)
        mask[pos] = True
        return mask


def top_n(scores: np.ndarray, n: int, excluded: np.ndarray | None = None) -> np.ndarray:
    """Positions of the n best finite scores, best first."""
    s = np.array(scores, dtype=np.float32, copy=True)
    if excluded is not None:
        s[excluded] = -np.inf
    n = int(min(n, np.isfinite(s).sum()))
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    part = np.argpartition(-s, n - 1)[:n]
    return part[np.argsort(-s[part], kind="stable")]
