"""Benchmark: time and peak memory of generation + training at scale (default 1M x 100k).

    python -m models.training.bench_scale [--students N --internships M --workdir DIR]

Prints a table of wall time and peak resident memory per phase. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import time
from pathlib import Path


def peak_rss_gb() -> float:
    # ru_maxrss is in KiB on Linux; this process does all the work (no child processes).
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--students", type=int, default=1_000_000)
    p.add_argument("--internships", type=int, default=100_000)
    p.add_argument("--workdir", type=Path, default=Path("var/bench-scale"))
    p.add_argument("--search-budget", type=int, default=2)
    p.add_argument("--keep", action="store_true", help="keep the generated data and bundles")
    args = p.parse_args(argv)

    from models.data.generate import generate
    from models.training.report import console_summary
    from models.training.train import TrainConfig, train

    shutil.rmtree(args.workdir, ignore_errors=True)
    rows = []
    t = time.perf_counter()
    summary = generate(args.workdir / "data", students=args.students, internships=args.internships, progress=True)
    rows.append(("generate (incl. SQLite catalog)", time.perf_counter() - t, peak_rss_gb()))
    t = time.perf_counter()
    report = train(TrainConfig(data_dir=args.workdir / "data", bundles_dir=args.workdir / "bundles",
                               runs_dir=args.workdir / "runs", search_budget=args.search_budget))
    rows.append(("train + evaluate + bundles", time.perf_counter() - t, peak_rss_gb()))

    print(console_summary(report))
    print()
    print(f"Scale benchmark: {args.students:,} students x {args.internships:,} internships, "
          f"{summary['rows']['interactions']:,} interactions, {summary['rows']['outcomes']:,} outcomes")
    print(f"{'phase':34s} {'wall s':>9s} {'peak RSS GB':>12s}")
    for name, secs, rss in rows:
        print(f"{name:34s} {secs:9.1f} {rss:12.2f}")
    print("training stages (s): " + json.dumps(report["timings_seconds"]))
    if not args.keep:
        shutil.rmtree(args.workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
