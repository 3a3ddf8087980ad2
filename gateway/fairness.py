"""Fair re-ranking of one student's list, as the gateway applies it.

Item groups come from configuration on internship attributes, one group per item by priority:
`msme` (a Micro/Small/Medium company), then `local` (the student's own or a neighbouring
district, within NEIGHBOUR_KM, or remote), everything else fills. Targets are minimum shares
at every prefix (DetConstSort, gateway/fair_ranking.py), scaled by the request's strength.

Capacity-aware exposure: an ExposureLedger per gateway replica tracks how much exposure each
internship has had against its share of slots, and nudges under-exposed internships up (the
boost is added to the list's z-scored relevance before the constraints are applied). Per
replica, not shared: each replica sees a random slice of traffic through round-robin balancing,
so its ledger converges to the same shares without a cross-replica write on every request.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field

import numpy as np

from gateway.fair_ranking import ExposureLedger, plain_order
from gateway.fair_ranking import rerank as constrained_rerank
from models.data.domain import NEIGHBOUR_KM, haversine_km

GROUPS = ["msme", "local"]  # priority order; index = group id; len(GROUPS) = the fill group


@dataclass
class FairnessConfig:
    targets: dict = field(default_factory=lambda: {"msme": 0.2, "local": 0.3})
    exposure_strength: float = 0.5   # weight of the exposure boost, in z-score units at strength 1
    half_life: float | None = 5000   # requests; the ledger follows recent traffic

    @classmethod
    def from_json(cls, text: str | None) -> "FairnessConfig":
        return cls(**json.loads(text)) if text else cls()


def item_groups(table, positions: np.ndarray, profile) -> np.ndarray:
    """Group id per candidate: 0 msme, 1 local, 2 other."""
    p = np.asarray(positions, dtype=np.int64)
    lat = profile.latitude if profile.HasField("latitude") else np.nan
    lon = profile.longitude if profile.HasField("longitude") else np.nan
    km = np.nan_to_num(haversine_km(lat, lon, table.latitude[p], table.longitude[p]), nan=np.inf)
    district = (profile.district or "").lower()
    same = np.char.lower(table.district[p].astype(str)) == district if district else np.zeros(len(p), bool)
    local = same | (km <= NEIGHBOUR_KM) | table.remote[p]
    return np.where(table.msme[p], 0, np.where(local, 1, 2)).astype(np.int64)


def _zscore(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    finite = np.isfinite(v)
    if finite.sum() < 2:
        return np.where(finite, 0.0, -1e9)
    sd = v[finite].std()
    return np.where(finite, (v - v[finite].mean()) / (sd if sd > 1e-12 else 1.0), -1e9)


class FairReranker:
    def __init__(self, table, cfg: FairnessConfig):
        self.cfg = cfg
        self.targets = np.array([cfg.targets.get(g, 0.0) for g in GROUPS] + [0.0])
        self.ledger = ExposureLedger(np.nan_to_num(table.slots, nan=1.0), half_life=cfg.half_life)
        self._lock = threading.Lock()

    def rerank(self, scores: np.ndarray, positions: np.ndarray, table, profile, options, k: int):
        """(order of the top k as indices into scores, moved mask). Exposure is recorded either way."""
        enabled = options is not None and options.enabled
        if not enabled:
            order = plain_order(scores)[:k]
            moved = np.zeros(len(order), dtype=bool)
        else:
            strength = options.strength if options.strength > 0 else 1.0
            adjusted = _zscore(scores) + self.cfg.exposure_strength * self.ledger.boost(positions, strength)
            order, _ = constrained_rerank(adjusted, item_groups(table, positions, profile), self.targets,
                                          strength=strength, k=k)
            plain_rank = np.empty(len(scores), dtype=np.int64)
            plain_rank[plain_order(scores)] = np.arange(len(scores))
            moved = plain_rank[order] > np.arange(len(order))  # promoted against relevance alone
        self.ledger.record(np.asarray(positions)[order])
        return order, moved
