"""The test window of a training run: components refitted up to the second cutoff and every model
evaluated on the window (ranking metrics with intervals, fairness, shortlists); the window's
ranker rows join the final fit."""

from __future__ import annotations

import numpy as np

from models.components.ranker import RankerModel
from models.components.success import SuccessModel
from models.data.contract import Dataset
from models.fairness.evaluation import ListMaker, evaluate_fairness, evaluate_shortlists
from models.fairness.reranker import FairnessConfig
from models.training import collaborative_search, selection
from models.training.diagnostics import window_fingerprint
from models.training.evaluate import WindowMetrics, candidate_blocks, stack_training_rows, training_rows
from models.training.ranker_stage import ranker_comparison
from models.training.split import TEST


def evaluate(tr, ds: Dataset, collab_kind: str, collab_params: dict, success_algo, success_params,
             ranker: RankerModel, blend_weights: dict):
    """Components refitted up to the second cutoff, every model evaluated on the test window
    (metrics, fairness, shortlists); returns the window's ranker rows (x, y, group sizes):
    the windows exist to choose and to report, the shipped ranker learns from them too."""
    cfg = tr.cfg
    success_b = None
    if ds.has_outcomes:
        xs, ys = tr.success_rows(TEST, tr.space(None), 4 * cfg.max_success_rows)
        success_b = SuccessModel.fit(xs, ys, success_algo, success_params, folds=cfg.cv_folds, seed=cfg.seed)
        success_b.serves_base_rate = tr.success_serves_base_rate
    collab_b = tr.fit_collab(collab_kind, collab_params, TEST)
    comp_b = tr.components(TEST, collab_b, success_b)
    test_rows, test_graded = tr.window(TEST)
    if cfg.reference_collaborative:
        tr.report["collaborative_references"] = collaborative_search.references(tr, collab_b, test_rows, test_graded)
    relevant = (test_graded > 0).astype(np.float32).tocsr()
    # One pass over the window's candidate blocks feeds the metrics, the fairness lists and
    # the ranker's final training rows: a block is the costly part (whole-catalogue scores).
    window_metrics = WindowMetrics(comp_b, relevant, k=cfg.k, n_candidates=cfg.candidates,
                                   blend_weights=blend_weights, ranker=ranker)
    fairness_cfg = FairnessConfig()
    list_maker = ListMaker(comp_b, relevant, item_msme=item_msme(ds),
                           student_attrs={"district": tr.students.district}, cfg=fairness_cfg)
    lists, final_rows = [], []
    bar = tr.bar(len(test_rows), "evaluating")
    for block in candidate_blocks(comp_b, test_rows, cfg.candidates):
        scores = window_metrics.add(block)
        lists += list_maker.lists(block, scores["ranker"])
        final_rows.append(training_rows(block, test_graded, keep_block=False))
        bar.update(len(block.rows))
    bar.close()
    ndcg = {}
    test = window_metrics.result(tr.groups, ndcg)
    for name, per_student in ndcg.items():  # every model's NDCG@k with its 95 % bootstrap interval
        test[name][f"ndcg@{cfg.k}_interval"] = selection.mean_interval(per_student, seed=cfg.seed)
    tr.report["ranking"] = test
    tr.report["ranker_against_best_alternative"] = ranker_comparison(tr, ndcg)
    tr.report["evaluation_window"] = window_report(tr, ds, len(test_rows))
    tr.emit("metrics", "test window: components refitted up to c2, every model evaluated",
            f"evaluated {len(test_rows)} students on the test window",
            {f"{name}.{m}": v for name, block in test.items() if isinstance(block, dict)
             for m, v in block.items() if m in (f"ndcg@{cfg.k}", f"recall@{cfg.k}", f"map@{cfg.k}")})
    tr.report["fairness"] = evaluate_fairness(
        comp_b, test_rows, relevant, k=cfg.k, n_candidates=cfg.candidates, blend_weights=blend_weights,
        ranker=ranker, item_msme=item_msme(ds), student_attrs={"district": tr.students.district},
        groups=tr.groups, cfg=fairness_cfg, lists=lists)
    if ds.has_outcomes:
        later = tr.split.out_phase >= TEST
        attrs = ds.students[[a for a in ("gender", "social_category", "disability", "rural")
                             if a in ds.students]]
        tr.report["fairness"]["shortlists"] = evaluate_shortlists(
            comp_b, tr.idx.out_s[later], tr.idx.out_i[later], tr.idx.out_y[later], attrs, seed=cfg.seed)
    tr.report["ranker"]["feature_importance"] = ranker.feature_importance()
    x2, y2, g2, _ = stack_training_rows(final_rows)
    return x2, y2, g2


def item_msme(ds) -> np.ndarray:
    """Per internship: its company is Micro/Small/Medium (False where unknown)."""
    if ds.companies is None or "size" not in ds.companies:
        return np.zeros(len(ds.internships), dtype=bool)
    sizes = dict(zip(ds.companies["company_id"].astype(str), ds.companies["size"].astype(str)))
    return np.array([sizes.get(str(c)) in ("Micro", "Small", "Medium") for c in ds.internships["company_id"]])


def window_report(tr, ds: Dataset, n_students: int) -> dict:
    """What the metrics were measured on, with its fingerprint: it travels in every manifest, so
    that only metrics measured on the same window are compared."""
    cfg = tr.cfg
    window = {
        "data_version": ds.data_version, "split": tr.split.kind,
        **({"train_until": tr.split.cutoffs[0], "valid_until": tr.split.cutoffs[1]}
           if tr.split.cutoffs else {"split_seed": cfg.seed}), "k": cfg.k,
        "candidates": cfg.candidates, "test_students": int(n_students),
        "sample_seed": cfg.seed if n_students >= cfg.max_eval_students else None}
    window["fingerprint"] = window_fingerprint(window)
    return window
