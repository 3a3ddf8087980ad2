"""The architecture's import rules, read from the source (every import, including those inside
functions, which is where cycles hide):

- `models/` is a library: it imports nothing from the serving side (`services/`, `gateway/`,
  `clients/`), at any depth;
- no import cycle between the project's modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("models", "services", "gateway", "clients")
SERVING = ("services", "gateway", "clients")


def modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (`from a.b import c` counts a.b.c when that is a
    module, else a.b)."""
    known = modules()

    def owner(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in known.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets.update(f"{node.module}.{a.name}" for a in node.names)
        graph[name] = {m for m in map(owner, targets) if m and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_models_imports_nothing_from_the_serving_side():
    graph = import_graph()
    crossing = sorted((m, t) for m, targets in graph.items() if m.split(".")[0] == "models"
                      for t in targets if t.split(".")[0] in SERVING)
    assert crossing == []


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_the_checks_see_imports_inside_functions():
    graph = import_graph()
    # services.launcher imports models.bundle.registry only inside ensure_ready: the graph has it
    assert "models.bundle.registry" in graph["services.launcher"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_gateway_loads_no_model_library():
    """The gateway ranks through the ranker service and blends with models/components/scores.py: LightGBM,
    scikit-learn and pandas stay out of its process (start-up time and memory)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", "import sys, gateway.server; "
                          "print(sorted(m for m in ('lightgbm', 'sklearn', 'pandas') if m in sys.modules))"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.strip() == "[]"
