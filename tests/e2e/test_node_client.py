"""Another language builds against the API from this repository alone: the Node.js example in
clients/node (`npm ci`, then `node recommend.js`) calls Recommend and StreamRecommend on a real
gateway and decodes the BadRequest details of an INVALID_ARGUMENT."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.loopback import running_system

CLIENT = Path(__file__).resolve().parents[2] / "clients" / "node"


@pytest.fixture(scope="module")
def node_client():
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("Node.js and npm are not installed here: the Node client example is not run")
    installed = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=CLIENT, capture_output=True, text=True,
                               timeout=300)
    assert installed.returncode == 0, installed.stderr[-2000:]
    return CLIENT


def test_node_client_recommends_streams_and_reads_field_violations(node_client, small_system):
    with running_system(small_system, fairness_strength=0.0) as system:
        out = subprocess.run(["node", "recommend.js", f"127.0.0.1:{system.gateway.port}", "S0000001"],
                             cwd=node_client, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "Recommend S0000001: ranked by ranker, degraded []", out.stdout
    assert [line.split(".")[0].strip() for line in lines[1:6]] == ["1", "2", "3", "4", "5"], out.stdout
    assert "StreamRecommend #1: 3 items" in lines
    assert any(line.startswith("StreamRecommend #2: error INVALID_ARGUMENT") for line in lines), out.stdout
    assert "StreamRecommend #3: 2 items" in lines
    assert "Recommend k=500: INVALID_ARGUMENT" in lines
    assert "  field violation k: must be in 1..100, got 500" in lines
