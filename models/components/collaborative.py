"""Collaborative model: implicit-feedback ALS (benfred/implicit) or EASE, with fold-in.

Interactions become confidences by event type (a view says less than an application). Two
candidate models are fitted and the trainer keeps whichever wins on the validation window:
- ALS from `implicit`: user and item factors; a student's fresh interactions are folded in with
  implicit's own least-squares solve (`recalculate_user`'s kernel) against the stored item factors.
- EASE (Steck 2019): a closed-form item-item model B = I - P / diag(P), P = (X'X + lambda I)^-1.
  Exact and strong on small catalogues; O(items^2) memory, so only tried below MAX_EASE_ITEMS.
- item-kNN from `implicit` (BM25Recommender): each internship's K nearest by cosine over
  BM25-weighted interactions, a sparse item-item matrix; a student scores as their row times it.
EASE and item-kNN score a student straight from their interaction row (nothing to fold in).
Students the model has never seen get item popularity (the fallback), unless they bring
interactions to fold in.

Bundle layout (`save` / `from_bundle`; format in models/bundle/format.py), no pickles:
- arrays: `user_ids`, `item_ids`, `popularity`, `user_items_*` (the training interactions, CSR),
  `item_deadline` when known; by kind, `user_factors` and `item_factors` (ALS), `similarity_*`
  (item-kNN, CSR) or `ease_b` (EASE);
- documents: `model` (`kind`, `params`).
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
from implicit.als import AlternatingLeastSquares
from implicit.cpu import _als as implicit_solver
from implicit.nearest_neighbours import BM25Recommender
from threadpoolctl import threadpool_limits

from models.bundle.format import arrays_to_csr, Bundle, BundleRef, csr_to_arrays
from models.bundle.writing import write_bundle

COMPONENT = "collaborative"
EVENT_WEIGHTS = {"view": 1.0, "save": 3.0, "apply": 5.0}
MAX_CONFIDENCE = max(EVENT_WEIGHTS.values())
MAX_EASE_ITEMS = 20_000
ROW_KINDS = ("ease", "knn")  # scored from the student's interaction row, no factors


def search_space(trial, n_items: int) -> tuple[str, dict]:
    """One point of the hyperparameter search (an Optuna trial): ALS with factors, regularization
    and alpha on log scales over several decades and its iterations, or EASE with its lambda on a
    log scale (small catalogues only)."""
    kind = trial.suggest_categorical("kind", ["als", "ease", "knn"] if n_items <= MAX_EASE_ITEMS else ["als", "knn"])
    if kind == "ease":
        return kind, {"lambda": trial.suggest_float("lambda", 1.0, 1e4, log=True)}
    if kind == "knn":
        return kind, {"neighbours": trial.suggest_int("neighbours", 10, 500, log=True),
                      "k1": trial.suggest_float("k1", 0.5, 3.0), "b": trial.suggest_float("b", 0.1, 1.0)}
    return kind, {"factors": trial.suggest_int("factors", 8, 256, log=True),
                  "regularization": trial.suggest_float("regularization", 1e-3, 10.0, log=True),
                  "alpha": trial.suggest_float("alpha", 0.1, 100.0, log=True),
                  "iterations": trial.suggest_int("iterations", 5, 30)}


def serving_parameters(kind: str, params: dict, n_items: int) -> int:
    """The numbers a server holds to score a student: the item factors (ALS, students are folded
    in) or the dense item-item matrix (EASE). Model selection breaks ties by it."""
    if kind == "als":
        return n_items * int(params["factors"])
    return n_items * int(params["neighbours"]) if kind == "knn" else n_items * n_items


def event_weights(events) -> np.ndarray:
    """Confidence of each event (EVENT_WEIGHTS), vectorised over the distinct event names."""
    if not len(events):
        return np.zeros(0, np.float32)
    names, which = np.unique(np.asarray(events, dtype=str), return_inverse=True)
    return np.array([EVENT_WEIGHTS[n] for n in names.tolist()], dtype=np.float32)[which]


def interaction_matrix(u_idx, i_idx, events, n_users: int, n_items: int) -> sp.csr_matrix:
    """Confidence matrix (users x items): event weights (EVENT_WEIGHTS) summed per pair, capped."""
    m = sp.coo_matrix((event_weights(events), (np.asarray(u_idx), np.asarray(i_idx))), shape=(n_users, n_items)).tocsr()
    m.sum_duplicates()
    # Repeated events on one pair add up; cap at the strongest single weight so one noisy
    # student clicking ten times does not dominate an item's factors.
    m.data = np.minimum(m.data, MAX_CONFIDENCE).astype(np.float32)
    return m


def history(item_pos: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One student's interactions (catalogue positions and their event weights) as the columns
    (ascending, int32) and capped confidences (float32) of their row: `interaction_matrix` for
    one student."""
    item_pos = np.asarray(item_pos, dtype=np.int64)
    columns = np.unique(item_pos)
    which = np.searchsorted(columns, item_pos)  # np.unique's own return_inverse costs more
    confidences = np.minimum(np.bincount(which, weights=weights), MAX_CONFIDENCE)
    return columns.astype(np.int32), confidences.astype(np.float32)


def _plain(array: np.ndarray | None) -> np.ndarray | None:
    """A plain ndarray over a bundle's memmap (the same pages, no copy): numpy's memmap subclass
    adds bookkeeping to every product and slice taken from it, on every request."""
    return None if array is None else np.asarray(array)


class CollaborativeModel:
    def __init__(self, kind: str, params: dict, user_ids: np.ndarray, item_ids: np.ndarray,
                 popularity: np.ndarray, user_items: sp.csr_matrix,
                 user_factors: np.ndarray | None = None, item_factors: np.ndarray | None = None,
                 ease_b: np.ndarray | None = None, item_deadline: np.ndarray | None = None,
                 similarity: sp.csr_matrix | None = None):
        self.kind, self.params = kind, params
        self.user_ids, self.item_ids = user_ids, item_ids
        self.user_index = {u: i for i, u in enumerate(user_ids.tolist())}
        self.popularity = _plain(popularity)  # (n_items,) normalised weighted interaction counts
        self.user_items = user_items      # training confidences, for EASE scoring and exclusion
        self.user_factors, self.item_factors, self.ease_b = _plain(user_factors), _plain(item_factors), _plain(ease_b)
        self.similarity = similarity      # item-kNN: (items, items), each row an item's neighbours
        # Epoch seconds per item (int64 max = none), so retrieval can leave out closed internships;
        # None in bundles written before it was stored.
        self.item_deadline = _plain(item_deadline)
        self._als = None
        if kind == "als":
            # An implicit model around the stored item factors, used only for fold-in.
            # One solver thread: a fold-in is one small Cholesky solve per student.
            self._als = AlternatingLeastSquares(factors=item_factors.shape[1], regularization=params["regularization"],
                                                alpha=params["alpha"], random_state=0, num_threads=1)
            # implicit's solver needs a writable buffer; the bundle's memmap is read-only. The copy
            # is items x factors; scoring keeps using the shared memmap.
            self._als.item_factors = np.array(item_factors, dtype=np.float32, copy=True)

    @classmethod
    def fit(cls, kind: str, params: dict, user_items: sp.csr_matrix, user_ids, item_ids) -> "CollaborativeModel":
        user_items = user_items.astype(np.float32).tocsr()
        counts = np.asarray(user_items.sum(axis=0)).ravel()
        popularity = (counts / max(counts.max(), 1e-9)).astype(np.float32)
        if kind == "als":
            als = AlternatingLeastSquares(factors=params["factors"], regularization=params["regularization"],
                                          alpha=params["alpha"], iterations=params.get("iterations", 15),
                                          random_state=params.get("seed", 0))
            # implicit parallelises itself; a second BLAS thread pool underneath only contends.
            with threadpool_limits(1, "blas"):
                als.fit(user_items, show_progress=False)
            return cls(kind, params, np.asarray(user_ids), np.asarray(item_ids), popularity, user_items,
                       user_factors=np.asarray(als.user_factors, dtype=np.float32),
                       item_factors=np.asarray(als.item_factors, dtype=np.float32))
        if kind == "ease":
            x = (user_items > 0).astype(np.float64)  # EASE works on binary relevance
            gram = (x.T @ x).toarray()
            gram[np.diag_indices_from(gram)] += params["lambda"]
            p = np.linalg.inv(gram)
            b = -p / np.diag(p)
            b[np.diag_indices_from(b)] = 0.0
            return cls(kind, params, np.asarray(user_ids), np.asarray(item_ids), popularity, user_items,
                       ease_b=b.astype(np.float32))
        if kind == "knn":
            knn = BM25Recommender(K=int(params["neighbours"]), K1=float(params["k1"]), B=float(params["b"]),
                                  num_threads=1)
            with warnings.catch_warnings():  # implicit converts its own BM25 weights to CSR and says so
                warnings.simplefilter("ignore")
                knn.fit(user_items, show_progress=False)
            return cls(kind, params, np.asarray(user_ids), np.asarray(item_ids), popularity, user_items,
                       similarity=sp.csr_matrix(knn.similarity, dtype=np.float32))
        raise ValueError(f"unknown collaborative model kind {kind!r}")

    def scores_for_rows(self, user_rows: sp.csr_matrix, user_vectors: np.ndarray | None = None) -> np.ndarray:
        """Scores (n, n_items) from interaction rows (EASE, item-kNN) or user factor vectors (ALS)."""
        if self.kind == "ease":
            return np.asarray((user_rows > 0).astype(np.float32) @ self.ease_b, dtype=np.float32)
        if self.kind == "knn":  # as implicit's own scorer: the confidences times the neighbours
            return np.asarray((sp.csr_matrix(user_rows, dtype=np.float32) @ self.similarity).toarray(), dtype=np.float32)
        return np.asarray(user_vectors @ self.item_factors.T, dtype=np.float32)

    def known(self, user_ids) -> np.ndarray:
        return np.array([u in self.user_index for u in user_ids], dtype=bool)

    def score_users(self, user_pos: np.ndarray) -> np.ndarray:
        """Scores for students the model was trained on, by their row position."""
        user_pos = np.asarray(user_pos)
        rows = self.user_items[user_pos]
        vectors = None if self.kind in ROW_KINDS else self.user_factors[user_pos]
        return self.scores_for_rows(rows, vectors)

    def history_row(self, item_pos: np.ndarray, events) -> sp.csr_matrix:
        """One student's interactions as a (1, n_items) confidence row: `interaction_matrix` for
        one student, built directly (a request's history is a few dozen events)."""
        return self.row_of(*history(item_pos, event_weights(events)))

    def row_of(self, columns: np.ndarray, confidences: np.ndarray) -> sp.csr_matrix:
        """A (1, n_items) row from one student's `history`."""
        return sp.csr_matrix((confidences, columns, np.array([0, len(columns)], dtype=columns.dtype)),
                             shape=(1, len(self.item_ids)))

    def fold_in_rows(self, rows: sp.csr_matrix) -> np.ndarray | None:
        """Students' factors solved against the served item factors from their interaction rows
        (ALS; no retraining). EASE and item-kNN score straight from the rows: None."""
        if self.kind in ROW_KINDS:
            return None
        rows = sp.csr_matrix(rows, dtype=np.float32)
        return self._recalculate_users(rows.indptr, rows.indices, rows.data)

    def fold_in_history(self, columns: np.ndarray, confidences: np.ndarray) -> np.ndarray | None:
        """`fold_in_rows` for one student's `history`, without building their row."""
        if self.kind in ROW_KINDS:
            return None
        return self._recalculate_users(np.array([0, len(columns)], dtype=columns.dtype), columns, confidences)

    def _recalculate_users(self, indptr: np.ndarray, columns: np.ndarray, confidences: np.ndarray) -> np.ndarray:
        """implicit's `recalculate_user` on the CSR arrays of the students' rows: the same
        least-squares kernel with the same inputs (confidences scaled by alpha in float32), minus
        the sparse-matrix copies and checks around it, which cost more than the solve for one
        student. implicit is pinned (pyproject.toml); a test holds the two equal."""
        als = self._als
        confidences = np.asarray(confidences, dtype=np.float32)
        if als.alpha != 1.0:
            confidences = confidences * als.alpha
        factors = np.zeros((len(indptr) - 1, als.factors), dtype=als.dtype)
        implicit_solver._least_squares(als.YtY, indptr, columns, confidences.astype(np.float32), factors,
                                       als.item_factors, als.regularization, num_threads=als.num_threads)
        return factors

    def scores_of(self, rows: sp.csr_matrix, vectors: np.ndarray | None, item_pos: np.ndarray | None = None
                  ) -> np.ndarray:
        """Scores (n, n_items), or (n, len(item_pos)) for given items only."""
        if self.kind in ROW_KINDS:
            full = self.scores_for_rows(rows)
            return full if item_pos is None else full[:, item_pos]
        factors = self.item_factors if item_pos is None else self.item_factors[np.asarray(item_pos)]
        return np.asarray(vectors @ factors.T, dtype=np.float32)

    def fold_in(self, item_pos: np.ndarray, events) -> np.ndarray:
        """Scores (n_items,) for one student from fresh interactions only (no retraining)."""
        columns, confidences = history(item_pos, event_weights(events))
        return self.scores_of(self.row_of(columns, confidences), self.fold_in_history(columns, confidences))[0]

    def popularity_scores(self, n: int = 1) -> np.ndarray:
        return np.broadcast_to(self.popularity, (n, len(self.popularity)))

    def save(self, root, metadata: dict, item_deadline: np.ndarray | None = None) -> BundleRef:
        arrays = {"user_ids": self.user_ids, "item_ids": self.item_ids, "popularity": self.popularity,
                  **csr_to_arrays("user_items", self.user_items)}
        if item_deadline is not None:
            arrays["item_deadline"] = np.asarray(item_deadline, dtype=np.int64)
        if self.kind == "als":
            arrays.update(user_factors=self.user_factors, item_factors=self.item_factors)
        elif self.kind == "knn":
            arrays.update(csr_to_arrays("similarity", self.similarity))
        else:
            arrays.update(ease_b=self.ease_b)
        return write_bundle(root, COMPONENT, arrays=arrays,
                            documents={"model": {"kind": self.kind, "params": self.params}}, metadata=metadata)

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> "CollaborativeModel":
        a, doc = bundle.arrays, bundle.documents["model"]
        return cls(doc["kind"], doc["params"], a["user_ids"], a["item_ids"], a["popularity"],
                   arrays_to_csr("user_items", a), user_factors=a.get("user_factors"),
                   item_factors=a.get("item_factors"), ease_b=a.get("ease_b"), item_deadline=a.get("item_deadline"),
                   similarity=arrays_to_csr("similarity", a) if doc["kind"] == "knn" else None)
