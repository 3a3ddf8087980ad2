"""Explanations built from the same numbers that ranked the item (no second model).

Every reason is tied to the features that scored the item: the ranker's exact additive feature
contributions (TreeSHAP, or path attribution; both sum to the score exactly) are summed per
reason, and the reasons are ordered by that sum, so the
first reason is the one that did most to put the item where it is. When the ranker was down, the
static blend's terms (weight x z-score per component) play the same part.
"""

from __future__ import annotations

import math

import numpy as np

from models.data.domain import DISTANCE_CLASS_NAMES, distance_class, haversine_km
from pmis.v1 import gateway_pb2

MIN_EVIDENCE = 5          # applicants needed before collaborative evidence is shown (no one is exposed)
HIGHER, LOWER = 1.25, 0.8  # success band: ratio to the base rate

# Which reason each ranker feature (models.components.ranker.FEATURES) and blend term speaks for.
REASON_OF_FEATURE = {
    "content_score": "skills", "skill_overlap": "skills", "skills_matched": "skills", "skills_missing": "skills",
    "distance_class": "location", "log_distance_km": "location", "preferred_district": "location",
    "remote": "location",
    "preferred_sector": "sector",
    "collab_score": "collaborative", "popularity": "collaborative",
    "success_p": "success", "competition": "success",
    "log_stipend": "terms", "duration_months": "terms", "log_slots": "terms",
}
REASONS = ["skills", "location", "sector", "collaborative", "success", "terms"]  # order without contributions


def location_fits(profile, table, positions) -> list[str]:
    """How far each internship is from the student, as words; vectorised over the final items."""
    p = np.asarray(positions, dtype=np.int64)
    lat = profile.latitude if profile.HasField("latitude") else np.nan
    lon = profile.longitude if profile.HasField("longitude") else np.nan
    km = haversine_km(lat, lon, table.latitude[p], table.longitude[p])
    district, state = profile.district.lower(), profile.state.lower()
    same_district = np.array([bool(district) and district == d.lower() for d in table.district[p].tolist()])
    same_state = np.array([bool(state) and state == s.lower() for s in table.state[p].tolist()])
    codes = distance_class(same_district, same_state, np.asarray(km, dtype=np.float64), table.remote[p])
    return [DISTANCE_CLASS_NAMES[int(c)] for c in np.atleast_1d(codes).tolist()]


def location_fit(profile, table, p: int) -> str:
    return location_fits(profile, table, [p])[0]


def success_band(probability: float | None, base_rate: float) -> str:
    if probability is None or base_rate <= 0:
        return ""
    ratio = probability / base_rate
    return "higher than average" if ratio >= HIGHER else ("lower than average" if ratio <= LOWER else "about average")


def percent(probability: float) -> str:
    """'about 14%', or 'under 1%' rather than a discouraging and false 'about 0%'."""
    shown = f"{100 * probability:.0f}"
    return "under 1%" if shown == "0" else f"about {shown}%"


def skill_rows(resp, ids) -> dict[str, tuple[list[str], list[str], list[float]]]:
    """internship id -> (matched skills, missing skills, matched weights), for `ids` only, from
    content's packed Score answer with details (None: no answer, no details)."""
    if resp is None:
        return {}
    matched = _offsets(resp.matched_counts)
    missing = _offsets(resp.missing_counts)
    out = {}
    for i, j in _rows_of(resp.internship_ids, ids):
        a, b = matched[j], matched[j + 1]
        out[i] = (list(resp.matched_skills[a:b]), list(resp.missing_skills[missing[j]:missing[j + 1]]),
                  list(resp.matched_weights[a:b]))
    return out


def factor_rows(resp, ids) -> dict[str, list[tuple[str, float, float]]]:
    """internship id -> its success factors as (name, value, contribution), for `ids` only, from
    success's packed answer."""
    if resp is None or not resp.factor_counts:
        return {}
    at = _offsets(resp.factor_counts)
    return {i: list(zip(resp.factor_names[at[j]:at[j + 1]], resp.factor_values[at[j]:at[j + 1]],
                        resp.factor_contributions[at[j]:at[j + 1]]))
            for i, j in _rows_of(resp.internship_ids, ids)}


def _offsets(counts) -> list[int]:
    return [0, *np.cumsum(np.asarray(counts, dtype=np.int64)).tolist()]


def _rows_of(answered, ids):
    """(id, row of the id in a packed answer) for each of `ids` the answer holds."""
    row = {i: n for n, i in enumerate(answered)}
    return [(i, row[i]) for i in ids if i in row]


def reason_contributions(by_feature: dict[str, float]) -> dict[str, float]:
    """Sum feature (or blend-term) contributions per reason."""
    out: dict[str, float] = {}
    for name, value in by_feature.items():
        reason = REASON_OF_FEATURE.get(name)
        if reason is not None:
            out[reason] = out.get(reason, 0.0) + float(value)
    return out


def _sentences(e: gateway_pb2.Explanation, table, p: int, probability: float | None, *, matched: list,
               to_learn: list) -> dict[str, str]:
    """One sentence per reason that has something to say. `matched` and `to_learn` are the lists
    `e` was filled from (reading a message's fields back costs more than keeping the lists)."""
    out = {}
    skills = []
    if matched:
        skills.append("you have " + ", ".join(matched[:4]))
    if to_learn:
        skills.append("learning " + ", ".join(to_learn) + " would strengthen the match")
    if skills:
        out["skills"] = "; ".join(skills)
    out["location"] = f"location: {e.location_fit}"
    if e.preferred_sector:
        out["sector"] = f"in a sector you prefer ({table.sector[p]})"
    if e.collaborative_evidence:
        out["collaborative"] = e.collaborative_evidence
    if e.success_band:
        out["success"] = f"chance of selection {e.success_band} ({percent(probability)})"
    stipend, slots = float(table.stipend[p]), float(table.slots[p])
    if math.isfinite(stipend):
        out["terms"] = f"stipend {stipend:,.0f} a month" + (f", {slots:.0f} openings" if math.isfinite(slots) else "")
    return out


def preferred_sectors(profile) -> set[str]:
    return {s.lower() for s in profile.preferred_sectors}


def explanation(profile, table, p: int, *, matched, missing, probability, base_rate, factors,
                collab_basis: str, promoted: bool, matched_weights=(), contributions: dict[str, float] | None = None,
                location: str | None = None, preferred: set[str] | None = None,
                into: gateway_pb2.Explanation | None = None) -> gateway_pb2.Explanation:
    """`factors`: (name, value, contribution) triples (`factor_rows`);
    `contributions`: feature (or blend term) -> additive share of this item's ranking score;
    `location`: the item's `location_fits` and `preferred`: `preferred_sectors(profile)`, when the
    caller computed them once for a whole list; `into`: fill this (empty) message in place."""
    e = gateway_pb2.Explanation() if into is None else into
    matched, to_learn = list(matched), list(missing)[:3]
    e.matched_skills.extend(matched)
    e.skills_to_learn.extend(to_learn)
    e.matched_skill_weights.extend(matched_weights)
    e.location_fit = location or location_fit(profile, table, p)
    e.promoted_by_fairness = promoted
    sector = str(table.sector[p]).lower()
    e.preferred_sector = sector in (preferred if preferred is not None else preferred_sectors(profile))
    e.success_band = success_band(probability, base_rate)
    for name, value, contribution in factors or ():
        e.success_factors.add(name=name, value=value, contribution=contribution)
    applicants = int(table.applicants[p])
    if collab_basis in ("history", "fold_in") and applicants >= MIN_EVIDENCE:
        e.collaborative_evidence = f"students with applications like yours applied here ({applicants} applications so far)"
    sentences = _sentences(e, table, p, probability, matched=matched, to_learn=to_learn)
    if contributions:
        weight = reason_contributions(contributions)
        kinds = sorted((k for k in sentences if k in weight), key=lambda k: -weight[k])
        e.reasons.extend(sentences[k] for k in kinds)
        for k in kinds:
            e.contributions.add(name=k, value=weight[k])
    else:  # nothing ranked this item (e.g. the ranker was down for Explain): fixed order, no numbers
        e.reasons.extend(sentences[k] for k in REASONS if k in sentences)
    if promoted:
        e.reasons.append("shown higher to spread opportunity fairly")
    return e
