"""Companies: unique Indian-sounding names, an industry, a size, and how many internships each
tends to post (the weight internships are assigned by).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from models.data import domain
from models.data.synthetic.sampling import categorical, id_array
from models.data.synthetic.vocab import Vocab

_NAME_A = ["Bharat", "Hindustan", "Indus", "Shakti", "Sagar", "Vikas", "Prakash", "Ganga",
           "Sahyadri", "Nilgiri", "Deccan", "Aravali", "Kaveri", "Himalaya", "Narmada", "Konark",
           "Vindhya", "Satpura", "Godavari", "Malabar", "Coromandel", "Ajanta", "Sarthi", "Pragati"]
_NAME_B = {"Information Technology": "Infotech", "Banking and Finance": "Finserv",
           "Manufacturing": "Industries", "Automotive": "Motors", "Energy and Utilities": "Power",
           "Retail and FMCG": "Consumer", "Healthcare and Pharma": "Pharma",
           "Logistics": "Logistics", "Telecom": "Telecom", "Media and Marketing": "Media"}
_NAME_C = ["Ltd", "Limited", "Corporation", "Pvt Ltd", "Group"]
SIZES = ["Micro", "Small", "Medium", "Large"]
SIZE_P = [0.05, 0.08, 0.12, 0.75]   # top CSR spenders are mostly large; ~25 % MSME


def draw_companies(rng, n: int, v: Vocab) -> tuple[pa.Table, dict]:
    """The companies table, and each company's industry and share of the internships."""
    industry = rng.integers(0, len(domain.SECTOR_NAMES), size=n)
    size = categorical(rng, np.array(SIZE_P), n)
    names, seen = [], set()
    for k in range(n):
        sector = domain.SECTOR_NAMES[industry[k]]
        base = f"{_NAME_A[rng.integers(len(_NAME_A))]} {_NAME_B.get(sector, 'Enterprises')}"
        name = f"{base} {_NAME_C[rng.integers(len(_NAME_C))]}"
        if name in seen:  # keep names unique without unbounded retries
            name = f"{base} {k + 1} {_NAME_C[0]}"
        seen.add(name)
        names.append(name)
    # Internships per company are skewed; large companies post more.
    weight = rng.lognormal(0.0, 1.0, size=n) * np.where(size == 3, 3.0, 1.0)
    table = pa.table({
        "company_id": id_array("C", 0, n, 4),
        "name": pa.array(names),
        "industry": v.sectors.take(pa.array(industry)),
        "size": pa.array(SIZES).take(pa.array(size)),
    })
    return table, {"industry": industry, "weight": weight / weight.sum()}
