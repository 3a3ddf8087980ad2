"""The gateway's hot-path catalog reads, per backend: a student's row and interactions.

    python -m gateway.bench.catalog_reads --catalog var/data/catalog.db \\
        [--database-url postgresql://...] [--students 2000]

Times `student()` + `interactions()` (what `Recommend` reads for a known student) for a seeded
sample of the catalog's students, on the SQLite catalog and, when given, the PostgreSQL one
loaded from the same data (`pmis db load`), and prints p50/p99 and CPU per lookup.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import numpy as np

from gateway.catalog_backend import open_catalog


def sample_students(catalog: Path, n: int, seed: int = 0) -> list[str]:
    with closing(sqlite3.connect(catalog)) as c:
        ids = [r[0] for r in c.execute("SELECT student_id FROM students")]
    return random.Random(seed).sample(ids, min(n, len(ids)))


def time_lookups(source, students: list[str]) -> dict:
    catalog = open_catalog(source)
    try:
        for sid in students[:50]:  # warm the pool and the caches
            catalog.student(sid), catalog.interactions(sid)
        wall, cpu_start = [], time.process_time()
        for sid in students:
            started = time.perf_counter()
            catalog.student(sid)
            catalog.interactions(sid)
            wall.append(time.perf_counter() - started)
        cpu = time.process_time() - cpu_start
    finally:
        catalog.close()
    ms = np.asarray(wall) * 1000.0
    return {"lookups": len(students), "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "cpu_ms": 1000.0 * cpu / len(students)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m gateway.bench.catalog_reads", description=__doc__.split("\n\n")[0])
    p.add_argument("--catalog", type=Path, required=True, help="the SQLite catalog (and the students to sample)")
    p.add_argument("--database-url", default="", help="the PostgreSQL catalog loaded from the same data")
    p.add_argument("--students", type=int, default=2000)
    a = p.parse_args(argv)
    students = sample_students(a.catalog, a.students)
    rows = [("sqlite", time_lookups(a.catalog, students))]
    if a.database_url:
        rows.append(("postgresql", time_lookups(a.database_url, students)))
    print(f"student row + interactions, {len(students)} students, one thread (client CPU of this process)")
    print(f"{'backend':<12}{'p50 ms':>8}{'p99 ms':>8}{'CPU ms':>8}")
    for name, r in rows:
        print(f"{name:<12}{r['p50_ms']:8.3f}{r['p99_ms']:8.3f}{r['cpu_ms']:8.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
