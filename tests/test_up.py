"""`pmis up`, the README's main command, as a user runs it: every server started on ports it
picked, real answers, and a clean stop (after the demo, or on Ctrl-C) that leaves nothing running."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from services.common.listening import read_ports
from services.launcher import SERVERS, SERVICE_NAMES
from tests.support.systems import copy_bundles
from tests.support.waiting import health_status, wait_until

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def home(small_system, tmp_path) -> Path:
    """PMIS_HOME with the small system's data (read only) and a private copy of its bundles."""
    copy_bundles(small_system.bundles, tmp_path / "bundles")
    (tmp_path / "data").symlink_to(small_system.data, target_is_directory=True)
    return tmp_path


def up(home: Path, *flags: str) -> subprocess.Popen:
    env = {**os.environ, "PMIS_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    env.pop("PMIS_ADMIN_TOKEN", None)
    # generous budgets: a loaded 2-core machine must not turn the demo answers "degraded"
    env.update({f"PMIS_{c.upper()}_BUDGET_MS": "5000" for c in ("content", "collaborative", "success", "ranker")})
    return subprocess.Popen([sys.executable, "-m", "models.cli", "up", "--port", "0", *flags], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def reported_ports(home: Path) -> dict[str, int]:
    ports = {name: read_ports(home / "logs" / f"{name}.ports") for name in SERVERS}
    assert all(ports.values()), ports
    return {name: p["grpc"] for name, p in ports.items()}


def nothing_answers(ports: dict[str, int]) -> bool:
    return all(health_status(f"127.0.0.1:{port}", SERVICE_NAMES[name], timeout=1) is None
               for name, port in ports.items())


def test_up_serves_the_demo_and_stops_everything(home):
    proc = up(home, "--exit-after-demo")
    try:
        out, _ = proc.communicate(timeout=240)
    finally:
        proc.kill()
    assert proc.returncode == 0, out[-3000:]
    assert "All six servers SERVING" in out and "stopping all servers" in out
    # the demo: a known student and a profile-only one, five recommendations each, not degraded
    assert "Recommendations for S0000001: ranked by ranker\n" in out, out[-3000:]
    assert "Recommendations for new student (profile): ranked by ranker\n" in out, out[-3000:]
    assert len(re.findall(r"^ [1-5]  I\d{6} ", out, flags=re.M)) == 10, out[-3000:]
    assert (home / "admin-token").stat().st_mode & 0o077 == 0  # the admin token: owner only
    assert nothing_answers(reported_ports(home))


def test_up_stops_every_server_on_ctrl_c(home):
    proc = up(home, "--no-demo")
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        wait_until(lambda: any("Ctrl-C stops everything" in line for line in lines), 180, "pmis up serving", proc)
        ports = reported_ports(home)
        assert all(health_status(f"127.0.0.1:{port}", SERVICE_NAMES[name]) == 1 for name, port in ports.items())
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
        reader.join(10)
    finally:
        proc.kill()
    out = "".join(lines)
    assert proc.returncode == 0, out[-2000:]
    assert "stopping all servers" in out
    assert nothing_answers(ports)
