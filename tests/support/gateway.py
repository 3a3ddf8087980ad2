"""What the gateway's tests (tests/gateway/test_gateway_*.py) share: the loopback system and known students.

The system is the four component servers in-process (real `ComponentServer`s on free ports) and
the asyncio gateway served on an event loop on a background thread (tests/support/loopback.py);
the tests talk to it over a plain synchronous channel, as a client would. Tests that stop
components get a fresh set of servers of their own (`fresh_system`); the others share one set per
module (`system`). Import the fixtures into the test module that uses them.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from pmis.v1 import common_pb2
from tests.support.loopback import running_system

# Most gateway tests check relevance order, explanations and degradation: the operator's fairness
# policy is set to 0 for them (a request may still ask for fairness). The policy itself is tested
# on `policy_system`, a gateway with the default configuration.
PLAIN = {"fairness_strength": 0.0}


@pytest.fixture(scope="module")
def system(small_system):
    with running_system(small_system, **PLAIN) as running:
        yield running


@pytest.fixture()
def fresh_system(small_system):
    """Servers of this test's own, which it may stop."""
    with running_system(small_system, **PLAIN) as running:
        yield running


@pytest.fixture()
def policy_system(small_system):
    """The default configuration: the fairness policy applies to every Recommend."""
    with running_system(small_system) as running:
        yield running


@pytest.fixture(scope="module")
def students(small_system) -> dict:
    """Known students: the one with the most applications, and a few others with history."""
    with closing(sqlite3.connect(small_system.catalog)) as c:
        ranked = [r[0] for r in c.execute(
            "SELECT student_id, COUNT(*) AS n FROM interactions WHERE event = 'apply' GROUP BY student_id "
            "ORDER BY n DESC, student_id")]
        applied = {sid: {r[0] for r in c.execute(
            "SELECT internship_id FROM interactions WHERE student_id = ? AND event = 'apply'", (sid,))}
            for sid in ranked[:5]}
    return {"top": ranked[0], "others": ranked[1:5], "applied": applied}


COLD_PROFILE = common_pb2.StudentProfile(
    skills=["python", "sql", "data analysis", "excel"], education="BCA", field="Computer Applications",
    district="Pune", state="Maharashtra", latitude=18.52, longitude=73.86,
    preferred_sectors=["Information Technology"], cgpa=8.2, college_tier=2)


def internships_by_applicants(catalog: Path):
    """(the internship with the most applications, one without any or None)."""
    with closing(sqlite3.connect(catalog)) as c:
        busiest = c.execute("SELECT internship_id, COUNT(*) n FROM interactions WHERE event='apply' "
                            "GROUP BY internship_id ORDER BY n DESC, internship_id LIMIT 1").fetchone()[0]
        unapplied = c.execute("SELECT internship_id FROM internships WHERE internship_id NOT IN "
                              "(SELECT internship_id FROM interactions WHERE event='apply') "
                              "ORDER BY internship_id LIMIT 1").fetchone()
    return busiest, unapplied[0] if unapplied else None
