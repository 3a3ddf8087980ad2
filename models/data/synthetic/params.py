"""The generator's documented constants: the time window and the planted signal (GENERATOR.md).

Changing any of them changes the data a seed produces, so they live in one place.
"""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np

# Time: every interaction lies in a 180-day window starting 2025-01-01 (UTC).
WINDOW_START = int(datetime(2025, 1, 1, tzinfo=timezone.utc).timestamp())
WINDOW_DAYS = 180
DAY = 86_400
WINDOW_END = WINDOW_START + WINDOW_DAYS * DAY

# Planted signal: the documented coefficients (GENERATOR.md, "Planted signal").
UTIL_OVERLAP = 2.5
UTIL_PREF_SECTOR = 1.0
# Indexed by domain distance class: same district, neighbouring, same state, elsewhere, remote.
UTIL_LOCATION = np.array([1.5, 0.9, 0.4, 0.0, 0.6], dtype=np.float32)
UTIL_STIPEND = 0.8          # x log(stipend / 5000)
UTIL_TASTE = 0.8            # x (z_s . w_i) / sqrt(d)
TASTE_DIM = 6
QUALITY_SD = 0.5
EVENT_NOISE_SCALE = 0.5     # logistic noise added to u before thresholding into events
EVENT_MIX_TARGET = {"view": 0.60, "save": 0.15, "apply": 0.25}
EVENTS = ("view", "save", "apply")

SEL_OVERLAP = 3.0
SEL_CGPA = 0.9              # x (cgpa - 8)
SEL_TIER = 0.6              # x (2 - college_tier)
SEL_CROWD = -0.6            # x log(applicants per slot)

SKILL_ZIPF = 1.0            # popularity exponent of skills within a domain
POOL_SIZE = 200             # candidate internships scored per student
SCHEME_STIPEND = 5000
