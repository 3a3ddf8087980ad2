"""Reservation-aware shortlists: the candidates forwarded to a company for one internship.

The scheme forwards about 2-3 x the slots to each company, and reservation rules apply (SC/ST/OBC,
persons with disability; gender and rural representation as configured). Groups overlap (one
student can be SC, a woman and rural at once), so a student counts towards every group they
belong to. Protected attributes are used here only to satisfy these minimums, never as features.

Selection: each group needs ceil(min_share x size) members. While some group is short, the
scarcest group (fewest unselected members per missing seat) takes its best-scored unselected
member; then the remaining seats go by score. The shortlist is returned in score order. A group
whose pool holds fewer members than it needs is reported as infeasible and gets all it has.
"""

from __future__ import annotations

import math

import numpy as np

# Reserved groups and their minimum shares (national norms for SC/ST/OBC and persons with
# disability; women as configured), and how membership reads a student's attributes.
DEFAULT_GROUPS = {"SC": 0.15, "ST": 0.075, "OBC": 0.27, "disability": 0.04, "female": 0.30}
MEMBERSHIP = {
    "SC": lambda a: a.get("social_category") == "SC", "ST": lambda a: a.get("social_category") == "ST",
    "OBC": lambda a: a.get("social_category") == "OBC", "EWS": lambda a: a.get("social_category") == "EWS",
    "disability": lambda a: _true(a.get("disability")), "female": lambda a: a.get("gender") == "F",
    "rural": lambda a: _true(a.get("rural")),
}


def _true(v) -> bool:
    return v is not None and v == v and str(v).lower() in ("1", "true", "yes")


def membership(attrs: list[dict], groups: list[str]) -> np.ndarray:
    """(students, groups) bool matrix from each student's reservation-relevant attributes."""
    return np.array([[MEMBERSHIP[g](a) for g in groups] for a in attrs], dtype=bool).reshape(len(attrs), len(groups))


def default_size(slots: float) -> int:
    """About 2.5 x the slots, as the scheme forwards 2-3 x."""
    return int(max(1, round(2.5 * (slots if slots == slots and slots > 0 else 1))))


def shortlist(scores: np.ndarray, members: np.ndarray, min_shares: np.ndarray, size: int):
    """(indices of the shortlist in score order, per-group report dicts).

    scores (n,); members (n, G) bool; min_shares (G,) in [0, 1]; size >= 1.
    """
    scores = np.asarray(scores, dtype=np.float64)
    members = np.asarray(members, dtype=bool).reshape(len(scores), -1)
    shares = np.asarray(min_shares, dtype=np.float64)
    size = int(min(size, len(scores)))
    required = np.array([math.ceil(s * size - 1e-9) for s in shares], dtype=np.int64)
    available = members.sum(axis=0)
    need = np.minimum(required, available)
    by_score = np.argsort(-scores, kind="stable")
    chosen = np.zeros(len(scores), dtype=bool)
    picked: list[int] = []
    while len(picked) < size and (need > 0).any():
        short = np.flatnonzero(need > 0)
        left = (members[:, short] & ~chosen[:, None]).sum(axis=0)
        g = short[np.argmin(left / need[short])]  # scarcest first: fewest spare members per seat
        best = next(i for i in by_score if members[i, g] and not chosen[i])
        chosen[best] = True
        picked.append(int(best))
        need = np.maximum(need - members[best], 0)
    for i in by_score:
        if len(picked) >= size:
            break
        if not chosen[i]:
            chosen[i] = True
            picked.append(int(i))
    order = np.array(sorted(picked, key=lambda i: -scores[i]), dtype=np.int64)
    achieved = members[order].sum(axis=0)
    report = [{"required": int(required[g]), "available": int(available[g]), "achieved": int(achieved[g]),
               "feasible": bool(available[g] >= required[g]), "met": bool(achieved[g] >= required[g])}
              for g in range(len(shares))]
    return order, report


def ndcg(relevance_in_order: np.ndarray, all_relevance: np.ndarray) -> float:
    """NDCG of a list against the best possible list of the same length from the whole pool."""
    rel = np.asarray(relevance_in_order, dtype=np.float64)
    discounts = 1.0 / np.log2(np.arange(2, len(rel) + 2))
    ideal = np.sort(np.asarray(all_relevance, dtype=np.float64))[::-1][:len(rel)]
    best = float((ideal * discounts[:len(ideal)]).sum())
    return float((rel * discounts).sum() / best) if best > 0 else 0.0
