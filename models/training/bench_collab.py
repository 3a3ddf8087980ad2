"""The collaborative model that training chooses, next to `implicit` ALS with its default settings,
on the same split, in one run.

    python -m models.training.bench_collab --data DIR [--split random|time] [--seed 0]

Trains as `pmis train` does (bundles into a temporary folder, nothing activated), with the
reference model fitted on the same training data and scored on the same test students by the
same function (top-10 over the open catalogue, everything the student interacted with before
excluded, unknown students by popularity). Prints NDCG@10 with its 95 % bootstrap interval and
the paired difference. No public interaction dataset can be downloaded on the machines this
project runs on, so the README reports this on the generated data with a random split.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from models.training.train import TrainConfig, train

# implicit.cpu.als.AlternatingLeastSquares() defaults (implicit 0.7)
IMPLICIT_DEFAULTS = {"factors": 100, "regularization": 0.01, "alpha": 1.0, "iterations": 15}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--split", choices=["random", "time"], default="random")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="also write the rows here")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(data_dir=a.data, bundles_dir=Path(tmp) / "bundles", runs_dir=Path(tmp) / "runs",
                          seed=a.seed, split=a.split, activate=False, progress=False,
                          reference_collaborative=[("implicit ALS, default settings", "als", IMPLICIT_DEFAULTS)])
        t0 = time.perf_counter()
        report = train(cfg)
        seconds = time.perf_counter() - t0
    rows = report["collaborative_references"]
    k = cfg.k
    print(f"{a.data}: {a.split} split {json.dumps(report['split']['interactions'])}, "
          f"{report['evaluation_window']['test_students']} test students, training {seconds:.0f} s")
    search = report["collaborative_search"]
    print(f"search: {search['trials']} trials ({search['sampler']}); {report['collaborative_choice']}")
    print(f"{'model':<58} {'NDCG@' + str(k):>8}  95 % interval      chosen - this (95 %)")
    for r in rows:
        diff = r.get("chosen_minus_this")
        versus = f"{diff['difference']:+.4f} [{diff['interval'][0]:+.4f}, {diff['interval'][1]:+.4f}]" if diff else ""
        print(f"{r['name'][:58]:<58} {r[f'ndcg@{k}']:>8.4f}  [{r['interval'][0]:.4f}, {r['interval'][1]:.4f}]  {versus}")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
