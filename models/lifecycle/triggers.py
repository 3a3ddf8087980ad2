"""Retraining triggers: is the champion stale? One function for `pmis retrain --if-needed`, the
trainer's CheckTriggers RPC and the Kubernetes CronJob (which runs the CLI).

Train when
- no champion is active for some component (nothing to serve), or
- at least ``min_new_interactions`` interactions arrived after the newest interaction the
  champion was trained on, or at least ``min_new_outcomes`` outcomes more than it saw — every
  bundle manifest records ``data_summary`` (row counts, newest interaction timestamp) and the
  ``data_version`` hash of its input files, or
- the champion is older than ``max_age_hours``.

When the data version is unchanged nothing is read: there is nothing new. Every check is
logged in the ``trigger_checks`` table (models.lifecycle.jobs) with its reasons, whether it led to a job
or not.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from models.bundle.format import MANIFEST
from models.components import COMPONENTS
from models.bundle.registry import Registry, RegistryError

DEFAULT_MIN_NEW_INTERACTIONS = 1000
DEFAULT_MIN_NEW_OUTCOMES = 200
DEFAULT_MAX_AGE_HOURS = 24.0 * 7


def _manifest(path) -> dict:
    try:
        return json.loads((Path(path) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _rows(data_dir: Path, table: str) -> int | None:
    from models.data.contract import table_path

    path = table_path(data_dir, table)
    if path is None:
        return None
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(path).metadata.num_rows)
    with open(path, "rb") as f:
        return max(sum(1 for _ in f) - 1, 0)


def _interaction_times(data_dir: Path) -> np.ndarray:
    """Epoch seconds of every interaction (only the timestamp column is read)."""
    import pandas as pd

    from models.data.contract import ValidationReport, _parse_times, table_path

    path = table_path(data_dir, "interactions")
    if path is None:
        raise FileNotFoundError(f"no interactions table in {data_dir}")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        s = pq.read_table(path, columns=["timestamp"]).to_pandas()["timestamp"]
    else:
        s = pd.read_csv(path, usecols=["timestamp"], dtype=str, keep_default_na=False, na_values=[""])["timestamp"]
    ts = _parse_times(s, path.name, "timestamp", ValidationReport())
    return ts.dropna().astype("int64").to_numpy() // 1_000_000


def check(data_dir: Path, registry: Registry, *, min_new_interactions: int = DEFAULT_MIN_NEW_INTERACTIONS,
          min_new_outcomes: int = DEFAULT_MIN_NEW_OUTCOMES, max_age_hours: float = DEFAULT_MAX_AGE_HOURS,
          now: datetime | None = None) -> dict:
    """The decision and every number behind it (JSON-serialisable)."""
    from models.data.contract import data_version

    data_dir = Path(data_dir)
    now = now or datetime.now(timezone.utc)
    current = data_version(data_dir)
    out = {"should_train": False, "reasons": [], "new_interactions": 0, "new_outcomes": 0,
           "champion_age_hours": 0.0, "champion_data_version": "", "current_data_version": current,
           "min_new_interactions": int(min_new_interactions), "min_new_outcomes": int(min_new_outcomes),
           "max_age_hours": float(max_age_hours), "champions": {}}
    champions = {}
    for component in COMPONENTS:
        try:
            champions[component] = registry.resolve(component, "champion")
        except RegistryError:
            continue
    missing = [c for c in COMPONENTS if c not in champions]
    if not champions:
        out["should_train"] = True
        out["reasons"].append("no champion is active for any component")
        return out
    if missing and not (missing == ["success"] and _rows(data_dir, "outcomes") is None):
        out["should_train"] = True
        out["reasons"].append(f"no champion is active for {', '.join(missing)}")

    times: np.ndarray | None = None
    rows_outcomes = _rows(data_dir, "outcomes") or 0
    unknown = []
    for component, row in champions.items():
        created = datetime.fromisoformat(str(row["created_at"]).replace("Z", "+00:00"))
        age = (now - created).total_seconds() / 3600.0
        summary = _manifest(row["path"]).get("metadata", {}).get("data_summary")
        info = {"version": row["version"], "data_version": row["data_version"], "age_hours": round(age, 4)}
        out["champion_age_hours"] = max(out["champion_age_hours"], round(age, 4))
        if row["data_version"] == current:
            info.update(new_interactions=0, new_outcomes=0)
        elif not summary:
            unknown.append(f"{component} v{row['version']}")
        else:
            if times is None:
                times = _interaction_times(data_dir)
            info["new_interactions"] = int((times > int(summary["interactions_until"])).sum())
            info["new_outcomes"] = max(rows_outcomes - int(summary.get("rows", {}).get("outcomes", 0)), 0)
            out["new_interactions"] = max(out["new_interactions"], info["new_interactions"])
            out["new_outcomes"] = max(out["new_outcomes"], info["new_outcomes"])
        out["champions"][component] = info
    oldest = max(champions.values(), key=lambda r: (now - datetime.fromisoformat(
        str(r["created_at"]).replace("Z", "+00:00"))).total_seconds())
    out["champion_data_version"] = oldest["data_version"] or ""

    if unknown:
        out["should_train"] = True
        out["reasons"].append(f"the data changed (now {current}) and {', '.join(unknown)} does not record what "
                              "data it saw (trained before data summaries), so new rows cannot be counted")
    if out["new_interactions"] >= min_new_interactions:
        out["should_train"] = True
        out["reasons"].append(f"{out['new_interactions']} new interactions since the champion's data "
                              f"(>= {min_new_interactions})")
    if out["new_outcomes"] >= min_new_outcomes:
        out["should_train"] = True
        out["reasons"].append(f"{out['new_outcomes']} new outcomes since the champion's data (>= {min_new_outcomes})")
    if out["champion_age_hours"] >= max_age_hours:
        out["should_train"] = True
        out["reasons"].append(f"the champion is {_age(out['champion_age_hours'])} old (>= {_age(max_age_hours)})")
    if not out["should_train"]:
        same = all(r["data_version"] == current for r in champions.values())
        out["reasons"] = [
            ("no new data: the champions were trained on the current data version " + current) if same else
            f"only {out['new_interactions']} new interactions (< {min_new_interactions}) and "
            f"{out['new_outcomes']} new outcomes (< {min_new_outcomes})",
            f"the champion is {_age(out['champion_age_hours'])} old (< {_age(max_age_hours)})"]
    return out


def _age(hours: float) -> str:
    return f"{hours * 60:.3g} min" if hours < 1 else f"{hours:.1f} h"


def check_and_record(store, data_dir: Path, source: str, **thresholds) -> dict:
    """`check`, logged in the trigger_checks table; the decision gains its ``check_id``."""
    decision = check(data_dir, store.registry, **thresholds)
    details = {k: v for k, v in decision.items() if k not in ("should_train", "reasons")}
    decision["check_id"] = store.record_trigger(source, str(data_dir), decision["should_train"], decision["reasons"],
                                                details)
    decision["source"] = source
    return decision
