"""Which candidate internships a student may be shown: pure, vectorised over candidate positions."""

from __future__ import annotations

import numpy as np

from gateway.catalog import InternshipTable
from models.data.domain import haversine_km


def allowed(table: InternshipTable, positions: np.ndarray, *, now: int, applied: set[str], filters,
            student_lat: float | None, student_lon: float | None) -> np.ndarray:
    """Mask over `positions`: open (deadline not passed), not full, not applied to, and passing filters."""
    p = np.asarray(positions, dtype=np.int64)
    keep = table.deadline[p] >= now
    keep &= ~((table.slots[p] > 0) & (table.selected[p] >= np.nan_to_num(table.slots[p], nan=np.inf)))
    if applied:
        applied_positions = {table.position.get(i) for i in applied}
        keep &= np.array([q not in applied_positions for q in p.tolist()], dtype=bool)
    if filters is None:
        return keep
    remote = table.remote[p]
    if filters.districts:
        wanted = {d.strip().lower() for d in filters.districts}
        in_district = np.isin(np.char.lower(table.district[p].astype(str)), list(wanted))
        # Remote internships are reachable from any district unless remote was explicitly excluded.
        keep &= in_district | (remote & (not filters.HasField("remote") or filters.remote))
    if filters.HasField("radius_km") and student_lat is not None and student_lon is not None:
        km = haversine_km(student_lat, student_lon, table.latitude[p], table.longitude[p])
        keep &= (np.nan_to_num(km, nan=np.inf) <= filters.radius_km) | remote
    if filters.sectors:
        wanted = {s.strip().lower() for s in filters.sectors}
        keep &= np.isin(np.char.lower(table.sector[p].astype(str)), list(wanted))
    if filters.HasField("remote"):
        keep &= remote == filters.remote
    if filters.HasField("min_stipend"):
        keep &= np.nan_to_num(table.stipend[p], nan=0.0) >= filters.min_stipend
    return keep


def check(filters, v) -> None:
    """Field violations for numbers a filter cannot mean (negative, NaN or infinite)."""
    if filters.HasField("radius_km") and not (np.isfinite(filters.radius_km) and filters.radius_km >= 0):
        v.add("filters.radius_km", "must be a finite distance >= 0")
    if filters.HasField("min_stipend") and not (np.isfinite(filters.min_stipend) and filters.min_stipend >= 0):
        v.add("filters.min_stipend", "must be a finite amount >= 0")
