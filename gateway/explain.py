"""Explanations built from the same numbers that ranked the item (no second model)."""

from __future__ import annotations

import numpy as np

from models.data.domain import DISTANCE_CLASS_NAMES, distance_class, haversine_km
from pmis.v1 import gateway_pb2

MIN_EVIDENCE = 5          # applicants needed before collaborative evidence is shown (no one is exposed)
HIGHER, LOWER = 1.25, 0.8  # success band: ratio to the base rate


def location_fit(profile, table, p: int) -> str:
    lat = profile.latitude if profile.HasField("latitude") else np.nan
    lon = profile.longitude if profile.HasField("longitude") else np.nan
    km = haversine_km(lat, lon, table.latitude[p], table.longitude[p])
    same_district = bool(profile.district) and profile.district.lower() == str(table.district[p]).lower()
    same_state = bool(profile.state) and profile.state.lower() == str(table.state[p]).lower()
    return DISTANCE_CLASS_NAMES[int(distance_class(np.array([same_district]), np.array([same_state]),
                                                   np.array([km]), np.array([table.remote[p]]))[0])]


def success_band(probability: float | None, base_rate: float) -> str:
    if probability is None or base_rate <= 0:
        return ""
    ratio = probability / base_rate
    return "higher than average" if ratio >= HIGHER else ("lower than average" if ratio <= LOWER else "about average")


def explanation(profile, table, p: int, *, matched, missing, probability, base_rate, factors,
                collab_basis: str, promoted: bool) -> gateway_pb2.Explanation:
    e = gateway_pb2.Explanation(matched_skills=list(matched), skills_to_learn=list(missing)[:3],
                                location_fit=location_fit(profile, table, p), promoted_by_fairness=promoted)
    sector = str(table.sector[p]).lower()
    e.preferred_sector = sector in {s.lower() for s in profile.preferred_sectors}
    e.success_band = success_band(probability, base_rate)
    e.success_factors.extend(factors or [])
    applicants = int(table.applicants[p])
    if collab_basis in ("history", "fold_in") and applicants >= MIN_EVIDENCE:
        e.collaborative_evidence = f"students with applications like yours applied here ({applicants} applications so far)"
    reasons = []
    if e.matched_skills:
        reasons.append("you have " + ", ".join(e.matched_skills[:4]))
    if e.skills_to_learn:
        reasons.append("learning " + ", ".join(e.skills_to_learn) + " would strengthen the match")
    reasons.append(f"location: {e.location_fit}")
    if e.preferred_sector:
        reasons.append(f"in a sector you prefer ({table.sector[p]})")
    if e.collaborative_evidence:
        reasons.append(e.collaborative_evidence)
    if e.success_band:
        reasons.append(f"chance of selection {e.success_band} (about {100 * probability:.0f}%)")
    if promoted:
        reasons.append("shown higher to spread opportunity fairly")
    e.reasons.extend(reasons)
    return e
