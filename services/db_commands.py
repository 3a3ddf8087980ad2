"""`pmis db`: the PostgreSQL catalog from the command line -- create or upgrade its schema
(`migrate`), fill it from a dataset folder (`load`), and write a consistent snapshot of it as a
dataset folder for training (`export`); models/data/postgres.py and models/data/snapshot.py do
the work.

The database is `--database-url`, else $PMIS_DATABASE_URL; it must be a postgresql:// URL (a
path there means the SQLite catalog, which `pmis generate` builds and needs no command here).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from models.data.postgres import DATABASE_URL_ENV


def _url(args) -> str | None:
    """The database URL of the command; None (after printing why) when there is no usable one."""
    from models.data.postgres import is_database_url

    url = args.database_url or os.environ.get(DATABASE_URL_ENV)
    if not url:
        print(f"error: no database: pass --database-url postgresql://... or set {DATABASE_URL_ENV}",
              file=sys.stderr)
        return None
    if not is_database_url(url):
        print(f"error: pmis db needs a postgresql:// URL (--database-url or {DATABASE_URL_ENV}), not a "
              f"path: the SQLite catalog is built by pmis generate", file=sys.stderr)
        return None
    return url


def _failed(e: Exception) -> int:
    """One line for a database error (psycopg's own span several); no traceback."""
    print(f"error: database: {' '.join(str(e).split())}", file=sys.stderr)
    return 1


def cmd_db(args) -> int:
    import psycopg

    url = _url(args)
    if url is None:
        return 2
    try:
        return _ACTIONS[args.action](args, url)
    except RuntimeError as e:  # the database's schema is newer than this code's
        print(f"error: {e}", file=sys.stderr)
        return 2
    except psycopg.Error as e:
        return _failed(e)


def _migrate(args, url: str) -> int:
    from models.data.postgres import connect, migrate
    from models.lifecycle.store import JobStore

    with connect(url) as conn:
        version = migrate(conn)
    JobStore(url, bundles=args.bundles)  # the registry's and the job table's tables, created or upgraded on open
    print(f"database schema at version {version} (catalog, registry and job table)")
    return 0


def _load(args, url: str) -> int:
    from models.data.postgres import load_dataset

    try:
        started = time.perf_counter()
        counts = load_dataset(url, Path(args.data), progress=not args.quiet)
    except FileNotFoundError as e:  # not a dataset folder: nothing was touched
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # a file that does not read or convert (Arrow): the load was rolled back
        print(f"error: cannot load {args.data}: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - started
    for table, rows in counts.items():
        print(f"{table:14s} {rows:>12,d} rows")
    print(f"loaded {args.data} in {seconds:.1f} s")
    return 0


def _export(args, url: str) -> int:
    from models.data.contract import data_version
    from models.data.snapshot import export_snapshot

    started = time.perf_counter()
    counts = export_snapshot(url, Path(args.data), progress=not args.quiet)
    for table, rows in counts.items():
        print(f"{table:14s} {rows:>12,d} rows")
    print(f"exported a snapshot to {args.data} in {time.perf_counter() - started:.1f} s "
          f"(data version {data_version(Path(args.data))})")
    return 0


_ACTIONS = {"migrate": _migrate, "load": _load, "export": _export}
