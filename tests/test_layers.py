"""The package layers: ecgtasks (the task registry, the conversation parser) and ecgconfig (the config layer) at the
bottom, importing nothing of ours; ecg, metrics and vlm above them with no cycle between them; nothing imports
pipelines. Every import counts, deferred ones included."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OURS = ("ecgtasks", "ecgconfig", "ecg", "vlm", "metrics", "serving", "pipelines")


def package_graph() -> dict[str, set[str]]:
    """``{package: {packages of ours it imports}}`` from every ``import`` statement of every module."""
    graph: dict[str, set[str]] = {p: set() for p in OURS}
    for package in OURS:
        for path in (ROOT / package).glob("*.py"):
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
    for package in ("ecgconfig", "ecg", "vlm", "metrics", "serving"):
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
