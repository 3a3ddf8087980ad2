"""Proto <-> domain conversions for the trainer service (pmis.v1.TrainerService).

The domain side is plain dicts: job rows (models/lifecycle/store.py), normalised training
configurations (models/lifecycle/config.py), registry rows and bundle manifests
(models/bundle/registry.py), trigger decisions (models/lifecycle/triggers.py). Nothing here reads
or writes state except bundle manifests and plots, which the messages carry.
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf import timestamp_pb2

from models.bundle.registry import flatten_metrics
from models.lifecycle.schema import STATUSES
from models.lifecycle.store import parse_iso
from models.bundle.registry import manifest_of
from models.lifecycle.versions import evaluation_window
from models.training import diagnostics
from pmis.v1 import common_pb2, trainer_pb2

STATUS_PB = {s: trainer_pb2.JobStatus.Value(f"JOB_STATUS_{s}") for s in STATUSES}
STATUS_NAME = {v: k for k, v in STATUS_PB.items()}
PICKUP = ("component servers serving the 'champion' alias poll the registry every PMIS_WATCH_SECONDS "
          "(default 2 s) and reload when it moves; the previous version answers until the new one is warm")


def to_timestamp(value) -> timestamp_pb2.Timestamp | None:
    """Epoch seconds, an ISO-8601 text or a datetime; None for nothing."""
    if value is None or value == "":
        return None
    ts = timestamp_pb2.Timestamp()
    if isinstance(value, (int, float)):
        ts.FromSeconds(int(value))
    else:
        ts.FromDatetime(parse_iso(value) if isinstance(value, str) else value)
    return ts


def config_message(c: dict) -> trainer_pb2.TrainingConfig:
    """A normalised configuration (models/lifecycle/config.py) as GetJob shows it."""
    split = trainer_pb2.TimeSplit()
    if c.get("train_until") is not None:
        split.train_until.CopyFrom(to_timestamp(c["train_until"]))
        split.valid_until.CopyFrom(to_timestamp(c["valid_until"]))
    else:
        split.valid_fraction, split.test_fraction = c["valid_fraction"], c["test_fraction"]
        split.random = bool(c.get("split_random"))
    return trainer_pb2.TrainingConfig(
        components=c["components"], data_source=c["data_source"],
        success=trainer_pb2.SuccessSearch(algorithms=c["success_algorithms"], search_budget=c["search_budget"]),
        collaborative=trainer_pb2.CollaborativeSearch(trials=c.get("collab_trials") or 0),
        cv_folds=c["cv_folds"], split=split,
        auto_activation=trainer_pb2.AutoActivation(enabled=c["auto_activate"], margin=c["margin"]),
        seed=c["seed"], max_eval_students=c["max_eval_students"], description=c["description"])


def config_dict(m: trainer_pb2.TrainingConfig) -> dict:
    """A TrainingConfig as `normalise_config` takes it (zero and empty: the defaults)."""
    split = {"valid_fraction": m.split.valid_fraction, "test_fraction": m.split.test_fraction,
             "train_until": m.split.train_until.ToSeconds() if m.split.HasField("train_until") else None,
             "valid_until": m.split.valid_until.ToSeconds() if m.split.HasField("valid_until") else None,
             "random": m.split.random}
    return {"components": list(m.components), "data_source": m.data_source,
            "success": {"algorithms": list(m.success.algorithms), "search_budget": m.success.search_budget},
            "collaborative": {"trials": m.collaborative.trials}, "cv_folds": m.cv_folds, "split": split,
            "auto_activation": {"enabled": m.auto_activation.enabled, "margin": m.auto_activation.margin},
            "seed": m.seed, "max_eval_students": m.max_eval_students, "description": m.description}


def decision_message(d: dict) -> trainer_pb2.ActivationDecision:
    """A job's auto-activation decision for one component (models.training.diagnostics.decide_activation)."""
    out = trainer_pb2.ActivationDecision(component=d["component"], version=d["version"], activated=d["activate"],
                                         metric=d["metric"], champion_version=d.get("champion_version") or 0,
                                         margin=d["margin"], reason=d["reason"])
    if d.get("new_value") is not None:
        out.new_value = d["new_value"]
    if d.get("champion_value") is not None:
        out.champion_value = d["champion_value"]
    return out


def job_message(job: dict) -> trainer_pb2.Job:
    out = trainer_pb2.Job(
        job_id=job["job_id"], status=STATUS_PB[job["status"]], config=config_message(job["config"]),
        stage=job["stage"], percent=job["percent"], message=job["message"], error=job["error"],
        created_at=to_timestamp(job["created_at"]), started_at=to_timestamp(job["started_at"]),
        finished_at=to_timestamp(job["finished_at"]),
        run_id=job["run_id"] or "", versions=job["versions"], metrics=job["metrics"],
        activation=[decision_message(d) for d in job["activation"]], source=job["source"], reason=job["reason"],
        run_dir=job["run_dir"] or "")
    return out


def update_message(job_id: str, e: dict) -> trainer_pb2.JobUpdate:
    return trainer_pb2.JobUpdate(job_id=job_id, sequence=e["id"], at=to_timestamp(e["at"]),
                                 status=STATUS_PB[e["status"]], kind=e["kind"], stage=e["stage"],
                                 percent=e["percent"], message=e["message"], metrics=e["metrics"])


def window_message(w: dict | None) -> trainer_pb2.EvaluationWindow:
    if not w:
        return trainer_pb2.EvaluationWindow()
    return trainer_pb2.EvaluationWindow(data_version=w.get("data_version") or "",
                                        train_until=to_timestamp(w.get("train_until")),
                                        valid_until=to_timestamp(w.get("valid_until")), k=w.get("k") or 0,
                                        candidates=w.get("candidates") or 0, test_students=w.get("test_students") or 0,
                                        fingerprint=diagnostics.window_fingerprint(w))


def numeric(metrics: dict) -> dict[str, float]:
    """The stored metrics that are numbers, nested names flattened (``{"a": {"b": 1}}`` -> ``a.b``)."""
    return {k: float(v) for k, v in flatten_metrics(metrics).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def summary_message(row: dict, manifest: dict | None = None) -> trainer_pb2.ModelSummary:
    manifest = manifest if manifest is not None else manifest_of(row["path"])
    return trainer_pb2.ModelSummary(
        component=row["component"], version=row["version"], created_at=to_timestamp(row["created_at"]),
        registered_at=to_timestamp(row["registered_at"]), run_id=row["run_id"] or "",
        data_version=row["data_version"] or "",
        content_hash=row["content_hash"], aliases=row["aliases"], champion="champion" in row["aliases"],
        metrics=numeric(row["metrics"]), window=window_message(evaluation_window(manifest)))


def version_message(row: dict | None) -> common_pb2.ModelVersion | None:
    if row is None:
        return None
    return common_pb2.ModelVersion(component=row["component"], version=row["version"],
                                   data_version=row["data_version"] or "", content_hash=row["content_hash"],
                                   run_id=row["run_id"] or "")


def alias_change_message(component: str, previous: dict | None, current: dict) -> trainer_pb2.AliasChange:
    return trainer_pb2.AliasChange(component=component, alias="champion", previous=version_message(previous),
                                   current=version_message(current), model=summary_message(current), pickup=PICKUP)


def model_detail_message(row: dict, manifest: dict, run_dir: Path | None, plots: list[tuple[str, str, Path]],
                         history: list[dict], include_plot_bytes: bool) -> trainer_pb2.ModelDetail:
    """A version in full: its manifest, feature importance, its run's plots, the champion's history."""
    out = trainer_pb2.ModelDetail(summary=summary_message(row, manifest))
    out.manifest.update(manifest)
    importance = manifest.get("metadata", {}).get("feature_importance") or {}
    out.feature_importance.extend(trainer_pb2.FeatureImportance(feature=f, importance=float(i))
                                  for f, i in importance.items())
    if run_dir is not None:
        out.run_dir = str(run_dir)
    for name, description, path in plots:
        out.plots.add(name=name, description=description, path=str(path),
                      png=path.read_bytes() if include_plot_bytes else b"")
    for h in history:
        out.champion_history.add(version=h["version"], previous_version=h["previous_version"] or 0,
                                 action=h["action"], changed_at=to_timestamp(h["changed_at"]), reason=h["reason"])
    return out


SAME_WINDOW_NOTE = ("stored test-window metrics; the windows are identical (same data version, cutoffs, k, candidates "
                    "and students), so the numbers are directly comparable")
OTHER_WINDOWS_NOTE = ("stored test-window metrics of DIFFERENT evaluation windows: differences reflect the data as "
                      "much as the models; compare with care")


def comparison_message(component: str, rows: list[dict], manifests: list[dict], differences: list[str],
                       metrics: list[dict]) -> trainer_pb2.CompareModelsResponse:
    """Versions side by side (models/lifecycle/versions.py `metric_table`), saying whether their
    evaluation windows are the same."""
    same = not differences
    out = trainer_pb2.CompareModelsResponse(
        component=component, models=[summary_message(r, m) for r, m in zip(rows, manifests)],
        same_window=same, window_differences=differences, note=SAME_WINDOW_NOTE if same else OTHER_WINDOWS_NOTE)
    for m in metrics:
        out.metrics.add(metric=m["metric"], values=m["values"], direction=m["direction"],
                        best_version=m["best_version"])
    return out


def trigger_decision_message(d: dict) -> trainer_pb2.TriggerDecision:
    """A retraining-trigger check: a fresh decision, or one read back from the trigger log."""
    return trainer_pb2.TriggerDecision(
        should_train=d["should_train"], reasons=d["reasons"], new_interactions=d.get("new_interactions", 0),
        new_outcomes=d.get("new_outcomes", 0), champion_age_hours=d.get("champion_age_hours", 0.0),
        champion_data_version=d.get("champion_data_version", ""),
        current_data_version=d.get("current_data_version", ""),
        min_new_interactions=d.get("min_new_interactions", 0), min_new_outcomes=d.get("min_new_outcomes", 0),
        max_age_hours=d.get("max_age_hours", 0.0), job_id=d.get("job_id") or "",
        checked_at=to_timestamp(d.get("checked_at")), check_id=d.get("check_id", 0), source=d.get("source", ""))


def logged_trigger_message(t: dict) -> trainer_pb2.TriggerDecision:
    """A row of the trigger log (JobStore.triggers) as the decision it recorded."""
    return trigger_decision_message({
        **t["details"], "should_train": t["should_train"], "reasons": t["reasons"], "job_id": t["job_id"],
        "checked_at": t["checked_at"], "check_id": t["id"], "source": t["source"]})


def data_quality_message(path: Path, report, data_version: str) -> trainer_pb2.DataQualityReport:
    """A data contract validation (models.data.contract.validate): every problem by file, row and column."""
    out = trainer_pb2.DataQualityReport(data_source=str(path), ok=report.ok, rows=report.rows, notes=report.notes,
                                        data_version=data_version)
    for p in report.errors:
        e = out.errors.add(file=p.file, column=p.column or "", message=p.message)
        if p.row is not None:
            e.row = p.row
    return out


def status_message(counts: dict[str, int], bundles_root: Path, max_jobs: int, running: list[dict],
                   overview: list[tuple[str, int, dict | None]], last_check: dict | None) -> trainer_pb2.StatusResponse:
    """The trainer at a glance: jobs by status and those running, versions and champions per
    component (models/lifecycle/versions.py `overview`), the latest trigger check."""
    out = trainer_pb2.StatusResponse(jobs_by_status=counts, bundles_root=str(bundles_root),
                                     max_concurrent_jobs=max_jobs)
    out.running.extend(job_message(j) for j in running)
    for component, versions, champion in overview:
        out.versions_by_component[component] = versions
        if champion is not None:
            out.champions.append(summary_message(champion))
    if last_check is not None:
        out.last_trigger_check.CopyFrom(logged_trigger_message(last_check))
    return out
