"""Private copies of a trained system, for tests that change it (register, activate, roll back):
the session-wide systems stay as every other test expects them."""

from __future__ import annotations

import shutil
import sqlite3
from contextlib import closing
from pathlib import Path


def copy_bundles(src: Path, dest: Path) -> Path:
    """Bundles and registry of `src` in `dest` (the registry's paths are relative to its folder);
    the registry copied with SQLite's backup API, consistent even while another process writes."""
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("registry.db*"))
    with closing(sqlite3.connect(src / "registry.db")) as s, closing(sqlite3.connect(dest / "registry.db")) as d:
        s.backup(d)
    return dest
