"""`pmis`: the command-line entry point.

Paths default to $PMIS_HOME (./var): data in var/data, bundles and registry in var/bundles,
evaluation runs in var/runs. Every path is also a flag.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from models.components import COMPONENTS
from services.db_commands import DATABASE_URL_ENV, cmd_db
from services.lifecycle_commands import cmd_models, cmd_retrain


# The default dataset: `pmis generate` without flags, and what `pmis run` generates when it finds none.
GENERATE_DEFAULTS = {"students": 5000, "internships": 1000, "companies": 72, "interactions_per_student": 10.0,
                     "selection_rate": 0.13, "format": "parquet", "seed": 42}


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
        for name, value in GENERATE_DEFAULTS.items():
            if name != "seed":  # the run's own --seed is the training seed
                setattr(args, name, value)
        code = cmd_generate(args, seed=GENERATE_DEFAULTS["seed"])
        if code:
            return code
    return cmd_train(args)


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
    _add_data_commands(sub)
    _add_retrain(sub)
    _add_serving_commands(sub)
    _add_models(sub)
    _add_db(sub)
    return p


def _common(sp, data=True, bundles=False, runs=False) -> None:
    if data:
        sp.add_argument("--data", type=Path, help="dataset folder (default $PMIS_HOME/data)")
    if bundles:
        sp.add_argument("--bundles", type=Path, help="bundle root with registry.db (default $PMIS_HOME/bundles)")
    if runs:
        sp.add_argument("--runs", type=Path, help="where run reports go (default $PMIS_HOME/runs)")
    sp.add_argument("--quiet", action="store_true", help="no progress bars")


def _search_args(sp) -> None:
    """What a training run searches and evaluates with (train, run, retrain)."""
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--cv-folds", type=int, default=3)
    sp.add_argument("--search-budget", type=int, default=4)
    sp.add_argument("--collab-trials", type=_trials, default=None, help=COLLAB_TRIALS_HELP)
    sp.add_argument("--max-eval-students", type=int, default=20_000)


def _train_args(sp) -> None:
    _search_args(sp)
    sp.add_argument("--split", choices=["time", "random"], default="time",
                    help="validation scheme: time cutoffs (default), or a random share of each student's "
                         "internships for data whose timestamps carry no order")
    sp.add_argument("--no-activate", action="store_true", help="register the new versions without moving champion")


def _add_data_commands(sub) -> None:
    """generate, validate, train, run, evaluate: the offline side."""
    g = sub.add_parser("generate", help="generate a synthetic scheme dataset")
    _common(g)
    d = GENERATE_DEFAULTS
    g.add_argument("--students", type=int, default=d["students"])
    g.add_argument("--internships", type=int, default=d["internships"])
    g.add_argument("--companies", type=int, default=d["companies"])
    g.add_argument("--interactions-per-student", type=float, default=d["interactions_per_student"])
    g.add_argument("--selection-rate", type=float, default=d["selection_rate"])
    g.add_argument("--format", choices=["parquet", "csv"], default=d["format"])
    g.add_argument("--seed", type=int, default=d["seed"])
    g.set_defaults(func=cmd_generate)

    v = sub.add_parser("validate", help="check a dataset folder against the input contract")
    _common(v)
    v.set_defaults(func=cmd_validate)

    for name, func, help in (("train", cmd_train, "validate, train the four components, evaluate, write bundles and report"),
                             ("run", cmd_run, "main job: generate data if absent, train, print the report")):
        t = sub.add_parser(name, help=help)
        _common(t, bundles=True, runs=True)
        _train_args(t)
        t.set_defaults(func=func)

    e = sub.add_parser("evaluate", help="evaluate the champion bundles on an external held-out interactions file")
    _common(e, bundles=True)
    e.add_argument("--holdout", required=True, help="interactions file (parquet/csv) in the contract's format")
    e.add_argument("--k", type=int, default=10)
    e.add_argument("--output", help="also write the result as JSON here")
    e.set_defaults(func=cmd_evaluate)


def _add_retrain(sub) -> None:
    from services.common.config import add_trigger_flags

    rt = sub.add_parser("retrain", help="retrain as a recorded job; --if-needed: only when a trigger fires")
    _common(rt, bundles=True, runs=True)
    rt.add_argument("--if-needed", action="store_true",
                    help="check the triggers first and train only if one fires (what the CronJob runs)")
    rt.add_argument("--dry-run", action="store_true", help="check and log the triggers, never train")
    add_trigger_flags(rt)
    rt.add_argument("--components", nargs="+", choices=COMPONENTS)
    rt.add_argument("--algorithms", nargs="+", help="success-predictor candidates (default: all)")
    rt.add_argument("--no-auto-activate", action="store_true",
                    help="register only; by default a new version becomes champion when it beats the champion "
                         "by --margin on the same evaluation window (or when there is none)")
    rt.add_argument("--margin", type=float, default=0.0)
    _search_args(rt)
    rt.set_defaults(func=cmd_retrain)


def _add_serving_commands(sub) -> None:
    """up, recommend, bench: the servers and their clients."""
    u = sub.add_parser("up", help="prepare data and bundles if missing, start all servers, answer real requests")
    _common(u, bundles=True, runs=True)
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
    _add_bench(sub)


def _add_bench(sub) -> None:
    b = sub.add_parser("bench", help="load on the gateway (closed and open loop, echo fan-out reference, "
                                     "server CPU per request, Shortlist latency)")
    b.add_argument("--target", default="127.0.0.1:50050")
    b.add_argument("--concurrency", type=int, nargs="*", default=[1, 32], help="closed-loop levels (none: skip)")
    b.add_argument("--duration", type=float, default=10.0, help="seconds per concurrency level and system")
    b.add_argument("--slices", type=int, default=5,
                   help="the gateway and the echo take turns, this many each per concurrency level, so that a noisy "
                        "machine's drift affects both alike")
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
    b.add_argument("--probes", action="store_true",
                   help="during each open-loop rate, probe every server's health as the kubelet does (a new "
                        "connection per probe) at pmis up's ports: the target's port and the next five")
    b.add_argument("--probe-period", type=float, default=0.5, help="seconds between probes of one server")
    b.add_argument("--probe-timeout", type=float, default=1.0,
                   help="seconds a probe may take, dial included (the manifests' timeoutSeconds)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--json", type=Path, metavar="FILE", help="also write every number here as JSON")
    b.add_argument("--catalog", type=Path, help="catalog to draw student ids from (default $PMIS_HOME/data/catalog.db)")
    from services.common import tls
    tls.add_client_args(b)
    b.set_defaults(func=cmd_bench)


def _add_models(sub) -> None:
    m = sub.add_parser("models", help="registry: list, show, compare, activate, rollback, history")
    _common(m, data=False, bundles=True)
    m.add_argument("action", choices=["list", "show", "compare", "activate", "rollback", "history"])
    m.add_argument("component", nargs="?")
    m.add_argument("version", nargs="?", type=int)
    m.add_argument("--versions", type=int, nargs="+", help="for compare (default: every registered version)")
    m.add_argument("--alias", default="champion")
    m.add_argument("--reason")
    m.set_defaults(func=cmd_models)


def _add_db(sub) -> None:
    db = sub.add_parser("db", help="the PostgreSQL catalog: migrate (create/upgrade the schema), load a dataset, "
                                       "export a snapshot for training")
    actions = db.add_subparsers(dest="action", required=True)
    m = actions.add_parser("migrate", help="create or upgrade the catalog's schema; print its version")
    lo = actions.add_parser("load", help="replace the catalog's tables with a dataset folder (parquet or csv)")
    ex = actions.add_parser("export", help="write a consistent snapshot of the catalog to a dataset folder "
                                           "(parquet; replaced) for training")
    _common(lo)
    _common(ex)
    for sp in (m, lo, ex):
        sp.add_argument("--database-url", metavar="URL",
                        help=f"postgresql://... (default ${DATABASE_URL_ENV})")
        sp.set_defaults(func=cmd_db)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _paths(args)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
