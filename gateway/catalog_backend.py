"""One setting chooses the catalog's backend: a `postgresql://` URL (PMIS_DATABASE_URL) the shared
PostgreSQL catalog, a path the embedded SQLite one."""

from __future__ import annotations

from pathlib import Path

from gateway.catalog import Catalog, SqliteCatalog
from models.data.postgres import is_database_url


def open_catalog(source) -> Catalog:
    if is_database_url(source):
        from gateway.catalog_postgres import PostgresCatalog  # psycopg only where it is used

        return PostgresCatalog(str(source))
    return SqliteCatalog(Path(source))
