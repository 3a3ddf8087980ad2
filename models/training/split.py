"""The dataset as integer arrays, and the split of its interactions into train, validation and
test phases (by time, or at random per student) that every training stage sees through."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from models.data.contract import Dataset

GRADES = {"view": 0, "save": 1, "apply": 2}  # graded relevance of an interaction
GROUP_ATTRIBUTES = ["gender", "social_category", "rural", "college_tier", "disability"]


@dataclass
class Indexed:
    """The dataset as integer arrays aligned with students/internships row order."""
    student_ids: np.ndarray
    item_ids: np.ndarray
    s: np.ndarray
    i: np.ndarray
    event: np.ndarray
    ts: np.ndarray
    out_s: np.ndarray | None
    out_i: np.ndarray | None
    out_y: np.ndarray | None
    out_ts: np.ndarray | None  # timestamp of the application each outcome belongs to


def positions(index: pd.Index, column: pd.Series) -> np.ndarray:
    """Position in `index` of every value of `column` (-1 where absent); a categorical column is
    looked up once per category, not once per row."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        at = np.append(index.get_indexer(column.cat.categories.astype(str)), -1)
        return at[column.cat.codes.to_numpy()]  # code -1 (missing) -> the appended -1
    return index.get_indexer(column.astype(str))


def index_dataset(ds: Dataset) -> Indexed:
    students = pd.Index(ds.students["student_id"].astype(str))
    items = pd.Index(ds.internships["internship_id"].astype(str))
    inter = ds.interactions
    ts = inter["timestamp"].astype("int64").to_numpy() // 1_000_000  # microseconds -> seconds
    idx = Indexed(students.to_numpy(dtype=str), items.to_numpy(dtype=str),
                  positions(students, inter["student_id"]), positions(items, inter["internship_id"]),
                  inter["event"].astype(str).to_numpy(), ts, None, None, None, None)
    if ds.has_outcomes:
        out = ds.outcomes
        idx.out_s = positions(students, out["student_id"])
        idx.out_i = positions(items, out["internship_id"])
        idx.out_y = out["selected"].to_numpy(dtype=np.int64)
        applies = pd.DataFrame({"s": idx.s, "i": idx.i, "ts": ts})[idx.event == "apply"]
        applied_at = applies.groupby(["s", "i"])["ts"].min()
        idx.out_ts = applied_at.reindex(pd.MultiIndex.from_arrays([idx.out_s, idx.out_i])).to_numpy()
    return idx


def cutoffs(ts: np.ndarray, valid_fraction: float, test_fraction: float) -> tuple[int, int]:
    c1 = int(np.quantile(ts, 1 - valid_fraction - test_fraction))
    c2 = int(np.quantile(ts, 1 - test_fraction))
    return c1, c2


VALID, TEST = 1, 2  # phases: 0 train, 1 validation, 2 test


@dataclass
class Split:
    """What each stage may see: every interaction's phase (0 train, 1 validation, 2 test) and
    every outcome's (the phase of its application; -1 without one, never used).

    `time` (the default) cuts at two timestamps: later data judges models fitted on earlier data.
    `random` holds out, per student, a random share of the internships they interacted with
    (all of a pair's events together), for data whose timestamps carry no order; nothing is then
    closed at a cutoff."""
    kind: str
    phase: np.ndarray
    out_phase: np.ndarray | None
    cutoffs: tuple[int, int] | None = None

    @classmethod
    def by_time(cls, idx: Indexed, c1: int, c2: int) -> "Split":
        def phase(ts):
            return (ts >= c1).astype(np.int8) + (ts >= c2)
        out = None
        if idx.out_ts is not None:
            known = ~np.isnan(idx.out_ts.astype(np.float64))
            out = np.where(known, phase(np.nan_to_num(idx.out_ts.astype(np.float64))), -1).astype(np.int8)
        return cls("time", phase(idx.ts).astype(np.int8), out, (c1, c2))

    @classmethod
    def at_random(cls, idx: Indexed, valid_fraction: float, test_fraction: float, seed: int) -> "Split":
        n_items = len(idx.item_ids)
        pairs, pair_of = np.unique(idx.s.astype(np.int64) * n_items + idx.i, return_inverse=True)
        student = pairs // n_items
        order = np.lexsort((np.random.default_rng(seed).random(len(pairs)), student))
        starts = np.searchsorted(student[order], student[order], side="left")
        sizes = np.bincount(student, minlength=student.max() + 1 if len(student) else 0)[student[order]]
        share = np.empty(len(pairs))
        share[order] = (np.arange(len(pairs)) - starts + 1) / sizes  # rank within the student, in (0, 1]
        pair_phase = ((share > 1 - valid_fraction - test_fraction).astype(np.int8)
                      + (share > 1 - test_fraction))
        out = None
        if idx.out_s is not None:
            at = np.searchsorted(pairs, idx.out_s.astype(np.int64) * n_items + idx.out_i)
            at = np.minimum(at, len(pairs) - 1)
            hit = pairs[at] == idx.out_s.astype(np.int64) * n_items + idx.out_i
            out = np.where(hit, pair_phase[at], -1).astype(np.int8)
        return cls("random", pair_phase[pair_of], out)

    def before(self, phase: int | None) -> np.ndarray:
        """Interactions a stage fitted before `phase` may use (None: all)."""
        return np.ones(len(self.phase), bool) if phase is None else self.phase < phase

    def outcomes_before(self, phase: int | None) -> np.ndarray:
        return self.out_phase >= 0 if phase is None else (self.out_phase >= 0) & (self.out_phase < phase)

    def now(self, phase: int) -> int | None:
        """The moment `phase` starts (time split), for what is open then; None: everything open."""
        return None if self.cutoffs is None else self.cutoffs[phase - 1]

    def counts(self) -> dict:
        return {name: int((self.phase == p).sum()) for p, name in enumerate(("train", "valid", "test"))}


def interaction_csr(idx: Indexed, mask: np.ndarray, values: np.ndarray, n_s: int, n_i: int) -> sp.csr_matrix:
    m = sp.coo_matrix((values[mask].astype(np.float32), (idx.s[mask], idx.i[mask])), shape=(n_s, n_i)).tocsr()
    m.sum_duplicates()
    return m
