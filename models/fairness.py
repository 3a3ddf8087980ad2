"""Fair re-ranking of one student's list: one code path for the gateway and the offline evaluation.

Item groups come from configuration on internship attributes, one group per item by priority:
`msme` (a Micro/Small/Medium company), then `local` (the student's own or a neighbouring
district, within NEIGHBOUR_KM, or remote); everything else fills. Targets are minimum shares at
every prefix (DetConstSort, models/fair_ranking.py), scaled by the request's strength.

Capacity-aware exposure: an ExposureLedger tracks how much exposure each internship has had
against its share of slots, and nudges under-exposed internships up (the boost is added to the
list's z-scored relevance before the constraints are applied). In serving there is one ledger
per gateway replica, not a shared one: round-robin balancing gives each replica a random slice
of the traffic, so every ledger converges to the same shares without a cross-replica write on
every request.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from models.data.domain import NEIGHBOUR_KM, haversine_km
from models.fair_ranking import ExposureLedger, plain_order
from models.fair_ranking import rerank as constrained_rerank

GROUPS = ["msme", "local"]  # priority order; index = group id; len(GROUPS) = the fill group "other"


@dataclass
class FairnessConfig:
    targets: dict = field(default_factory=lambda: {"msme": 0.2, "local": 0.3})
    exposure_strength: float = 0.5   # weight of the exposure boost, in z-score units at strength 1
    half_life: float | None = 5000   # requests; the ledger follows recent traffic

    @classmethod
    def from_json(cls, text: str | None) -> "FairnessConfig":
        return cls(**json.loads(text)) if text else cls()

    def target_array(self) -> np.ndarray:
        return np.array([self.targets.get(g, 0.0) for g in GROUPS] + [0.0])


def item_groups(*, item_district, item_lat, item_lon, item_remote, item_msme,
                student_district: str, student_lat: float, student_lon: float) -> np.ndarray:
    """Group id per candidate (0 msme, 1 local, 2 other) from the candidates' attribute arrays."""
    km = np.nan_to_num(haversine_km(student_lat, student_lon, item_lat, item_lon), nan=np.inf)
    district = (student_district or "").strip().lower()
    same = (np.char.lower(np.asarray(item_district, dtype=str)) == district) if district else \
        np.zeros(len(km), dtype=bool)
    local = same | (km <= NEIGHBOUR_KM) | np.asarray(item_remote, dtype=bool)
    return np.where(np.asarray(item_msme, dtype=bool), 0, np.where(local, 1, 2)).astype(np.int64)


def zscore(v: np.ndarray, missing: float = np.nan) -> np.ndarray:
    """z-scores of the finite values of one list; `missing` where a value is not finite."""
    v = np.asarray(v, dtype=np.float64)
    finite = np.isfinite(v)
    if finite.sum() < 2:
        return np.where(finite, 0.0, missing)
    sd = v[finite].std()
    with np.errstate(invalid="ignore"):
        return np.where(finite, (v - v[finite].mean()) / (sd if sd > 1e-12 else 1.0), missing)


class FairReranker:
    def __init__(self, slots: np.ndarray, cfg: FairnessConfig):
        self.cfg = cfg
        self.targets = cfg.target_array()
        self.ledger = ExposureLedger(np.nan_to_num(np.asarray(slots, dtype=np.float64), nan=1.0),
                                     half_life=cfg.half_life)

    def rerank(self, scores: np.ndarray, positions: np.ndarray, groups: np.ndarray | None, *,
               enabled: bool, strength: float, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(order of the top k as indices into scores, moved mask). Exposure is recorded either way."""
        if not enabled:
            order = plain_order(scores)[:k]
            moved = np.zeros(len(order), dtype=bool)
        else:
            strength = strength if strength > 0 else 1.0
            adjusted = zscore(scores, missing=-1e9) + self.cfg.exposure_strength * self.ledger.boost(positions, strength)
            order, _ = constrained_rerank(adjusted, groups, self.targets, strength=strength, k=k)
            plain_rank = np.empty(len(scores), dtype=np.int64)
            plain_rank[plain_order(scores)] = np.arange(len(scores))
            moved = plain_rank[order] > np.arange(len(order))  # promoted against relevance alone
        self.ledger.record(np.asarray(positions)[order])
        return order, moved
