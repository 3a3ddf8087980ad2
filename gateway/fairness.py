"""The gateway's side of fair re-ranking: candidate groups from the catalog table and the profile.

The re-ranker itself (DetConstSort floors + capacity-aware exposure ledger) lives in
models/fairness/reranker.py, shared with the offline evaluation.
"""

from __future__ import annotations

import numpy as np

from models.fairness.reranker import FairnessConfig, FairReranker, item_groups, zscore

__all__ = ["FairnessConfig", "FairReranker", "candidate_groups", "reranker_for", "zscore"]


def candidate_groups(table, positions: np.ndarray, profile, cfg: FairnessConfig) -> np.ndarray:
    p = np.asarray(positions, dtype=np.int64)
    return item_groups(cfg.groups, item_district=table.district[p], item_lat=table.latitude[p],
                       item_lon=table.longitude[p], item_remote=table.remote[p], item_msme=table.msme[p],
                       item_sector=table.sector[p], student_district=profile.district,
                       student_lat=profile.latitude if profile.HasField("latitude") else np.nan,
                       student_lon=profile.longitude if profile.HasField("longitude") else np.nan)


def reranker_for(table, cfg: FairnessConfig) -> FairReranker:
    return FairReranker(table.slots, cfg)
