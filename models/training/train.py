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
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import optuna
import scipy.sparse as sp
from tqdm import tqdm

from models import pipeline
from models.components import COMPONENTS
from models.components.collaborative import CollaborativeModel, interaction_matrix
from models.components.content import ContentModel, profile_text
from models.components.features import FeatureSpace, pair_features
from models.components.success import SuccessModel
from models.data.contract import load_dataset
from models.training import collaborative_search, final_fit, ranker_stage, success_stage, test_window
from models.training.evaluate import Components
from models.training.report import write_report
from models.training.split import (GRADES, GROUP_ATTRIBUTES, VALID, Split, cutoffs, index_dataset,
                                   interaction_csr)

optuna.logging.set_verbosity(optuna.logging.WARNING)  # the report holds every trial
log = logging.getLogger("pmis.train")
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
    split: str = "time"             # "time" (cutoffs) or "random" (per-student holdout): models.training.split.Split
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
                trainer.emit("stage_started", name, f"started: {name}")

            def __exit__(self, exc_type, *exc):
                trainer.timings[name] = round(time.perf_counter() - self.t, 2)
                if exc_type is None:
                    trainer._done += STAGE_WEIGHTS.get(name, 0)
                    trainer.emit("stage_finished", name, f"finished: {name} in {trainer.timings[name]:.1f}s")
        return _Timer()

    def emit(self, kind: str, stage: str, message: str = "", metrics: dict | None = None) -> None:
        if self.cfg.on_progress is None:
            return
        percent = round(100.0 * self._done / sum(STAGE_WEIGHTS.values()), 1)
        clean = {k: float(v) for k, v in (metrics or {}).items()
                 if isinstance(v, (int, float, np.number)) and not isinstance(v, bool) and np.isfinite(v)}
        self.cfg.on_progress(Progress(kind, stage, percent, message, clean))

    def _skip_stage(self, name: str, why: str) -> None:
        self._done += STAGE_WEIGHTS.get(name, 0)
        self.emit("stage_skipped", name, f"skipped: {name}: {why}")

    def bar(self, total: int, desc: str):
        return tqdm(total=total, desc=desc, disable=not self.cfg.progress, leave=False, unit="students")

    def space(self, before: int | None) -> FeatureSpace:
        """The feature space with applicant counts as known before phase `before` (None: all data)."""
        idx = self.idx
        mask = (idx.event == "apply") & self.split.before(before)
        counts = np.bincount(idx.i[mask], minlength=len(idx.item_ids)).astype(np.float64)
        return dataclasses.replace(self.base_space, items=dataclasses.replace(self.base_space.items, applicants=counts))

    def open_items(self, phase: int | None) -> np.ndarray:
        now = int(self.idx.ts.max()) + 1 if phase is None else self.split.now(phase)
        deadline = self.base_space.items.deadline
        return np.ones(len(deadline), bool) if now is None else pipeline.open_items(deadline, now)

    def components(self, before: int | None, collab: CollaborativeModel, success: SuccessModel | None) -> Components:
        idx = self.idx
        seen = interaction_csr(idx, self.split.before(before), np.ones(len(idx.ts)), len(idx.student_ids), len(idx.item_ids))
        return Components(self.content, collab, success, self.space(before), self.students, self.profile_texts,
                          seen, self.open_items(before))

    def window(self, phase: int) -> tuple[np.ndarray, sp.csr_matrix]:
        """Students with a save/apply in `phase` and their graded relevance (apply 2, save 1)."""
        idx = self.idx
        grades = np.vectorize(GRADES.get, otypes=[np.float32])(idx.event)
        mask = (self.split.phase == phase) & (grades > 0)
        graded = interaction_csr(idx, mask, grades, len(idx.student_ids), len(idx.item_ids))
        graded.data = np.minimum(graded.data, 2)
        # an item the student saw in an earlier phase is not a discovery: it cannot count as relevant
        seen_before = interaction_csr(idx, self.split.before(phase), np.ones(len(idx.ts)), *graded.shape)
        graded = graded - graded.multiply(seen_before > 0)
        graded.eliminate_zeros()
        rows = np.flatnonzero(graded.getnnz(axis=1) > 0)
        if len(rows) > self.cfg.max_eval_students:
            rows = np.sort(self.rng.choice(rows, self.cfg.max_eval_students, replace=False))
        return rows, graded

    def collab_matrix(self, before: int | None) -> sp.csr_matrix:
        idx = self.idx
        mask = self.split.before(before)
        return interaction_matrix(idx.s[mask], idx.i[mask], idx.event[mask], len(idx.student_ids), len(idx.item_ids))

    def fit_collab(self, kind: str, params: dict, before: int | None) -> CollaborativeModel:
        return CollaborativeModel.fit(kind, {**params, "seed": self.cfg.seed}, self.collab_matrix(before),
                                      self.idx.student_ids, self.idx.item_ids)

    def success_rows(self, before: int | None, space: FeatureSpace, limit: int | None = None):
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

    def subsample(self, x, y, n):
        if len(y) <= n:
            return x, y
        keep = self.rng.choice(len(y), n, replace=False)
        return x[keep], y[keep]

    # ------------------------------------------------------------------ the run
    def run(self) -> dict:
        t0 = time.perf_counter()
        with self._stage("load and validate"):
            ds = self._load()
        self.split = self._split()
        self.report["split"] = self._split_report()
        self.report["data"] = {"data_version": ds.data_version, "rows": ds.report.rows, "notes": ds.report.notes,
                               "interactions_until": int(self.idx.ts.max())}

        with self._stage("content"):
            self.content = ContentModel.fit(ds.internships)

        with self._stage("collaborative: selection on the validation window"):
            valid_rows, valid_graded = self.window(VALID)
            collab_kind, collab_params, collab_a = collaborative_search.select(self, VALID, valid_rows, valid_graded)

        success_algo = success_params = success_a = None
        if ds.has_outcomes:
            with self._stage("success predictor: search, calibration, evaluation"):
                success_algo, success_params, success_a = success_stage.fit_and_evaluate(self, VALID)
        else:
            self.report["success"] = {"skipped": "no outcomes table in the dataset"}
            self._skip_stage("success predictor: search, calibration, evaluation", "no outcomes table in the dataset")

        with self._stage("ranker: trained on the validation window"):
            ranker, blend_weights, ranker_params, (x, y, g) = ranker_stage.fit_ranker(
                self, collab_a or self.fit_collab(collab_kind, collab_params, VALID), success_a, valid_rows,
                valid_graded)
            del collab_a, success_a  # the stage's models: the rest of the run refits its own

        with self._stage("test window: components refitted up to c2, every model evaluated"):
            x2, y2, g2 = test_window.evaluate(self, ds, collab_kind, collab_params, success_algo, success_params,
                                              ranker, blend_weights)

        with self._stage("final refit on all data and bundles"):
            refs = final_fit.write_bundles(self, ds, collab_kind, collab_params, success_algo, success_params,
                                           np.vstack([x, x2]), np.concatenate([y, y2]), np.concatenate([g, g2]),
                                           ranker_params, blend_weights)
        return self._finish(refs, t0)

    def _load(self):
        """The dataset, validated, with the arrays every stage shares."""
        ds = load_dataset(self.cfg.data_dir)
        for note in ds.report.notes:
            tqdm.write(f"  note: {note}")
            self.emit("message", "load and validate", f"note: {note}")
        self.ds, self.idx = ds, index_dataset(ds)
        self.base_space = FeatureSpace.build(ds.students, ds.internships)
        self.students = self.base_space.students(ds.students)
        self.profile_texts = [profile_text(s, f, p) for s, f, p in zip(
            ds.students["skills"], ds.students["field"], ds.students["preferred_sectors"])]
        self.groups = {a: ds.students[a].astype(str).to_numpy() for a in GROUP_ATTRIBUTES if a in ds.students}
        return ds

    def _split_report(self) -> dict:
        """The split for the report; raises when it leaves a window empty."""
        cfg, split = self.cfg, self.split
        out = {"kind": split.kind, "interactions": split.counts()}
        if split.cutoffs is None:
            out["held_out_per_student"] = {"valid": cfg.valid_fraction, "test": cfg.test_fraction}
            if not out["interactions"]["valid"] or not out["interactions"]["test"]:
                raise ValueError("the random split leaves a window empty: too few interactions per student")
            return out
        iso = lambda t: datetime.fromtimestamp(t, timezone.utc).isoformat()  # noqa: E731
        c1, c2 = split.cutoffs
        out.update(train_until=iso(c1), valid_until=iso(c2))
        empty = [w for w, n in out["interactions"].items() if n == 0]
        if empty or c1 >= c2:
            raise ValueError(f"the time split (train until {iso(c1)}, valid until {iso(c2)}) leaves the "
                             f"{' and '.join(empty) or 'validation'} window empty; data spans "
                             f"{iso(int(self.idx.ts.min()))} .. {iso(int(self.idx.ts.max()))}")
        return out

    def _finish(self, refs: dict, t0: float) -> dict:
        """Timings, bundles and targets into the report, and the report written."""
        self.timings["total"] = round(time.perf_counter() - t0, 2)
        self.report["timings_seconds"] = self.timings
        self.report["bundles"] = {c: {"version": r.version, "path": str(r.path), "content_hash": r.content_hash}
                                  for c, r in refs.items()}
        self.report["targets"] = self._targets()
        run_dir = Path(self.cfg.runs_dir) / self.run_id
        write_report(self.report, run_dir)
        self.report["run_dir"] = str(run_dir)
        return self.report

    def shipped(self) -> str:
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


def train(cfg: TrainConfig) -> dict:
    return Trainer(cfg).run()

