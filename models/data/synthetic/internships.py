"""Internships: the postings table, and the arrays the interaction pass scores students against.

The random draws happen in one fixed order (`_draw`): the order is part of what a seed means,
so reordering them changes every generated dataset.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from models.data import domain
from models.data.synthetic.params import (DAY, QUALITY_SD, SCHEME_STIPEND, TASTE_DIM, UTIL_STIPEND,
                                          WINDOW_END, WINDOW_START)
from models.data.synthetic.sampling import (Groups, bitmasks, categorical, draw_places, gumbel_topk,
                                            id_array, list_array, timestamps)
from models.data.synthetic.vocab import Vocab

_SENT_MAIN = [
    "Join our {sector} team as a {title} and work hands-on with {s1} and {s2}.",
    "This {sector} internship builds practical skills in {s1}, {s2} and related tools.",
    "As a {title} in {sector}, you will apply {s1} every day under an experienced mentor.",
    "A {duration}-month {sector} placement focused on {s1} and {s2}.",
]
_SENT_EXTRA = [
    "Familiarity with {s3} is an advantage.",
    "You will support the team on live projects in {district}.",
    "Interns receive structured training and a certificate on completion.",
    "We value {s3} and a willingness to learn.",
    "The role includes regular reviews with a supervisor and on-the-job learning.",
    "Candidates from nearby districts are encouraged to apply.",
]


@dataclass
class InternshipArrays:
    """Arrays the scoring loop needs, indexed by internship row."""

    skills: np.ndarray       # (n, W) uint64
    n_skills: np.ndarray     # float32
    sector: np.ndarray       # int16
    district: np.ndarray     # int16
    state: np.ndarray        # int16
    lat: np.ndarray
    lon: np.ndarray
    remote: np.ndarray       # bool
    static: np.ndarray       # float32: stipend term + quality_i
    taste: np.ndarray        # (n, d) float32 latent w_i
    slots: np.ndarray
    open_at: np.ndarray      # int64 epoch seconds: posted_at
    close_at: np.ndarray     # int64 epoch seconds: min(deadline, window end)
    ids: pa.Array
    by_district: Groups
    by_sector: Groups


@dataclass
class _Drawn:
    """Every attribute drawn for the internships, one row per internship."""

    company: np.ndarray
    sector: np.ndarray
    titles: list[str]
    skill_idx: np.ndarray    # required skills, padded with -1 (see gumbel_topk)
    skill_ok: np.ndarray
    district: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    remote: np.ndarray
    stipend: np.ndarray
    slots: np.ndarray
    duration: np.ndarray
    posted: np.ndarray
    deadline: np.ndarray
    quality: np.ndarray
    taste: np.ndarray
    descriptions: list[str]


def draw_internships(rng, n: int, comp: dict, v: Vocab) -> tuple[pa.Table, InternshipArrays]:
    """The internships table and its scoring arrays; `comp` is what draw_companies returned."""
    d = _draw(rng, n, comp, v)
    ids = id_array("I", 0, n, 6)
    return _table(d, ids, len(comp["weight"]), v), _arrays(d, ids, v)


def _draw(rng, n: int, comp: dict, v: Vocab) -> _Drawn:
    company, sector = _company_and_sector(rng, n, comp)
    titles = _titles(rng, sector)
    skill_idx, skill_ok = _required_skills(rng, sector, v)
    district, lat, lon = draw_places(rng, n, v)
    remote = rng.random(n) < 0.08
    # Scheme pays Rs 5,000; some companies top up (in steps of 500, at most Rs 7,000).
    topup = np.where(rng.random(n) < 0.45, 500 * rng.integers(1, 15, size=n), 0)
    slots = np.minimum(1 + np.floor(rng.lognormal(1.0, 0.9, size=n)), 50).astype(np.int64)
    duration = np.array([12, 9, 6])[categorical(rng, np.array([0.8, 0.1, 0.1]), n)]
    posted = WINDOW_START + rng.integers(0, 151, size=n) * DAY + rng.integers(0, DAY, size=n)
    deadline = posted + rng.integers(30, 91, size=n) * DAY
    quality = rng.normal(0, QUALITY_SD, n)
    taste = rng.standard_normal((n, TASTE_DIM)).astype(np.float32)
    descriptions = _descriptions(rng, titles, v.sectors.take(pa.array(sector)).to_pylist(),
                                 v.districts.take(pa.array(district)).to_pylist(), duration,
                                 skill_idx, skill_ok)
    return _Drawn(company=company, sector=sector, titles=titles, skill_idx=skill_idx,
                  skill_ok=skill_ok, district=district, lat=lat, lon=lon, remote=remote,
                  stipend=SCHEME_STIPEND + topup, slots=slots, duration=duration, posted=posted,
                  deadline=deadline, quality=quality, taste=taste, descriptions=descriptions)


def _company_and_sector(rng, n: int, comp: dict) -> tuple[np.ndarray, np.ndarray]:
    company = categorical(rng, comp["weight"], n)
    # A company's internships are mostly in its own industry.
    other = rng.integers(0, len(domain.SECTOR_NAMES), size=n)
    sector = np.where(rng.random(n) < 0.85, comp["industry"][company], other)
    return company, sector


def _titles(rng, sector: np.ndarray) -> list[str]:
    """A title from the sector's list, always ending in 'Intern'."""
    titles = []
    t_pick = rng.random(len(sector))
    for k in range(len(sector)):
        names = domain.SECTORS[domain.SECTOR_NAMES[sector[k]]][1]
        t = names[int(t_pick[k] * len(names))]
        titles.append(t if t.endswith("Intern") else f"{t} Intern")
    return titles


def _required_skills(rng, sector: np.ndarray, v: Vocab) -> tuple[np.ndarray, np.ndarray]:
    """3-6 required skills: tech skills from the sector's domains, plus often one soft skill.

    Returned like gumbel_topk's: indices sorted ascending, padded with -1, and the valid mask.
    """
    n = len(sector)
    k_total = rng.integers(3, 7, size=n)
    has_soft = rng.random(n) < 0.7
    tech_idx, tech_ok = gumbel_topk(rng, v.sector_tech_logw[sector], k_total - has_soft)
    soft = v.soft[rng.integers(0, len(v.soft), size=n)]
    sk_idx = np.concatenate([tech_idx, np.where(has_soft, soft, -1)[:, None]], axis=1)
    sk_ok = np.concatenate([tech_ok, has_soft[:, None]], axis=1)
    big = np.iinfo(np.int64).max
    sk_idx = np.sort(np.where(sk_ok, sk_idx, big), axis=1)
    sk_ok = sk_idx != big
    return np.where(sk_ok, sk_idx, -1), sk_ok


def _descriptions(rng, title, sector, district, duration, skills_idx, skills_valid) -> list[str]:
    """1-3 template sentences that always name the sector and some required skills."""
    out = []
    n_extra = rng.integers(0, 3, size=len(title))
    main = rng.integers(0, len(_SENT_MAIN), size=len(title))
    for k in range(len(title)):
        sk = [domain.SKILLS[j] for j in skills_idx[k][skills_valid[k]]]
        pick = rng.permutation(len(sk))
        s1, s2, s3 = sk[pick[0]], sk[pick[1 % len(sk)]], sk[pick[2 % len(sk)]]
        kw = dict(sector=sector[k], title=title[k], s1=s1, s2=s2, s3=s3,
                  district=district[k], duration=duration[k])
        sents = [_SENT_MAIN[main[k]].format(**kw)]
        for e in rng.choice(len(_SENT_EXTRA), size=n_extra[k], replace=False):
            sents.append(_SENT_EXTRA[e].format(**kw))
        out.append(" ".join(sents))
    return out


def _table(d: _Drawn, ids: pa.Array, n_companies: int, v: Vocab) -> pa.Table:
    return pa.table({
        "internship_id": ids,
        "title": pa.array(d.titles),
        "company_id": id_array("C", 0, n_companies, 4).take(pa.array(d.company)),
        "sector": v.sectors.take(pa.array(d.sector)),
        "description": pa.array(d.descriptions),
        "skills": list_array(d.skill_idx, d.skill_ok, v.skills),
        "district": v.districts.take(pa.array(d.district)),
        "state": v.states.take(pa.array(v.d_state[d.district])),
        "latitude": pa.array(d.lat), "longitude": pa.array(d.lon),
        "remote": pa.array(d.remote),
        "stipend": pa.array(d.stipend.astype(np.int64)),
        "slots": pa.array(d.slots),
        "duration_months": pa.array(d.duration.astype(np.int64)),
        "posted_at": timestamps(d.posted), "deadline": timestamps(d.deadline),
    })


def _arrays(d: _Drawn, ids: pa.Array, v: Vocab) -> InternshipArrays:
    return InternshipArrays(
        skills=bitmasks(d.skill_idx, d.skill_ok, v.n_words), n_skills=d.skill_ok.sum(1).astype(np.float32),
        sector=d.sector.astype(np.int16), district=d.district.astype(np.int16),
        state=v.d_state[d.district].astype(np.int16), lat=d.lat, lon=d.lon, remote=d.remote,
        static=(UTIL_STIPEND * np.log(d.stipend / SCHEME_STIPEND) + d.quality).astype(np.float32),
        taste=d.taste, slots=d.slots, open_at=d.posted, close_at=np.minimum(d.deadline, WINDOW_END),
        ids=ids, by_district=Groups.of(d.district, len(domain.DISTRICTS)),
        by_sector=Groups.of(d.sector, len(domain.SECTOR_NAMES)),
    )
