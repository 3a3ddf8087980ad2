"""Synthetic PM Internship Scheme data with planted, documented signal (see GENERATOR.md).

One call writes five tables (students, internships, companies, interactions, outcomes), an
optional SQLite catalog and ``dataset.json`` into a fresh folder. The generator is built for
scale (1M students x 100k internships in bounded memory): students are processed in chunks,
each student scores a candidate pool of ~200 internships instead of the whole catalog, skill
sets are uint64 bitmasks, and only compact application arrays are kept for the second pass
that draws selection outcomes.

This module validates the arguments and drives the passes; the drawing and writing live in
`models.data.synthetic`.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path

from models.data import domain
from models.data.synthetic.companies import draw_companies
from models.data.synthetic.interactions import interaction_pass
from models.data.synthetic.internships import draw_internships
from models.data.synthetic.outcomes import outcome_pass
from models.data.synthetic.params import EVENT_MIX_TARGET, EVENTS, POOL_SIZE, TASTE_DIM, WINDOW_DAYS
from models.data.synthetic.sampling import seeded_rng
from models.data.synthetic.sinks import Sink
from models.data.synthetic.vocab import build_vocab

GENERATOR_VERSION = 1
TABLES = ("students", "internships", "companies", "interactions", "outcomes")


def _check_args(students, internships, companies, interactions_per_student, selection_rate,
                fmt, chunk_size):
    if fmt not in ("parquet", "csv"):
        raise ValueError(f"fmt must be 'parquet' or 'csv', not {fmt!r}")
    if not 1 <= students <= 9_999_999:
        raise ValueError("students must be in 1..9,999,999 (ids are S + 7 digits)")
    if not 1 <= internships <= 999_999:
        raise ValueError("internships must be in 1..999,999 (ids are I + 6 digits)")
    if not 1 <= companies <= 9_999:
        raise ValueError("companies must be in 1..9,999 (ids are C + 4 digits)")
    if interactions_per_student < 1:
        raise ValueError("interactions_per_student must be >= 1")
    if not 0 < selection_rate < 1:
        raise ValueError("selection_rate must be in (0, 1)")
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    if len(domain.SECTOR_NAMES) > 32:
        raise ValueError("preferred-sector bitmask holds at most 32 sectors")


def _prepare_out_dir(out_dir: Path) -> Path:
    """Refuse a non-empty out_dir; return a fresh temporary sibling to write into."""
    if out_dir.exists():
        if not out_dir.is_dir() or any(out_dir.iterdir()):
            raise FileExistsError(f"{out_dir} exists and is not empty")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # mkdir (not mkdtemp) so the folder gets the usual umask permissions once renamed.
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    return tmp


def generate(out_dir: Path, *, students: int = 5000, internships: int = 1000, companies: int = 72,
             interactions_per_student: float = 10.0, selection_rate: float = 0.13, seed: int = 42,
             fmt: str = "parquet", chunk_size: int = 50_000, progress: bool = True,
             catalog: bool = True) -> dict:
    """Write a synthetic dataset into `out_dir` and return the summary written to dataset.json.

    Deterministic for a given (seed, sizes, chunk_size). Written to a temporary sibling folder
    and renamed into place at the end, so a failure never leaves a partial dataset.
    """
    out_dir = Path(out_dir)
    _check_args(students, internships, companies, interactions_per_student, selection_rate,
                fmt, chunk_size)
    tmp = _prepare_out_dir(out_dir)
    try:
        summary = _generate_into(tmp, students=students, internships=internships,
                                 companies=companies, lam=float(interactions_per_student),
                                 selection_rate=selection_rate, seed=seed, fmt=fmt,
                                 chunk_size=chunk_size, progress=progress)
        if catalog:
            from models.data.catalog import build_catalog
            build_catalog(tmp, tmp / "catalog.db", progress=progress)
        (tmp / "dataset.json").write_text(json.dumps(summary, indent=2) + "\n")
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above); rename cannot replace a directory
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def _generate_into(tmp: Path, *, students, internships, companies, lam, selection_rate, seed,
                   fmt, chunk_size, progress) -> dict:
    """Write the five tables into `tmp`; return the summary for dataset.json."""
    v = build_vocab()
    comp_table, comp = draw_companies(seeded_rng(seed, 1), companies, v)
    it_table, it = draw_internships(seeded_rng(seed, 2), internships, comp, v)
    sinks = {name: Sink(tmp, name, fmt) for name in TABLES}
    sinks["companies"].write(comp_table)
    for lo in range(0, internships, chunk_size):
        sinks["internships"].write(it_table.slice(lo, chunk_size))

    apps = interaction_pass(sinks, it, v, students=students, n_items=internships, lam=lam,
                            seed=seed, chunk_size=chunk_size, progress=progress)
    sel = outcome_pass(sinks["outcomes"], apps, it, selection_rate, seed, chunk_size)
    for s in sinks.values():
        s.close()

    events = apps.pop("event_counts")
    total = sum(events.values())
    return {
        "generator": "models.data.generate", "generator_version": GENERATOR_VERSION,
        "seed": seed, "format": fmt,
        "params": {"students": students, "internships": internships, "companies": companies,
                   "interactions_per_student": lam, "selection_rate": selection_rate,
                   "chunk_size": chunk_size, "pool_size": POOL_SIZE, "taste_dim": TASTE_DIM},
        "window": {"start": "2025-01-01T00:00:00Z", "days": WINDOW_DAYS},
        "rows": {name: s.rows for name, s in sinks.items()},
        "event_mix_target": EVENT_MIX_TARGET,
        "event_mix": {e: round(events[e] / max(total, 1), 4) for e in EVENTS},
        "event_thresholds": apps["thresholds"],
        "selection_rate_target": selection_rate,
        "selection_rate": sel["rate"], "selection_intercept": sel["b0"],
        "oracle_auc": sel["auc"],
    }
