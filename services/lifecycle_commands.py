"""`pmis models` and `pmis retrain`: the registry and the model lifecycle from the command line
(the same domain calls as the trainer service's RPCs)."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path


def cmd_models(args) -> int:
    from models.bundle.format import BundleError
    from models.bundle.registry import RegistryError, open_registry
    from models.lifecycle.versions import activate

    needs = {"show": ("component", "version"), "compare": ("component",), "activate": ("component", "version"),
             "rollback": ("component",), "history": ("component",)}.get(args.action, ())
    missing = [name for name in needs if getattr(args, name) is None]
    if missing:
        print(f"error: pmis models {args.action} needs {' and '.join(f'a {n}' for n in missing)}", file=sys.stderr)
        return 2
    reg = open_registry(args.bundles)
    try:
        if args.action == "list":
            if args.component and args.component not in reg.components():
                raise RegistryError(f"{args.component}: no version is registered "
                                    f"(components: {', '.join(reg.components()) or 'none'})")
            for component in ([args.component] if args.component else reg.components()):
                for v in reg.versions(component):
                    aliases = ",".join(v.get("aliases", []))
                    print(f"{component:14s} v{v['version']:<4d} {v['created_at']}  run {v['run_id']}  "
                          f"data {v['data_version']}  {aliases}")
        elif args.action == "show":
            print(json.dumps(reg.get(args.component, args.version), indent=2, default=str))
        elif args.action == "compare":
            versions = args.versions or sorted(v["version"] for v in reg.versions(args.component))
            if not versions:
                raise RegistryError(f"{args.component}: no version is registered")
            cmp = reg.compare(args.component, versions)
            versions = cmp["versions"]
            print("metric".ljust(32) + "".join(f"v{v}".rjust(12) for v in versions))
            for metric, values in cmp["metrics"].items():
                cells = [values.get(v) for v in versions]
                print(metric.ljust(32) + "".join((f"{c:.4f}" if isinstance(c, float) else str(c)).rjust(12)
                                                 for c in cells))
        elif args.action == "activate":
            activate(reg, args.component, args.version, reason=args.reason or "activated from the CLI", alias=args.alias)
            print(f"{args.component}: {args.alias} -> v{args.version}")
        elif args.action == "rollback":
            row = reg.rollback(args.component, args.alias, reason=args.reason or "rollback from the CLI")
            print(f"{args.component}: {args.alias} -> v{row['version']}")
        elif args.action == "history":
            for h in reg.history(args.component, args.alias):
                print(json.dumps(h, default=str))
    except (RegistryError, BundleError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def cmd_retrain(args) -> int:
    """Retrain through the job table (the trainer service lists the job); with --if-needed only
    when a retraining trigger fires (models/lifecycle/triggers.py). Every check is logged with its reasons."""
    from models.lifecycle.config import normalise_config
    from models.lifecycle.running import run_job
    from models.lifecycle.store import open_job_store
    from models.lifecycle.triggers import check_and_record

    data, bundles = Path(args.data), Path(args.bundles)
    store = open_job_store(bundles)
    decision = None
    if args.if_needed or args.dry_run:
        decision = check_and_record(store, data, "cli", min_new_interactions=args.min_new_interactions,
                                    min_new_outcomes=args.min_new_outcomes, max_age_hours=args.max_age_hours)
        verdict = "retraining" if decision["should_train"] else "no retraining needed"
        print(f"{verdict} (check {decision['check_id']}): " + "; ".join(decision["reasons"]))
        if not decision["should_train"] or args.dry_run:
            return 0
    raw = {"components": args.components or [], "data_source": str(data),
           "success": {"algorithms": args.algorithms or [], "search_budget": args.search_budget},
           "collaborative": {"trials": args.collab_trials}, "cv_folds": args.cv_folds, "auto_activation": {"enabled": not args.no_auto_activate, "margin": args.margin},
           "seed": args.seed, "max_eval_students": args.max_eval_students}
    config, violations = normalise_config(raw, data, [data])
    if violations:
        for field_, problem in violations:
            print(f"error: {field_}: {problem}", file=sys.stderr)
        return 2
    reason = "; ".join(decision["reasons"]) if decision else "started by hand (pmis retrain)"
    # created already claimed by this process: a trainer polling the table never starts it too
    job = store.create(config, source="trigger" if decision else "cli", reason=reason,
                       claimed_by=(os.getpid(), socket.gethostname()))
    if decision:
        store.link_trigger(decision["check_id"], job["job_id"])
    print(f"job {job['job_id']}")

    def echo(p) -> None:
        if not args.quiet and p.kind != "metrics":
            print(f"  [{p.percent:5.1f}%] {p.message}", flush=True)

    status = run_job(store.location, job["job_id"], bundles, Path(args.runs), echo=echo)
    job = store.get(job["job_id"])
    print(f"job {job['job_id']} {status}: {job['message']}")
    for d in job["activation"]:
        print(f"  {d['component']} v{d['version']}: {'activated' if d['activate'] else 'not activated'} "
              f"- {d['reason']}")
    return 0 if status == "SUCCEEDED" else 1
