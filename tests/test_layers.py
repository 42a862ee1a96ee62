"""The package layers, bottom to top: ecgtasks (the task registry, the conversation parser) and ecgconfig (the config
layer), importing nothing of ours; ecg (the data); metrics (scoring); vlm (the model); serving (Ray Serve) and stages
(the Ray Data / Ray Train stages); pipelines (the jobs), which nothing imports. A package imports only packages of
lower layers, nothing below the stages imports Ray, and no package has an import circle among its own modules.
Every import counts, deferred ones (inside functions, under TYPE_CHECKING) included."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = (("ecgtasks", "ecgconfig"), ("ecg",), ("metrics",), ("vlm",), ("serving", "stages"), ("pipelines",))
OURS = tuple(p for layer in LAYERS for p in layer)
BELOW_THE_STAGES = ("ecgtasks", "ecgconfig", "ecg", "metrics", "vlm")


def package_graph() -> dict[str, set[str]]:
    """``{package: {packages of ours it imports}}`` from every ``import`` statement of every module."""
    graph: dict[str, set[str]] = {p: set() for p in OURS}
    for package in OURS:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                    [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
                for name in names:
                    top = name.split(".")[0]
                    if top in OURS and top != package:
                        graph[package].add(top)
    return graph


def cycles(graph: dict[str, set[str]], among: tuple[str, ...]) -> list[tuple[str, str]]:
    """Pairs (a, b) of ``among`` where a reaches b and b reaches a."""
    def reach(start):
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen
    reached = {p: reach(p) for p in among}
    return [(a, b) for i, a in enumerate(among) for b in among[i + 1:] if b in reached[a] and a in reached[b]]


def test_registry_is_the_bottom_layer():
    graph = package_graph()
    assert graph["ecgtasks"] == set(), graph["ecgtasks"]
    assert graph["ecgconfig"] == set(), graph["ecgconfig"]  # library code every job uses, above nothing of ours
    for package in ("ecgconfig", "ecg", "vlm", "metrics", "serving", "stages"):
        assert "pipelines" not in graph[package], f"{package} imports pipelines"
    assert cycles(graph, ("ecg", "vlm", "metrics")) == [], graph
    assert graph["ecg"] <= {"ecgtasks"}, graph["ecg"]  # the domain sits right above the registry


def test_registry_imports_only_the_standard_library():
    code = ("import sys, ecgtasks, ecgtasks.gold, ecgtasks.conversation; "
            "heavy = {'numpy', 'pandas', 'torch', 'pyarrow', 'ecg', 'metrics'}; "
            "print(sorted(heavy & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_old_import_path_reexports_the_same_registry():
    import ecgtasks
    from metrics import tasks

    assert tasks.get_task is ecgtasks.get_task and tasks.CODE15 is ecgtasks.get_task("code15-test")


def test_each_package_imports_only_lower_layers():
    rank = {p: i for i, layer in enumerate(LAYERS) for p in layer}
    graph = package_graph()
    upward = {p: sorted(q for q in graph[p] if rank[q] >= rank[p]) for p in OURS}
    assert {p: q for p, q in upward.items() if q} == {}, "imports of the same or a higher layer"


def ray_imports(package: str) -> list[str]:
    """``path:line`` of every ``import ray...`` / ``from ray... import`` in ``package``, deferred ones included."""
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            if any(n.split(".")[0] == "ray" for n in names):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_no_ray_below_the_stages():
    assert {p: ray_imports(p) for p in BELOW_THE_STAGES if ray_imports(p)} == {}
    assert ray_imports("stages"), "the scan finds the stages' Ray imports"  # the check can fail


def module_graph(package: str) -> dict[str, set[str]]:
    """``{module: {modules of the same package it imports}}``: ``from vlm import engine`` is ``vlm.engine``,
    ``from vlm import Predictor`` or ``import vlm`` is the package's ``__init__`` (``vlm``)."""
    modules = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                wanted = [[a.name] for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # from . import x / from ..y import z
                    up = here.rsplit(".", node.level - 1)[0] if node.level > 1 else here
                    base = f"{up}.{base}" if base else up
                wanted = [[f"{base}.{a.name}", base] for a in node.names]
            else:
                continue
            for candidates in wanted:
                target = next((c for c in (_owner(c, modules) for c in candidates) if c), None)
                if target and target != name:
                    graph[name].add(target)
    return graph


def _owner(dotted: str, modules) -> str | None:
    """The longest prefix of ``dotted`` that is one of ``modules``."""
    while dotted and dotted not in modules:
        dotted = dotted.rpartition(".")[0]
    return dotted or None


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles: every strongly connected set of two or more modules (Tarjan), sorted."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while not group or group[-1] != v:
                group.append(stack.pop())
                on.discard(group[-1])
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def test_no_import_circle_inside_any_package():
    assert {p: strongly_connected(module_graph(p)) for p in OURS if strongly_connected(module_graph(p))} == {}


def test_the_circle_finder_sees_circles_and_deferred_imports(tmp_path, monkeypatch):
    # a package whose two modules import each other, one of them inside a function, as metrics/score.py and
    # metrics/study.py did; and a third module that imports one of them one way only
    pkg = tmp_path / "toy"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from toy import b\n")
    (pkg / "b.py").write_text("def f():\n    from toy.a import x\n    return x\n")
    (pkg / "c.py").write_text("from . import a\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    graph = module_graph("toy")
    assert graph["toy.c"] == {"toy.a"} and graph["toy.b"] == {"toy.a"}
    assert strongly_connected(graph) == [["toy.a", "toy.b"]]
