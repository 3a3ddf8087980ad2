"""The registry of bundle versions with named aliases (``champion`` ...) and their history.

The registry lives beside the bundles (``<bundles_root>/registry.db``), or in the shared PostgreSQL
database when ``PMIS_DATABASE_URL`` names one (models/bundle/database.py; ``open_registry`` chooses).
It records which versions exist and which version each alias points to; the bundles themselves stay
on disk and are verified by :mod:`models.bundle.format` when loaded. Activation and rollback only
move an alias, and every move is appended to ``alias_history`` (UPDATE/DELETE there are refused by
triggers), so "who served what, when, and why" can always be answered.

Every call opens its own short-lived connection, so one ``Registry`` can be shared across
threads and several processes (or replicas) use the same database; writes that read-then-modify
run in write transactions (SQLite's ``BEGIN IMMEDIATE``, PostgreSQL's write lock) so concurrent
writers serialise instead of racing.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from models.bundle.database import Connection, Database, database_location
from models.bundle.format import MANIFEST, BundleRef, json_default, utc_now_iso
from models.bundle.registry_schema import POSTGRES_ONLY, SCHEMA, SCHEMA_VERSION, SQLITE_ONLY

__all__ = ["Registry", "RegistryError", "SCHEMA_VERSION", "open_registry", "registry_exists"]

class RegistryError(KeyError):
    """Unknown component/version/alias, or an operation that cannot be done."""

    def __str__(self) -> str:  # KeyError would repr() the message, adding quotes
        return str(self.args[0]) if self.args else ""


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"ndcg": {"10": 0.3}}`` -> ``{"ndcg.10": 0.3}``."""
    flat: dict[str, Any] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_metrics(value, prefix=name + "."))
        else:
            flat[name] = value
    return flat


def manifest_of(path: Path | str) -> dict[str, Any]:
    """The manifest of the bundle in `path` if readable, else {}."""
    try:
        manifest = json.loads((Path(path) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def open_registry(bundles_dir: Path | str, *, read_only: bool = False,
                  database_url: str | None = None) -> "Registry":
    """The registry of the bundles in ``bundles_dir``: in PostgreSQL when one is configured
    ($PMIS_DATABASE_URL), else in ``<bundles_dir>/registry.db``."""
    return Registry(database_location(bundles_dir, database_url), bundles=bundles_dir, read_only=read_only)


def registry_exists(bundles_dir: Path | str) -> bool:
    """Whether there is a registry to open read-only (PostgreSQL: when one is configured)."""
    return Database(database_location(bundles_dir)).exists()


class Registry:
    """Versions per component, aliases pointing at versions, and the aliases' history."""

    def __init__(self, location: Path | str, *, bundles: Path | str | None = None,
                 read_only: bool = False) -> None:
        """``location``: the SQLite file, or a postgresql:// URL (then ``bundles``, the folder the
        stored bundle paths are relative to, is required; for a file it defaults to its folder)."""
        self.db = Database(location, read_only=read_only)
        self.db_path = None if self.db.postgres else self.db.location
        if bundles is None and self.db.postgres:
            raise ValueError("a registry in PostgreSQL needs the bundles folder its paths are relative to")
        self._base = Path(bundles).resolve() if bundles is not None else self.db.location.parent
        # read_only: a reader (the component servers) that never creates, migrates or writes, and
        # works from a read-only volume (the registry as Kubernetes mounts it into serving pods).
        self.read_only = read_only
        if read_only and not self.db.exists():
            raise RegistryError(f"no registry at {self.db}")
        found = self.db.schema_version() if read_only else \
            self.db.migrate(SCHEMA, POSTGRES_ONLY, SQLITE_ONLY, version=SCHEMA_VERSION)
        if found > SCHEMA_VERSION:
            raise RegistryError(f"{self.db}: schema version {found} is newer than this code "
                                f"understands ({SCHEMA_VERSION}); upgrade the code")
        if read_only and self.db.postgres and found == 0:
            raise RegistryError(f"no registry in {self.db}; train first")

    @property
    def location(self) -> Path | str:
        """What ``Registry(...)`` (or a JobStore) opens this database with again."""
        return self.db.location

    # ------------------------------------------------------------------ connections

    @contextmanager
    def _transaction(self, immediate: bool = False) -> Iterator[Connection]:
        """A fresh connection in one transaction; ``immediate`` makes it a write transaction."""
        if immediate and self.read_only:
            raise RegistryError(f"{self.db} is opened read-only")
        with self.db.transaction(write=immediate) as con:
            yield con

    # ------------------------------------------------------------------ paths

    def _store_path(self, path: Path) -> str:
        # Relative inside the registry folder, so the whole bundles tree can be moved/copied.
        path = Path(path).resolve()
        try:
            return path.relative_to(self._base).as_posix()
        except ValueError:
            return str(path)

    def _load_path(self, stored: str) -> Path:
        path = Path(stored)
        return path if path.is_absolute() else (self._base / path)

    # ------------------------------------------------------------------ rows

    def _row_to_dict(self, con: Connection, row) -> dict[str, Any]:
        aliases = [
            r["alias"]
            for r in con.execute(
                "SELECT alias FROM aliases WHERE component = ? AND version = ? ORDER BY alias",
                (row["component"], row["version"]),
            )
        ]
        return {
            "component": row["component"],
            "version": row["version"],
            "path": self._load_path(row["path"]),
            "content_hash": row["content_hash"],
            "run_id": row["run_id"],
            "data_version": row["data_version"],
            "created_at": row["created_at"],
            "registered_at": row["registered_at"],
            "metrics": json.loads(row["metrics"]),
            "aliases": aliases,
        }

    def _get(self, con: Connection, component: str, version: int) -> dict[str, Any]:
        row = con.execute(
            "SELECT * FROM versions WHERE component = ? AND version = ?", (component, version)
        ).fetchone()
        if row is None:
            raise RegistryError(f"{component} version {version} is not registered")
        return self._row_to_dict(con, row)

    # ------------------------------------------------------------------ versions

    def register(self, ref: BundleRef, metrics: Mapping[str, Any] | None = None) -> None:
        """Record a written bundle. Re-registering the same content is a no-op.

        Without ``metrics``, the metrics recorded in the bundle's manifest are used.
        """
        manifest = manifest_of(ref.path)
        with self._transaction(immediate=True) as con:
            self._insert(con, ref, manifest, metrics)

    def register_many(
        self,
        items: list[tuple[BundleRef, Mapping[str, Any] | None]],
        *,
        alias: str | None = None,
        reason: str = "",
        guard: Callable[[Connection, list[BundleRef]], None] | None = None,
    ) -> None:
        """Register several bundles, and optionally point ``alias`` at each, in ONE transaction.

        All or nothing: a process killed half-way leaves none of them registered. ``guard``
        runs first inside the same write transaction and may raise to abort it (the training
        job service uses it to refuse registration once a job has been cancelled, and to record
        the registration atomically with its job row, which lives in the same database).
        """
        prepared = [(ref, manifest_of(ref.path), metrics) for ref, metrics in items]
        with self._transaction(immediate=True) as con:
            if guard is not None:
                guard(con, [ref for ref, _, _ in prepared])
            for ref, manifest, metrics in prepared:
                self._insert(con, ref, manifest, metrics)
                if alias:
                    previous = self._current(con, ref.component, alias)
                    if previous != ref.version:
                        self._move_alias(con, ref.component, alias, ref.version, previous, "set", reason)

    def _insert(self, con: Connection, ref: BundleRef, manifest: Mapping[str, Any],
                metrics: Mapping[str, Any] | None) -> None:
        if metrics is None:
            metrics = manifest.get("metadata", {}).get("metrics", {})
        metrics_json = json.dumps(metrics, sort_keys=True, default=json_default)
        now = utc_now_iso()
        existing = con.execute(
            "SELECT content_hash FROM versions WHERE component = ? AND version = ?",
            (ref.component, ref.version),
        ).fetchone()
        if existing is not None:
            if existing["content_hash"] == ref.content_hash:
                return
            raise RegistryError(
                f"{ref.component} version {ref.version} is already registered with "
                f"different content ({existing['content_hash'][:12]} != "
                f"{ref.content_hash[:12]}); versions are immutable"
            )
        con.execute(
            "INSERT INTO versions (component, version, path, content_hash, run_id,"
            " data_version, created_at, registered_at, metrics)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                ref.component,
                ref.version,
                self._store_path(Path(ref.path)),
                ref.content_hash,
                ref.run_id,
                ref.data_version,
                manifest.get("created_at") or now,
                now,
                metrics_json,
            ),
        )

    def versions(self, component: str) -> list[dict[str, Any]]:
        """All registered versions of ``component``, newest first."""
        with self._transaction() as con:
            rows = con.execute(
                "SELECT * FROM versions WHERE component = ? ORDER BY version DESC", (component,)
            ).fetchall()
            return [self._row_to_dict(con, row) for row in rows]

    def get(self, component: str, version: int) -> dict[str, Any]:
        with self._transaction() as con:
            return self._get(con, component, version)

    def components(self) -> list[str]:
        with self._transaction() as con:
            rows = con.execute("SELECT DISTINCT component FROM versions ORDER BY component")
            return [r["component"] for r in rows]

    # ------------------------------------------------------------------ aliases

    def _current(self, con: Connection, component: str, alias: str) -> int | None:
        row = con.execute(
            "SELECT version FROM aliases WHERE component = ? AND alias = ?", (component, alias)
        ).fetchone()
        return None if row is None else int(row["version"])

    def _move_alias(
        self,
        con: Connection,
        component: str,
        alias: str,
        version: int,
        previous: int | None,
        action: str,
        reason: str,
    ) -> None:
        now = utc_now_iso()
        con.execute(
            "INSERT INTO aliases (component, alias, version, changed_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (component, alias) DO UPDATE"
            " SET version = excluded.version, changed_at = excluded.changed_at",
            (component, alias, version, now),
        )
        con.execute(
            "INSERT INTO alias_history"
            " (component, alias, version, previous_version, action, changed_at, reason)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (component, alias, version, previous, action, now, reason),
        )

    def set_alias(
        self, component: str, version: int, alias: str = "champion", reason: str = ""
    ) -> None:
        """Point ``alias`` at a registered version (activation).

        Setting the value it already has is a no-op and adds no history entry.
        """
        if not alias:
            raise RegistryError("alias must be a non-empty string")
        with self._transaction(immediate=True) as con:
            self._get(con, component, version)  # refuses unregistered versions
            previous = self._current(con, component, alias)
            if previous == version:
                return
            self._move_alias(con, component, alias, version, previous, "set", reason)

    def resolve(self, component: str, alias: str = "champion") -> dict[str, Any]:
        """The version row ``alias`` points to."""
        with self._transaction() as con:
            current = self._current(con, component, alias)
            if current is None:
                raise RegistryError(f"{component}: alias {alias!r} is not set")
            return self._get(con, component, current)

    def _lineage(self, con: Connection, component: str, alias: str) -> list[int]:
        """Replay the history as a stack: ``set`` pushes, ``rollback`` pops.

        This makes repeated rollbacks walk further back (3 -> 2 -> 1) instead of bouncing
        between the last two values, which a naive "previous_version" lookup would do.
        """
        stack: list[int] = []
        for row in con.execute(
            "SELECT version, action FROM alias_history WHERE component = ? AND alias = ?"
            " ORDER BY id",
            (component, alias),
        ):
            version = int(row["version"])
            if row["action"] == "rollback":
                while stack and stack[-1] != version:
                    stack.pop()
                if not stack:  # history inconsistent (hand-edited db): restart from here
                    stack.append(version)
            elif not stack or stack[-1] != version:
                stack.append(version)
        return stack

    def rollback(
        self, component: str, alias: str = "champion", reason: str = "rollback"
    ) -> dict[str, Any]:
        """Move ``alias`` back to the version it pointed at before the current one."""
        with self._transaction(immediate=True) as con:
            current = self._current(con, component, alias)
            if current is None:
                raise RegistryError(
                    f"{component}: alias {alias!r} is not set; nothing to roll back"
                )
            lineage = self._lineage(con, component, alias)
            if not lineage or lineage[-1] != current:
                lineage.append(current)  # alias table is the source of truth for "current"
            if len(lineage) < 2:
                raise RegistryError(
                    f"{component}: alias {alias!r} has no earlier version to roll back to"
                )
            target = lineage[-2]
            self._move_alias(con, component, alias, target, current, "rollback", reason)
            return self._get(con, component, target)

    def history(self, component: str, alias: str = "champion") -> list[dict[str, Any]]:
        """Every move of ``alias``, oldest first."""
        with self._transaction() as con:
            rows = con.execute(
                "SELECT component, alias, version, previous_version, action, changed_at, reason"
                " FROM alias_history WHERE component = ? AND alias = ? ORDER BY id",
                (component, alias),
            ).fetchall()
            return [dict(row) for row in rows]

    # ------------------------------------------------------------------ comparison

    def compare(self, component: str, versions: list[int]) -> dict[str, Any]:
        """Metrics of several versions side by side; a metric a version lacks is ``None``."""
        with self._transaction() as con:
            flat = {v: flatten_metrics(self._get(con, component, v)["metrics"]) for v in versions}
        names = sorted({name for metrics in flat.values() for name in metrics})
        return {
            "versions": list(versions),
            "metrics": {name: {v: flat[v].get(name) for v in versions} for name in names},
        }
