"""The input contract's tables and columns: what each column holds, which are required, and
how the tables key and reference each other.

`models.data.contract` reads and validates a dataset folder against these specifications;
models/data/README.md describes the same contract for people.
"""

from __future__ import annotations

from dataclasses import dataclass

STRING, LIST, FLOAT, INT, BOOL, TIME = "string", "list", "float", "int", "bool", "timestamp"


@dataclass(frozen=True)
class Column:
    name: str
    kind: str
    required: bool = False
    low: float | None = None      # inclusive value range, for numbers
    high: float | None = None
    choices: tuple[str, ...] | None = None
    feature: str | None = None    # what is lost when an optional column is absent


SCHEMA: dict[str, list[Column]] = {
    "students": [
        Column("student_id", STRING, required=True),
        Column("skills", LIST, required=True),
        Column("education", STRING, feature="education level"),
        Column("field", STRING, feature="field of study in the content profile"),
        Column("cgpa", FLOAT, low=0, high=10, feature="CGPA in the success predictor"),
        Column("college_tier", INT, low=1, high=3, feature="college tier in the success predictor"),
        Column("age", INT, low=14, high=60),
        Column("district", STRING, feature="district-level location fit"),
        Column("state", STRING, feature="state-level location fit"),
        Column("latitude", FLOAT, low=-90, high=90, feature="neighbouring-district fit"),
        Column("longitude", FLOAT, low=-180, high=180, feature="neighbouring-district fit"),
        Column("rural", BOOL),
        Column("gender", STRING),
        Column("social_category", STRING),
        Column("disability", BOOL),
        Column("preferred_sectors", LIST, feature="sector preference fit"),
        Column("preferred_districts", LIST, feature="preferred-location fit"),
    ],
    "internships": [
        Column("internship_id", STRING, required=True),
        Column("title", STRING, required=True),
        Column("company_id", STRING),
        Column("sector", STRING, feature="sector fit"),
        Column("description", STRING),
        Column("skills", LIST, feature="skill overlap (content falls back to title/description)"),
        Column("district", STRING, feature="district-level location fit"),
        Column("state", STRING, feature="state-level location fit"),
        Column("latitude", FLOAT, low=-90, high=90),
        Column("longitude", FLOAT, low=-180, high=180),
        Column("remote", BOOL),
        Column("stipend", FLOAT, low=0, high=1_000_000, feature="stipend"),
        Column("slots", INT, low=1, high=100_000, feature="competition (applicants per slot)"),
        Column("duration_months", INT, low=1, high=36),
        Column("posted_at", TIME),
        Column("deadline", TIME, feature="closing of internships after their deadline"),
    ],
    "companies": [
        Column("company_id", STRING, required=True),
        Column("name", STRING),
        Column("industry", STRING),
        Column("size", STRING, choices=("Micro", "Small", "Medium", "Large")),
    ],
    "interactions": [
        Column("student_id", STRING, required=True),
        Column("internship_id", STRING, required=True),
        Column("event", STRING, required=True, choices=("view", "save", "apply")),
        Column("timestamp", TIME, required=True),
    ],
    "outcomes": [
        Column("student_id", STRING, required=True),
        Column("internship_id", STRING, required=True),
        Column("selected", INT, required=True, low=0, high=1),
        Column("decided_at", TIME),
    ],
}
REQUIRED_TABLES = ("students", "internships", "interactions")
PRIMARY_KEYS = {"students": ["student_id"], "internships": ["internship_id"], "companies": ["company_id"],
                "interactions": ["student_id", "internship_id", "event", "timestamp"],
                "outcomes": ["student_id", "internship_id"]}
# (table, column) -> (referenced table, referenced key)
REFERENCES = [
    ("interactions", "student_id", "students", "student_id"),
    ("interactions", "internship_id", "internships", "internship_id"),
    ("outcomes", "student_id", "students", "student_id"),
    ("outcomes", "internship_id", "internships", "internship_id"),
    ("internships", "company_id", "companies", "company_id"),
]
PROTECTED_ATTRIBUTES = ("gender", "social_category", "disability")
