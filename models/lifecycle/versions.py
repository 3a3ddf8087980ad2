"""Registered model versions as the lifecycle works with them: their manifests and plots, side by
side on their evaluation windows, activated (by hand, or by a job that beat the champion) and
rolled back.

The registry (models/bundle/registry.py) keeps the versions and the ``champion`` alias; the
component servers follow that alias. The trainer's model RPCs and the jobs' auto-activation
(models/lifecycle/running.py) call the functions here.
"""

from __future__ import annotations

from pathlib import Path

from models.bundle.reading import verify_bundle
from models.bundle.registry import Registry, RegistryError, manifest_of

CHAMPION = "champion"


def evaluation_window(manifest: dict) -> dict | None:
    """The test window a version was evaluated on, as its manifest records it (None: not recorded)."""
    return manifest.get("metadata", {}).get("evaluation_window")


def champion_of(registry: Registry, component: str, alias: str = CHAMPION) -> dict | None:
    """The version `alias` (the champion by default) points at; None when it points at none."""
    try:
        return registry.resolve(component, alias)
    except RegistryError:
        return None


def auto_activate(registry: Registry, job_id: str, versions: dict[str, int], margin: float,
                  window: dict | None) -> list[dict]:
    """Per component: activate the new version if it beats the champion by ``margin`` on the
    same evaluation window (models.training.diagnostics.decide_activation); every decision is returned."""
    from models.training import diagnostics  # scikit-learn: imported where needed, not with this module

    decisions = []
    for component, version in versions.items():
        new = registry.get(component, version)
        champion = champion_of(registry, component)
        champion_window = evaluation_window(manifest_of(champion["path"])) if champion else None
        d = diagnostics.decide_activation(component, version, new["metrics"], window, champion, champion_window,
                                          margin)
        if d["activate"]:
            activate(registry, component, version, reason=f"auto-activated by job {job_id}: {d['reason']}")
        decisions.append(d)
    return decisions


def activate(registry: Registry, component: str, version: int, reason: str,
             alias: str = CHAMPION) -> tuple[dict | None, dict]:
    """Point `alias` at a version, its bundle verified first (BundleError when it does not verify):
    servers, and new replicas, must never be pointed at a bad bundle. The one activation of the
    CLI, the trainer's Activate and the jobs' auto-activation. Returns (the version the alias
    pointed at or None, the new one)."""
    verify_bundle(Path(registry.get(component, version)["path"]))
    previous = champion_of(registry, component, alias)
    registry.set_alias(component, version, alias, reason=reason)
    return previous, registry.get(component, version)


def rollback(registry: Registry, component: str, reason: str) -> tuple[dict, dict]:
    """Move the champion back to the version before it; (the champion it was, the one it is now).
    RegistryError when there is no champion or nothing earlier."""
    previous = registry.resolve(component, CHAMPION)
    current = registry.rollback(component, CHAMPION, reason=reason)
    return previous, current


def window_differences(rows: list[dict], manifests: list[dict]) -> list[str]:
    """How each version's evaluation window differs from the first one's ([]: all the same)."""
    from models.training import diagnostics

    windows = [evaluation_window(m) for m in manifests]
    differences = []
    for r, w in zip(rows[1:], windows[1:]):
        differences += [f"v{rows[0]['version']} vs v{r['version']}: {d}"
                        for d in diagnostics.window_differences(windows[0], w)]
    return differences


def metric_table(registry: Registry, component: str, versions: list[int]) -> list[dict]:
    """Per stored metric: the numeric values of the versions that have it, whether higher is
    better (``direction`` 1, -1, or 0 when it is not a quality metric) and the one best version
    (0 when tied or not rankable)."""
    from models.training import diagnostics

    table = []
    for metric, values in registry.compare(component, versions)["metrics"].items():
        present = {ver: float(val) for ver, val in values.items()
                   if isinstance(val, (int, float)) and not isinstance(val, bool)}
        if not present:
            continue
        d = diagnostics.direction(metric)
        table.append({"metric": metric, "values": present, "direction": d, "best_version": _best(present, d)})
    return table


def _best(values: dict[int, float], direction: int) -> int:
    if not direction or len(values) < 2:
        return 0
    top = max(direction * x for x in values.values())
    winners = [ver for ver, x in values.items() if direction * x == top]
    return winners[0] if len(winners) == 1 else 0


def run_plots(runs_dir: Path, run_id: str | None, component: str) -> tuple[Path | None, list[tuple[str, str, Path]]]:
    """The report folder of the run that trained a version (None when it is gone) and the plots
    of that component it holds: (file name, description, resolved path)."""
    from models.training.report import plots_for

    run_dir = Path(runs_dir) / (run_id or "-")
    if not run_id or not run_dir.is_dir():
        return None, []
    plots = [(name, description, (run_dir / name).resolve()) for name, description in plots_for(component)
             if (run_dir / name).is_file()]
    return run_dir.resolve(), plots


def overview(registry: Registry) -> list[tuple[str, int, dict | None]]:
    """Per registered component: (component, how many versions, its champion or None)."""
    return [(component, len(registry.versions(component)), champion_of(registry, component))
            for component in registry.components()]
