"""`pmis`: the command-line entry point.

Paths default to $PMIS_HOME (./var): data in var/data, bundles and registry in var/bundles,
evaluation runs in var/runs. Every path is also a flag.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from pathlib import Path

from models.components import COMPONENTS


def _home() -> Path:
    return Path(os.environ.get("PMIS_HOME", "var"))


def _paths(args) -> None:
    home = _home()
    if getattr(args, "data", None) is None:
        args.data = home / "data"
    if getattr(args, "bundles", None) is None:
        args.bundles = Path(os.environ.get("PMIS_BUNDLES", home / "bundles"))
    if getattr(args, "runs", None) is None:
        args.runs = home / "runs"
    if hasattr(args, "bundles"):  # every command that writes or loads bundles signs and verifies them
        from models.bundle.signing import ensure_signing_key

        ensure_signing_key(home / "signing-key")


def cmd_generate(args, seed: int | None = None) -> int:
    from models.data.generate import generate

    try:
        summary = generate(Path(args.data), students=args.students, internships=args.internships,
                           companies=args.companies, interactions_per_student=args.interactions_per_student,
                           selection_rate=args.selection_rate, seed=args.seed if seed is None else seed,
                           fmt=args.format, progress=not args.quiet)
    except (ValueError, FileExistsError) as e:  # a size out of range, a folder that already holds data
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.quiet:
        rows = summary["rows"]
        print(f"generated {args.data}: {rows['students']} students, {rows['internships']} internships, "
              f"{rows['interactions']} interactions, selection rate {summary['selection_rate']:.3f}")
    else:
        print(json.dumps(summary, indent=2, default=str))
    return 0


def cmd_validate(args) -> int:
    from models.data.contract import validate

    report = validate(Path(args.data))
    for note in report.notes:
        print(f"note: {note}")
    if report.ok:
        print(f"ok: {Path(args.data)} follows the input contract ({json.dumps(report.rows)})")
        return 0
    for e in report.errors:
        print(f"error: {e}", file=sys.stderr)
    return 2


COLLAB_TRIALS_HELP = ("collaborative hyperparameter trials (the grid first, then TPE), 1..200; "
                      "default: scaled to the data, at least the grid, at most 30")


def _trials(text: str) -> int:
    from models.lifecycle.config import collab_trials_problem

    n = int(text)
    if problem := collab_trials_problem(n):
        raise argparse.ArgumentTypeError(problem)
    return n


def _train_config(args):
    from models.training.train import TrainConfig

    return TrainConfig(data_dir=Path(args.data), bundles_dir=Path(args.bundles), runs_dir=Path(args.runs),
                       seed=args.seed, cv_folds=args.cv_folds, search_budget=args.search_budget,
                       collab_trials=args.collab_trials, max_eval_students=args.max_eval_students,
                       activate=not args.no_activate,
                       progress=not args.quiet, split=args.split)


def cmd_train(args) -> int:
    from models.data.contract import DataError
    from models.training.report import console_summary
    from models.training.train import train

    try:
        report = train(_train_config(args))
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(console_summary(report))
    return 0


def cmd_evaluate(args) -> int:
    from models.data.contract import DataError
    from models.training.holdout import evaluate_holdout
    from models.training.report import format_table, ranking_table

    try:
        result = evaluate_holdout(Path(args.data), Path(args.bundles), Path(args.holdout), k=args.k)
    except (DataError, FileNotFoundError, RuntimeError) as e:  # bad or missing file, no champions to evaluate
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"Held-out file {args.holdout}: {result['students']} students with relevant items")
    print(format_table(ranking_table(result["ranking"], args.k)))
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2, default=str))
    return 0


def cmd_run(args) -> int:
    """The main job: data if absent, train, print the report."""
    data = Path(args.data)
    if not any(data.glob("students.*")):
        print(f"no dataset in {data}: generating the default one")
        args.students, args.internships, args.companies = 5000, 1000, 72
        args.interactions_per_student, args.selection_rate, args.format = 10.0, 0.13, "parquet"
        code = cmd_generate(args, seed=42)  # the same default dataset as `pmis generate`
        if code:
            return code
    return cmd_train(args)


def cmd_models(args) -> int:
    from models.bundle.format import BundleError
    from models.bundle.registry import Registry, RegistryError
    from models.lifecycle.versions import activate

    needs = {"show": ("component", "version"), "compare": ("component",), "activate": ("component", "version"),
             "rollback": ("component",), "history": ("component",)}.get(args.action, ())
    missing = [name for name in needs if getattr(args, name) is None]
    if missing:
        print(f"error: pmis models {args.action} needs {' and '.join(f'a {n}' for n in missing)}", file=sys.stderr)
        return 2
    reg = Registry(Path(args.bundles) / "registry.db")
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
    from models.lifecycle.store import JobStore
    from models.lifecycle.triggers import check_and_record

    data, bundles = Path(args.data), Path(args.bundles)
    store = JobStore(bundles / "registry.db")
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

    status = run_job(store.db_path, job["job_id"], bundles, Path(args.runs), echo=echo)
    job = store.get(job["job_id"])
    print(f"job {job['job_id']} {status}: {job['message']}")
    for d in job["activation"]:
        print(f"  {d['component']} v{d['version']}: {'activated' if d['activate'] else 'not activated'} "
              f"- {d['reason']}")
    return 0 if status == "SUCCEEDED" else 1


def cmd_up(args) -> int:
    from services.launcher import Ports, up

    return up(_home(), Path(args.data), Path(args.bundles), Path(args.runs),
              Ports.consecutive(args.port, args.metrics_port), main,
              demo=not args.no_demo, exit_after=args.exit_after_demo)


def cmd_recommend(args) -> int:
    from services.client import main_recommend

    return main_recommend(args)


def cmd_bench(args) -> int:
    from gateway.bench.cli import main_bench

    return main_bench(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pmis", description="PMIS internship recommender")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp, data=True, bundles=False, runs=False):
        if data:
            sp.add_argument("--data", type=Path, help="dataset folder (default $PMIS_HOME/data)")
        if bundles:
            sp.add_argument("--bundles", type=Path, help="bundle root with registry.db (default $PMIS_HOME/bundles)")
        if runs:
            sp.add_argument("--runs", type=Path, help="where run reports go (default $PMIS_HOME/runs)")
        sp.add_argument("--quiet", action="store_true", help="no progress bars")

    def gen_args(sp):
        sp.add_argument("--students", type=int, default=5000)
        sp.add_argument("--internships", type=int, default=1000)
        sp.add_argument("--companies", type=int, default=72)
        sp.add_argument("--interactions-per-student", type=float, default=10.0)
        sp.add_argument("--selection-rate", type=float, default=0.13)
        sp.add_argument("--format", choices=["parquet", "csv"], default="parquet")

    def train_args(sp):
        sp.add_argument("--seed", type=int, default=0)
        sp.add_argument("--cv-folds", type=int, default=3)
        sp.add_argument("--search-budget", type=int, default=4)
        sp.add_argument("--collab-trials", type=_trials, default=None, help=COLLAB_TRIALS_HELP)
        sp.add_argument("--max-eval-students", type=int, default=20_000)
        sp.add_argument("--split", choices=["time", "random"], default="time",
                        help="validation scheme: time cutoffs (default), or a random share of each student's "
                             "internships for data whose timestamps carry no order")
        sp.add_argument("--no-activate", action="store_true", help="register the new versions without moving champion")

    g = sub.add_parser("generate", help="generate a synthetic scheme dataset")
    common(g)
    gen_args(g)
    g.add_argument("--seed", type=int, default=42)
    g.set_defaults(func=cmd_generate)

    v = sub.add_parser("validate", help="check a dataset folder against the input contract")
    common(v)
    v.set_defaults(func=cmd_validate)

    t = sub.add_parser("train", help="validate, train the four components, evaluate, write bundles and report")
    common(t, bundles=True, runs=True)
    train_args(t)
    t.set_defaults(func=cmd_train)

    r = sub.add_parser("run", help="main job: generate data if absent, train, print the report")
    common(r, bundles=True, runs=True)
    train_args(r)
    r.set_defaults(func=cmd_run)

    e = sub.add_parser("evaluate", help="evaluate the champion bundles on an external held-out interactions file")
    common(e, bundles=True)
    e.add_argument("--holdout", required=True, help="interactions file (parquet/csv) in the contract's format")
    e.add_argument("--k", type=int, default=10)
    e.add_argument("--output", help="also write the result as JSON here")
    e.set_defaults(func=cmd_evaluate)

    rt = sub.add_parser("retrain", help="retrain as a recorded job; --if-needed: only when a trigger fires")
    common(rt, bundles=True, runs=True)
    rt.add_argument("--if-needed", action="store_true",
                    help="check the triggers first and train only if one fires (what the CronJob runs)")
    rt.add_argument("--dry-run", action="store_true", help="check and log the triggers, never train")
    rt.add_argument("--min-new-interactions", type=int,
                    default=int(os.environ.get("PMIS_RETRAIN_MIN_INTERACTIONS", 1000)))
    rt.add_argument("--min-new-outcomes", type=int, default=int(os.environ.get("PMIS_RETRAIN_MIN_OUTCOMES", 200)))
    rt.add_argument("--max-age-hours", type=float, default=float(os.environ.get("PMIS_RETRAIN_MAX_AGE_HOURS", 168)))
    rt.add_argument("--components", nargs="+", choices=COMPONENTS)
    rt.add_argument("--algorithms", nargs="+", help="success-predictor candidates (default: all)")
    rt.add_argument("--no-auto-activate", action="store_true",
                    help="register only; by default a new version becomes champion when it beats the champion "
                         "by --margin on the same evaluation window (or when there is none)")
    rt.add_argument("--margin", type=float, default=0.0)
    rt.add_argument("--seed", type=int, default=0)
    rt.add_argument("--cv-folds", type=int, default=3)
    rt.add_argument("--search-budget", type=int, default=4)
    rt.add_argument("--collab-trials", type=_trials, default=None, help=COLLAB_TRIALS_HELP)
    rt.add_argument("--max-eval-students", type=int, default=20_000)
    rt.set_defaults(func=cmd_retrain)

    u = sub.add_parser("up", help="prepare data and bundles if missing, start all servers, answer real requests")
    common(u, bundles=True, runs=True)
    u.add_argument("--port", type=int, default=50050, help="gateway port; components use the next four, the trainer the one after; 0 = any free ports")
    u.add_argument("--metrics-port", type=int, default=9100, help="gateway metrics port; components and trainer use the next five")
    u.add_argument("--no-demo", action="store_true", help="do not send the demo requests")
    u.add_argument("--exit-after-demo", action="store_true", help="stop everything after the demo requests")
    u.set_defaults(func=cmd_up)

    rc = sub.add_parser("recommend", help="ask the gateway for recommendations and print them")
    rc.add_argument("--target", default="127.0.0.1:50050")
    rc.add_argument("--student", help="a known student id")
    rc.add_argument("--profile", nargs="+", help="inline profile: skills=python,sql district=Pune cgpa=8 ...")
    rc.add_argument("--k", type=int, default=10)
    rc.add_argument("--mode", choices=["hybrid", "content", "collaborative"], default="hybrid")
    rc.add_argument("--timeout", type=float, default=5.0)
    rc.set_defaults(func=cmd_recommend)

    b = sub.add_parser("bench", help="load on the gateway (closed and open loop, echo fan-out reference, "
                                     "server CPU per request, Shortlist latency)")
    b.add_argument("--target", default="127.0.0.1:50050")
    b.add_argument("--concurrency", type=int, nargs="*", default=[1, 32], help="closed-loop levels (none: skip)")
    b.add_argument("--duration", type=float, default=10.0, help="seconds per concurrency level")
    b.add_argument("--rate", type=float, nargs="*", default=[40.0],
                   help="open loop: requests per second, one run per rate (none: skip)")
    b.add_argument("--open-duration", type=float, default=20.0, help="seconds per open-loop rate")
    b.add_argument("--deadline-ms", type=float, default=2000.0, help="client deadline of every call")
    b.add_argument("--k", type=int, default=10)
    b.add_argument("--no-explain", action="store_true", help="send explain=false (unset, the default, means on)")
    b.add_argument("--profile-only", action="store_true",
                   help="send inline profiles of random catalog students instead of their ids")
    b.add_argument("--shortlist", type=int, default=0, metavar="N",
                   help="N sequential Shortlist calls over the most-applied-to internships")
    b.add_argument("--metrics-base", type=int, default=9100,
                   help="gateway metrics port; content, collaborative, success, ranker use the next four")
    b.add_argument("--metrics-ports", nargs="+", metavar="NAME=PORT", help="override single metrics ports")
    b.add_argument("--metrics-host", help="host of the metrics endpoints (default: the target's host)")
    b.add_argument("--no-echo", action="store_true", help="skip the echo fan-out reference")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--json", type=Path, metavar="FILE", help="also write every number here as JSON")
    b.add_argument("--catalog", type=Path, help="catalog to draw student ids from (default $PMIS_HOME/data/catalog.db)")
    from services.common import tls
    tls.add_client_args(b)
    b.set_defaults(func=cmd_bench)

    m = sub.add_parser("models", help="registry: list, show, compare, activate, rollback, history")
    common(m, data=False, bundles=True)
    m.add_argument("action", choices=["list", "show", "compare", "activate", "rollback", "history"])
    m.add_argument("component", nargs="?")
    m.add_argument("version", nargs="?", type=int)
    m.add_argument("--versions", type=int, nargs="+", help="for compare (default: every registered version)")
    m.add_argument("--alias", default="champion")
    m.add_argument("--reason")
    m.set_defaults(func=cmd_models)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _paths(args)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
