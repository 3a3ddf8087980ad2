"""What the bench sends: Recommend requests for catalog students, and the internships to Shortlist."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

from pmis.v1 import gateway_pb2


def student_ids(catalog: Path, n: int = 2000) -> list[str]:
    with sqlite3.connect(catalog) as c:
        return [r[0] for r in c.execute("SELECT student_id FROM students ORDER BY student_id LIMIT ?", (n,))]


def build_requests(catalog: Path, k: int, explain: bool, profile_only: bool,
                   n: int = 2000, seed: int = 0) -> list[gateway_pb2.RecommendRequest]:
    """A pool of requests to draw from: known student ids, or inline profiles of random catalog students."""
    ids = student_ids(catalog, n)
    base = {"k": k} if explain else {"k": k, "explain": False}  # explain unset means on
    if not profile_only:
        return [gateway_pb2.RecommendRequest(student_id=s, **base) for s in ids]
    from gateway.catalog import SqliteCatalog
    from services.common.profiles import profile_message

    cat = SqliteCatalog(catalog)
    chosen = random.Random(seed).sample(ids, min(len(ids), 500))
    return [gateway_pb2.RecommendRequest(profile=profile_message(row), **base)
            for row in map(cat.student, chosen) if row is not None]


def shortlist_internships(catalog: Path, n: int) -> list[str]:
    """n internship ids, the most-applied-to first, repeated if the catalog has fewer."""
    with sqlite3.connect(catalog) as c:
        ids = [r[0] for r in c.execute("SELECT internship_id, COUNT(*) c FROM interactions WHERE event='apply' "
                                       "GROUP BY internship_id ORDER BY c DESC LIMIT ?", (n,))]
        if not ids:
            ids = [r[0] for r in c.execute("SELECT internship_id FROM internships LIMIT ?", (n,))]
    return [ids[i % len(ids)] for i in range(n)] if ids else []
