"""domain.py as integer codes: skill, sector, field, education and district vocabularies with
the sampling weights every draw uses, computed once per run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from models.data import domain
from models.data.synthetic.params import SKILL_ZIPF


@dataclass(frozen=True)
class Vocab:
    """Integer-coded view of domain.py, computed once per run."""

    skills: pa.Array                 # skill names, index = bit position
    n_words: int                     # uint64 words per skill mask
    soft: np.ndarray                 # indices of soft skills
    sectors: pa.Array
    sector_tech_logw: np.ndarray     # (n_sectors, n_skills) log weight of each tech skill
    field_names: list[str]
    field_skill_logw: np.ndarray     # (n_fields, n_skills) log weight of student skills
    field_sector_logw: np.ndarray    # (n_fields, n_sectors) log weight of preferred sectors
    edu_names: list[str]
    edu_p: np.ndarray
    edu_fields: list[np.ndarray]     # field indices per education
    districts: pa.Array
    d_state: np.ndarray              # state index per district
    states: pa.Array
    d_lat: np.ndarray
    d_lon: np.ndarray
    d_pop: np.ndarray                # normalised population share
    d_rural: np.ndarray
    d_other_logw: np.ndarray         # (n_d, n_d) log weight of extra preferred districts


def build_vocab() -> Vocab:
    skills = domain.SKILLS
    n_sk = len(skills)
    sk_dom = {s: d for d, ss in domain.SKILL_DOMAINS.items() for s in ss}
    soft = np.array([domain.SKILL_INDEX[s] for s in domain.SKILL_DOMAINS["soft"]])
    # Within a domain, earlier-listed skills are more common (python, excel, accounting...),
    # Zipf-like; shared popular skills give students and internships realistic overlaps.
    pop = {s: 1.0 / (r + 1) ** SKILL_ZIPF for ss in domain.SKILL_DOMAINS.values()
           for r, s in enumerate(ss)}
    dom_pop = {d: sum(pop[s] for s in ss) for d, ss in domain.SKILL_DOMAINS.items()}

    # Internship tech skills: the sector's first domain is its core, so it weighs 3x.
    sec_w = np.zeros((len(domain.SECTOR_NAMES), n_sk))
    for k, name in enumerate(domain.SECTOR_NAMES):
        doms = domain.SECTORS[name][0]
        for j, s in enumerate(skills):
            if sk_dom[s] in doms:
                sec_w[k, j] = (3.0 if sk_dom[s] == doms[0] else 1.0) * pop[s]

    # Student skills: mostly the field's domains, some soft skills, a little of anything.
    fields = list(domain.FIELD_DOMAINS)
    f_sk = np.zeros((len(fields), n_sk))
    f_sec = np.zeros((len(fields), len(domain.SECTOR_NAMES)))
    for f, name in enumerate(fields):
        doms = domain.FIELD_DOMAINS[name]
        for j, s in enumerate(skills):
            d = sk_dom[s]
            share = pop[s] / dom_pop[d]
            f_sk[f, j] = (4.0 / len(doms) * share if d in doms
                          else 2.0 * share if d == "soft" else 0.6 / n_sk)
        # Preferred sectors follow the field: each shared skill domain adds weight.
        for k, sec in enumerate(domain.SECTOR_NAMES):
            f_sec[f, k] = 0.15 + 2.0 * len(set(doms) & set(domain.SECTORS[sec][0]))

    edu_names = list(domain.EDUCATION)
    edu_p = np.array([domain.EDUCATION[e][0] for e in edu_names])
    edu_fields = [np.array([fields.index(f) for f in domain.EDUCATION[e][1]]) for e in edu_names]

    D = domain.DISTRICTS
    states = sorted({d[1] for d in D})
    d_state = np.array([states.index(d[1]) for d in D])
    lat = np.array([d[2] for d in D])
    lon = np.array([d[3] for d in D])
    pop = np.array([d[4] for d in D])
    pop = pop / pop.sum()
    # Extra preferred districts are often neighbours, sometimes same-state, rarely far away.
    km = domain.haversine_km(lat[:, None], lon[:, None], lat[None, :], lon[None, :])
    w = pop[None, :] + 0.5 * (km < domain.NEIGHBOUR_KM) + 0.15 * (d_state[:, None] == d_state[None, :])
    np.fill_diagonal(w, 0.0)

    with np.errstate(divide="ignore"):
        return Vocab(
            skills=pa.array(skills), n_words=(n_sk + 63) // 64, soft=soft,
            sectors=pa.array(domain.SECTOR_NAMES), sector_tech_logw=np.log(sec_w),
            field_names=fields, field_skill_logw=np.log(f_sk), field_sector_logw=np.log(f_sec),
            edu_names=edu_names, edu_p=edu_p / edu_p.sum(), edu_fields=edu_fields,
            districts=pa.array([d[0] for d in D]), d_state=d_state, states=pa.array(states),
            d_lat=lat, d_lon=lon, d_pop=pop, d_rural=np.array([d[5] for d in D]),
            d_other_logw=np.log(w),
        )
