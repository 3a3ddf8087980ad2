"""A real PostgreSQL for the tests of the shared catalog: each test gets its own schema.

The server is PMIS_TEST_DATABASE_URL (default: the development and CI machines' server,
postgresql://postgres@127.0.0.1:5432/test). Where none is reachable the tests are skipped with a
message -- unless PMIS_REQUIRE_POSTGRES=1 (set by .ci/run), where that is a failure: CI must never
pass by skipping them.
"""

from __future__ import annotations

import os
import uuid
from urllib.parse import quote

import pytest

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"


def server_url() -> str:
    return os.environ.get("PMIS_TEST_DATABASE_URL", DEFAULT_URL)


def with_search_path(url: str, schema: str) -> str:
    """`url` whose connections use `schema` first (libpq's `options`)."""
    return f"{url}{'&' if '?' in url else '?'}options={quote(f'-csearch_path={schema}')}"


def reachable_or_skip(url: str) -> None:
    import psycopg

    try:
        psycopg.connect(url, connect_timeout=3).close()
    except psycopg.OperationalError as e:
        if os.environ.get("PMIS_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL at {url} is required (PMIS_REQUIRE_POSTGRES=1) but unreachable: {e}")
        pytest.skip(f"no PostgreSQL reachable at {url} (set PMIS_TEST_DATABASE_URL): {e}")


class Scratch:
    """One schema of its own on the test server, dropped at the end."""

    def __init__(self, url: str | None = None):
        import psycopg

        self.server = url or server_url()
        reachable_or_skip(self.server)
        self.schema = f"pmis_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.server, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {self.schema}")
        self.url = with_search_path(self.server, self.schema)

    def drop(self) -> None:
        import psycopg

        with psycopg.connect(self.server, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")


@pytest.fixture(params=["sqlite", "postgres"])
def registry_location(request, tmp_path):
    """Where a test's registry and job table live, once per backend: the file beside the bundles
    (`tmp_path / "bundles"`), or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        return tmp_path / "bundles" / "registry.db"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def pg_url():
    """A database URL whose connections see only a fresh schema of their own."""
    scratch = Scratch()
    try:
        yield scratch.url
    finally:
        scratch.drop()
