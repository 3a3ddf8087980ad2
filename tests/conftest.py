"""Test-session set-up.

- Generated protobuf code must exist and be current before anything imports it.
- `small_system`: one small generated dataset (with its SQLite catalog) and trained, registered
  bundles, shared by every test that needs real models (training takes ~30 s; once per session).
- `default_report`: the report of `pmis run` on the default generated dataset, what the README's
  numbers describe (about a minute; once per session, only for the tests that ask for it).
- the trainer's tests (tests/test_trainer_*.py): `tiny_system` (a tiny trained system, once per
  session), `tiny_copy` (a test's own copy of it), `admin_env` (the admin token set), `trainer`
  and `content_server` (in-process servers on that copy); built with tests/support/trainer.py.
Shared helpers (waiting, grpcurl, loopback servers, configurations) are in `tests/support/`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from protos.generate import generate

generate()
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# Bundles are signed and verified, as in production: every bundle the suite trains is signed with
# this key, and the servers the tests start inherit it.
os.environ.setdefault("PMIS_BUNDLE_SIGNING_KEY", "pmis-test-suite-signing-key")


@pytest.fixture()
def unsigned_bundles(monkeypatch):
    """No signing key, unsigned bundles accepted: for tests about the rest of the bundle format."""
    from models.bundle.signing import ALLOW_UNSIGNED_ENV, SIGNING_KEY_ENV, SIGNING_KEY_FILE_ENV

    monkeypatch.delenv(SIGNING_KEY_ENV, raising=False)
    monkeypatch.delenv(SIGNING_KEY_FILE_ENV, raising=False)
    monkeypatch.setenv(ALLOW_UNSIGNED_ENV, "1")


@dataclass
class SmallSystem:
    root: Path
    data: Path
    bundles: Path
    runs: Path
    report: dict

    @property
    def catalog(self) -> Path:
        return self.data / "catalog.db"


@pytest.fixture(scope="session")
def small_system(tmp_path_factory) -> SmallSystem:
    from models.data.generate import generate as generate_data
    from models.training.train import train
    from tests.support.configs import small_train_config

    root = tmp_path_factory.mktemp("small_system")
    data = root / "data"
    generate_data(data, students=1500, internships=300, seed=7, progress=False, catalog=True)
    cfg = small_train_config(data, root)
    report = train(cfg)
    return SmallSystem(root, data, cfg.bundles_dir, cfg.runs_dir, report)


@pytest.fixture(scope="session")
def default_report(tmp_path_factory) -> dict:
    """`pmis run` on an empty home: the default dataset generated, trained with the defaults."""
    from services.cli import main as pmis

    home = tmp_path_factory.mktemp("default_system")
    assert pmis(["run", "--data", str(home / "data"), "--bundles", str(home / "bundles"),
                 "--runs", str(home / "runs"), "--quiet"]) == 0
    (report,) = (home / "runs").glob("*/report.json")
    return json.loads(report.read_text())


# --------------------------------------------------------------------------- the trainer's tests


@pytest.fixture(scope="session")
def tiny_system(tmp_path_factory):
    """600 students x 120 internships and a trained champion of every component (about 15 s).

    Built once per session in the base temp folder; the trainer's tests change only copies of it.
    """
    from tests.support.trainer import build_tiny_system

    return build_tiny_system(tmp_path_factory.getbasetemp() / "trainer-tiny")


@pytest.fixture()
def tiny_copy(tiny_system, tmp_path):
    """This test's own copy of the tiny system: what it registers, activates, rolls back or runs stays here."""
    from tests.support.trainer import copy_system

    return copy_system(tiny_system, tmp_path / "system")


@pytest.fixture(scope="module")
def admin_env():
    """PMIS_ADMIN_TOKEN set to the trainer tests' token (no token file), for the module's tests."""
    from tests.support.trainer import TOKEN

    mp = pytest.MonkeyPatch()
    try:
        mp.setenv("PMIS_ADMIN_TOKEN", TOKEN)
        mp.delenv("PMIS_ADMIN_TOKEN_FILE", raising=False)
        yield
    finally:
        mp.undo()


@pytest.fixture()
def trainer(tiny_copy, tiny_system, admin_env):
    """The trainer server in this process, on this test's own copy of the tiny system."""
    from tests.support.trainer import running_trainer

    with running_trainer(tiny_copy, tiny_system) as running:
        yield running


@pytest.fixture()
def content_server(trainer):
    """A content component server in this process, on the trainer's registry, watching it."""
    from tests.support.trainer import running_content_server

    with running_content_server(trainer.system.bundles) as stub:
        yield stub


from tests.support.postgres import pg_url, registry_location  # noqa: E402,F401  (fixtures on the real PostgreSQL)
