"""What the `pmis` command's tests (tests/services/test_cli_*.py) share: running `pmis` as a user
does (a real process, PMIS_HOME set), checking its exit and output, and one tiny home made by the
CLI itself, once per session: `pmis generate` (300 students x 80 internships), `pmis train` (v1 of
every component), `pmis run` on the existing data (v2). Tests only read it; tests that change a
registry (activate, rollback, retrain) work on a private copy of the bundles (`Home.private`).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from models.bundle.registry import Registry
from tests.support.loopback import running_system
from tests.support.systems import copy_bundles

ROOT = Path(__file__).resolve().parents[2]
COMPONENTS = ("collaborative", "content", "ranker", "success")
# Nothing listens on port 1 of the loopback interface (privileged, never a server's): refused at once.
NOWHERE = "127.0.0.1:1"


def pmis(home: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`pmis ARGS` with PMIS_HOME=home, from the repository root; the signing key of the suite is inherited."""
    env = {**os.environ, "PMIS_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    for name in ("PMIS_BUNDLES", "PMIS_RETRAIN_MIN_INTERACTIONS", "PMIS_RETRAIN_MIN_OUTCOMES",
                 "PMIS_RETRAIN_MAX_AGE_HOURS"):
        env.pop(name, None)
    return subprocess.run([sys.executable, "-m", "services.cli", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def ok(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 0, f"exit {out.returncode}\n{out.stdout}\n{out.stderr}"
    assert "Traceback" not in out.stderr, out.stderr
    return out.stdout


def fails(out: subprocess.CompletedProcess, code: int = 2) -> str:
    """A refused command: the exit code, one clear message, no traceback; the message."""
    assert out.returncode == code, f"exit {out.returncode}\n{out.stdout}\n{out.stderr}"
    assert "Traceback" not in out.stdout + out.stderr, out.stderr
    return out.stdout + out.stderr


@dataclass
class Home:
    root: Path
    generated: subprocess.CompletedProcess
    trained: subprocess.CompletedProcess
    ran: subprocess.CompletedProcess
    dataset_json: str  # as `pmis generate` wrote it, before `pmis run`

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def bundles(self) -> Path:
        return self.root / "bundles"

    @property
    def catalog(self) -> Path:  # running_system() serves .bundles with a gateway over .catalog
        return self.data / "catalog.db"

    @property
    def registry(self) -> Registry:
        return Registry(self.bundles / "registry.db")

    def private(self, dest: Path) -> Path:
        """A home of its own: these data (read only), a copy of these bundles and registry."""
        dest.mkdir(parents=True, exist_ok=True)
        copy_bundles(self.bundles, dest / "bundles")
        (dest / "data").symlink_to(self.data, target_is_directory=True)
        return dest


def run_id(stdout: str) -> tuple[str, Path]:
    """`run RUN_ID  (report: PATH)`, the first line of the training summary."""
    m = re.match(r"run (\S+)\s+\(report: (.+)\)\n", stdout)
    assert m, stdout[:300]
    return m[1], Path(m[2])


@pytest.fixture(scope="session")
def home(tmp_path_factory) -> Home:
    """The tiny home, every path from PMIS_HOME (no --data/--bundles/--runs)."""
    root = tmp_path_factory.mktemp("cli_home")
    generated = pmis(root, "generate", "--students", 300, "--internships", 80, "--quiet")
    ok(generated)
    dataset_json = (root / "data" / "dataset.json").read_text()
    trained = pmis(root, "train", "--search-budget", 1, "--cv-folds", 3, "--quiet")
    ok(trained)
    ran = pmis(root, "run", "--search-budget", 1, "--cv-folds", 3, "--quiet")
    ok(ran)
    return Home(root, generated, trained, ran, dataset_json)


@pytest.fixture(scope="module")
def served(home):
    """The four components on the bundles the CLI trained and a gateway over the CLI's catalog."""
    with running_system(home) as system:
        yield system
