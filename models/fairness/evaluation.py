"""Fairness before/after on an evaluation window: the same ranked lists, re-ranked as the gateway does.

Each student's candidates are scored by the ranker (the serving pipeline), then ordered twice:
by relevance alone ("before") and by `models.fairness.reranker.FairReranker` with fairness on ("after"),
each with its own exposure ledger fed student by student, as a gateway replica would be.

Provider side: position-weighted exposure share per item group against its target, Gini of
exposure over open internships, catalogue coverage, and exposure share / slot share per
internship. Consumer side: NDCG@k, Recall@k and mean success probability of the top k, per
student group, with min/max ratios across groups.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import scipy.sparse as sp

from models.training.evaluate import CandidateBlock, Components, candidate_blocks, pipeline_scores
from models.fairness.exposure import gini, position_weights
from models.fairness.reranker import FairnessConfig, FairReranker, item_groups
from models.training.metrics import group_breakdown
from models.components.ranker import RankerModel

def _ndcg_recall(hits: np.ndarray, n_relevant: int, k: int) -> tuple[float, float]:
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = discounts[:max(min(n_relevant, k), 1)].sum()
    return float((hits * discounts[:len(hits)]).sum() / ideal), float(hits.sum() / max(n_relevant, 1))


@dataclass
class ScoredList:
    """One student's filtered candidates as the gateway would re-rank them."""
    row: int
    candidates: np.ndarray   # catalogue positions
    scores: np.ndarray       # the ranker's scores
    groups: np.ndarray       # item group ids
    relevant: np.ndarray     # bool per candidate
    n_relevant: int
    success_p: np.ndarray    # per candidate (nan without a success predictor)


class ListMaker:
    """A block's candidate lists as the gateway would re-rank them (`ScoredList`s)."""

    def __init__(self, c: Components, relevant: sp.csr_matrix, *, item_msme: np.ndarray,
                 student_attrs: dict[str, np.ndarray], cfg: FairnessConfig):
        self.c, self.relevant, self.item_msme, self.student_attrs, self.cfg = c, relevant, item_msme, student_attrs, cfg
        self.sector_names = np.append(c.space.sectors.tokens, "")[c.space.items.sector]  # -1 (unknown) -> ""

    def lists(self, block: CandidateBlock, ranker_scores: np.ndarray) -> list[ScoredList]:
        items, students, relevant = self.c.space.items, self.c.students, self.relevant
        out = []
        for i, row in enumerate(block.rows.tolist()):
            valid = block.valid[i]
            cand = block.items[i][valid]
            g = item_groups(self.cfg.groups, item_district=items.district[cand], item_lat=items.latitude[cand],
                            item_lon=items.longitude[cand], item_remote=items.remote[cand],
                            item_msme=self.item_msme[cand], item_sector=self.sector_names[cand],
                            student_district=self.student_attrs["district"][row],
                            student_lat=students.latitude[row], student_lon=students.longitude[row])
            out.append(ScoredList(row, cand, ranker_scores[i][valid], g,
                                  np.asarray(relevant[row, cand].todense()).ravel() > 0,
                                  int(relevant[row].nnz), block.scores[i, valid, 3]))
        return out


def scored_lists(c: Components, rows: np.ndarray, relevant: sp.csr_matrix, *, n_candidates: int,
                 blend_weights: dict, ranker: RankerModel, item_msme: np.ndarray,
                 student_attrs: dict[str, np.ndarray], cfg: FairnessConfig) -> list[ScoredList]:
    maker = ListMaker(c, relevant, item_msme=item_msme, student_attrs=student_attrs, cfg=cfg)
    return [x for block in candidate_blocks(c, rows, n_candidates)
            for x in maker.lists(block, pipeline_scores(block, blend_weights, ranker)["ranker"])]


def serve_lists(lists: list[ScoredList], slots: np.ndarray, cfg: FairnessConfig, *, enabled: bool,
                strength: float, k: int) -> dict:
    """Re-rank every list in order through one FairReranker (one gateway replica's view)."""
    reranker = FairReranker(slots, cfg)
    exposure, group_exposure = np.zeros(len(slots)), np.zeros(len(cfg.groups) + 1)
    ndcg, recall, success_p, moved_total = [], [], [], 0
    weights = position_weights(k)
    for x in lists:
        order, moved = reranker.rerank(x.scores, x.candidates, x.groups, enabled=enabled, strength=strength, k=k)
        w = weights[:len(order)]
        np.add.at(exposure, x.candidates[order], w)
        np.add.at(group_exposure, x.groups[order], w)
        n, r = _ndcg_recall(x.relevant[order].astype(float), x.n_relevant, k)
        ndcg.append(n)
        recall.append(r)
        success_p.append(float(np.nanmean(x.success_p[order])) if np.isfinite(x.success_p[order]).any() else np.nan)
        moved_total += int(moved.sum())
    return {"exposure": exposure, "group_exposure": group_exposure, "ndcg": np.asarray(ndcg),
            "recall": np.asarray(recall), "success_p": np.asarray(success_p, dtype=np.float64),
            "moved": moved_total}


def evaluate_fairness(c: Components, rows: np.ndarray, relevant: sp.csr_matrix, *, k: int, n_candidates: int,
                      blend_weights: dict, ranker: RankerModel, item_msme: np.ndarray,
                      student_attrs: dict[str, np.ndarray], groups: dict[str, np.ndarray],
                      cfg: FairnessConfig | None = None, strength: float = 1.0, sweep_students: int = 5000,
                      lists: list[ScoredList] | None = None) -> dict:
    """`lists`, when given, are `rows`' lists already made (ListMaker, with `cfg`'s groups)."""
    cfg = cfg or FairnessConfig()
    slots = np.nan_to_num(c.space.items.slots, nan=1.0)
    if lists is None:
        lists = scored_lists(c, rows, relevant, n_candidates=n_candidates, blend_weights=blend_weights, ranker=ranker,
                             item_msme=item_msme, student_attrs=student_attrs, cfg=cfg)
    served = {"before": serve_lists(lists, slots, cfg, enabled=False, strength=strength, k=k),
              "after": serve_lists(lists, slots, cfg, enabled=True, strength=strength, k=k)}
    open_items = c.open_items
    slot_share = slots[open_items] / slots[open_items].sum()
    out = {"min_shares": dict(cfg.min_shares), "exposure_targets": dict(cfg.exposure_targets),
           "max_shares": dict(cfg.max_shares), "strength": strength, "exposure_strength": cfg.exposure_strength,
           "temperature": cfg.temperature, "half_life": cfg.half_life, "students": int(len(rows)),
           "promoted_items_per_list": served["after"]["moved"] / max(len(rows), 1)}
    row_of = np.array([x.row for x in lists], dtype=np.int64)
    for mode, sv in served.items():
        share = sv["group_exposure"] / max(sv["group_exposure"].sum(), 1e-12)
        ex = sv["exposure"][open_items]
        ratio = (ex / max(ex.sum(), 1e-12)) / slot_share
        out[mode] = {
            "ndcg@10": float(np.mean(sv["ndcg"])), "recall@10": float(np.mean(sv["recall"])),
            "mean_success_p@10": float(np.nanmean(sv["success_p"])) if c.success is not None else None,
            "group_exposure_share": dict(zip(cfg.group_names + ["other"], share.round(4).tolist())),
            # Raw exposure is what the done-when asks about; per slot is what capacity-aware
            # control drives towards 0 (a perfectly capacity-proportional exposure still has the
            # Gini of the slots themselves, 0.42 on the default data).
            "gini_exposure": gini(ex), "gini_exposure_per_slot": gini(ex / slots[open_items]),
            "coverage": float((ex > 0).mean()),
            "exposure_over_slot_share": {"p10": float(np.percentile(ratio, 10)), "p50": float(np.percentile(ratio, 50)),
                                         "p90": float(np.percentile(ratio, 90)),
                                         "within_0.5x_2x": float(((ratio >= 0.5) & (ratio <= 2)).mean())},
            "consumer_groups": group_breakdown({"ndcg": sv["ndcg"], "recall": sv["recall"]},
                                               {a: v[row_of] for a, v in groups.items()}, k),
        }
    b, a = out["before"], out["after"]
    out["summary"] = {
        "ndcg_relative_loss": 1 - a["ndcg@10"] / max(b["ndcg@10"], 1e-12),
        "gini_relative_reduction": 1 - a["gini_exposure"] / max(b["gini_exposure"], 1e-12),
        "gini_per_slot_relative_reduction": 1 - a["gini_exposure_per_slot"] / max(b["gini_exposure_per_slot"], 1e-12),
        "group_share_vs_target": {grp: {"target": t, "before": b["group_exposure_share"][grp],
                                        "after": a["group_exposure_share"][grp],
                                        "within_10pct": abs(a["group_exposure_share"][grp] - t) <= 0.1 * t}
                                  for grp, t in cfg.exposure_targets.items()},
        "group_share_vs_minimum": {grp: {"minimum": m, "after": a["group_exposure_share"][grp]}
                                   for grp, m in cfg.min_shares.items()},
    }
    out["sweep"] = fairness_sweep(lists[:sweep_students], slots, open_items, cfg, k=k)
    return out


def fairness_sweep(lists: list[ScoredList], slots: np.ndarray, open_items: np.ndarray, cfg: FairnessConfig, *,
                   k: int) -> list[dict]:
    """NDCG cost and exposure spread of neighbouring settings, on the same lists (a chosen setting
    is only as good as its neighbours say)."""
    base = serve_lists(lists, slots, cfg, enabled=False, strength=1.0, k=k)
    base_ndcg, base_gini = float(np.mean(base["ndcg"])), gini(base["exposure"][open_items])
    settings = [("configured", {})] + [(f"exposure_strength={e}", {"exposure_strength": e}) for e in (0.0, 0.3, 0.8)] \
        + [("msme target 0.2", {"exposure_targets": {"msme": 0.2}}), ("no msme target", {"exposure_targets": {}})]
    rows = []
    for name, change in settings:
        variant = replace(cfg, **change)
        sv = serve_lists(lists, slots, variant, enabled=True, strength=1.0, k=k)
        share = sv["group_exposure"] / max(sv["group_exposure"].sum(), 1e-12)
        rows.append({"setting": name, "ndcg_relative_loss": 1 - float(np.mean(sv["ndcg"])) / max(base_ndcg, 1e-12),
                     "gini_relative_reduction": 1 - gini(sv["exposure"][open_items]) / max(base_gini, 1e-12),
                     **{f"{g}_share": float(v) for g, v in zip(cfg.group_names, share)}})
    return rows


def evaluate_shortlists(c: Components, out_s: np.ndarray, out_i: np.ndarray, out_y: np.ndarray,
                        student_attrs: pd.DataFrame, groups: dict[str, float] | None = None,
                        min_pool: int = 3, max_pools: int = 5000, seed: int = 0) -> dict:
    """Shortlists of every internship's applicants (the given outcomes), without and with minimums.

    Applicants are scored as the gateway scores them: mean of the z-scored content match and the
    calibrated success probability. NDCG is measured against who was really selected. Beyond
    `max_pools` internships (each costs an embedding of its applicants' profiles), a seeded
    random sample of them, said in the result.
    """
    from models.fairness.shortlist import DEFAULT_GROUPS, default_size, membership, ndcg, shortlist
    from models.fairness.reranker import zscore
    from models.components.features import pair_features

    groups = groups or DEFAULT_GROUPS
    names, shares = list(groups), np.array(list(groups.values()))
    items = c.space.items
    per_item = {"ndcg_plain": [], "ndcg_fair": [], "all_met": [], "all_met_where_feasible": []}
    share = {g: [] for g in names}
    order_by_item = np.argsort(out_i, kind="stable")
    bounds = np.flatnonzero(np.diff(out_i[order_by_item])) + 1
    pools = [rows for rows in np.split(order_by_item, bounds) if len(rows) >= min_pool]
    eligible = len(pools)
    if eligible > max_pools:
        keep = np.sort(np.random.default_rng(seed).choice(eligible, max_pools, replace=False))
        pools = [pools[j] for j in keep]
    for rows in pools:
        i = int(out_i[rows[0]])
        s = out_s[rows]
        match = c.content.score([c.profile_texts[x] for x in s], np.array([i]))[:, 0]
        prob = (c.success.predict(pair_features(c.students, s, items, np.full(len(s), i)))
                if c.success is not None else np.full(len(s), np.nan))
        score = np.nanmean(np.vstack([zscore(match), zscore(prob)]), axis=0)
        size = min(default_size(items.slots[i]), len(rows))
        members = membership(student_attrs.iloc[s].to_dict("records"), names)
        plain, _ = shortlist(score, np.zeros((len(s), 0), bool), np.zeros(0), size)
        fair, report = shortlist(score, members, shares, size)
        y = out_y[rows].astype(float)
        per_item["ndcg_plain"].append(ndcg(y[plain], y))
        per_item["ndcg_fair"].append(ndcg(y[fair], y))
        per_item["all_met"].append(all(r["met"] for r in report))
        per_item["all_met_where_feasible"].append(all(r["met"] for r in report if r["feasible"]))
        for g, r in zip(names, report):
            share[g].append(r["achieved"] / size)
    if not per_item["ndcg_plain"]:
        return {"shortlists": 0}
    plain_ndcg, fair_ndcg = float(np.nanmean(per_item["ndcg_plain"])), float(np.nanmean(per_item["ndcg_fair"]))
    return {
        "shortlists": len(per_item["ndcg_plain"]), "internships_with_a_pool": eligible,
        "sample_seed": seed if eligible > max_pools else None, "minimums": groups,
        "mean_share": {g: float(np.mean(v)) for g, v in share.items()},
        "share_of_shortlists_meeting_all": float(np.mean(per_item["all_met"])),
        "share_meeting_all_feasible_minimums": float(np.mean(per_item["all_met_where_feasible"])),
        "ndcg_by_selection": {"plain": plain_ndcg, "with_minimums": fair_ndcg,
                              "relative_cost": 1 - fair_ndcg / max(plain_ndcg, 1e-12)},
    }
