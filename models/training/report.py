"""The evaluation report: report.json (everything), report.md (for people), PNG plots."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a display
import matplotlib.pyplot as plt  # noqa: E402

MODEL_ORDER = ["popularity", "content", "collaborative", "success_only", "blend", "ranker"]


def ranking_table(ranking: dict, k: int = 10) -> list[list[str]]:
    rows = [["model", f"Recall@{k}", f"NDCG@{k}", f"MAP@{k}", "coverage", "students"]]
    for name in MODEL_ORDER:
        if name in ranking:
            m = ranking[name]
            rows.append([name, f"{m[f'recall@{k}']:.4f}", f"{m[f'ndcg@{k}']:.4f}", f"{m[f'map@{k}']:.4f}",
                         f"{m['coverage']:.3f}", str(m["students"])])
    return rows


def format_table(rows: list[list[str]], markdown: bool = False) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths))  # noqa: E731
    if markdown:
        lines = ["| " + " | ".join(rows[0]) + " |", "|" + "|".join("---" for _ in rows[0]) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows[1:]])
    return "\n".join([fmt(rows[0]), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows[1:]])


def success_table(s: dict) -> list[list[str]]:
    keys = ["n", "prevalence", "roc_auc", "pr_auc", "pr_auc_lift", "log_loss", "brier", "brier_skill_score", "ece",
            "calibration_slope", "calibration_intercept"]
    return [["metric", "value"]] + [[k, f"{s[k]:.4f}" if isinstance(s[k], float) else str(s[k])] for k in keys if k in s]


def fairness_table(ranking: dict, k: int = 10) -> list[list[str]]:
    rows = [["model", "attribute", f"NDCG@{k} min/max", f"Recall@{k} min/max"]]
    for name in MODEL_ORDER:
        for attr, g in ranking.get(name, {}).get("groups", {}).items():
            r = g["min_max_ratio"]
            f = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
            rows.append([name, attr, f(r.get(f"ndcg@{k}")), f(r.get(f"recall@{k}"))])
    return rows


def group_table(ranking: dict, model: str, k: int = 10) -> list[list[str]]:
    rows = [["attribute", "group", "students", f"NDCG@{k}", f"Recall@{k}"]]
    for attr, g in ranking.get(model, {}).get("groups", {}).items():
        for value, m in g["groups"].items():
            rows.append([attr, value, str(m["students"]), f"{m.get(f'ndcg@{k}', float('nan')):.4f}",
                         f"{m.get(f'recall@{k}', float('nan')):.4f}"])
    return rows


def fairness_tables(f: dict) -> list[list[list[str]]]:
    rows = [["", "NDCG@10", "Recall@10", "mean P(sel)@10", "Gini exposure", "Gini per slot", "coverage",
             "exposure/slots p10-p50-p90"]]
    for mode in ("before", "after"):
        m = f[mode]
        r = m["exposure_over_slot_share"]
        rows.append([mode, f"{m['ndcg@10']:.4f}", f"{m['recall@10']:.4f}",
                     "-" if m["mean_success_p@10"] is None else f"{m['mean_success_p@10']:.4f}",
                     f"{m['gini_exposure']:.3f}", f"{m['gini_exposure_per_slot']:.3f}", f"{m['coverage']:.3f}",
                     f"{r['p10']:.2f}-{r['p50']:.2f}-{r['p90']:.2f}"])
    groups = [["item group", "exposure target", "per-list minimum", "share before", "share after"]]
    for g in f["before"]["group_exposure_share"]:
        t, m = f["exposure_targets"].get(g), f["min_shares"].get(g)
        groups.append([g, "-" if t is None else f"{t:.2f}", "-" if m is None else f"{m:.2f}",
                       f"{f['before']['group_exposure_share'][g]:.3f}", f"{f['after']['group_exposure_share'][g]:.3f}"])
    consumer = [["student attribute", "NDCG min/max before", "after", "chance of a gap this large (after)",
                 "smallest group"]]
    for attr, g in f["after"]["consumer_groups"].items():
        b = f["before"]["consumer_groups"][attr]["min_max_ratio"].get("ndcg@10")
        a = g["min_max_ratio"].get("ndcg@10")
        p = g.get("ratio_null_p", {}).get("ndcg@10")
        smallest = min(g["groups"].items(), key=lambda kv: kv[1]["students"])
        consumer.append([attr, "n/a" if b is None else f"{b:.3f}", "n/a" if a is None else f"{a:.3f}",
                         "n/a" if p is None else f"{p:.2f}", f"{smallest[0]} ({smallest[1]['students']})"])
    tables = [rows, groups, consumer]
    if f.get("sweep"):
        shares = [k for k in f["sweep"][0] if k.endswith("_share")]
        tables.append([["setting (strength 1)", "NDCG@10 loss", "Gini cut", *[k.replace("_", " ") for k in shares]]] + [
            [r["setting"], f"{100 * r['ndcg_relative_loss']:.1f} %", f"{100 * r['gini_relative_reduction']:.1f} %",
             *[f"{r[k]:.3f}" for k in shares]] for r in f["sweep"]])
    return tables


def console_summary(report: dict, k: int = 10) -> str:
    parts = [f"run {report['run_id']}  (report: {report.get('run_dir', '')})", "",
             "Ranking on the test window:", format_table(ranking_table(report["ranking"], k))]
    if "candidates" in report["ranking"]:
        parts.append(f"candidate recall (ceiling for success_only/blend/ranker): "
                     f"{report['ranking']['candidates']['recall@candidates']:.4f}")
    s = report.get("success", {})
    if "roc_auc" in s:
        parts += ["", f"Success predictor ({s['algorithm']}, calibrated):", format_table(success_table(s))]
    elif "skipped" in s:
        parts += ["", f"Success predictor skipped: {s['skipped']}"]
    if "fairness" in report:
        f = report["fairness"]
        parts += ["", f"Fairness re-ranking (strength {f['strength']}), relevance-only vs fair:"]
        parts += [format_table(t) for t in fairness_tables(f)]
        parts.append("summary: " + json.dumps(f["summary"]))
        if f.get("shortlists", {}).get("shortlists"):
            parts.append("shortlists: " + json.dumps(f["shortlists"]))
    parts += ["", "Targets:", json.dumps(report.get("targets", {}), indent=2),
              "", "Timings (s): " + json.dumps(report.get("timings_seconds", {}))]
    return "\n".join(parts)


def write_report(report: dict, run_dir: Path, k: int = 10) -> None:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "report.json").write_text(json.dumps(report, indent=2, default=str))
    md = [f"# Evaluation report — run {report['run_id']}", "",
          f"Data version `{report['data']['data_version']}`; split: {json.dumps(report['split'])}", "",
          "## Ranking (test window)", "", format_table(ranking_table(report["ranking"], k), markdown=True), ""]
    if "candidates" in report["ranking"]:
        md += [f"Candidate recall (union of content and collaborative top-N; the ceiling for the pipeline models): "
               f"{report['ranking']['candidates']['recall@candidates']:.4f}", ""]
    md += ["![NDCG by model](ndcg.png)", "", "## By student group (min/max ratio across groups)", "",
           format_table(fairness_table(report["ranking"], k), markdown=True), "",
           "### Ranker per group", "", format_table(group_table(report["ranking"], "ranker", k), markdown=True), ""]
    s = report.get("success", {})
    if "roc_auc" in s:
        md += ["## Success predictor", "", f"Algorithm: {s['algorithm']} (chosen by {len(s['search'])}-way CV search), "
               "sigmoid-calibrated.", "", format_table(success_table(s), markdown=True), "",
               "![Reliability diagram](reliability.png)", ""]
    if "fairness" in report:
        f = report["fairness"]
        md += ["## Fairness re-ranking (relevance only = before, fair = after)", "",
               f"Strength {f['strength']}, exposure strength {f['exposure_strength']}, {f['students']} students; "
               f"{f['promoted_items_per_list']:.2f} items promoted per list.", ""]
        md += [format_table(t, markdown=True) + "\n" for t in fairness_tables(f)]
        md += ["```json", json.dumps(f["summary"], indent=2), "```", "", "![Exposure by group](exposure.png)", ""]
        if f.get("shortlists", {}).get("shortlists"):
            md += ["### Reservation-aware shortlists (test-window applicants)", "", "```json",
                   json.dumps(f["shortlists"], indent=2), "```", ""]
    md += ["## Collaborative model selection (validation window)", "",
           format_table([["kind", "params", f"NDCG@{k}"]] + [[r["kind"], json.dumps(r["params"]), f"{r[f'ndcg@{k}']:.4f}"]
                                                            for r in report.get("collaborative_selection", [])],
                        markdown=True), "",
           "## Targets", "", "```json", json.dumps(report.get("targets", {}), indent=2), "```", "",
           "## Timings (seconds)", "", "```json", json.dumps(report.get("timings_seconds", {}), indent=2), "```"]
    (run_dir / "report.md").write_text("\n".join(md) + "\n")
    _plot_ndcg(report["ranking"], run_dir / "ndcg.png", k)
    if "reliability" in s:
        _plot_reliability(s, run_dir / "reliability.png")
    if "fairness" in report:
        _plot_exposure(report["fairness"], run_dir / "exposure.png")
    write_lifecycle_plots(report, run_dir, k)


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_ndcg(ranking: dict, path: Path, k: int) -> None:
    names = [n for n in MODEL_ORDER if n in ranking]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(names, [ranking[n][f"ndcg@{k}"] for n in names], color="#3b7dd8")
    ax.set_ylabel(f"NDCG@{k}")
    ax.set_title("Test-window NDCG by model")
    _save(fig, path)


def _plot_reliability(s: dict, path: Path) -> None:
    bins = s["reliability"]
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    xs = [b["mean_predicted"] for b in bins]
    ys = [b["observed_rate"] for b in bins]
    top = max(xs + ys) * 1.1
    ax.plot([0, top], [0, top], "--", color="grey", label="perfect")
    ax.plot(xs, ys, "o-", color="#d8573b", label="success predictor")
    ax.set_xlabel("mean predicted P(selected)")
    ax.set_ylabel("observed selection rate")
    ax.set_title(f"Reliability (ECE {s['ece']:.3f}, equal-mass bins)")
    ax.legend()
    _save(fig, path)


def _plot_exposure(f: dict, path: Path) -> None:
    names = list(f["before"]["group_exposure_share"])
    x = range(len(names))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar([i - 0.2 for i in x], [f["before"]["group_exposure_share"][n] for n in names], 0.4, label="before")
    ax.bar([i + 0.2 for i in x], [f["after"]["group_exposure_share"][n] for n in names], 0.4, label="after")
    for i, n in enumerate(names):
        if n in f["exposure_targets"]:
            ax.hlines(f["exposure_targets"][n], i - 0.4, i + 0.4, colors="black", linestyles="--")
    ax.set_xticks(list(x), names)
    ax.set_ylabel("share of exposure (position-weighted)")
    ax.set_title("Exposure by item group (dashed: target minimum)")
    ax.legend()
    _save(fig, path)


# Plots the model lifecycle API serves with each version (GetModel): which file belongs to which
# component. Run-wide plots (ndcg, fairness by group) are listed for every ranking component.
PLOTS = {
    "reliability.png": ("success", "Reliability diagram: mean predicted vs observed selection rate"),
    "roc.png": ("success", "ROC curve of the success predictor on later applications"),
    "pr.png": ("success", "Precision-recall curve of the success predictor"),
    "feature_importance_success.png": ("success", "Permutation importance (ROC-AUC drop) of the success predictor"),
    "feature_importance_ranker.png": ("ranker", "LightGBM gain importance of the ranker's features"),
    "ndcg.png": ("content,collaborative,ranker", "Test-window NDCG@k of every model"),
    "fairness_groups.png": ("content,collaborative,ranker", "NDCG@k per student group on the test window"),
    "exposure.png": ("ranker", "Exposure by item group before/after fair re-ranking"),
}


def plots_for(component: str) -> list[tuple[str, str]]:
    """(file name, description) of the run plots that describe `component`."""
    return [(name, desc) for name, (owners, desc) in PLOTS.items() if component in owners.split(",")]


def write_lifecycle_plots(report: dict, run_dir: Path, k: int = 10) -> None:
    """ROC and PR curves, feature importance, fairness by group (besides the plots above)."""
    s = report.get("success", {})
    if s.get("curves"):
        _plot_curves(s["curves"], s, run_dir)
    if s.get("feature_importance"):
        _plot_importance(s["feature_importance"], run_dir / "feature_importance_success.png",
                         "Success predictor: permutation importance", "ROC-AUC lost when shuffled")
    fi = report.get("ranker", {}).get("feature_importance")
    if fi:
        _plot_importance(fi, run_dir / "feature_importance_ranker.png", "Ranker: feature importance", "share of gain")
    if report.get("ranking"):
        _plot_fairness_groups(report["ranking"], run_dir / "fairness_groups.png", k)


def _plot_curves(c: dict, s: dict, run_dir: Path) -> None:
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "--", color="grey", label="chance")
    ax.plot(c["roc"]["fpr"], c["roc"]["tpr"], color="#3b7dd8", label=f"ROC-AUC {s.get('roc_auc', float('nan')):.3f}")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("Success predictor: ROC")
    ax.legend(loc="lower right")
    _save(fig, run_dir / "roc.png")
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.hlines(c["prevalence"], 0, 1, colors="grey", linestyles="--", label=f"prevalence {c['prevalence']:.3f}")
    ax.plot(c["pr"]["recall"], c["pr"]["precision"], color="#d8573b", label=f"PR-AUC {s.get('pr_auc', float('nan')):.3f}")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("Success predictor: precision-recall")
    ax.legend(loc="upper right")
    _save(fig, run_dir / "pr.png")


def _plot_importance(fi: dict, path: Path, title: str, xlabel: str) -> None:
    items = sorted(fi.items(), key=lambda t: t[1])[-15:]
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(items) + 1.2))
    ax.barh([n for n, _ in items], [v for _, v in items], color="#3b7dd8")
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    _save(fig, path)


def _plot_fairness_groups(ranking: dict, path: Path, k: int) -> None:
    """NDCG@k of the ranker (or the best model present) per value of each student attribute."""
    model = next((m for m in ("ranker", "blend", "collaborative", "content") if ranking.get(m, {}).get("groups")), None)
    if model is None:
        return
    bars = [(f"{attr}={value}", m[f"ndcg@{k}"]) for attr, g in ranking[model]["groups"].items()
            for value, m in g["groups"].items() if f"ndcg@{k}" in m]
    if not bars:
        return
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(bars) + 1.2))
    ax.barh([b for b, _ in bars][::-1], [v for _, v in bars][::-1], color="#6a9f58")
    ax.axvline(ranking[model][f"ndcg@{k}"], color="black", linestyle="--", label="all students")
    ax.set_xlabel(f"NDCG@{k}")
    ax.set_title(f"{model}: NDCG@{k} by student group (test window)")
    ax.legend(loc="lower right")
    _save(fig, path)
