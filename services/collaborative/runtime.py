"""The collaborative model as the collaborative service serves it: the bundle turned into a warm
model, a student from the interactions sent (folded in), the bundle's row, or popularity; their
scores; closed and excluded internships."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from models.components.collaborative import CollaborativeModel, EVENT_WEIGHTS, history, ROW_KINDS
from pmis.v1 import common_pb2
from services.common import items
from services.common.items import ItemIndex
from services.common.profiles import EVENT_NAMES


# Each event type's confidence (EVENT_WEIGHTS), indexed by its proto enum value: a request's
# events become confidences in one array lookup.
EVENT_CONFIDENCE = np.zeros(max(EVENT_NAMES) + 1, dtype=np.float32)
EVENT_CONFIDENCE[list(EVENT_NAMES)] = [EVENT_WEIGHTS[name] for name in EVENT_NAMES.values()]


@dataclass
class Student:
    """One student as the model scores them: an interaction row (EASE, item-kNN) or factors (ALS)."""
    row: sp.csr_matrix | None
    vector: np.ndarray | None
    basis: str  # "fold_in", "history" or "popularity"


@dataclass
class CollaborativeRuntime:
    model: CollaborativeModel
    index: ItemIndex
    content_hash: str = ""

    @classmethod
    def from_bundle(cls, bundle) -> "CollaborativeRuntime":
        model = CollaborativeModel.from_bundle(bundle)
        runtime = cls(model, ItemIndex(model.item_ids), bundle.ref.content_hash)
        if len(model.item_ids):
            model.fold_in(np.array([0]), ["view"])  # warm the solver before the first client call
        return runtime

    def student(self, student_id: str, interactions, given: common_pb2.StudentVector) -> Student:
        m = self.model
        if given.content_hash == self.content_hash and given.values and m.kind == "als":
            return Student(None, np.asarray(given.values, dtype=np.float32)[None, :], "fold_in")
        from_rows = m.kind in ROW_KINDS  # only these score from the interaction row
        if interactions:
            positions, weights = self.known_interactions(interactions)
            if len(positions):
                columns, confidences = history(positions, weights)
                row = m.row_of(columns, confidences) if from_rows else None
                return Student(row, m.fold_in_history(columns, confidences), "fold_in")
        r = m.user_index.get(student_id) if student_id else None
        if r is not None and m.user_items.indptr[r + 1] > m.user_items.indptr[r]:  # has interactions
            vector = None if m.user_factors is None else m.user_factors[r][None, :]
            return Student(m.user_items[r] if from_rows else None, vector, "history")
        return Student(None, None, "popularity")

    def known_interactions(self, interactions) -> tuple[np.ndarray, np.ndarray]:
        """Catalogue positions and event weights of the interactions with internships this bundle
        knows (those posted after training are left out)."""
        position = self.index.position
        pairs = np.array([(position.get(it.internship_id, -1), it.event) for it in interactions],
                         dtype=np.int64).reshape(-1, 2)
        known = pairs[pairs[:, 0] >= 0]
        return known[:, 0], EVENT_CONFIDENCE[known[:, 1]]

    def scores(self, s: Student, positions: np.ndarray | None = None) -> np.ndarray:
        if s.basis == "popularity":
            return np.asarray(self.model.popularity if positions is None else self.model.popularity[positions],
                              dtype=np.float32)
        return self.model.scores_of(s.row, s.vector, positions)[0]

    def vector_message(self, s: Student) -> common_pb2.StudentVector | None:
        if s.vector is None or s.basis == "popularity":
            return None
        return common_pb2.StudentVector(content_hash=self.content_hash, values=s.vector[0].tolist())

    def excluded(self, ids, open_at: int) -> np.ndarray | None:
        return items.excluded(self.index, ids, self.model.item_deadline, open_at)
