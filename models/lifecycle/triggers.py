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
logged in the ``trigger_checks`` table (models/lifecycle/store.py) with its reasons, whether it led to
a job or not (``start_if_needed`` starts one for the trainer's CheckTriggers).
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from models.bundle.registry import Registry
from models.components import COMPONENTS
from models.bundle.registry import manifest_of
from models.lifecycle.thresholds import DEFAULT_MAX_AGE_HOURS, DEFAULT_MIN_NEW_INTERACTIONS, DEFAULT_MIN_NEW_OUTCOMES
from models.lifecycle.versions import champion_of


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
    champions = _champions(registry)
    if not champions:
        _train_because(out, "no champion is active for any component")
        return out
    missing = [c for c in COMPONENTS if c not in champions]
    # no success champion is expected when the data has no outcomes to train one on
    if missing and not (missing == ["success"] and _rows(data_dir, "outcomes") is None):
        _train_because(out, f"no champion is active for {', '.join(missing)}")
    unknown = _measure_champions(out, champions, data_dir, now)
    thresholds = (min_new_interactions, min_new_outcomes, max_age_hours)
    _apply_thresholds(out, unknown, thresholds)
    if not out["should_train"]:
        out["reasons"] = _reasons_to_wait(out, champions, thresholds)
    return out


def _train_because(out: dict, reason: str) -> None:
    out["should_train"] = True
    out["reasons"].append(reason)


def _champions(registry: Registry) -> dict[str, dict]:
    """component -> its champion's registry row, for the components that have one."""
    rows = {component: champion_of(registry, component) for component in COMPONENTS}
    return {component: row for component, row in rows.items() if row is not None}


def _age_seconds(row: dict, now: datetime) -> float:
    created = datetime.fromisoformat(str(row["created_at"]).replace("Z", "+00:00"))
    return (now - created).total_seconds()


def _measure_champions(out: dict, champions: dict[str, dict], data_dir: Path, now: datetime) -> list[str]:
    """Each champion's age and the rows that arrived after its data, into ``out`` (the maxima over
    the champions, and per champion); returns the champions whose data cannot be compared (their
    manifest records no data summary)."""
    current = out["current_data_version"]
    times: np.ndarray | None = None  # read once, and only when some champion's data is not current
    rows_outcomes = _rows(data_dir, "outcomes") or 0
    unknown = []
    for component, row in champions.items():
        age = _age_seconds(row, now) / 3600.0
        summary = manifest_of(row["path"]).get("metadata", {}).get("data_summary")
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
    oldest = max(champions.values(), key=lambda r: _age_seconds(r, now))
    out["champion_data_version"] = oldest["data_version"] or ""
    return unknown


def _apply_thresholds(out: dict, unknown: list[str], thresholds: tuple) -> None:
    """A reason to train for every threshold the measured champions cross."""
    min_new_interactions, min_new_outcomes, max_age_hours = thresholds
    if unknown:
        _train_because(out, f"the data changed (now {out['current_data_version']}) and {', '.join(unknown)} does "
                            "not record what data it saw (trained before data summaries), so new rows cannot be "
                            "counted")
    if out["new_interactions"] >= min_new_interactions:
        _train_because(out, f"{out['new_interactions']} new interactions since the champion's data "
                            f"(>= {min_new_interactions})")
    if out["new_outcomes"] >= min_new_outcomes:
        _train_because(out, f"{out['new_outcomes']} new outcomes since the champion's data (>= {min_new_outcomes})")
    if out["champion_age_hours"] >= max_age_hours:
        _train_because(out, f"the champion is {_age(out['champion_age_hours'])} old (>= {_age(max_age_hours)})")


def _reasons_to_wait(out: dict, champions: dict[str, dict], thresholds: tuple) -> list[str]:
    """Why no threshold is crossed: what is new (if anything) and how old the champion is."""
    min_new_interactions, min_new_outcomes, max_age_hours = thresholds
    current = out["current_data_version"]
    same = all(r["data_version"] == current for r in champions.values())
    return [
        ("no new data: the champions were trained on the current data version " + current) if same else
        f"only {out['new_interactions']} new interactions (< {min_new_interactions}) and "
        f"{out['new_outcomes']} new outcomes (< {min_new_outcomes})",
        f"the champion is {_age(out['champion_age_hours'])} old (< {_age(max_age_hours)})"]


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


def start_if_needed(store, decision: dict, config: dict) -> str | None:
    """Queue a job with ``config`` when a recorded check says to train and no job is queued or
    running already (the decision then says why none was started); the new job's id, or None."""
    if not decision["should_train"]:
        return None
    active, _ = store.list(["QUEUED", "RUNNING"], 1)
    if active:
        decision["reasons"].append(f"not starting another job: {active[0]['job_id']} is {active[0]['status']}")
        return None
    job = store.create(config, source="trigger", reason="; ".join(decision["reasons"]))
    store.link_trigger(decision["check_id"], job["job_id"])
    decision["job_id"] = job["job_id"]
    return job["job_id"]
