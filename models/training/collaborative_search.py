"""The collaborative stage of a training run: a hyperparameter search scored on a later window,
a choice among the trials with the noise in view, and the chosen model against references.

Functions of the run's `Trainer` (`tr`): its data, split, configuration and report.
"""

from __future__ import annotations

import numpy as np
import optuna
import scipy.sparse as sp
from tqdm import tqdm

from models.components.collaborative import MAX_EASE_ITEMS, CollaborativeModel, search_space, serving_parameters
from models.training import metrics as M
from models.training import selection
from models.training.evaluate import chunk_size, collaborative_scores
from models.training.split import TEST, interaction_csr

# Interactions x trials the collaborative search may spend: 30 trials up to ~70,000 interactions
# (a few seconds each at most there), the grid alone at millions (where one ALS fit takes minutes).
COLLAB_SEARCH_CELLS = 2_000_000


STAGE = "collaborative: selection on the validation window"


def select(tr, phase: int, rows: np.ndarray, graded: sp.csr_matrix):
    """Search the collaborative model's hyperparameters on what precedes `phase`, scoring each
    trial's NDCG@k on `phase` (TPE, seeded; the configured grid is tried first), then choose
    among every trial with the noise in view. Returns (kind, params, model): the model is the
    chosen trial's own fit when it is the best by mean (the one kept while searching: one model
    at a time, an EASE model can be gigabytes), else None (refit it)."""
    table, per_student, best_fit = search(tr, phase, rows, (graded > 0).astype(np.float32).tocsr())
    choice = selection.choose(per_student, [r["serving_parameters"] for r in table],
                              [f"{r['kind']} {r['params']}" for r in table], seed=tr.cfg.seed)
    for row, iv, diff in zip(table, choice.intervals, choice.differences):
        row[f"ndcg@{tr.cfg.k}_interval"] = list(iv)
        row["difference_to_best"] = {"mean": diff[0], "interval": list(diff[1:])}
    chosen = table[choice.index]
    chosen["chosen"] = True
    tr.report["collaborative_choice"] = choice.reason
    tr.report["collaborative_selection"] = table
    tr.emit("metrics", STAGE, f"chose {choice.reason}",
            {f"collaborative.validation.ndcg@{tr.cfg.k}": chosen[f"ndcg@{tr.cfg.k}"]})
    return chosen["kind"], chosen["params"], best_fit[1] if best_fit[0] == choice.index else None


def search(tr, phase: int, rows: np.ndarray, relevant: sp.csr_matrix):
    """The trials: (one table row per trial, NDCG per student per trial, [index, model, mean NDCG]
    of the best trial by mean)."""
    cfg = tr.cfg
    table, per_student = [], []
    best_fit: list = []
    matrix = tr.collab_matrix(phase)
    n_items = len(tr.idx.item_ids)
    grid = [("als", p) for p in cfg.als_grid] + ([("ease", p) for p in cfg.ease_grid] if n_items <= MAX_EASE_ITEMS
                                                  else [])
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=cfg.seed))
    for kind, params in grid:
        study.enqueue_trial({"kind": kind, **params})
    budget = cfg.collab_trials or collab_trial_budget(matrix.nnz, len(grid))
    bar = tqdm(total=budget, desc="collaborative search", disable=not cfg.progress, leave=False)

    def objective(trial) -> float:
        kind, params = search_space(trial, n_items)
        model = CollaborativeModel.fit(kind, {**params, "seed": cfg.seed}, matrix, tr.idx.student_ids,
                                       tr.idx.item_ids)
        m, ndcg = collab_metrics(tr, model, phase, rows, relevant)
        mean = float(np.mean(ndcg, dtype=np.float64))
        if not best_fit or mean > best_fit[2]:
            best_fit[:] = [len(per_student), model, mean]
        per_student.append(ndcg)
        table.append({"kind": kind, "params": params, **m,
                      "serving_parameters": serving_parameters(kind, params, n_items)})
        bar.update()
        return float(np.mean(ndcg))

    study.optimize(objective, n_trials=budget, callbacks=[stop_without_progress(cfg.collab_patience, len(grid))])
    bar.close()
    tr.report["collaborative_search"] = {"trials": len(table), "budget": budget, "patience": cfg.collab_patience,
                                         "sampler": f"TPE, seed {cfg.seed}", "started_from": "the configured grid"}
    return table, per_student, best_fit


def collab_metrics(tr, model: CollaborativeModel, phase: int, rows: np.ndarray, relevant: sp.csr_matrix):
    """A collaborative model's top-k over the open catalogue for `rows` (fitted on what precedes
    `phase`; each student folded in from their history as the service does, popularity for
    students without one), against their relevant items in `phase`: (metrics, NDCG per student)."""
    seen = interaction_csr(tr.idx, tr.split.before(phase), np.ones(len(tr.idx.ts)), *relevant.shape)
    open_items = tr.open_items(phase)
    tops = []
    step = chunk_size(len(open_items))
    for start in range(0, len(rows), step):
        part = rows[start:start + step]
        scores, _ = collaborative_scores(model, part)  # as served: folded in from the history
        scores[seen[part].toarray().astype(bool) | ~open_items[None, :]] = -np.inf
        tops.append(M.top_k(scores, tr.cfg.k))
    m = M.ranking_metrics(np.vstack(tops), relevant[rows], int(open_items.sum()))
    return m, m.pop("_per_student")["ndcg"]


def references(tr, chosen: CollaborativeModel, rows: np.ndarray, graded: sp.csr_matrix) -> list[dict]:
    """The chosen collaborative model against reference models (cfg.reference_collaborative),
    each fitted on the same data and scored on the same test students the same way."""
    relevant = (graded > 0).astype(np.float32).tocsr()
    ours, ours_ndcg = collab_metrics(tr, chosen, TEST, rows, relevant)
    out = [{"name": f"chosen: {chosen.kind} {chosen.params}", **ours,
            "interval": selection.mean_interval(ours_ndcg, seed=tr.cfg.seed)}]
    for name, kind, params in tr.cfg.reference_collaborative:
        model = tr.fit_collab(kind, params, TEST)
        m, ndcg = collab_metrics(tr, model, TEST, rows, relevant)
        out.append({"name": name, **m,
                    "interval": selection.mean_interval(ndcg, seed=tr.cfg.seed),
                    "chosen_minus_this": selection.compare(ours_ndcg, ndcg, seed=tr.cfg.seed)})
    return out


def collab_trial_budget(interactions: int, grid: int) -> int:
    """Trials for the collaborative search: what COLLAB_SEARCH_CELLS allows, never fewer than the
    grid, never more than 30. Depends only on the data, so a run is reproducible from its seed."""
    return int(max(grid, min(30, COLLAB_SEARCH_CELLS // max(interactions, 1))))


def stop_without_progress(patience: int, after: int = 0):
    """An Optuna callback: stop the study once `patience` finished trials beyond the first `after`
    (the grid) have brought no new best."""
    def callback(study, trial) -> None:
        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if len(done) >= after + patience and study.best_trial.number < done[-patience].number:
            study.stop()
    return callback
