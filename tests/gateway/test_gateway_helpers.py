"""The gateway's pure helpers, without servers: candidate filters, explanation wording, profile parsing, configuration."""

from __future__ import annotations

import numpy as np
import pytest

from gateway import explain, filters
from gateway.catalog import InternshipTable
from pmis.v1 import common_pb2, gateway_pb2
from services.client import parse_profile


def _table() -> InternshipTable:
    big = np.iinfo(np.int64).max
    # I2 is full, I3 closed at 500, I4 remote, I5 has unknown slots and stipend, I6 no coordinates,
    # I6 and I7 close at exactly 1000 (the default "now" below)
    rows = [  # id, sector, district, state, lat, lon, remote, stipend, slots, deadline, selected
        ("I1", "Information Technology", "Pune", "Maharashtra", 18.52, 73.86, False, 5000.0, 2.0, 2_000, 0),
        ("I2", "Information Technology", "Mumbai", "Maharashtra", 19.08, 72.88, False, 8000.0, 2.0, 2_000, 2),
        ("I3", "Manufacturing", "Nagpur", "Maharashtra", 21.15, 79.09, False, 6000.0, 3.0, 500, 0),
        ("I4", "Banking and Finance", "Bengaluru", "Karnataka", 12.97, 77.59, True, 7000.0, 1.0, big, 0),
        ("I5", "Manufacturing", "Mumbai", "Maharashtra", 19.08, 72.88, False, np.nan, np.nan, 2_000, 5),
        ("I6", "Retail and FMCG", "Pune", "Maharashtra", np.nan, np.nan, False, 12000.0, 0.0, 1_000, 0),
        ("I7", "Information Technology", "Delhi", "Delhi", 28.61, 77.21, False, 9000.0, 4.0, 1_000, 3),
    ]
    col = lambda j: [r[j] for r in rows]  # noqa: E731
    ids = np.array(col(0))
    return InternshipTable(
        ids=ids, position={i: p for p, i in enumerate(ids.tolist())}, title=np.array([f"title {i}" for i in ids]),
        company_id=np.array(["C1"] * len(ids)), sector=np.array(col(1)), district=np.array(col(2)),
        state=np.array(col(3)), latitude=np.array(col(4), dtype=float), longitude=np.array(col(5), dtype=float),
        remote=np.array(col(6), dtype=bool), stipend=np.array(col(7), dtype=float), slots=np.array(col(8), dtype=float),
        deadline=np.array(col(9), dtype=np.int64), applicants=np.zeros(len(ids), dtype=np.int64),
        selected=np.array(col(10), dtype=np.int64), msme=np.zeros(len(ids), dtype=bool))


def _kept(table, f=None, *, applied=(), now=1_000, lat=None, lon=None, positions=None) -> list[str]:
    p = np.arange(len(table.ids)) if positions is None else np.asarray(positions)
    mask = filters.allowed(table, p, now=now, applied=set(applied), filters=f, student_lat=lat, student_lon=lon)
    assert mask.dtype == bool and mask.shape == p.shape
    return [str(table.ids[i]) for i in p[mask]]


def test_filters_open_not_full_not_applied():
    t = _table()
    # I2 is full (selected >= slots); I3 closed at now=1000; I7 closes exactly now: still open
    assert _kept(t) == ["I1", "I4", "I5", "I6", "I7"]
    assert _kept(t, now=1_001) == ["I1", "I4", "I5"]   # I6 and I7 closed at 1000
    assert _kept(t, now=400) == ["I1", "I3", "I4", "I5", "I6", "I7"]
    assert _kept(t, applied={"I1", "I6", "I999"}) == ["I4", "I5", "I7"]
    # the mask follows the order (and repeats) of the positions it is given
    assert _kept(t, positions=[6, 0, 1, 0]) == ["I7", "I1", "I1"]
    assert _kept(t, positions=np.zeros(0, dtype=np.int64)) == []


def test_filters_districts_and_remote():
    t = _table()
    f = gateway_pb2.Filters(districts=["pune", " MUMBAI "])
    assert _kept(t, f) == ["I1", "I4", "I5", "I6"]            # remote I4 is reachable from anywhere
    f = gateway_pb2.Filters(districts=["Pune"], remote=False)
    assert _kept(t, f) == ["I1", "I6"]
    f = gateway_pb2.Filters(districts=["Pune"], remote=True)
    assert _kept(t, f) == ["I4"]
    assert _kept(t, gateway_pb2.Filters(remote=True)) == ["I4"]
    assert _kept(t, gateway_pb2.Filters(remote=False)) == ["I1", "I5", "I6", "I7"]
    assert _kept(t, gateway_pb2.Filters()) == _kept(t)         # an empty filter keeps what is open


def test_filters_radius():
    t = _table()
    pune = dict(lat=18.52, lon=73.86)
    # Mumbai is ~120 km from Pune, Delhi ~1170 km; remote passes; no coordinates (I6) fails
    assert _kept(t, gateway_pb2.Filters(radius_km=10), **pune) == ["I1", "I4"]
    assert _kept(t, gateway_pb2.Filters(radius_km=200), **pune) == ["I1", "I4", "I5"]
    assert _kept(t, gateway_pb2.Filters(radius_km=2000), **pune) == ["I1", "I4", "I5", "I7"]
    assert _kept(t, gateway_pb2.Filters(radius_km=200, remote=False), **pune) == ["I1", "I5"]
    # a student without coordinates: the radius cannot apply and is ignored
    assert _kept(t, gateway_pb2.Filters(radius_km=10)) == _kept(t)


def test_filters_sectors_and_stipend():
    t = _table()
    assert _kept(t, gateway_pb2.Filters(sectors=["information technology"])) == ["I1", "I7"]
    assert _kept(t, gateway_pb2.Filters(sectors=["Manufacturing", "Retail and FMCG"])) == ["I5", "I6"]
    assert _kept(t, gateway_pb2.Filters(min_stipend=7000)) == ["I4", "I6", "I7"]   # unknown stipend counts as 0
    assert _kept(t, gateway_pb2.Filters(min_stipend=0)) == _kept(t)
    both = gateway_pb2.Filters(sectors=["Information Technology", "Banking and Finance"], min_stipend=6000,
                               remote=False)
    assert _kept(t, both) == ["I7"]


def test_success_band():
    assert explain.success_band(None, 0.13) == ""
    assert explain.success_band(0.3, 0.0) == ""
    assert explain.success_band(0.2, 0.1) == "higher than average"
    assert explain.success_band(0.625, 0.5) == "higher than average"   # ratio exactly 1.25
    assert explain.success_band(0.62, 0.5) == "about average"
    assert explain.success_band(0.5, 0.5) == "about average"
    assert explain.success_band(0.41, 0.5) == "about average"
    assert explain.success_band(0.4, 0.5) == "lower than average"      # ratio exactly 0.8
    assert explain.success_band(0.0, 0.13) == "lower than average"


def test_location_fit():
    t = _table()
    pos = t.position
    pune = common_pb2.StudentProfile(district="Pune", state="Maharashtra", latitude=18.52, longitude=73.86)
    assert explain.location_fit(pune, t, pos["I1"]) == "same district"
    assert explain.location_fit(pune, t, pos["I6"]) == "same district"       # by name, without coordinates
    assert explain.location_fit(pune, t, pos["I2"]) == "neighbouring district"  # Mumbai, ~120 km
    assert explain.location_fit(pune, t, pos["I3"]) == "same state"          # Nagpur, ~600 km
    assert explain.location_fit(pune, t, pos["I7"]) == "elsewhere"
    assert explain.location_fit(pune, t, pos["I4"]) == "remote"
    lower = common_pb2.StudentProfile(district="pune", state="maharashtra")
    assert explain.location_fit(lower, t, pos["I1"]) == "same district"
    assert explain.location_fit(lower, t, pos["I2"]) == "same state"        # no coordinates: no distance
    assert explain.location_fit(common_pb2.StudentProfile(), t, pos["I7"]) == "elsewhere"


def test_explanation_reasons():
    t = _table()
    p = common_pb2.StudentProfile(skills=["python"], district="Pune", state="Maharashtra",
                                  preferred_sectors=["information technology"])
    e = explain.explanation(p, t, t.position["I1"], matched=["python"], missing=["sql", "excel", "git", "java"],
                            probability=0.3, base_rate=0.13, factors=[], collab_basis="popularity", promoted=False)
    assert list(e.skills_to_learn) == ["sql", "excel", "git"]
    assert e.preferred_sector and e.location_fit == "same district" and e.success_band == "higher than average"
    assert e.collaborative_evidence == ""  # popularity is not evidence about students like this one
    assert any("python" in r for r in e.reasons) and any("30%" in r for r in e.reasons)


def test_percent_never_says_about_zero():
    assert explain.percent(0.004) == "under 1%" and explain.percent(0.14) == "about 14%"
    assert explain.percent(0.005) == "under 1%" and explain.percent(0.0051) == "about 1%"


def test_parse_profile():
    p = parse_profile(["skills=python, sql,,Data Analysis", "education=BCA", "field=Computer Applications",
                       "district=Pune", "state=Maharashtra", "latitude=18.52", "longitude=73.86", "cgpa=8.2",
                       "college_tier=2", "preferred_sectors=Information Technology,Banking and Finance",
                       "preferred_districts=Pune"])
    assert list(p.skills) == ["python", "sql", "Data Analysis"]
    assert (p.education, p.field, p.district, p.state) == ("BCA", "Computer Applications", "Pune", "Maharashtra")
    assert p.latitude == pytest.approx(18.52) and p.longitude == pytest.approx(73.86)
    assert p.cgpa == pytest.approx(8.2) and p.college_tier == 2
    assert list(p.preferred_sectors) == ["Information Technology", "Banking and Finance"]
    assert list(p.preferred_districts) == ["Pune"]
    empty = parse_profile([])
    assert not empty.skills and not empty.HasField("cgpa") and not empty.HasField("college_tier")
    assert list(parse_profile(["skills=a", "skills=b"]).skills) == ["a", "b"]   # repeated keys add up
    with pytest.raises(ValueError, match="unknown profile field"):
        parse_profile(["gender=F"])           # protected attributes are not profile fields
    with pytest.raises(ValueError):
        parse_profile(["cgpa=high"])
    with pytest.raises(ValueError):
        parse_profile(["college_tier=2.5"])


# --------------------------------------------------------------------------- configuration


def test_gateway_config_from_environment_and_flags(monkeypatch):
    from gateway.server import parse_config

    monkeypatch.setenv("PMIS_MAX_CONNECTION_AGE_MS", "5000")
    monkeypatch.setenv("PMIS_FAIRNESS", '{"exposure_targets": {"msme": 0.15}}')
    cfg = parse_config(["--catalog-refresh-seconds", "0", "--content-target", "dns:///content.pmis:50051"])
    assert cfg.max_connection_age_ms == 5000 and cfg.catalog_refresh_seconds == 0
    assert cfg.targets["content"] == "dns:///content.pmis:50051"
    assert cfg.fairness.exposure_targets == {"msme": 0.15} and cfg.fairness.min_shares == {"msme": 0.1, "local": 0.3}
    with pytest.raises(ValueError, match="unknown groups"):
        parse_config(["--fairness", '{"min_shares": {"big_firms": 0.2}}'])


def test_gateway_latency_target_from_environment_and_flags(monkeypatch):
    from gateway.server import parse_config
    from services.common import admission

    monkeypatch.delenv("PMIS_TARGET_LATENCY_MS", raising=False)
    assert parse_config([]).target_latency_ms == admission.GATEWAY_TARGET_LATENCY_MS
    monkeypatch.setenv("PMIS_TARGET_LATENCY_MS", "0")
    assert parse_config([]).target_latency_ms == 0  # a fixed limit
    assert parse_config(["--target-latency-ms", "150"]).target_latency_ms == 150
    with pytest.raises(SystemExit):
        parse_config(["--target-latency-ms", "-1"])
