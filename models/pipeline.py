"""The stages of one recommendation, shared by the gateway (one student, components over gRPC)
and the offline evaluation (many students at once, models in process), so that what is
evaluated is what is served.

    retrieve (top_n per retriever, seen and closed items excluded)
      -> union (catalogue positions, ascending) -> filter (a keep mask over the catalogue)
      -> score (the (n, m, 4) component score array, NaN where unknown)
      -> rank (the learned ranker, else the static blend, else one component)
      -> fair re-rank (models.fairness.reranker) -> explain the final k (gateway)

`Candidates` is the in-flight container: catalogue positions, which of them are real (lists are
padded to one width), the component scores and the pair features, computed once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from models.components.scores import blend_scores

if TYPE_CHECKING:  # the gateway ranks through the ranker service: no LightGBM import on its side
    from models.components.ranker import RankerModel

# Columns of the component score array, in the ranker's COMPONENT_SCORES order.
CONTENT, COLLABORATIVE, POPULARITY, SUCCESS = range(4)
SCORE_COLUMNS = ("content", "collaborative", "popularity", "success_probability")


def top_n(scores: np.ndarray, n: int, excluded: np.ndarray | None = None) -> np.ndarray:
    """Positions of the n best finite scores, best first; ties go to the lower position, so a
    server and the evaluation pick the same items from the same scores."""
    s = np.array(scores, dtype=np.float32, copy=True)
    s[~np.isfinite(s)] = -np.inf
    if excluded is not None:
        s[excluded] = -np.inf
    n = int(min(n, np.isfinite(s).sum()))
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    threshold = s[np.argpartition(-s, n - 1)[:n]].min()
    above = np.flatnonzero(s > threshold)
    tied = np.flatnonzero(s == threshold)[:n - len(above)]
    chosen = np.concatenate([above, tied])
    return chosen[np.lexsort((chosen, -s[chosen]))]


def top_n_rows(scores: np.ndarray, n: int) -> np.ndarray:
    """`top_n` for each row of a (students, items) matrix (excluded items already at -inf), padded
    with -1 where a row has fewer than n finite scores."""
    out = np.full((len(scores), n), -1, dtype=np.int64)
    for r, row in enumerate(scores):
        best = top_n(row, n)
        out[r, :len(best)] = best
    return out


def open_items(deadline: np.ndarray, now: int) -> np.ndarray:
    """Internships still taking applications at `now` (deadline unknown: open)."""
    return np.asarray(deadline) >= now


def collaborative_known(basis: str) -> bool:
    """A student the collaborative model knows through interactions. Otherwise its scores are
    item popularity, which fills the popularity column only: the collaborative column stays NaN,
    as the ranker saw it in training."""
    return basis in ("fold_in", "history")


@dataclass
class Candidates:
    items: np.ndarray    # (n, m) catalogue positions, ascending within a row, padded
    valid: np.ndarray    # (n, m) real candidates
    scores: np.ndarray   # (n, m, 4) component scores (SCORE_COLUMNS), NaN where padded or unknown
    pair: np.ndarray | None = None  # (valid.sum(), |PAIR_FEATURES|) features of the valid candidates

    @classmethod
    def union(cls, *retrieved: np.ndarray) -> "Candidates":
        """Union of the retrievers' (n, width) position lists (-1 = padding), sorted per row."""
        cand = np.sort(np.hstack(retrieved), axis=1)
        valid = cand >= 0
        valid[:, 1:] &= cand[:, 1:] != cand[:, :-1]  # the second copy of an item
        cand = np.where(valid, cand, 0)
        scores = np.full(cand.shape + (len(SCORE_COLUMNS),), np.nan, dtype=np.float32)
        return cls(cand, valid, scores)

    def keep(self, mask: np.ndarray) -> None:
        """Drop candidates whose catalogue position is False in `mask` (a filter stage): one mask
        over the catalogue for every row, or one per row (n, catalogue)."""
        mask = np.asarray(mask)
        self.valid &= mask[self.items] if mask.ndim == 1 else np.take_along_axis(mask, self.items, axis=1)
        self.scores[~self.valid] = np.nan

    def compact(self) -> "Candidates":
        """One student's list without padding (the gateway's shape)."""
        assert len(self.items) == 1
        keep = self.valid[0]
        return Candidates(self.items[:, keep], self.valid[:, keep], self.scores[:, keep],
                          self.pair)

    def lookup(self, column: int, full: np.ndarray) -> None:
        """Fill a score column from (n, catalogue) scores, where real."""
        values = np.take_along_axis(full, self.items, axis=1)
        self.scores[..., column] = np.where(self.valid, values, np.nan)


def rank(c: Candidates, *, ranker: RankerModel | None = None, ranker_scores: np.ndarray | None = None,
         ranking: str = "ranker", blend_weights: dict, mode: str = "hybrid") -> tuple[np.ndarray, str]:
    """The ordering score (n, m) and its name: the rank stage (a ranker bundle here, serving the
    learned ranker or the blend it was trained beside; or the scores a ranker service returned,
    named `ranking`), else the static blend; or one component when the mode asks."""
    if mode in ("content", "collaborative"):
        column = CONTENT if mode == "content" else COLLABORATIVE
        return np.nan_to_num(c.scores[..., column], nan=-np.inf), mode
    if ranker is not None and ranker.ranking == "blend":  # what this ranker bundle serves
        return blend_scores(c.scores, ranker.blend_weights), "blend"
    if ranker is not None and ranker_scores is None:
        ranker_scores = np.zeros(c.valid.shape, dtype=np.float32)
        ranker_scores[c.valid] = ranker.score(c.scores[c.valid], c.pair)
    if ranker_scores is not None:
        return ranker_scores, ranking
    return blend_scores(c.scores, blend_weights), "blend"


def best_k(c: Candidates, final: np.ndarray, k: int) -> np.ndarray:
    """Columns of the k best real candidates per row, best first (ties: lower position first),
    padded with -1."""
    padded = np.where(c.valid, final, -np.inf)
    return top_n_rows(padded, k)
