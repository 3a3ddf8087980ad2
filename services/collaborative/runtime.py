"""The collaborative model as the collaborative service serves it: the bundle turned into a warm
model, a student from the interactions sent (folded in), the bundle's row, or popularity; their
scores; closed and excluded internships."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from models.components.collaborative import CollaborativeModel
from pmis.v1 import common_pb2
from services.common import items
from services.common.items import ItemIndex
from services.common.profiles import EVENT_NAMES


@dataclass
class Student:
    """One student as the model scores them: an interaction row (EASE) and factors (ALS)."""
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
        if interactions:
            positions, events = [], []
            for it in interactions:
                p = self.index.position.get(it.internship_id)
                if p is not None:
                    positions.append(p)
                    events.append(EVENT_NAMES[it.event])
            if positions:
                row = m.history_row(np.asarray(positions), events)
                return Student(row, m.fold_in_rows(row), "fold_in")
        r = m.user_index.get(student_id) if student_id else None
        if r is not None and m.user_items[r].nnz > 0:
            vector = None if m.user_factors is None else m.user_factors[r][None, :]
            return Student(m.user_items[r], vector, "history")
        return Student(None, None, "popularity")

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
