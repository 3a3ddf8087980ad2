"""`pmis recommend` and `pmis bench` against the servers on the tiny home's bundles, and without them."""

from __future__ import annotations

import json
import re
import sqlite3
from contextlib import closing

from tests.support.cli import NOWHERE, fails, home, ok, pmis, served  # noqa: F401 (fixtures)


# --------------------------------------------------------------------------- recommend


def item_rows(stdout: str) -> list[list[str]]:
    """The table rows of `pmis recommend`: rank, internship id, ..."""
    return [line.split() for line in stdout.splitlines() if re.match(r"\s*\d+\s+I\d{6}\s", line)]


def test_recommend_for_a_known_student_prints_the_gateways_answer(home, served):
    target = f"127.0.0.1:{served.gateway.port}"
    out = ok(pmis(home.root, "recommend", "--target", target, "--student", "S0000007", "--k", 5))
    lines = out.splitlines()
    assert lines[0].startswith("Recommendations for S0000007: ranked by ")
    assert "degraded" not in lines[0]
    rows = item_rows(out)
    assert [r[0] for r in rows] == ["1", "2", "3", "4", "5"]
    assert len({r[1] for r in rows}) == 5
    # each row is the catalog's internship (the exposure ledger moves rankings between calls, so no
    # second call to compare with): title, place and stipend in their columns, a selection probability
    with closing(sqlite3.connect(home.catalog)) as con:
        for line in lines[2:7]:
            iid, title, place, stipend, prob = (line[4:14].strip(), line[15:49].strip(), line[50:68].strip(),
                                                line[69:76].strip(), line[77:83].strip())
            t, district, remote, s = con.execute("SELECT title, district, remote, stipend FROM internships "
                                                 "WHERE internship_id = ?", (iid,)).fetchone()
            assert (title, place, int(stipend)) == (t[:34].strip(), "remote" if remote else district[:18].strip(), s)
            assert 0 < float(prob) < 1, line
    assert re.fullmatch(r"models: (\w+ v2, )+\w+ v2", lines[-1]), lines[-1]  # the champions `pmis run` made
    assert {"content", "collaborative", "ranker"} <= set(re.findall(r"(\w+) v2", lines[-1]))


def test_recommend_for_a_profile_and_by_mode(home, served):
    target = f"127.0.0.1:{served.gateway.port}"
    out = ok(pmis(home.root, "recommend", "--target", target, "--k", 3, "--profile", "skills=python,sql,excel",
                  "education=BCA", "field=Computer Applications", "district=Pune", "state=Maharashtra", "cgpa=8.2",
                  "college_tier=2", "preferred_sectors=Information Technology"))
    assert out.startswith("Recommendations for new student (profile): ranked by ")
    assert [r[0] for r in item_rows(out)] == ["1", "2", "3"]
    content = ok(pmis(home.root, "recommend", "--target", target, "--student", "S0000007", "--k", 4,
                      "--mode", "content"))
    assert content.startswith("Recommendations for S0000007") and len(item_rows(content)) == 4


def test_recommend_errors_are_messages_not_tracebacks(home, served):
    target = f"127.0.0.1:{served.gateway.port}"
    unknown = fails(pmis(home.root, "recommend", "--target", target, "--student", "S0999999"))
    assert "error: NOT_FOUND: student S0999999 is not in the catalog" in unknown
    nobody = fails(pmis(home.root, "recommend", "--target", target))
    assert "error: INVALID_ARGUMENT" in nobody and "student_id: set student_id" in nobody
    assert "error: --profile: unknown profile field 'colour'" in fails(
        pmis(home.root, "recommend", "--target", target, "--profile", "colour=blue"))
    assert "error: --profile: could not convert string to float: 'high'" in fails(
        pmis(home.root, "recommend", "--target", target, "--profile", "cgpa=high"))


def test_recommend_without_a_gateway_says_so(home):
    out = fails(pmis(home.root, "recommend", "--target", NOWHERE, "--student", "S0000007", "--timeout", 3))
    assert out.startswith("error: UNAVAILABLE: ") and "Connection refused" in out
    assert "Recommendations" not in out


# --------------------------------------------------------------------------- bench


def test_bench_prints_its_tables_and_writes_every_number(home, served, tmp_path):
    from services.common import listening, telemetry

    # The servers run in this process: its one metrics endpoint stands for the gateway's; the
    # other servers' ports (from --metrics-base 1) have nothing behind them and show "-".
    metrics = telemetry.start_metrics_server(listening.ANY_METRICS_PORT)
    out = pmis(home.root, "bench", "--target", f"127.0.0.1:{served.gateway.port}", "--concurrency", 1,
               "--duration", 1, "--rate", 20, "--open-duration", 1, "--shortlist", 3, "--metrics-base", 1,
               "--metrics-ports", f"gateway={metrics}", "--json", tmp_path / "bench.json", timeout=180)
    text = ok(out)
    for heading in ("Recommend (k=10, explain on, known student ids, deadline 2000 ms) at 127.0.0.1:",
                    "Closed loop, 1s per level", "Open loop, 1s per rate", "CPU ms per OK answer", "Shortlist, 3"):
        assert heading in text, heading
    assert re.search(r"^1\s+gateway\s+[1-9]\d*\s+0\s", text, re.M), text  # answers, no errors
    assert re.search(r"^1\s+echo\s+[1-9]\d*\s+0\s", text, re.M), text
    assert "closed loop, concurrency 1: gateway and echo" in out.stderr  # progress goes to stderr

    result = json.loads((tmp_path / "bench.json").read_text())
    (closed,) = result["closed"]
    gw, echo = closed["gateway"], closed["echo"]
    assert gw["requests"] > 0 and gw["errors"] == 0 and gw["rps"] > 0 and gw["p50_ms"] > 0
    assert echo["requests"] > 0 and echo["errors"] == 0 and closed["p50_ratio"] > 0
    cpu = gw["cpu_ms_per_request"]
    assert cpu["per_server"]["gateway"] > 0 and cpu["per_server"]["content"] is None
    assert set(cpu["missing"]) == {"content", "collaborative", "success", "ranker"}
    (open_,) = result["open"]
    assert open_["rate"] == 20 and open_["sent"] == 20 and open_["ok"] > 0 and open_["other_errors"] == 0
    # every request counted once (a busy box may refuse or time out a few; none fails otherwise)
    assert open_["ok"] + open_["ok_degraded"] + open_["resource_exhausted"] + open_["deadline_exceeded"] == 20
    assert re.search(r"^\s*20\s+20\s+\d+", text, re.M), text  # the open-loop row: rate, sent, OK, ...
    short = result["shortlist"]
    assert (short["calls"], short["ok"]) == (3, 3) and short["p50_ms"] > 0
    assert result["config"]["metrics_ports"] == {"gateway": metrics, "content": 2, "collaborative": 3, "success": 4,
                                                 "ranker": 5}


def test_bench_without_an_answering_gateway_fails(home):
    out = fails(pmis(home.root, "bench", "--target", NOWHERE, "--concurrency", 1, "--duration", 1, "--rate",
                     "--no-echo", "--deadline-ms", 200), code=1)
    assert f"error: the gateway at {NOWHERE} answered no request" in out


def test_bench_refuses_a_missing_catalog_and_bad_metrics_ports(tmp_path):
    out = fails(pmis(tmp_path, "bench", "--target", NOWHERE, "--concurrency", 1, "--duration", 1, "--rate"))
    assert f"error: no catalog at {tmp_path / 'data' / 'catalog.db'}" in out
    assert not (tmp_path / "data").exists()  # no empty catalog left behind
    bad = fails(pmis(tmp_path, "bench", "--metrics-ports", "db=5432"))
    assert "--metrics-ports wants NAME=PORT" in bad and "'db=5432'" in bad
