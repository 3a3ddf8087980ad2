"""The ranker's stage of a training run: the learned ranker and the static blend's weights,
trained on the validation window's candidates, and the decision of what the rank stage serves."""

from __future__ import annotations

import itertools

import numpy as np
import scipy.sparse as sp
from tqdm import tqdm

from models.components.ranker import RankerModel
from models.components.scores import COMPONENT_SCORES, blend_scores
from models.components.success import SuccessModel
from models.components.collaborative import CollaborativeModel
from models.training import metrics as M
from models.training import selection
from models.training.evaluate import ranker_training_data
from models.training.split import VALID


def fit_ranker(tr, collab: CollaborativeModel, success: SuccessModel | None, rows: np.ndarray,
                  graded: sp.csr_matrix):
    """The ranker and the blend's weights, trained on the validation window's candidates:
    (ranker, blend weights, ranker params, (x, y, group sizes)); the rows join the final fit."""
    cfg = tr.cfg
    comp = tr.components(VALID, collab, success)
    x, y, g, blocks = ranker_training_data(comp, rows, graded, cfg.candidates)
    blend_weights = tune_blend(tr, blocks, graded)
    # Small trees, few of them: on the default data's windows the test NDCG is flat from 30 to
    # 150 trees of 15 leaves and falls beyond (over-fitting), and serving cost grows with the
    # number of leaves (the README has the measurements).
    ranker_params = {"n_estimators": 60, "learning_rate": 0.05, "num_leaves": 15, "min_child_samples": 20,
                     "subsample": 0.8, "subsample_freq": 1, "colsample_bytree": 0.8}
    ranker = RankerModel.fit(x, y, g, ranker_params, blend_weights, seed=cfg.seed)
    tr.report["ranker"] = {"training_groups": int(len(g)), "training_rows": int(len(y)),
                             "blend_weights": blend_weights, "params": ranker_params}
    return ranker, blend_weights, ranker_params, (x, y, g)


def tune_blend(tr, blocks, graded) -> dict[str, float]:
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
            pos = M.top_k(s, tr.cfg.k)
            items = np.take_along_axis(block.items, pos, axis=1)
            valid = np.take_along_axis(block.valid, pos, axis=1)
            ndcg.append(M.ranking_metrics(items, rel, 1, valid)["_per_student"]["ndcg"])
        score = float(np.mean(np.concatenate(ndcg)))
        if score > best_ndcg:
            best, best_ndcg = w, score
    return best


def ranker_comparison(tr, ndcg: dict) -> dict:
    """The learned ranker against the best of the alternatives it replaces, on the same test
    students, with the paired bootstrap interval of the NDCG difference."""
    alternatives = [n for n in ("blend", "content", "collaborative", "success_only", "popularity") if n in ndcg]
    best = max(alternatives, key=lambda n: float(np.mean(ndcg[n])))
    out = {"alternative": best, f"ranker_ndcg@{tr.cfg.k}": float(np.mean(ndcg["ranker"])),
           f"alternative_ndcg@{tr.cfg.k}": float(np.mean(ndcg[best])),
           **selection.compare(ndcg["ranker"], ndcg[best], seed=tr.cfg.seed)}
    out["ranker_wins"] = out["beyond_noise"] and out["difference"] > 0
    against_blend = selection.compare(ndcg["ranker"], ndcg["blend"], seed=tr.cfg.seed)
    out["against_blend"] = against_blend
    out["shipped_ranking"], out["why"] = shipped_ranking(out["ranker_wins"], against_blend, best)
    if not out["ranker_wins"]:
        message = (f"the learned ranker does not beat {best} beyond noise on the test window (NDCG@{tr.cfg.k} "
                   f"difference {out['difference']:+.4f}, 95 % interval [{out['interval'][0]:+.4f}, "
                   f"{out['interval'][1]:+.4f}]); the rank stage serves: {out['shipped_ranking']} ({out['why']})")
        tqdm.write(f"  warning: {message}")
        tr.emit("message", "test window: components refitted up to c2, every model evaluated", message)
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
