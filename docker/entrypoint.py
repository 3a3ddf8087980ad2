"""Container entrypoint: the first argument picks what runs, the rest is passed on.

    gateway | content | collaborative | success | ranker   the gRPC servers (`python -m ...server`)
    trainer                                             the training service (`services.trainer.server`)
    train [pmis train flags]        offline training into the registry ($PMIS_HOME/data -> bundles);
                                    builds the gateway's catalog.db when missing; with no dataset it
                                    generates the synthetic one only if PMIS_GENERATE_IF_EMPTY=1
    retrain [flags]                 `pmis retrain --if-needed`: train only when a trigger fires (CronJob)
    copy-catalog SRC DST            copy a SQLite catalog (readable from a read-only volume) to a
                                    writable place: the gateway pod's initContainer
    build-catalog DATA_DIR          (re)build DATA_DIR/catalog.db from the dataset tables
    pmis ARGS...                    any `pmis` command (models list, activate, ...)

Servers and `pmis` are exec'd (PID 1 is the server itself, so SIGTERM from the kubelet reaches it
directly). Configuration is the PMIS_* environment (see README "Serving").
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

SERVERS = {
    "gateway": "gateway.server",
    "content": "services.content.server",
    "collaborative": "services.collaborative.server",
    "success": "services.success.server",
    "ranker": "services.ranker.server",
    "trainer": "services.trainer.server",
}
COMMANDS = [*SERVERS, "train", "retrain", "copy-catalog", "build-catalog", "pmis"]


class UsageError(Exception):
    pass


def pmis(*args: str) -> list[str]:
    return [sys.executable, "-m", "services.cli", *args]


def data_dir(rest: list[str], environ) -> Path:
    for i, a in enumerate(rest):
        if a == "--data" and i + 1 < len(rest):
            return Path(rest[i + 1])
        if a.startswith("--data="):
            return Path(a.split("=", 1)[1])
    return Path(environ.get("PMIS_HOME", "/var/pmis")) / "data"


def has_dataset(data: Path) -> bool:
    return data.is_dir() and any(data.glob("students.*"))


def export_step(data: Path) -> list[str]:
    """The catalog on PostgreSQL (PMIS_DATABASE_URL): training reads a consistent snapshot of it,
    exported into the dataset folder first."""
    return pmis("db", "export", "--data", str(data), "--quiet")


def dataset_steps(data: Path, environ) -> list[list[str]]:
    """What makes `data` a dataset with a catalog before training."""
    if environ.get("PMIS_DATABASE_URL"):
        return [export_step(data)]
    if not has_dataset(data):
        if environ.get("PMIS_GENERATE_IF_EMPTY", "0") != "1":
            raise UsageError(f"no dataset in {data} (no students.* file): copy the scheme's exports there "
                             f"(input contract: models/data/README.md), or set PMIS_GENERATE_IF_EMPTY=1 to "
                             f"train on the synthetic demo data")
        return [pmis("generate", "--data", str(data), "--quiet")]  # also builds catalog.db
    if not (data / "catalog.db").exists():
        return [[sys.executable, os.path.abspath(__file__), "build-catalog", str(data)]]
    return []


def plan(argv: list[str], environ=os.environ) -> list[list[str]]:
    """The commands to run, in order; the last one replaces this process."""
    if not argv or argv[0] in ("-h", "--help", "help"):
        raise UsageError(__doc__)
    what, rest = argv[0], list(argv[1:])
    if what in SERVERS:
        return [[sys.executable, "-m", SERVERS[what], *rest]]
    if what == "train":
        data = data_dir(rest, environ)
        steps = dataset_steps(data, environ)
        if "--data" not in rest and not any(a.startswith("--data=") for a in rest):
            rest = ["--data", str(data), *rest]
        return [*steps, pmis("train", "--quiet", *rest)]
    if what == "retrain":
        export = [export_step(data_dir(rest, environ))] if environ.get("PMIS_DATABASE_URL") else []
        return [*export, pmis("retrain", "--if-needed", "--quiet", *rest)]
    if what == "pmis":
        return [pmis(*rest)]
    if what in ("copy-catalog", "build-catalog"):
        return [[sys.executable, os.path.abspath(__file__), what, *rest]]
    raise UsageError(f"unknown command {what!r}; one of: {', '.join(COMMANDS)}")


def open_read_only(path: Path) -> sqlite3.Connection:
    """A SQLite database on a read-only volume: mode=ro when its WAL files can be used, else immutable."""
    if not path.exists():
        raise FileNotFoundError(f"{path} not found")
    uri = path.resolve().as_uri()
    con = sqlite3.connect(f"{uri}?mode=ro", uri=True)
    try:
        con.execute("SELECT 1 FROM sqlite_master LIMIT 1")
        return con
    except sqlite3.OperationalError:
        con.close()
    return sqlite3.connect(f"{uri}?immutable=1", uri=True)


def copy_catalog(src: Path, dst: Path) -> int:
    """Consistent copy via SQLite's backup API, written beside `dst` and renamed into place."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    for leftover in (tmp, Path(f"{dst}-wal"), Path(f"{dst}-shm")):
        leftover.unlink(missing_ok=True)
    source = open_read_only(src)
    try:
        target = sqlite3.connect(tmp)
        try:
            source.backup(target)
            target.execute("PRAGMA journal_mode=WAL")  # what the gateway's catalog uses
            rows = target.execute("SELECT COUNT(*) FROM internships").fetchone()[0]
        finally:
            target.close()
    finally:
        source.close()
    os.replace(tmp, dst)
    print(f"copied catalog {src} -> {dst} ({rows} internships)", flush=True)
    return 0


def build_catalog(data: Path) -> int:
    from models.data.catalog import build_catalog as build

    counts = build(data, data / "catalog.db", progress=False)
    print(f"built {data / 'catalog.db'}: {counts}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "copy-catalog":
        if len(argv) != 3:
            print("usage: copy-catalog SRC DST", file=sys.stderr)
            return 2
        return copy_catalog(Path(argv[1]), Path(argv[2]))
    if argv and argv[0] == "build-catalog":
        if len(argv) != 2:
            print("usage: build-catalog DATA_DIR", file=sys.stderr)
            return 2
        return build_catalog(Path(argv[1]))
    try:
        steps = plan(argv)
    except UsageError as e:
        print(str(e).strip(), file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help", "help") else 2
    for step in steps[:-1]:
        print("+ " + " ".join(step), flush=True)
        rc = subprocess.call(step)
        if rc != 0:
            return rc
    os.execv(steps[-1][0], steps[-1])
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
