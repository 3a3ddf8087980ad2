"""Training: one command from a dataset folder to four verified bundles and an evaluation report.

Time protocol (interactions sorted by time, cutoffs at quantiles of their timestamps):
  train  [start, c1)  components are fitted here (stage A);
  valid  [c1, c2)     collaborative model and blend weights are chosen, the ranker is trained
                      on stage-A component scores of these students' candidates;
  test   [c2, end]    components refitted on [start, c2) with the chosen settings (stage B) and
                      every model is evaluated: each student's saves/applies in this window are
                      the relevant items; anything they interacted with before c2 and any
                      internship closed at c2 is excluded.
Then each component is refitted on everything (stage C) and written as a bundle.

With `split="random"` (`pmis train --split random`) the three windows are instead a random
share of each student's internships (see `Split`): for data whose timestamps carry no order.
The report's `split.kind` says which protocol was used.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import optuna
import pandas as pd
import scipy.sparse as sp
from tqdm import tqdm

from models.training import metrics as M
from models.components.collaborative import MAX_EASE_ITEMS, CollaborativeModel, interaction_matrix, search_space, serving_parameters
from models.components import COMPONENTS
from models.components.content import ContentModel, profile_text
from models.data.contract import Dataset, load_dataset
from models.training.diagnostics import curves, permutation_importance, window_fingerprint
from models import pipeline
from models.training import selection
from models.training.evaluate import (Components, WindowMetrics, candidate_blocks, chunk_size, collaborative_scores,
                             ranker_training_data, stack_training_rows, training_rows)
from models.fairness.evaluation import ListMaker, evaluate_fairness, evaluate_shortlists
from models.fairness.reranker import FairnessConfig
from models.components.features import FeatureSpace, pair_features
from models.components.ranker import RankerModel
from models.components.scores import COMPONENT_SCORES, blend_scores
from models.bundle.registry import Registry
from models.training.report import write_report
from models.components.success import FEATURES as SUCCESS_FEATURES
from models.components.success import SuccessModel, search

optuna.logging.set_verbosity(optuna.logging.WARNING)  # the report holds every trial
log = logging.getLogger("pmis.train")
GRADES = {"view": 0, "save": 1, "apply": 2}
GROUP_ATTRIBUTES = ["gender", "social_category", "rural", "college_tier", "disability"]
# Share of a run's time each stage takes (measured on the small and default datasets); progress
# percentages are the cumulative weights of finished (or skipped) stages.
STAGE_WEIGHTS = {
    "load and validate": 2,
    "content": 1,
    "collaborative: selection on the validation window": 4,
    "success predictor: search, calibration, evaluation": 14,
    "ranker: trained on the validation window": 36,
    "test window: components refitted up to c2, every model evaluated": 14,
    "final refit on all data and bundles": 29,
}


@dataclass
class Progress:
    """One progress report of a run, passed to ``TrainConfig.on_progress``.

    kind: "stage_started" | "stage_finished" | "stage_skipped" | "message" | "metrics".
    The callback runs in the training thread at every stage boundary and whenever metrics or
    bundles appear; raising from it stops the run there (cancellation between stages).
    """
    kind: str
    stage: str
    percent: float
    message: str = ""
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class TrainConfig:
    data_dir: Path
    bundles_dir: Path
    runs_dir: Path
    seed: int = 0
    valid_fraction: float = 0.15
    test_fraction: float = 0.15
    k: int = 10
    candidates: int = 100          # per retriever; the union is up to twice this
    cv_folds: int = 3
    search_budget: int = 4         # randomised-search draws per success-predictor algorithm
    max_eval_students: int = 20_000
    max_success_rows: int = 200_000  # rows used for the success predictor's model search
    activate: bool = True
    progress: bool = True
    components: tuple[str, ...] = COMPONENTS  # which bundles to refit, write and register
    success_algorithms: tuple[str, ...] | None = None  # None: every candidate of models.components.success
    split: str = "time"             # "time" (cutoffs) or "random" (per-student holdout): models.training.train.Split
    train_until: int | None = None  # explicit cutoffs (epoch seconds) instead of the fractions
    valid_until: int | None = None
    on_progress: Callable[[Progress], None] | None = None
    # Runs inside the registry transaction that registers the new versions (all or none); may raise
    # to abort it. Called as guard(connection, bundle_refs).
    register_guard: Callable[[Any, list], None] | None = None
    als_grid: list[dict] = field(default_factory=lambda: [
        {"factors": f, "regularization": r, "alpha": a, "iterations": 15}
        for f in (32, 64) for r in (0.05,) for a in (1.0, 5.0)])
    ease_grid: list[dict] = field(default_factory=lambda: [{"lambda": lam} for lam in (100.0, 400.0)])
    # Hyperparameter search: at most this many fits (the grids come first); None: as many as
    # COLLAB_SEARCH_CELLS allows for this data (interactions x trials), between the grid and 30.
    collab_trials: int | None = None
    collab_patience: int = 10      # and stop after this many without a new best
    # (name, kind, params) of collaborative models to score beside the chosen one on the test
    # window, fitted the same way (models.training.bench_collab: `implicit` ALS with its default settings)
    reference_collaborative: list[tuple[str, str, dict]] = field(default_factory=list)


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


def _csr(idx: Indexed, mask: np.ndarray, values: np.ndarray, n_s: int, n_i: int) -> sp.csr_matrix:
    m = sp.coo_matrix((values[mask].astype(np.float32), (idx.s[mask], idx.i[mask])), shape=(n_s, n_i)).tocsr()
    m.sum_duplicates()
    return m


class Trainer:
    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.rng = np.random.default_rng(cfg.seed)
        self.run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]
        self.timings: dict[str, float] = {}
        self.report: dict = {"run_id": self.run_id}
        self._done = 0  # summed STAGE_WEIGHTS of finished stages

    # ------------------------------------------------------------------ helpers
    def _stage(self, name: str):
        trainer = self

        class _Timer:
            def __enter__(self):
                self.t = time.perf_counter()
                if trainer.cfg.progress:
                    tqdm.write(f"[{name}]")
                trainer._emit("stage_started", name, f"started: {name}")

            def __exit__(self, exc_type, *exc):
                trainer.timings[name] = round(time.perf_counter() - self.t, 2)
                if exc_type is None:
                    trainer._done += STAGE_WEIGHTS.get(name, 0)
                    trainer._emit("stage_finished", name, f"finished: {name} in {trainer.timings[name]:.1f}s")
        return _Timer()

    def _emit(self, kind: str, stage: str, message: str = "", metrics: dict | None = None) -> None:
        if self.cfg.on_progress is None:
            return
        percent = round(100.0 * self._done / sum(STAGE_WEIGHTS.values()), 1)
        clean = {k: float(v) for k, v in (metrics or {}).items()
                 if isinstance(v, (int, float, np.number)) and not isinstance(v, bool) and np.isfinite(v)}
        self.cfg.on_progress(Progress(kind, stage, percent, message, clean))

    def _skip_stage(self, name: str, why: str) -> None:
        self._done += STAGE_WEIGHTS.get(name, 0)
        self._emit("stage_skipped", name, f"skipped: {name}: {why}")

    def _bar(self, total: int, desc: str):
        return tqdm(total=total, desc=desc, disable=not self.cfg.progress, leave=False, unit="students")

    def _space(self, before: int | None) -> FeatureSpace:
        """The feature space with applicant counts as known before phase `before` (None: all data)."""
        idx = self.idx
        mask = (idx.event == "apply") & self.split.before(before)
        counts = np.bincount(idx.i[mask], minlength=len(idx.item_ids)).astype(np.float64)
        return dataclasses.replace(self.base_space, items=dataclasses.replace(self.base_space.items, applicants=counts))

    def _open_items(self, phase: int | None) -> np.ndarray:
        now = int(self.idx.ts.max()) + 1 if phase is None else self.split.now(phase)
        deadline = self.base_space.items.deadline
        return np.ones(len(deadline), bool) if now is None else pipeline.open_items(deadline, now)

    def _components(self, before: int | None, collab: CollaborativeModel, success: SuccessModel | None) -> Components:
        idx = self.idx
        seen = _csr(idx, self.split.before(before), np.ones(len(idx.ts)), len(idx.student_ids), len(idx.item_ids))
        return Components(self.content, collab, success, self._space(before), self.students, self.profile_texts,
                          seen, self._open_items(before))

    def _window(self, phase: int) -> tuple[np.ndarray, sp.csr_matrix]:
        """Students with a save/apply in `phase` and their graded relevance (apply 2, save 1)."""
        idx = self.idx
        grades = np.vectorize(GRADES.get, otypes=[np.float32])(idx.event)
        mask = (self.split.phase == phase) & (grades > 0)
        graded = _csr(idx, mask, grades, len(idx.student_ids), len(idx.item_ids))
        graded.data = np.minimum(graded.data, 2)
        # an item the student saw in an earlier phase is not a discovery: it cannot count as relevant
        seen_before = _csr(idx, self.split.before(phase), np.ones(len(idx.ts)), *graded.shape)
        graded = graded - graded.multiply(seen_before > 0)
        graded.eliminate_zeros()
        rows = np.flatnonzero(graded.getnnz(axis=1) > 0)
        if len(rows) > self.cfg.max_eval_students:
            rows = np.sort(self.rng.choice(rows, self.cfg.max_eval_students, replace=False))
        return rows, graded

    def _collab_matrix(self, before: int | None) -> sp.csr_matrix:
        idx = self.idx
        mask = self.split.before(before)
        return interaction_matrix(idx.s[mask], idx.i[mask], idx.event[mask], len(idx.student_ids), len(idx.item_ids))

    def _fit_collab(self, kind: str, params: dict, before: int | None) -> CollaborativeModel:
        return CollaborativeModel.fit(kind, {**params, "seed": self.cfg.seed}, self._collab_matrix(before),
                                      self.idx.student_ids, self.idx.item_ids)

    def _success_rows(self, before: int | None, space: FeatureSpace, limit: int | None = None):
        """Pair features and outcomes of the applications before `before`; beyond `limit` a random
        sample of them, drawn before featurising (the same rows `_subsample` would keep)."""
        idx = self.idx
        rows = np.flatnonzero(self.split.outcomes_before(before))
        if limit is not None and len(rows) > limit:
            rows = rows[self.rng.choice(len(rows), limit, replace=False)]
        return pair_features(self.students, idx.out_s[rows], space.items, idx.out_i[rows]), idx.out_y[rows]

    def _split(self) -> Split:
        cfg = self.cfg
        if cfg.split == "random":
            return Split.at_random(self.idx, cfg.valid_fraction, cfg.test_fraction, cfg.seed)
        if cfg.split != "time":
            raise ValueError(f"split must be 'time' or 'random', not {cfg.split!r}")
        if cfg.train_until is not None and cfg.valid_until is not None:
            return Split.by_time(self.idx, int(cfg.train_until), int(cfg.valid_until))
        return Split.by_time(self.idx, *cutoffs(self.idx.ts, cfg.valid_fraction, cfg.test_fraction))

    def _subsample(self, x, y, n):
        if len(y) <= n:
            return x, y
        keep = self.rng.choice(len(y), n, replace=False)
        return x[keep], y[keep]

    # ------------------------------------------------------------------ the run
    def run(self) -> dict:
        cfg = self.cfg
        t0 = time.perf_counter()
        with self._stage("load and validate"):
            ds = load_dataset(cfg.data_dir)
            for note in ds.report.notes:
                tqdm.write(f"  note: {note}")
                self._emit("message", "load and validate", f"note: {note}")
            self.ds, self.idx = ds, index_dataset(ds)
            self.base_space = FeatureSpace.build(ds.students, ds.internships)
            self.students = self.base_space.students(ds.students)
            self.profile_texts = [profile_text(s, f, p) for s, f, p in zip(
                ds.students["skills"], ds.students["field"], ds.students["preferred_sectors"])]
            self.groups = {a: ds.students[a].astype(str).to_numpy() for a in GROUP_ATTRIBUTES if a in ds.students}
        iso = lambda t: datetime.fromtimestamp(t, timezone.utc).isoformat()  # noqa: E731
        self.split = self._split()
        self.report["split"] = split_report = {"kind": self.split.kind, "interactions": self.split.counts()}
        if self.split.cutoffs is not None:
            c1, c2 = self.split.cutoffs
            split_report.update(train_until=iso(c1), valid_until=iso(c2))
            empty = [w for w, n in split_report["interactions"].items() if n == 0]
            if empty or c1 >= c2:
                raise ValueError(f"the time split (train until {iso(c1)}, valid until {iso(c2)}) leaves the "
                                 f"{' and '.join(empty) or 'validation'} window empty; data spans "
                                 f"{iso(int(self.idx.ts.min()))} .. {iso(int(self.idx.ts.max()))}")
        else:
            split_report["held_out_per_student"] = {"valid": cfg.valid_fraction, "test": cfg.test_fraction}
            if not split_report["interactions"]["valid"] or not split_report["interactions"]["test"]:
                raise ValueError("the random split leaves a window empty: too few interactions per student")
        self.report["data"] = {"data_version": ds.data_version, "rows": ds.report.rows, "notes": ds.report.notes,
                               "interactions_until": int(self.idx.ts.max())}

        with self._stage("content"):
            self.content = ContentModel.fit(ds.internships)

        with self._stage("collaborative: selection on the validation window"):
            valid_rows, valid_graded = self._window(VALID)
            collab_kind, collab_params, collab_table, collab_a = self._select_collab(VALID, valid_rows, valid_graded)
            self.report["collaborative_selection"] = collab_table
            chosen = next(r for r in collab_table if r.get("chosen"))
            self._emit("metrics", "collaborative: selection on the validation window",
                       f"chose {self.report['collaborative_choice']}",
                       {f"collaborative.validation.ndcg@{cfg.k}": chosen[f"ndcg@{cfg.k}"]})

        success_algo = success_params = None
        if ds.has_outcomes:
            with self._stage("success predictor: search, calibration, evaluation"):
                success_algo, success_params, success_a = self._success_stage(VALID)
                s = self.report["success"]
                self._emit("metrics", "success predictor: search, calibration, evaluation",
                           f"chose {success_algo}", {f"success.{m}": s[m] for m in
                                                     ("roc_auc", "pr_auc", "log_loss", "brier", "ece")})
        else:
            success_a = None
            self.report["success"] = {"skipped": "no outcomes table in the dataset"}
            self._skip_stage("success predictor: search, calibration, evaluation", "no outcomes table in the dataset")

        with self._stage("ranker: trained on the validation window"):
            ranker, blend_weights, ranker_params, (x, y, g) = self._ranker_stage(
                collab_a or self._fit_collab(collab_kind, collab_params, VALID), success_a, valid_rows, valid_graded)
            del collab_a, success_a  # the stage's models: the rest of the run refits its own

        with self._stage("test window: components refitted up to c2, every model evaluated"):
            x2, y2, g2 = self._test_window_stage(ds, collab_kind, collab_params, success_algo, success_params,
                                                 ranker, blend_weights)

        with self._stage("final refit on all data and bundles"):
            refs = self._write_bundles(ds, collab_kind, collab_params, success_algo, success_params,
                                       np.vstack([x, x2]), np.concatenate([y, y2]), np.concatenate([g, g2]),
                                       ranker_params, blend_weights)
        self.timings["total"] = round(time.perf_counter() - t0, 2)
        self.report["timings_seconds"] = self.timings
        self.report["bundles"] = {c: {"version": r.version, "path": str(r.path), "content_hash": r.content_hash}
                                  for c, r in refs.items()}
        self.report["targets"] = self._targets()
        run_dir = Path(cfg.runs_dir) / self.run_id
        write_report(self.report, run_dir)
        self.report["run_dir"] = str(run_dir)
        return self.report

    def _item_msme(self, ds) -> np.ndarray:
        """Per internship: its company is Micro/Small/Medium (False where unknown)."""
        if ds.companies is None or "size" not in ds.companies:
            return np.zeros(len(ds.internships), dtype=bool)
        sizes = dict(zip(ds.companies["company_id"].astype(str), ds.companies["size"].astype(str)))
        return np.array([sizes.get(str(c)) in ("Micro", "Small", "Medium") for c in ds.internships["company_id"]])

    # ------------------------------------------------------------------ stages
    def _ranker_comparison(self, ndcg: dict) -> dict:
        """The learned ranker against the best of the alternatives it replaces, on the same test
        students, with the paired bootstrap interval of the NDCG difference."""
        alternatives = [n for n in ("blend", "content", "collaborative", "success_only", "popularity") if n in ndcg]
        best = max(alternatives, key=lambda n: float(np.mean(ndcg[n])))
        out = {"alternative": best, f"ranker_ndcg@{self.cfg.k}": float(np.mean(ndcg["ranker"])),
               f"alternative_ndcg@{self.cfg.k}": float(np.mean(ndcg[best])),
               **selection.compare(ndcg["ranker"], ndcg[best], seed=self.cfg.seed)}
        out["ranker_wins"] = out["beyond_noise"] and out["difference"] > 0
        against_blend = selection.compare(ndcg["ranker"], ndcg["blend"], seed=self.cfg.seed)
        out["against_blend"] = against_blend
        out["shipped_ranking"], out["why"] = shipped_ranking(out["ranker_wins"], against_blend, best)
        if not out["ranker_wins"]:
            message = (f"the learned ranker does not beat {best} beyond noise on the test window (NDCG@{self.cfg.k} "
                       f"difference {out['difference']:+.4f}, 95 % interval [{out['interval'][0]:+.4f}, "
                       f"{out['interval'][1]:+.4f}]); the rank stage serves: {out['shipped_ranking']} ({out['why']})")
            tqdm.write(f"  warning: {message}")
            self._emit("message", "test window: components refitted up to c2, every model evaluated", message)
        return out

    def _select_collab(self, phase: int, rows: np.ndarray, graded: sp.csr_matrix):
        """Search the collaborative model's hyperparameters on what precedes `phase`, scoring each
        trial's NDCG@k on `phase` (TPE, seeded; the configured grid is tried first), then choose
        among every trial with the noise in view. Returns (kind, params, table, model): the model
        is the chosen trial's own fit when it is the best by mean (the one kept while searching:
        one model at a time, an EASE model can be gigabytes), else None (refit it)."""
        cfg = self.cfg
        relevant = (graded > 0).astype(np.float32).tocsr()
        table, per_student = [], []
        best_fit: list = []  # [trial index, model, mean NDCG] of the best mean so far
        matrix = self._collab_matrix(phase)
        n_items = len(self.idx.item_ids)
        grid = [("als", p) for p in cfg.als_grid] + ([("ease", p) for p in cfg.ease_grid] if n_items <= MAX_EASE_ITEMS
                                                      else [])
        study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=cfg.seed))
        for kind, params in grid:
            study.enqueue_trial({"kind": kind, **params})
        budget = cfg.collab_trials or collab_trial_budget(matrix.nnz, len(grid))
        bar = tqdm(total=budget, desc="collaborative search", disable=not cfg.progress, leave=False)

        def objective(trial) -> float:
            kind, params = search_space(trial, n_items)
            model = CollaborativeModel.fit(kind, {**params, "seed": cfg.seed}, matrix, self.idx.student_ids,
                                           self.idx.item_ids)
            m, ndcg = self._collab_metrics(model, phase, rows, relevant)
            mean = float(np.mean(ndcg, dtype=np.float64))
            if not best_fit or mean > best_fit[2]:
                best_fit[:] = [len(per_student), model, mean]
            per_student.append(ndcg)
            table.append({"kind": kind, "params": params, **m,
                          "serving_parameters": serving_parameters(kind, params, n_items)})
            bar.update()
            return float(np.mean(ndcg))

        study.optimize(objective, n_trials=budget, callbacks=[_stop_without_progress(cfg.collab_patience, len(grid))])
        bar.close()
        self.report["collaborative_search"] = {"trials": len(table), "budget": budget,
                                               "patience": cfg.collab_patience, "sampler": f"TPE, seed {cfg.seed}",
                                               "started_from": "the configured grid"}
        choice = selection.choose(per_student, [r["serving_parameters"] for r in table],
                                  [f"{r['kind']} {r['params']}" for r in table], seed=self.cfg.seed)
        for row, iv, diff in zip(table, choice.intervals, choice.differences):
            row[f"ndcg@{self.cfg.k}_interval"] = list(iv)
            row["difference_to_best"] = {"mean": diff[0], "interval": list(diff[1:])}
        chosen = table[choice.index]
        chosen["chosen"] = True
        self.report["collaborative_choice"] = choice.reason
        return chosen["kind"], chosen["params"], table, best_fit[1] if best_fit[0] == choice.index else None

    def _collab_metrics(self, model: CollaborativeModel, phase: int, rows: np.ndarray, relevant: sp.csr_matrix):
        """A collaborative model's top-k over the open catalogue for `rows` (fitted on what precedes
        `phase`; each student folded in from their history as the service does, popularity for
        students without one), against their relevant items in `phase`: (metrics, NDCG per student)."""
        seen = _csr(self.idx, self.split.before(phase), np.ones(len(self.idx.ts)), *relevant.shape)
        open_items = self._open_items(phase)
        tops = []
        step = chunk_size(len(open_items))
        for start in range(0, len(rows), step):
            part = rows[start:start + step]
            scores, _ = collaborative_scores(model, part)  # as served: folded in from the history
            scores[seen[part].toarray().astype(bool) | ~open_items[None, :]] = -np.inf
            tops.append(M.top_k(scores, self.cfg.k))
        m = M.ranking_metrics(np.vstack(tops), relevant[rows], int(open_items.sum()))
        return m, m.pop("_per_student")["ndcg"]

    def _collab_references(self, chosen: CollaborativeModel, rows: np.ndarray, graded: sp.csr_matrix) -> list[dict]:
        """The chosen collaborative model against reference models (cfg.reference_collaborative),
        each fitted on the same data and scored on the same test students the same way."""
        relevant = (graded > 0).astype(np.float32).tocsr()
        ours, ours_ndcg = self._collab_metrics(chosen, TEST, rows, relevant)
        out = [{"name": f"chosen: {chosen.kind} {chosen.params}", **ours,
                "interval": selection.mean_interval(ours_ndcg, seed=self.cfg.seed)}]
        for name, kind, params in self.cfg.reference_collaborative:
            model = self._fit_collab(kind, params, TEST)
            m, ndcg = self._collab_metrics(model, TEST, rows, relevant)
            out.append({"name": name, **m,
                        "interval": selection.mean_interval(ndcg, seed=self.cfg.seed),
                        "chosen_minus_this": selection.compare(ours_ndcg, ndcg, seed=self.cfg.seed)})
        return out

    def _success_stage(self, phase: int):
        cfg = self.cfg
        space = self._space(None)  # competition as known when the company decides
        x, y = self._success_rows(phase, space)
        xs, ys = self._subsample(x, y, cfg.max_success_rows)
        def searched(name, result):
            if cfg.progress:
                tqdm.write(f"  {name}: cv log-loss {result['cv_log_loss']:.4f}")
            self._emit("metrics", "success predictor: search, calibration, evaluation", f"searched {name}",
                       {f"success.search.{name}.cv_log_loss": result["cv_log_loss"]})

        best, params, results = search(xs, ys, folds=cfg.cv_folds, budget=cfg.search_budget, seed=cfg.seed,
                                       progress=searched, algorithms=cfg.success_algorithms)
        xf, yf = self._subsample(x, y, 4 * cfg.max_success_rows)
        model = SuccessModel.fit(xf, yf, best, params, folds=cfg.cv_folds, seed=cfg.seed)
        idx = self.idx
        later = self.split.out_phase >= phase
        x_eval = pair_features(self.students, idx.out_s[later], space.items, idx.out_i[later])
        p = model.predict(x_eval)
        report = M.classification_report(idx.out_y[later], p)
        report["against_base_rate"] = against = against_base_rate(idx.out_y[later], p, model.base_rate, cfg.seed)
        self.success_serves_base_rate = model.serves_base_rate = not against["model_wins"]
        report["serves"] = "the base rate" if model.serves_base_rate else "the model"
        if model.serves_base_rate:
            message = ("the success predictor does not beat the base rate beyond noise (log-loss difference "
                       f"{against['difference']:+.4f}, 95 % interval [{against['interval'][0]:+.4f}, "
                       f"{against['interval'][1]:+.4f}]): the bundle serves the base rate")
            tqdm.write(f"  warning: {message}")
            self._emit("message", "success predictor: search, calibration, evaluation", message)
        report["curves"] = curves(idx.out_y[later], p)
        report["feature_importance"] = permutation_importance(model.predict, x_eval, idx.out_y[later],
                                                              SUCCESS_FEATURES, seed=cfg.seed)
        report.update({"algorithm": best, "params": {k: str(v) for k, v in params.items()}, "search": {
            k: {"cv_log_loss": v["cv_log_loss"], "params": {a: str(b) for a, b in v["params"].items()}}
            for k, v in results.items()}, "evaluated_on": "applications made on or after the first cutoff",
            "train_rows": int(len(y)), "features": SUCCESS_FEATURES})
        self.report["success"] = report
        return best, params, model

    def _tune_blend(self, blocks, graded) -> dict[str, float]:
        """Grid-search the static blend's weights on the validation candidates (NDCG@k)."""
        rels = [(graded[block.rows] > 0).astype(np.float32).tocsr() for block, _ in blocks]
        best, best_ndcg = None, -1.0
        for weights in itertools.product([0.0, 0.5, 1.0], repeat=len(COMPONENT_SCORES)):
            if not any(weights):
                continue
            w = dict(zip(COMPONENT_SCORES, weights))
            ndcg = []
            for (block, _), rel in zip(blocks, rels):
                s = np.where(block.valid, blend_scores(block.scores, w), -np.inf)
                pos = M.top_k(s, self.cfg.k)
                items = np.take_along_axis(block.items, pos, axis=1)
                valid = np.take_along_axis(block.valid, pos, axis=1)
                ndcg.append(M.ranking_metrics(items, rel, 1, valid)["_per_student"]["ndcg"])
            score = float(np.mean(np.concatenate(ndcg)))
            if score > best_ndcg:
                best, best_ndcg = w, score
        return best

    def _write_bundles(self, ds, collab_kind, collab_params, success_algo, success_params, rx, ry, rg,
                       ranker_params, blend_weights) -> dict:
        cfg = self.cfg
        space = self._space(None)
        # The evaluation window (what the metrics were measured on) and the data the bundle saw
        # (for retraining triggers) travel in every manifest.
        base_meta = {"run_id": self.run_id, "data_version": ds.data_version,
                     "evaluation_window": self.report["evaluation_window"],
                     "data_summary": {"rows": ds.report.rows,
                                      "interactions_until": self.report["data"]["interactions_until"]}}
        ranking = self.report["ranking"]
        strip = lambda m: {k: v for k, v in m.items() if k != "groups"}  # noqa: E731
        stage = "final refit on all data and bundles"
        refs = {}

        def written(component):
            self._emit("message", stage, f"bundle written: {component} v{refs[component].version} "
                                         f"(registered when every bundle of the run is written)")

        if "content" in cfg.components:
            refs["content"] = self.content.save(cfg.bundles_dir, {**base_meta, "metrics": strip(ranking["content"])},
                                                space.arrays())
            written("content")
        if "collaborative" in cfg.components:
            collab = self._fit_collab(collab_kind, collab_params, None)
            refs["collaborative"] = collab.save(cfg.bundles_dir, {**base_meta,
                                                                  "metrics": strip(ranking["collaborative"]),
                                                                  "params": {"kind": collab_kind, **collab_params}},
                                                item_deadline=space.items.deadline)
            written("collaborative")
        if ds.has_outcomes and "success" in cfg.components:
            x, y = self._success_rows(None, space, 4 * cfg.max_success_rows)
            success = SuccessModel.fit(x, y, success_algo, success_params, folds=cfg.cv_folds, seed=cfg.seed)
            success.serves_base_rate = self.success_serves_base_rate
            s_metrics = {k: v for k, v in self.report["success"].items()
                         if k not in ("reliability", "search", "curves", "feature_importance")}
            refs["success"] = success.save(cfg.bundles_dir, {
                **base_meta, "metrics": s_metrics, "feature_schema": SUCCESS_FEATURES,
                "feature_importance": self.report["success"].get("feature_importance", {})}, space.arrays())
            written("success")
        if "ranker" in cfg.components:
            ranker = RankerModel.fit(rx, ry, rg, ranker_params, blend_weights, seed=cfg.seed)
            ranker.ranking = self._shipped()
            refs["ranker"] = ranker.save(cfg.bundles_dir, {**base_meta, "metrics": strip(ranking[ranker.ranking]),
                                                          "ranking": self.report["ranker_against_best_alternative"],
                                                          "feature_importance": ranker.feature_importance()},
                                         space.arrays())
            written("ranker")
        # One transaction for all of them: a run stopped here registers every version or none.
        registry = Registry(Path(cfg.bundles_dir) / "registry.db")
        registry.register_many([(ref, self._manifest_metrics(c)) for c, ref in refs.items()],
                               alias="champion" if cfg.activate else None,
                               reason=f"trained by run {self.run_id}; rank stage serves: {self._shipped()}",
                               guard=cfg.register_guard)
        self._emit("message", stage, "registered " + ", ".join(f"{c} v{r.version}" for c, r in refs.items()))
        return refs

    def _ranker_stage(self, collab: CollaborativeModel, success: SuccessModel | None, rows: np.ndarray,
                      graded: sp.csr_matrix):
        """The ranker and the blend's weights, trained on the validation window's candidates:
        (ranker, blend weights, ranker params, (x, y, group sizes)); the rows join the final fit."""
        cfg = self.cfg
        comp = self._components(VALID, collab, success)
        x, y, g, blocks = ranker_training_data(comp, rows, graded, cfg.candidates)
        blend_weights = self._tune_blend(blocks, graded)
        # Small trees, few of them: on the default data's windows the test NDCG is flat from 30 to
        # 150 trees of 15 leaves and falls beyond (over-fitting), and serving cost grows with the
        # number of leaves (the README has the measurements).
        ranker_params = {"n_estimators": 60, "learning_rate": 0.05, "num_leaves": 15, "min_child_samples": 20,
                         "subsample": 0.8, "subsample_freq": 1, "colsample_bytree": 0.8}
        ranker = RankerModel.fit(x, y, g, ranker_params, blend_weights, seed=cfg.seed)
        self.report["ranker"] = {"training_groups": int(len(g)), "training_rows": int(len(y)),
                                 "blend_weights": blend_weights, "params": ranker_params}
        return ranker, blend_weights, ranker_params, (x, y, g)

    def _test_window_stage(self, ds: Dataset, collab_kind: str, collab_params: dict, success_algo, success_params,
                           ranker: RankerModel, blend_weights: dict):
        """Components refitted up to the second cutoff, every model evaluated on the test window
        (metrics, fairness, shortlists); returns the window's ranker rows (x, y, group sizes):
        the windows exist to choose and to report, the shipped ranker learns from them too."""
        cfg = self.cfg
        success_b = None
        if ds.has_outcomes:
            xs, ys = self._success_rows(TEST, self._space(None), 4 * cfg.max_success_rows)
            success_b = SuccessModel.fit(xs, ys, success_algo, success_params, folds=cfg.cv_folds, seed=cfg.seed)
            success_b.serves_base_rate = self.success_serves_base_rate
        collab_b = self._fit_collab(collab_kind, collab_params, TEST)
        comp_b = self._components(TEST, collab_b, success_b)
        test_rows, test_graded = self._window(TEST)
        if cfg.reference_collaborative:
            self.report["collaborative_references"] = self._collab_references(collab_b, test_rows, test_graded)
        relevant = (test_graded > 0).astype(np.float32).tocsr()
        # One pass over the window's candidate blocks feeds the metrics, the fairness lists and
        # the ranker's final training rows: a block is the costly part (whole-catalogue scores).
        window_metrics = WindowMetrics(comp_b, relevant, k=cfg.k, n_candidates=cfg.candidates,
                                       blend_weights=blend_weights, ranker=ranker)
        fairness_cfg = FairnessConfig()
        list_maker = ListMaker(comp_b, relevant, item_msme=self._item_msme(ds),
                               student_attrs={"district": self.students.district}, cfg=fairness_cfg)
        lists, final_rows = [], []
        bar = self._bar(len(test_rows), "evaluating")
        for block in candidate_blocks(comp_b, test_rows, cfg.candidates):
            scores = window_metrics.add(block)
            lists += list_maker.lists(block, scores["ranker"])
            final_rows.append(training_rows(block, test_graded, keep_block=False))
            bar.update(len(block.rows))
        bar.close()
        ndcg = {}
        test = window_metrics.result(self.groups, ndcg)
        for name, per_student in ndcg.items():  # every model's NDCG@k with its 95 % bootstrap interval
            test[name][f"ndcg@{cfg.k}_interval"] = selection.mean_interval(per_student, seed=cfg.seed)
        self.report["ranking"] = test
        self.report["ranker_against_best_alternative"] = self._ranker_comparison(ndcg)
        self.report["evaluation_window"] = window = {
            "data_version": ds.data_version, "split": self.split.kind,
            **({"train_until": self.split.cutoffs[0], "valid_until": self.split.cutoffs[1]}
               if self.split.cutoffs else {"split_seed": cfg.seed}), "k": cfg.k,
            "candidates": cfg.candidates, "test_students": int(len(test_rows)),
            "sample_seed": cfg.seed if len(test_rows) >= cfg.max_eval_students else None}
        window["fingerprint"] = window_fingerprint(window)
        self._emit("metrics", "test window: components refitted up to c2, every model evaluated",
                   f"evaluated {len(test_rows)} students on the test window",
                   {f"{name}.{m}": v for name, block in test.items() if isinstance(block, dict)
                    for m, v in block.items() if m in (f"ndcg@{cfg.k}", f"recall@{cfg.k}", f"map@{cfg.k}")})
        self.report["fairness"] = evaluate_fairness(
            comp_b, test_rows, relevant, k=cfg.k, n_candidates=cfg.candidates, blend_weights=blend_weights,
            ranker=ranker, item_msme=self._item_msme(ds), student_attrs={"district": self.students.district},
            groups=self.groups, cfg=fairness_cfg, lists=lists)
        if ds.has_outcomes:
            later = self.split.out_phase >= TEST
            attrs = ds.students[[a for a in ("gender", "social_category", "disability", "rural")
                                 if a in ds.students]]
            self.report["fairness"]["shortlists"] = evaluate_shortlists(
                comp_b, self.idx.out_s[later], self.idx.out_i[later], self.idx.out_y[later], attrs, seed=cfg.seed)
        self.report["ranker"]["feature_importance"] = ranker.feature_importance()
        x2, y2, g2, _ = stack_training_rows(final_rows)
        return x2, y2, g2

    def _manifest_metrics(self, component: str) -> dict:
        if component == "success":
            return {k: v for k, v in self.report["success"].items() if isinstance(v, (int, float))}
        m = self.report["ranking"][self._shipped() if component == "ranker" else component]
        return {k: v for k, v in m.items() if isinstance(v, (int, float))}

    def _shipped(self) -> str:
        """What the ranker bundle serves as the rank stage: its metrics are that ranking's."""
        return self.report["ranker_against_best_alternative"]["shipped_ranking"]

    def _targets(self) -> dict:
        k = self.cfg.k
        r = self.report["ranking"]
        best_single = max(r[c][f"ndcg@{k}"] for c in ("popularity", "content", "collaborative"))
        out = {f"ranker_ndcg@{k}": r["ranker"][f"ndcg@{k}"], "best_single_component_ndcg": best_single,
               "ranker_over_best_single": r["ranker"][f"ndcg@{k}"] / max(best_single, 1e-9),
               "ranker_beats_popularity": r["ranker"][f"ndcg@{k}"] > r["popularity"][f"ndcg@{k}"]}
        if "roc_auc" in self.report.get("success", {}):
            out["success_roc_auc"] = self.report["success"]["roc_auc"]
            out["success_ece"] = self.report["success"]["ece"]
        return out


# Interactions x trials the collaborative search may spend: 30 trials up to ~70,000 interactions
# (a few seconds each at most there), the grid alone at millions (where one ALS fit takes minutes).
COLLAB_SEARCH_CELLS = 2_000_000


def collab_trial_budget(interactions: int, grid: int) -> int:
    """Trials for the collaborative search: what COLLAB_SEARCH_CELLS allows, never fewer than the
    grid, never more than 30. Depends only on the data, so a run is reproducible from its seed."""
    return int(max(grid, min(30, COLLAB_SEARCH_CELLS // max(interactions, 1))))


def _stop_without_progress(patience: int, after: int = 0):
    """An Optuna callback: stop the study once `patience` finished trials beyond the first `after`
    (the grid) have brought no new best."""
    def callback(study, trial) -> None:
        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if len(done) >= after + patience and study.best_trial.number < done[-patience].number:
            study.stop()
    return callback


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


def shipped_ranking(ranker_wins: bool, against_blend: dict, best_alternative: str) -> tuple[str, str]:
    """What the rank stage serves, and why. The learned ranker only when it earns its place: it
    beats the best alternative beyond noise; or, when the best alternative cannot stand in for it
    (a single component over the whole catalogue is a different retrieval, not a ranking of the
    candidates), it still beats the blend beyond noise. Otherwise the blend: within noise of the
    ranker or better, and cheaper to serve and to explain."""
    if ranker_wins:
        return "ranker", f"beats {best_alternative} beyond noise"
    if against_blend["beyond_noise"] and against_blend["difference"] > 0:
        return "ranker", (f"beats the blend beyond noise, though not {best_alternative} "
                          f"(clients can ask for that component alone with its mode)")
    return "blend", "the learned ranker does not beat the blend beyond noise"


def train(cfg: TrainConfig) -> dict:
    return Trainer(cfg).run()

