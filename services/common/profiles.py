"""Conversions between StudentProfile messages and the column mappings the models featurise."""

from __future__ import annotations

from pmis.v1 import common_pb2

EVENT_NAMES = {common_pb2.EVENT_TYPE_VIEW: "view", common_pb2.EVENT_TYPE_SAVE: "save",
               common_pb2.EVENT_TYPE_APPLY: "apply"}
EVENT_TYPES = {v: k for k, v in EVENT_NAMES.items()}


def profile_columns(profile: common_pb2.StudentProfile, student_id: str = "") -> dict:
    """One-student column mapping for features.StudentTable.from_columns (no pandas per request)."""
    opt = lambda name: getattr(profile, name) if profile.HasField(name) else None  # noqa: E731
    return {
        "student_id": [student_id or "anonymous"],
        "skills": [[s.strip().lower() for s in profile.skills if s.strip()]],
        "education": [profile.education or None],
        "field": [profile.field or None],
        "cgpa": [opt("cgpa")],
        "college_tier": [opt("college_tier")],
        "district": [profile.district or None],
        "state": [profile.state or None],
        "latitude": [opt("latitude")],
        "longitude": [opt("longitude")],
        "preferred_sectors": [[s.strip().lower() for s in profile.preferred_sectors]],
        "preferred_districts": [[s.strip().lower() for s in profile.preferred_districts]],
    }


def profile_message(row: dict) -> common_pb2.StudentProfile:
    """A StudentProfile from a catalog row (dict of column -> value; lists already split)."""
    p = common_pb2.StudentProfile(
        skills=row.get("skills") or [], education=row.get("education") or "", field=row.get("field") or "",
        district=row.get("district") or "", state=row.get("state") or "",
        preferred_sectors=row.get("preferred_sectors") or [], preferred_districts=row.get("preferred_districts") or [])
    for name in ("cgpa", "latitude", "longitude"):
        if row.get(name) is not None:
            setattr(p, name, float(row[name]))
    if row.get("college_tier") is not None:
        p.college_tier = int(row["college_tier"])
    return p


def profiles_columns(profiles) -> dict:
    """`profile_columns` for many profiles at once (one StudentTable for a whole pool)."""
    columns: dict = {}
    for i, profile in enumerate(profiles):
        for name, values in profile_columns(profile, f"pool{i}").items():
            columns.setdefault(name, []).extend(values)
    return columns
