"""The trainer's RPCs (pmis.v1.TrainerService), as thin adapters: each checks its request, calls the
model lifecycle (models/lifecycle/: the job table, the training configuration, registered versions,
retraining triggers; the job runner to start and cancel jobs) and answers with a message built in
services/trainer/messages.py.

Admin RPCs (StartTraining, CancelJob, Activate, Rollback, CheckTriggers that may start a job) need
`authorization: Bearer <PMIS_ADMIN_TOKEN>` (services/common/auth.py); the others are read-only.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from pathlib import Path

from models.bundle.format import BundleError
from models.bundle.registry import RegistryError, manifest_of
from models.components import COMPONENTS
from models.lifecycle import triggers, versions
from models.lifecycle.config import normalise_config
from models.lifecycle.schema import TERMINAL
from models.lifecycle.store import JobNotFound, JobStore, decode_token, encode_token, open_job_store
from pmis.v1 import trainer_pb2, trainer_pb2_grpc
from services.common.auth import admin_only, check_admin
from services.common.errors import failed_precondition, invalid_argument, not_found, unavailable
from services.common.validation import Violations
from services.trainer import messages
from services.trainer.config import TrainerConfig
from services.trainer.runner import CancelRefused, JobRunner

log = logging.getLogger("pmis.trainer")

MAX_PAGE = 100
MAX_REASON = 500


class TrainerServicer(trainer_pb2_grpc.TrainerServiceServicer):
    def __init__(self, cfg: TrainerConfig):
        self.cfg = cfg
        self.store: JobStore | None = None
        self.runner: JobRunner | None = None
        self.recovered: list[str] = []

    # ------------------------------------------------------------------ lifecycle
    def open(self) -> None:
        """Open (create) the job table and recover from a previous trainer; then start the runner."""
        self.store = open_job_store(self.cfg.bundles)
        self.recovered = self.store.recover()
        if self.recovered:
            log.warning("jobs interrupted by a restart marked FAILED", extra={"fields": {"jobs": self.recovered}})
        self.runner = JobRunner(self.cfg, self.store)
        self.runner.start()

    def shutdown(self) -> None:
        if self.runner is not None:
            self.runner.shutdown()

    def _store(self) -> JobStore:
        if self.store is None:
            raise unavailable("trainer: job table not open yet")
        return self.store

    # ------------------------------------------------------------------ request checks
    def _job_id(self, job_id: str) -> str:
        v = Violations()
        v.check_id("job_id", job_id)
        v.raise_if_any()
        return job_id

    def _get_job(self, job_id: str) -> dict:
        try:
            return self._store().get(self._job_id(job_id))
        except JobNotFound:
            raise not_found(f"no job {job_id!r}") from None

    def _component(self, v: Violations, component: str) -> None:
        if component not in COMPONENTS:
            v.add("component", f"must be one of {', '.join(COMPONENTS)}" + (f", got {component!r}" if component else ""))

    def _reason(self, v: Violations, reason: str) -> None:
        if len(reason) > MAX_REASON:
            v.add("reason", f"must be at most {MAX_REASON} characters")

    def _page(self, v: Violations, size: int, token: str) -> tuple[int, int | None]:
        if not 0 <= size <= MAX_PAGE:
            v.add("page_size", f"must be in 1..{MAX_PAGE} (0 = 20), got {size}")
        after = None
        if token:
            try:
                after = decode_token(token)
            except ValueError:
                v.add("page_token", "is not a page token this server issued")
        return size or 20, after

    def _statuses(self, v: Violations, values) -> list[str]:
        statuses = []
        for i, s in enumerate(values):
            if s not in messages.STATUS_NAME:
                v.add(f"statuses[{i}]", "must be a job status other than JOB_STATUS_UNSPECIFIED")
            else:
                statuses.append(messages.STATUS_NAME[s])
        return statuses

    def _data_source(self, v: Violations, field: str, value: str) -> Path:
        _, violations = normalise_config({"data_source": value}, self.cfg.data, self.cfg.data_roots)
        for f, d in violations:
            if f == "data_source":
                v.add(field, d)
        return (Path(value) if value else self.cfg.data).resolve()

    def _registry_row(self, component: str, version: int) -> dict:
        """The registry's row of a version (0: the champion); NOT_FOUND when there is none."""
        registry = self._store().registry
        try:
            if version == 0:
                return registry.resolve(component, "champion")
            return registry.get(component, version)
        except RegistryError as e:
            raise not_found(str(e)) from None

    # ------------------------------------------------------------------ jobs
    @admin_only
    def StartTraining(self, request, context):
        config, violations = normalise_config(messages.config_dict(request.config), self.cfg.data,
                                              self.cfg.data_roots)
        if violations:
            raise invalid_argument([(f"config.{f}", d) for f, d in violations])
        job = self._store().create(config, source="api", reason=request.config.description or "started through the API")
        self.runner.wake()
        log.info("job queued", extra={"fields": {"job_id": job["job_id"], "components": config["components"]}})
        return messages.job_message(job)

    def GetJob(self, request, context):
        return messages.job_message(self._get_job(request.job_id))

    def ListJobs(self, request, context):
        v = Violations()
        statuses = self._statuses(v, request.statuses)
        size, after = self._page(v, request.page_size, request.page_token)
        v.raise_if_any()
        jobs, next_after = self._store().list(statuses or None, size, after)
        return trainer_pb2.ListJobsResponse(jobs=[messages.job_message(j) for j in jobs],
                                            next_page_token=encode_token(next_after) if next_after else "")

    @admin_only
    def CancelJob(self, request, context):
        self._get_job(request.job_id)
        try:
            return messages.job_message(self.runner.cancel(request.job_id))
        except CancelRefused as e:
            raise failed_precondition(str(e)) from None

    def WatchJob(self, request, context):
        self._get_job(request.job_id)
        if request.after_sequence < 0:
            raise invalid_argument([("after_sequence", "must be >= 0")])
        return self._watch(request.job_id, request.after_sequence, context)

    def _watch(self, job_id: str, after: int, context):
        """The job's events after ``after``, then each new one as it is recorded, to the job's end
        (or until the client goes away)."""
        store = self._store()
        while True:
            events = store.events(job_id, after)
            for e in events:
                yield messages.update_message(job_id, e)
                after = e["id"]
            if len(events) >= 1000:
                continue
            if store.status(job_id) in TERMINAL:
                # The terminal event is written in the same transaction as the status: one more
                # read has everything.
                for e in store.events(job_id, after):
                    yield messages.update_message(job_id, e)
                return
            if not context.is_active():
                return
            time.sleep(self.cfg.poll)

    # ------------------------------------------------------------------ models
    def ListModels(self, request, context):
        v = Violations()
        self._component(v, request.component)
        size, after = self._page(v, request.page_size, request.page_token)
        v.raise_if_any()
        rows = self._store().registry.versions(request.component)  # newest first
        if request.active_only:
            rows = [r for r in rows if r["aliases"]]
        if after is not None:
            rows = [r for r in rows if r["version"] < after]
        page = rows[:size]
        token = encode_token(page[-1]["version"]) if len(rows) > size else ""
        return trainer_pb2.ListModelsResponse(models=[messages.summary_message(r) for r in page],
                                              next_page_token=token)

    def GetModel(self, request, context):
        v = Violations()
        self._component(v, request.component)
        if request.version < 0:
            v.add("version", "must be >= 1, or 0 for the champion")
        v.raise_if_any()
        row = self._registry_row(request.component, request.version)
        manifest = manifest_of(row["path"])
        run_dir, plots = versions.run_plots(self.cfg.runs, row["run_id"], request.component)
        history = self._store().registry.history(request.component)
        return messages.model_detail_message(row, manifest, run_dir, plots, history, request.include_plot_bytes)

    def CompareModels(self, request, context):
        compared = self._versions_to_compare(request)
        rows = [self._registry_row(request.component, x) for x in compared]
        manifests = [manifest_of(r["path"]) for r in rows]
        differences = versions.window_differences(rows, manifests)
        if request.require_same_window and differences:
            raise failed_precondition("the versions were evaluated on different windows: " + "; ".join(differences))
        table = versions.metric_table(self._store().registry, request.component, compared)
        return messages.comparison_message(request.component, rows, manifests, differences, table)

    def _versions_to_compare(self, request) -> list[int]:
        """The distinct versions asked for, the champion added when asked: 2..10 of them."""
        v = Violations()
        self._component(v, request.component)
        compared = list(dict.fromkeys(request.versions))
        if any(x < 1 for x in compared):
            v.add("versions", "every version must be >= 1")
        v.raise_if_any()
        if request.include_champion:
            champion = self._registry_row(request.component, 0)["version"]
            if champion not in compared:
                compared.append(champion)
        if not 2 <= len(compared) <= 10:
            raise invalid_argument([("versions", f"compare 2..10 distinct versions (include_champion adds the "
                                                 f"champion), got {len(compared)}")])
        return compared

    @admin_only
    def Activate(self, request, context):
        v = Violations()
        self._component(v, request.component)
        if request.version < 1:
            v.add("version", "must be >= 1")
        self._reason(v, request.reason)
        v.raise_if_any()
        self._registry_row(request.component, request.version)  # NOT_FOUND for an unknown version
        try:
            reason = request.reason or "activated through the trainer API"
            previous, current = versions.activate(self._store().registry, request.component, request.version,
                                                  reason=reason)
        except BundleError as e:
            raise failed_precondition(f"refusing to activate {request.component} v{request.version}: {e}") from None
        log.info("activated", extra={"fields": {"model": request.component, "version": request.version,
                                                "previous": previous["version"] if previous else None}})
        return messages.alias_change_message(request.component, previous, current)

    @admin_only
    def Rollback(self, request, context):
        v = Violations()
        self._component(v, request.component)
        self._reason(v, request.reason)
        v.raise_if_any()
        try:
            previous, current = versions.rollback(self._store().registry, request.component,
                                                  reason=request.reason or "rolled back through the trainer API")
        except RegistryError as e:
            raise failed_precondition(str(e)) from None
        log.info("rolled back", extra={"fields": {"model": request.component, "from": previous["version"],
                                                  "to": current["version"]}})
        return messages.alias_change_message(request.component, previous, current)

    # ------------------------------------------------------------------ data and triggers
    def DataQuality(self, request, context):
        from models.data.contract import data_version, validate

        v = Violations()
        path = self._data_source(v, "data_source", request.data_source)
        v.raise_if_any()
        report = validate(path)
        return messages.data_quality_message(path, report, data_version(path) if report.ok else "")

    def CheckTriggers(self, request, context):
        if request.start_if_needed:
            check_admin(context, "CheckTriggers(start_if_needed)")
        v = Violations()
        path = self._data_source(v, "data_source", request.data_source)
        for name in ("min_new_interactions", "min_new_outcomes", "max_age_hours"):
            if getattr(request, name) < 0:
                v.add(name, "must be >= 0 (0 = the server's default)")
        config = self._job_config(v, request.config, path) if request.start_if_needed else None
        v.raise_if_any()
        store = self._store()
        decision = triggers.check_and_record(
            store, path, "rpc", min_new_interactions=request.min_new_interactions or self.cfg.min_new_interactions,
            min_new_outcomes=request.min_new_outcomes or self.cfg.min_new_outcomes,
            max_age_hours=request.max_age_hours or self.cfg.max_age_hours)
        decision["checked_at"] = datetime.now(timezone.utc)
        if config is not None and triggers.start_if_needed(store, decision, config):
            self.runner.wake()
        return messages.trigger_decision_message(decision)

    def _job_config(self, v: Violations, message: trainer_pb2.TrainingConfig, path: Path) -> dict:
        """The configuration of the job a trigger check may start, on the checked data source
        (whose violations are the check's own, under ``data_source``)."""
        raw = messages.config_dict(message)
        raw["data_source"] = str(path)
        config, violations = normalise_config(raw, self.cfg.data, self.cfg.data_roots)
        for f, d in violations:
            if f != "data_source":
                v.add(f"config.{f}", d)
        return config

    def Status(self, request, context):
        store = self._store()
        counts = store.counts()
        running, _ = store.list(["RUNNING"], MAX_PAGE)
        overview = versions.overview(store.registry)
        last = store.triggers(1)
        return messages.status_message(counts, self.cfg.bundles.resolve(), self.cfg.max_jobs, running, overview,
                                       last[0] if last else None)
