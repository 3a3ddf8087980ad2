"""Request validation shared by every server: collects field violations instead of failing fast."""

from __future__ import annotations

import re

from services.common.errors import invalid_argument

ID_PATTERN = re.compile(r"[A-Za-z0-9_.:\-]{1,64}\Z")    # used with match: the whole string
ID_LIST_PATTERN = re.compile(r"(?:[A-Za-z0-9_.:\-]{1,64}\n)*\Z")
MAX_SKILLS = 50
MAX_TEXT = 100


class Violations:
    def __init__(self):
        self.items: list[tuple[str, str]] = []

    def add(self, field: str, description: str) -> None:
        self.items.append((field, description))

    def check_id(self, field: str, value: str, required: bool = True) -> None:
        if not value:
            if required:
                self.add(field, "is required")
        elif not ID_PATTERN.match(value):
            self.add(field, "must be 1-64 characters of letters, digits, '_', '.', ':' or '-'")

    def check_ids(self, field: str, values, low: int, high: int) -> None:
        if not low <= len(values) <= high:
            self.add(field, f"must hold {low}..{high} ids, got {len(values)}")
        # One pass over all ids at once (lists of hundreds arrive on every scoring call); the
        # first bad one is named only when the pass fails.
        joined = "\n".join(values)
        if values and not (joined.count("\n") == len(values) - 1 and ID_LIST_PATTERN.match(joined + "\n")):
            bad = next(i for i, v in enumerate(values) if not ID_PATTERN.match(v))
            self.add(f"{field}[{bad}]", "is not a valid id")

    def check_range(self, field: str, value, low, high) -> None:
        if not low <= value <= high:
            self.add(field, f"must be in {low}..{high}, got {value}")

    def check_profile(self, field: str, profile, require_skills: bool = True) -> None:
        skills = list(profile.skills)
        if require_skills and not skills:
            self.add(f"{field}.skills", "must list at least one skill")
        if len(skills) > MAX_SKILLS:
            self.add(f"{field}.skills", f"must list at most {MAX_SKILLS} skills, got {len(skills)}")
        if any(not s.strip() or len(s) > MAX_TEXT for s in skills):
            self.add(f"{field}.skills", f"skills must be non-empty and at most {MAX_TEXT} characters")
        if profile.HasField("cgpa"):
            self.check_range(f"{field}.cgpa", profile.cgpa, 0.0, 10.0)
        if profile.HasField("college_tier"):
            self.check_range(f"{field}.college_tier", profile.college_tier, 1, 3)
        if profile.HasField("latitude"):
            self.check_range(f"{field}.latitude", profile.latitude, -90.0, 90.0)
        if profile.HasField("longitude"):
            self.check_range(f"{field}.longitude", profile.longitude, -180.0, 180.0)
        for name in ("preferred_sectors", "preferred_districts"):
            values = list(getattr(profile, name))
            if len(values) > MAX_SKILLS or any(len(x) > MAX_TEXT for x in values):
                self.add(f"{field}.{name}", f"at most {MAX_SKILLS} entries of at most {MAX_TEXT} characters")
        for name in ("education", "field", "district", "state"):
            if len(getattr(profile, name)) > MAX_TEXT:
                self.add(f"{field}.{name}", f"must be at most {MAX_TEXT} characters")

    def check_pairs(self, request, most: int) -> None:
        """A PairsRequest (many profiles against one internship): raises with every violation."""
        self.check_id("internship_id", request.internship_id)
        if not 1 <= len(request.profiles) <= most:
            self.add("profiles", f"must hold 1..{most} profiles, got {len(request.profiles)}")
        for i, profile in enumerate(request.profiles):
            self.check_profile(f"profiles[{i}]", profile, require_skills=False)
        self.raise_if_any()

    def raise_if_any(self) -> None:
        if self.items:
            raise invalid_argument(self.items)
