"""The last stage of a training run: every component refitted on all the data, written as a
verified bundle, and all of them registered in one transaction."""

from __future__ import annotations

from models.bundle.registry import open_registry
from models.components.ranker import RankerModel
from models.components.success import FEATURES as SUCCESS_FEATURES
from models.components.success import SuccessModel


def write_bundles(tr, ds, collab_kind, collab_params, success_algo, success_params, rx, ry, rg,
                   ranker_params, blend_weights) -> dict:
    cfg = tr.cfg
    space = tr.space(None)
    # The evaluation window (what the metrics were measured on) and the data the bundle saw
    # (for retraining triggers) travel in every manifest.
    base_meta = {"run_id": tr.run_id, "data_version": ds.data_version,
                 "evaluation_window": tr.report["evaluation_window"],
                 "data_summary": {"rows": ds.report.rows,
                                  "interactions_until": tr.report["data"]["interactions_until"]}}
    ranking = tr.report["ranking"]
    strip = lambda m: {k: v for k, v in m.items() if k != "groups"}  # noqa: E731
    stage = "final refit on all data and bundles"
    refs = {}

    def written(component):
        tr.emit("message", stage, f"bundle written: {component} v{refs[component].version} "
                                     f"(registered when every bundle of the run is written)")

    if "content" in cfg.components:
        refs["content"] = tr.content.save(cfg.bundles_dir, {**base_meta, "metrics": strip(ranking["content"])},
                                            space.arrays())
        written("content")
    if "collaborative" in cfg.components:
        collab = tr.fit_collab(collab_kind, collab_params, None)
        refs["collaborative"] = collab.save(cfg.bundles_dir, {**base_meta,
                                                              "metrics": strip(ranking["collaborative"]),
                                                              "params": {"kind": collab_kind, **collab_params}},
                                            item_deadline=space.items.deadline)
        written("collaborative")
    if ds.has_outcomes and "success" in cfg.components:
        x, y = tr.success_rows(None, space, 4 * cfg.max_success_rows)
        success = SuccessModel.fit(x, y, success_algo, success_params, folds=cfg.cv_folds, seed=cfg.seed)
        success.serves_base_rate = tr.success_serves_base_rate
        s_metrics = {k: v for k, v in tr.report["success"].items()
                     if k not in ("reliability", "search", "curves", "feature_importance")}
        refs["success"] = success.save(cfg.bundles_dir, {
            **base_meta, "metrics": s_metrics, "feature_schema": SUCCESS_FEATURES,
            "feature_importance": tr.report["success"].get("feature_importance", {})}, space.arrays())
        written("success")
    if "ranker" in cfg.components:
        ranker = RankerModel.fit(rx, ry, rg, ranker_params, blend_weights, seed=cfg.seed)
        ranker.ranking = tr.shipped()
        refs["ranker"] = ranker.save(cfg.bundles_dir, {**base_meta, "metrics": strip(ranking[ranker.ranking]),
                                                      "ranking": tr.report["ranker_against_best_alternative"],
                                                      "feature_importance": ranker.feature_importance()},
                                     space.arrays())
        written("ranker")
    # One transaction for all of them: a run stopped here registers every version or none.
    registry = open_registry(cfg.bundles_dir)
    registry.register_many([(ref, manifest_metrics(tr, c)) for c, ref in refs.items()],
                           alias="champion" if cfg.activate else None,
                           reason=f"trained by run {tr.run_id}; rank stage serves: {tr.shipped()}",
                           guard=cfg.register_guard)
    tr.emit("message", stage, "registered " + ", ".join(f"{c} v{r.version}" for c, r in refs.items()))
    return refs


def manifest_metrics(tr, component: str) -> dict:
    if component == "success":
        return {k: v for k, v in tr.report["success"].items() if isinstance(v, (int, float))}
    m = tr.report["ranking"][tr.shipped() if component == "ranker" else component]
    return {k: v for k, v in m.items() if isinstance(v, (int, float))}
