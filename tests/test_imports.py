"""Import direction between the parts of ``src/syncdreamer`` (the layering of README's "Map of the code").

A *part* is a top-level module or subpackage of ``syncdreamer`` (``cameras``, ``models``, ``recon`` ...).
Every ``import`` / ``from ... import`` in every module is read with ``ast`` (at module level and inside
functions alike: a lazy import is still a dependency) and mapped to the part it lands in. The rules:

* a part imports only parts of its own layer or of layers below it (never upward);
* the parts of one layer may import each other, but never in a cycle (nor may any set of parts);
* every part is listed in :data:`LAYERS`: a new part fails this test until someone decides its layer.

Entry points (``train.py``, ``generate.py`` ... at the repository root) sit above every layer.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "syncdreamer"

# Layers from the bottom up; a part may import parts of its own layer or of the layers before it.
# Edit this table (and README's "Map of the code") to place a new part.
LAYERS: dict[str, list[str]] = {
    "bottom": ["cameras", "config", "devices", "geometry", "cli", "raycast", "imaging"],
    "networks and data": ["models", "data"],
    "diffusion": ["diffusion"],
    "training, reconstruction, evaluation": ["systems", "checkpoints", "recon", "metrics"],
    "pipelines": ["pipelines"],
}
LAYER_OF = {part: i for i, parts in enumerate(LAYERS.values()) for part in parts}
LAYER_NAMES = list(LAYERS)


def part_of(path: Path) -> str | None:
    """src/syncdreamer/models/unet.py -> 'models'; cameras.py -> 'cameras'; the package __init__ -> None."""
    rel = path.relative_to(SRC).parts
    if rel == ("__init__.py",):
        return None
    return rel[0].removesuffix(".py")


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute dotted module) of every import statement in the file, relative ones resolved."""
    package = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if package[-1] == "__init__":
        package = package[:-1]
    else:
        package = package[:-1]  # the package that holds the module
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
                if not node.module:  # `from .. import cameras`: the names are the modules
                    found += [(node.lineno, f"{module}.{a.name}") for a in node.names]
                    continue
            else:
                module = node.module or ""
            if module == "syncdreamer":  # `from syncdreamer import models`
                found += [(node.lineno, f"syncdreamer.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, module))
    return found


def part_graph() -> dict[str, dict[str, list[str]]]:
    """{part: {imported part: ['file:line', ...]}} over every module of src/syncdreamer."""
    graph: dict[str, dict[str, list[str]]] = {}
    for path in sorted(SRC.rglob("*.py")):
        src = part_of(path)
        if src is None:
            continue
        graph.setdefault(src, {})
        for line, module in imported_modules(path):
            names = module.split(".")
            if names[0] != "syncdreamer" or len(names) < 2 or names[1] in (src, "__version__"):
                continue
            where = f"{path.relative_to(SRC.parent)}:{line}"
            graph[src].setdefault(names[1], []).append(where)
    return graph


def strongly_connected(graph: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """Tarjan's algorithm: the sets of parts that import each other in a cycle (size > 1)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def layering_violations(graph: dict[str, dict[str, list[str]]]) -> list[str]:
    """One line per broken rule: unlisted parts, upward imports, cycles."""
    problems = []
    parts = sorted(set(graph) | {d for deps in graph.values() for d in deps})
    for part in parts:
        if part not in LAYER_OF:
            problems.append(f"part '{part}' is in no layer: add it to LAYERS in tests/test_imports.py "
                            "(and to README's Map of the code)")
    for src, deps in sorted(graph.items()):
        for dst, where in sorted(deps.items()):
            if src in LAYER_OF and dst in LAYER_OF and LAYER_OF[dst] > LAYER_OF[src]:
                problems.append(f"upward import: {src} ({LAYER_NAMES[LAYER_OF[src]]}) imports {dst} "
                                f"({LAYER_NAMES[LAYER_OF[dst]]}) at {', '.join(where)}")
    for group in strongly_connected(graph):
        edges = [f"{a} -> {b} ({graph[a][b][0]})" for a in group for b in group if b in graph.get(a, {})]
        problems.append(f"import cycle among {', '.join(group)}: {'; '.join(edges)}")
    return problems


def test_imports_run_downward_only():
    problems = layering_violations(part_graph())
    assert not problems, "\n".join(problems)


def test_checker_sees_upward_imports_cycles_and_unlisted_parts():
    """The checker itself, on a made-up graph: it must name each kind of violation."""
    graph = {"cameras": {}, "models": {"cameras": ["a:1"], "diffusion": ["m.py:3"]},
             "diffusion": {"models": ["d.py:5"]}, "recon": {"metrics": ["r.py:7"]},
             "metrics": {"recon": ["x.py:9"]}, "pipelines": {"recon": ["p:1"], "widgets": ["p.py:2"]}}
    problems = layering_violations(graph)
    assert any(p.startswith("upward import: models (networks and data) imports diffusion") and "m.py:3" in p
               for p in problems), problems
    assert any(p.startswith("import cycle among diffusion, models") for p in problems), problems
    assert any(p.startswith("import cycle among metrics, recon") for p in problems), problems
    assert any("part 'widgets' is in no layer" in p for p in problems), problems
    assert len(problems) == 4, problems
    assert layering_violations({"pipelines": {"recon": ["p:1"]}, "recon": {"cameras": ["r:1"]}}) == []


def test_relative_imports_are_resolved(tmp_path, monkeypatch):
    pkg = tmp_path / "syncdreamer"
    (pkg / "models").mkdir(parents=True)
    (pkg / "models" / "unet.py").write_text(
        "from .. import cameras\nfrom ..diffusion.schedule import q\nfrom .layers import x\n"
        "def f():\n    import syncdreamer.recon.io\n    from syncdreamer import metrics\n")
    (pkg / "models" / "__init__.py").write_text("from .unet import f\nfrom ..data import layout\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", pkg)
    assert imported_modules(pkg / "models" / "unet.py") == [
        (1, "syncdreamer.cameras"), (2, "syncdreamer.diffusion.schedule"), (3, "syncdreamer.models.layers"),
        (5, "syncdreamer.recon.io"), (6, "syncdreamer.metrics")]
    assert imported_modules(pkg / "models" / "__init__.py") == [
        (1, "syncdreamer.models.unet"), (2, "syncdreamer.data")]
    assert part_graph() == {"models": {"cameras": ["syncdreamer/models/unet.py:1"],
                                       "diffusion": ["syncdreamer/models/unet.py:2"],
                                       "recon": ["syncdreamer/models/unet.py:5"],
                                       "metrics": ["syncdreamer/models/unet.py:6"],
                                       "data": ["syncdreamer/models/__init__.py:2"]}}
